"""
The machinery of a load process (C{benchmarks/loadgen.py}): its clients,
pinned to a VM when the run asks for one; logging them in at the rate a
master admits; and its end of the line protocol with C{run.py} (commands on
stdin, JSON events on stdout; the other end is L{benchlib.processes.Child}).

Nothing here installs or imports the global reactor: C{loadgen.py} installs
the asyncio reactor first, then hands it to its L{Worker}.
"""

import json

from twisted.internet import defer, task
from twisted.protocols.basic import LineReceiver

from benchlib.cluster import PASSWORD

from snstwist.client.client import Client, CommandFailed
from snstwist.client.masters import Masters
from snstwist.core.errors import RemoteError, Status
from snstwist.rpc import sns_pb2 as pb

CONNECT_PARALLEL = 25
ADMISSION_PAUSE = 0.5  # seconds before a login refused for the rate is tried again


async def admitted(reactor, login):
    """
    C{login()}, again after a pause for as long as the master refuses it with
    RESOURCE_EXHAUSTED: a master admits only so many logins a second from one
    address (snstwist.core.limits.LOGINS_PER_ADDRESS_RATE), and every client
    of a load process logs in from the same one.  The client library gives
    up after a few tries, which is right for a person, not for a thousand
    users made at once.
    """
    while True:
        try:
            return await login()
        except (CommandFailed, RemoteError) as e:
            status = e.code if isinstance(e, CommandFailed) else e.status
            if status != Status.RESOURCE_EXHAUSTED:
                raise
        await task.deferLater(reactor, ADMISSION_PAUSE, lambda: None)


class PinnedMasters(Masters):
    """
    Masters whose master1 is on VM C{pin} when the router offers it: the
    router answers with two masters, least loaded first, so the pair is
    swapped, or asked again.  (Overrides the library's router query: a
    benchmark needs to know which VM serves whom.)
    """

    pin = None

    async def ask(self, exclude=()):
        reply = await Masters.ask(self, exclude)
        for _ in range(20):
            if self.pin is None or self.pin in exclude or reply.master1.vm == self.pin:
                return reply
            if reply.master2.vm == self.pin:
                return pb.MasterReply(master1=reply.master2, master2=reply.master1)
            reply = await Masters.ask(self, exclude)
        return reply


class PinnedClient(Client):
    """A client whose master1 is on VM C{pin} when the router offers it."""

    mastersFactory = PinnedMasters

    @property
    def pin(self):
        return self.masters.pin

    @pin.setter
    def pin(self, vm):
        self.masters.pin = vm


class Commands(LineReceiver):
    """stdin commands in, JSON lines out."""

    delimiter = b"\n"

    def __init__(self, worker):
        self.worker = worker

    def lineReceived(self, line):
        words = line.decode().split()
        if words:
            d = defer.maybeDeferred(self.worker.command, words[0], words[1:])
            d.addErrback(lambda f: self.worker.emit(event="error", error=f.getTraceback()))

    def connectionLost(self, reason):
        # The orchestrator went away: do not linger.
        self.worker.command("quit", [])


class Worker:
    """
    One load process: C{args} are its command line, C{reactor} the one it
    runs on.  A subclass logs its clients in and emits C{ready} in
    L{start}, and answers a command C{name} with a method C{cmd_name}.
    """

    def __init__(self, args, reactor):
        self.args = args
        self.reactor = reactor
        self.clients = []
        self.out = None
        self.quitting = False

    def emit(self, **fields):
        self.out.transport.write((json.dumps(fields) + "\n").encode())

    def makeClient(self, user, **kw):
        client = PinnedClient([self.args.router], user, PASSWORD, clock=self.reactor, **kw)
        client.pin = self.args.pin
        self.clients.append(client)
        return client

    async def connectAll(self, clients):
        """Log every client in, at most CONNECT_PARALLEL at a time."""
        sem = defer.DeferredSemaphore(CONNECT_PARALLEL)
        await defer.gatherResults(
            [sem.run(lambda c=c: defer.ensureDeferred(admitted(self.reactor, c.connect)))
             for c in clients],
            consumeErrors=True)

    async def openTimelines(self, clients):
        """Every client in timeline mode, its history delivered."""
        sem = defer.DeferredSemaphore(CONNECT_PARALLEL * 4)
        await defer.gatherResults([sem.run(c.timeline) for c in clients], consumeErrors=True)

    def where(self):
        vms = {}
        for c in self.clients:
            if c.master1 is not None:
                vms[c.master1.vm] = vms.get(c.master1.vm, 0) + 1
        return vms

    async def start(self):
        """Subclasses: connect, then emit ready."""

    def command(self, name, args):
        if name == "quit":
            return self.quit()
        handler = getattr(self, "cmd_" + name, None)
        if handler is None:
            self.emit(event="error", error="unknown command %s" % (name,))
            return None
        return defer.ensureDeferred(handler(*args))

    @defer.inlineCallbacks
    def quit(self):
        if self.quitting:
            return
        self.quitting = True
        closes = [c.close().addErrback(lambda f: None) for c in self.clients]
        yield defer.gatherResults(closes).addTimeout(5, self.reactor).addErrback(lambda f: None)
        self.emit(event="bye")
        if self.reactor.running:
            self.reactor.stop()
