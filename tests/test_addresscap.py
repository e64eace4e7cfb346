"""
Connections per address (L{addresscap}): the kernel's view of this
process's sockets, and a gRPC server that shuts down an address's
connections past its limit.
"""

import socket

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest
from twisted.web import resource, server

from snstwist.rpc import grpcbridge
from snstwist.rpc.grpcbridge import addresscap
from snstwist.web import live
from snstwist.web.app import PerAddress


class ParsingTests(unittest.SynchronousTestCase):
    def test_hosts(self):
        """Addresses as /proc/net/tcp and tcp6 print them (each word in host order)."""
        self.assertEqual(addresscap._host("0100007F:1F90"), "127.0.0.1")
        self.assertEqual(addresscap._host("0200007F:0016"), "127.0.0.2")
        self.assertEqual(addresscap._host("00000000000000000000000001000000:0016"), "::1")
        # An IPv4 peer of an IPv6 socket counts as its IPv4 address.
        self.assertEqual(addresscap._host("0000000000000000FFFF00000200007F:0016"),
                         "127.0.0.2")
        self.assertEqual(addresscap._host("B80D0120000000000000000001000000:0016"),
                         "2001:db8::1")

    def test_established(self):
        """Only established connections on the given local ports, with their peer host."""
        table = self.mktemp()
        with open(table, "w") as f:
            f.write("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when"
                    " retrnsmt   uid  timeout inode\n")
            for local, remote, state, inode in [
                    ("0100007F:1F90", "0100007F:D431", "01", 11),  # ours
                    ("0100007F:1F90", "0200007F:D432", "01", 12),  # ours, another host
                    ("0100007F:1F90", "00000000:0000", "0A", 13),  # the listener
                    ("0100007F:D431", "0100007F:1F90", "01", 14),  # the client's end
                    ("0100007F:1F91", "0100007F:D433", "01", 15),  # another port
                    ("0100007F:1F90", "0100007F:D434", "06", 16)]:  # TIME_WAIT
                f.write("   0: %s %s %s 00000000:00000000 00:00000000 00000000  1000  0 %d"
                        " 1 0000000000000000 20 4 30 10 -1\n" % (local, remote, state, inode))
        self.assertEqual(addresscap.established({0x1F90}, tables=(table, self.mktemp())),
                         [(11, "127.0.0.1"), (12, "127.0.0.2")])

    def test_overLimit(self):
        """The newest (highest inode) past the limit of each host, no other host's."""
        connections = [(30, "a"), (10, "a"), (20, "a"), (40, "a"), (5, "b"), (6, "b")]
        self.assertEqual(addresscap.overLimit(connections, 2), {"a": [30, 40]})
        self.assertEqual(addresscap.overLimit(connections, 4), {})


class Sockets:
    """A listener on 127.0.0.1 and the connections made to it, both ends."""

    def __init__(self, case):
        self.listener = socket.socket()
        case.addCleanup(self.listener.close)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(20)
        self.port = self.listener.getsockname()[1]
        self.case = case
        self.pairs = []  # (client end, accepted end)

    def connect(self, source):
        client = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                          source_address=(source, 0))
        accepted, _ = self.listener.accept()
        accepted.settimeout(5)
        for s in (client, accepted):
            self.case.addCleanup(s.close)
        self.pairs.append((client, accepted))


class SweepTests(unittest.SynchronousTestCase):
    def test_sweepShutsTheNewest(self):
        """
        Of one address's connections past the limit the newest are shut down
        (its peer reads the end); the others, and another address's, go on.
        """
        sockets = Sockets(self)
        for source in ["127.0.0.1"] * 5 + ["127.0.0.2"] * 2:
            sockets.connect(source)
        cap = addresscap.AddressCap(reactor, [sockets.port], limit=3)
        self.assertEqual(cap.sweep(), {"127.0.0.1": 2})
        for client, _ in sockets.pairs[3:5]:
            self.assertEqual(client.recv(1), b"")
        for client, accepted in sockets.pairs[:3] + sockets.pairs[5:]:
            client.sendall(b"x")
            self.assertEqual(accepted.recv(1), b"x")
        self.assertEqual(cap.sweep(), {})

    def test_fewSocketsNoScan(self):
        """With no more sockets than the limit, nothing is read beyond the fd count."""
        sockets = Sockets(self)
        sockets.connect("127.0.0.1")
        cap = addresscap.AddressCap(reactor, [sockets.port], limit=100000,
                                    tables=("/nonexistent/never-read",))
        self.assertEqual(cap.sweep(), {})

    def test_reusedNumber(self):
        """A descriptor that is no longer the socket read earlier is left alone."""
        sockets = Sockets(self)
        sockets.connect("127.0.0.1")
        client, accepted = sockets.pairs[0]
        self.assertFalse(addresscap.shutDown(accepted.fileno(), 1))
        client.sendall(b"x")
        self.assertEqual(accepted.recv(1), b"x")


