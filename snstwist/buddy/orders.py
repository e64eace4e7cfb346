"""
What a spare process (spawned ahead, imported, waiting) is told by the
process that spawned it, on its stdin, one line each:

- C{go ADDRESS}: become my slave now, dialling me at ADDRESS, my cluster
  port (L{tellGo}); a spare is spawned before its spawner may know that
  address (a master still loading, a spare taking a VM over), so it comes
  with the order, not on the spare's command line;
- C{standby PID}: should I end before I tell you to go, the server PID
  takes this VM over from me, and C{standby 0}: nobody would (L{tellStandby}).
  A spawner says so whenever that changes: a master names its slave while
  one runs and nobody while it has none (dead, waiting for its respawn,
  given up on, not spawned yet); a slave names its master; a slave taking
  over names nobody.

L{awaitGo} reads them on the spare's side.  The spawner's end closes the
pipe (the kernel closes it whatever the end, a SIGKILL included): the
spare then knows whether the VM still has a server to take over, and, if
the one named is gone too (or nobody was), takes the VM over itself, so
that a VM is never left with no server while one of its processes lives.
"""

import os

import attrs
from twisted.internet import abstract, defer, fdesc

GO = b"go"
STANDBY = b"standby"
# The most a spare reads of one order before its line ends: a host name
# and a port fit.
_MAX_ORDER = 300


@attrs.frozen
class Order:
    """
    What became of a spare: told to go on (C{go}) as the slave of the
    master at C{master} (None: the one its command line names); or its
    spawner ended, having named C{standby} last (a pid, 0 for nobody, None
    when it named none, or said something no spawner says: then the spare
    only stops).
    """

    go: bool
    standby: int | None = None
    master: str | None = None


def _say(process, line):
    """
    Write the order C{line} to the pipe of our child C{process}'s stdin now,
    where it waits however long the child still takes to start reading.
    Now, not when the reactor next writes what a transport holds: a spawner
    killed right after it gave an order (its log says so) must not take the
    order with it.  A few bytes always fit a pipe the spare reads; should
    one not (or in a test, without a pipe), the transport writes them.
    """
    writer = getattr(process.transport, "pipes", {}).get(0)
    if writer is not None:
        try:
            if os.write(writer.fileno(), line) == len(line):
                return
        except BlockingIOError:
            pass
    process.transport.write(line)


def tellGo(process, master=None):
    """
    Tell our child C{process} (a spare, waiting in L{awaitGo}) to go on as
    the slave of the master at C{master} (our cluster address; None: the
    one its command line names).
    """
    _say(process, GO + (b" " + master.encode("ascii") if master else b"") + b"\n")


def tellStandby(process, pid):
    """
    Tell our spare C{process} which server (C{pid}; 0: none) takes this VM
    over should we end before we tell it to go.
    """
    _say(process, b"%s %d\n" % (STANDBY, pid or 0))


def _standby(line):
    """The pid of a C{standby PID} order, or None for any other line."""
    word, _, pid = line.partition(b" ")
    return int(pid) if word == STANDBY and pid.isdigit() else None


def _go(line):
    """
    The order C{go} or C{go ADDRESS} as an L{Order}, or None for any other
    line (an address with spaces or control characters is none).
    """
    word, _, address = line.partition(b" ")
    if word != GO:
        return None
    if not address:
        return Order(go=True)
    if not all(33 <= c < 127 for c in address):
        return None
    return Order(go=True, master=address.decode("ascii"))


class _Orders(abstract.FileDescriptor):
    """
    Our stdin, a pipe from the process that spawned us, read on the
    reactor until the spare knows what became of it: C{heard(Order(go=True))}
    on L{GO}; on the pipe's end (the spawner's process ended), an Order
    with the last standby named; on anything else, or a line too long, an
    Order with none.  Then nothing more is read, and the descriptor stays
    open (a later file must never take its number).
    """

    def __init__(self, reactor, fd, heard):
        abstract.FileDescriptor.__init__(self, reactor)
        fdesc.setNonBlocking(fd)
        self.fd = fd
        self.heard = heard
        self.buffer = b""
        self.standby = None

    def fileno(self):
        return self.fd

    def doRead(self):
        return fdesc.readFromFD(self.fd, self._received)

    def _received(self, data):
        self.buffer += data
        while self.heard is not None:
            line, newline, self.buffer = self.buffer.partition(b"\n")
            if not newline:
                self.buffer = line
                if len(line) > _MAX_ORDER:
                    self._answer(Order(go=False))
                return
            line = line.strip()
            if (go := _go(line)) is not None:
                self._answer(go)
            elif (standby := _standby(line)) is not None:
                self.standby = standby
            else:
                self._answer(Order(go=False))

    def _answer(self, order):
        if self.heard is not None:
            heard, self.heard = self.heard, None
            self.stopReading()
            heard(order)

    def connectionLost(self, reason):
        abstract.FileDescriptor.connectionLost(self, reason)
        self._answer(Order(go=False, standby=self.standby))


def awaitGo(reactor, fd=0):
    """
    Wait for the order to go on (L{tellGo}) on C{fd}, our stdin: a
    Deferred that fires with the L{Order} that came, or the end of the
    process that spawned us first.
    """
    d = defer.Deferred()
    _Orders(reactor, fd, d.callback).startReading()
    return d
