"""
A userspace TCP proxy that adds latency, jitter and loss: what C{tc netem}
would do, for a kernel that has no netem qdisc.

It runs in one host of L{snstwist.testbed.netbed} (C{python -m snstwist.testbed.lagproxy
--port P}), where an C{iptables} REDIRECT rule sends it every TCP connection
that comes into the host from outside; it reads each connection's original
destination (C{SO_ORIGINAL_DST}), connects there from inside the host, and
relays both ways.  So every connection into the host, whatever its port, is
slowed, in both directions; connections inside the host are not.

Settings come on stdin, one JSON object a line, and apply to every
connection at once, open or new: C{{"delay": s, "jitter": s, "loss": p}}.
Each chunk of bytes is held C{delay} plus up to C{jitter} seconds, never
overtaking the chunk before it (a TCP stream stays in order); with
probability C{loss} it is held a retransmission timeout (L{RTO}) longer,
which is what a lost segment costs a TCP connection.  C{{}} restores a
plain relay.  It prints C{ready} once it listens.

The server behind it sees every connection coming from the host's own
address, not the real peer's.  It must never drop, reorder or change a byte.
"""

import json
import random
import socket
import struct
import sys

import attrs
from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.python import usage

SO_ORIGINAL_DST = 80
RTO = 0.2


@attrs.frozen
class Lag:
    """
    Latency, jitter (seconds) and loss (a probability) added into a host:
    what the bed sends a proxy on its stdin (as JSON), and what
    L{Settings.update} takes.
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0

    def __str__(self):
        return "%.0f ms + up to %.0f ms, %.0f%% loss" % (
            self.delay * 1000, self.jitter * 1000, self.loss * 100)


class Settings:
    """The current delay, jitter and loss, shared by every relay."""

    def __init__(self, rng=random.random):
        self.delay = 0.0
        self.jitter = 0.0
        self.loss = 0.0
        self.random = rng

    def update(self, delay=0.0, jitter=0.0, loss=0.0):
        self.delay, self.jitter, self.loss = float(delay), float(jitter), float(loss)

    def hold(self):
        """How long to hold the next chunk (seconds)."""
        if not (self.delay or self.jitter or self.loss):
            return 0.0
        extra = RTO if self.loss and self.random() < self.loss else 0.0
        return self.delay + self.jitter * self.random() + extra


class Pipe:
    """One direction of a relay: writes to C{transport}, held as settings say."""

    def __init__(self, clock, settings, transport):
        self.clock = clock
        self.settings = settings
        self.transport = transport
        self.last = 0.0  # when the latest chunk is due: none may overtake it
        self.pending = 0

    def send(self, data):
        now = self.clock.seconds()
        due = max(self.last, now + self.settings.hold())
        if due <= now and not self.pending:
            self.transport.write(data)
            return
        self.last = due
        self.pending += 1
        self.clock.callLater(due - now, self._deliver, data)

    def _deliver(self, data):
        self.pending -= 1
        self.transport.write(data)

    def close(self):
        """Close once what is held has been written."""
        now = self.clock.seconds()
        self.clock.callLater(max(0.0, self.last - now) if self.pending else 0,
                             self.transport.loseConnection)


def originalDestination(sock):
    """(host, port) a REDIRECTed connection was addressed to."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, = struct.unpack("!H", raw[2:4])
    return socket.inet_ntoa(raw[4:8]), port


class Outbound(protocol.Protocol):
    def __init__(self, inbound):
        self.inbound = inbound

    def connectionMade(self):
        self.inbound.outboundReady(self)

    def dataReceived(self, data):
        self.inbound.back.send(data)

    def connectionLost(self, reason):
        self.inbound.outboundLost()


class Inbound(protocol.Protocol):
    """A connection redirected to us; relayed to where it was going."""

    def __init__(self, factory):
        self.factory = factory
        self.forth = None
        self.back = None
        self.early = []
        self.closed = False

    def connectionMade(self):
        clock = self.factory.clock
        self.back = Pipe(clock, self.factory.settings, self.transport)
        try:
            host, port = originalDestination(self.transport.getHandle())
        except OSError:
            self.transport.loseConnection()
            return
        d = TCP4ClientEndpoint(clock, host, port, timeout=5).connect(
            protocol.Factory.forProtocol(lambda: Outbound(self)))
        d.addErrback(lambda f: self.transport.loseConnection())

    def outboundReady(self, outbound):
        self.forth = Pipe(self.factory.clock, self.factory.settings, outbound.transport)
        for data in self.early:
            self.forth.send(data)
        self.early = []
        if self.closed:
            self.forth.close()

    def dataReceived(self, data):
        if self.forth is None:
            self.early.append(data)
        else:
            self.forth.send(data)

    def connectionLost(self, reason):
        self.closed = True
        if self.forth is not None:
            self.forth.close()

    def outboundLost(self):
        self.back.close()


class LagFactory(protocol.Factory):
    def __init__(self, clock, settings):
        self.clock = clock
        self.settings = settings

    def buildProtocol(self, addr):
        return Inbound(self)


class _Control(protocol.Protocol):
    """Settings on stdin; EOF on stdin ends the proxy."""

    def __init__(self, settings, reactor):
        self.settings = settings
        self.reactor = reactor
        self.buffer = b""

    def connectionMade(self):
        self.transport.write(b"ready\n")

    def dataReceived(self, data):
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                self.settings.update(**json.loads(line))

    def connectionLost(self, reason):
        if self.reactor.running:
            self.reactor.stop()


class Options(usage.Options):
    optParameters = [["port", "p", 7999, "Port the REDIRECT rule sends connections to.", int]]


def main(argv=None):
    from twisted.internet import reactor, stdio
    options = Options()
    options.parseOptions(sys.argv[1:] if argv is None else argv)
    settings = Settings()
    reactor.listenTCP(options["port"], LagFactory(reactor, settings))
    stdio.StandardIO(_Control(settings, reactor), reactor=reactor)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