class _Ends(protocol.Protocol):
    def __init__(self):
        self.lost = defer.Deferred()

    def connectionLost(self, reason):
        self.lost.callback(None)


class ServerTests(unittest.TestCase):
    timeout = 20

    async def test_grpcServerCapsAnAddress(self):
        """
        A gRPC server with a limit of 2 connections an address shuts down
        the third and fourth from 127.0.0.1 by itself, and keeps 127.0.0.2's.
        """
        service = grpcbridge.GrpcServerService("127.0.0.1:0", lambda server, streams: None,
                                               connectionsPerAddress=2)
        service.startService()
        self.addCleanup(service.stopService)
        await service.started
        ends = []
        for source in ["127.0.0.1"] * 4 + ["127.0.0.2"]:
            end = _Ends()
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", service.port,
                                                     bindAddress=(source, 0)), end)
            self.addCleanup(lambda end=end: end.transport.abortConnection())
            ends.append(end)
        # The server's own sweep, every second: the two past the limit end.
        lost = []
        for end in ends:
            end.lost.addCallback(lambda _, end=end: lost.append(end))
        while len(lost) < 2:
            await defer.DeferredList([e.lost for e in ends if e not in lost],
                                     fireOnOneCallback=True)
        if service.addressCap._sweeping is not None:
            await service.addressCap._sweeping  # the sweep's report
        self.assertEqual(service.addressCap.closed, 2)
        self.assertNotIn(ends[4], lost)
        self.assertEqual(service.addressCap.sweep(), {})


class _Echo(protocol.Protocol):
    def __init__(self, gone):
        self.gone = gone

    def dataReceived(self, data):
        self.transport.write(data)

    def connectionLost(self, reason):
        self.gone.append(self)


class _Client(_Ends):
    def __init__(self):
        _Ends.__init__(self)
        self.echoed = defer.Deferred()

    def dataReceived(self, data):
        self.echoed.callback(data)


class WebPerAddressTests(unittest.TestCase):
    timeout = 20

    async def connect(self, port, source):
        end = _Client()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port,
                                                 bindAddress=(source, 0)), end)
        self.addCleanup(lambda: end.transport.abortConnection())
        return end

    async def assertServed(self, end):
        end.echoed = defer.Deferred()
        end.transport.write(b"hi")
        self.assertEqual(await end.echoed, b"hi")

    async def test_pastTheLimitIsClosed(self):
        """
        The web's listener (L{PerAddress}) closes an address's connection past
        its limit at once, serves another address's, and serves the first
        again once one of its connections has gone.
        """
        gone = []  # the server's ends that have ended
        factory = protocol.Factory.forProtocol(lambda: _Echo(gone))
        listening = reactor.listenTCP(0, PerAddress(factory, 2), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        first, second = [await self.connect(port, "127.0.0.1") for _ in range(2)]
        third = await self.connect(port, "127.0.0.1")
        await third.lost
        other = await self.connect(port, "127.0.0.2")
        for end in (first, second, other):
            await self.assertServed(end)
        first.transport.loseConnection()
        await first.lost
        while not gone:  # the server has yet to read that end
            await self.assertServed(other)
        await self.assertServed(await self.connect(port, "127.0.0.1"))


class _Stream(resource.Resource):
    isLeaf = True

    def __init__(self, streams):
        resource.Resource.__init__(self)
        self.streams = streams

    def render_GET(self, request):
        self.streams.open(request)
        return server.NOT_DONE_YET


class WebSlowReaderTests(unittest.TestCase):
    timeout = 60

    async def test_slowBrowserDroppedBehindTheCap(self):
        """
        Behind the per-address cap's wrapper, a live stream whose browser
        does not read is still dropped once its connection buffers more
        than L{live.MAX_BUFFERED} bytes.
        """
        self.patch(live, "MAX_BUFFERED", 1 << 16)
        streams = live.Streams(10)
        listening = reactor.listenTCP(0, PerAddress(server.Site(_Stream(streams))),
                                      interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        browser = _Client()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1",
                                                 listening.getHost().port), browser)
        self.addCleanup(lambda: browser.transport.abortConnection())
        browser.transport.write(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        await browser.echoed  # the stream's first bytes
        browser.transport.pauseProducing()  # and then it reads no more
        chunk = "x" * (1 << 16)
        for _ in range(2000):  # at most 128 MB, far past any socket buffers
            if not streams:
                break
            streams.send("post", chunk)
            await task.deferLater(reactor, 0, lambda: None)
        self.assertEqual(len(streams), 0)
