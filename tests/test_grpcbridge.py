"""
grpcbridge against a real grpc.aio server on 127.0.0.1, in this process.

Trial runs these on the asyncio reactor (C{--reactor=asyncio}), so grpc.aio
and the Deferreds under test share one loop.  Each test starts its own server
on port 0 with small Twisted-side servicer functions and stops it (and closes
its channel) in a cleanup.  Nothing sleeps: tests wait on Deferreds that fire
when the awaited thing has happened.
"""

from grpc_health.v1 import health_pb2, health_pb2_grpc
from twisted.internet import defer, reactor, task
from twisted.python.failure import Failure
from twisted.trial import unittest

from snstwist.core import errors
from snstwist.rpc import grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg


def _unused(request, ctx):
    raise errors.InvalidRequest("not used in this test")


def _refused(ctx):
    raise errors.InvalidRequest("not used in this test")


def servicer(service, unary=(), streams=(), **kwargs):
    """
    A grpcbridge.Servicer for every method of C{service} (a name in the
    proto): the given functions, and a refusal for every other method.
    """
    methods = pb.DESCRIPTOR.services_by_name[service].methods
    allUnary = {m.name: _unused for m in methods if not m.client_streaming}
    allStreams = {m.name: _refused for m in methods if m.client_streaming}
    allUnary.update(unary)
    allStreams.update(streams)
    return grpcbridge.Servicer(unary=allUnary, streams=allStreams, **kwargs)


def push(n):
    """A server-to-client message told apart by C{n}."""
    return pb.ServerPush(heartbeat=pb.Heartbeat(updates=n))


def clientMessage(n):
    """A client-to-server message told apart by C{n}."""
    return pb.ClientMessage(heartbeat=pb.Heartbeat(updates=n))


def numbers(messages):
    return [m.heartbeat.updates for m in messages]


class RecordingProtocol:
    """A stream protocol that records what happens to it, for either end."""

    def __init__(self):
        self.transport = None
        self.received = []
        self.connected = defer.Deferred()
        self.reason = None
        self._lost = defer.Deferred()
        self._waiters = []

    def makeConnection(self, transport):
        self.transport = transport
        self.connected.callback(transport)

    def messageReceived(self, message):
        self.received.append(message)
        ready = [(n, d) for n, d in self._waiters if len(self.received) >= n]
        for n, d in ready:
            self._waiters.remove((n, d))
            d.callback(self.received[:n])

    def connectionLost(self, reason):
        self.reason = reason
        # A second call raises AlreadyCalledError, which fails the test.
        self._lost.callback(None)

    async def lost(self):
        """The reason given to connectionLost, once it has been called."""
        await self._lost
        return self.reason

    def receivedAtLeast(self, n):
        """A Deferred that fires with the first C{n} messages once they have come."""
        if len(self.received) >= n:
            return defer.succeed(self.received[:n])
        d = defer.Deferred()
        self._waiters.append((n, d))
        return d


class GrpcTestCase(unittest.TestCase):
    timeout = 20

    async def serve(self, register):
        """Start a GrpcServerService on a free port; return it and a channel to it."""
        service = grpcbridge.GrpcServerService("127.0.0.1:0", register)
        service.startService()
        self.addCleanup(service.stopService)
        await service.started
        channel = grpcbridge.channel(service.address)
        self.addCleanup(grpcbridge.closeChannel, channel)
        return service, channel

    async def routerStub(self, status):
        """A Router stub talking to a server whose Status RPC is C{status}."""
        _, channel = await self.serve(
            lambda server, openStreams: pbg.add_RouterServicer_to_server(
                servicer("Router", unary={"Status": status}, openStreams=openStreams),
                server))
        return pbg.RouterStub(channel)

    async def sessionServer(self, session, maxQueue=1000):
        """Serve Bidirectional_s_and_c with C{session}; return service and SNS stub."""
        service, channel = await self.serve(
            lambda server, openStreams: pbg.add_SNSServicer_to_server(
                servicer("SNS", streams={"Bidirectional_s_and_c": session},
                         openStreams=openStreams, maxQueue=maxQueue),
                server))
        return service, pbg.SNSStub(channel)

    async def openSession(self, session, maxQueue=1000):
        """
        Open Bidirectional_s_and_c to a server protocol made by C{session};
        return the service, the client protocol and its stream.
        """
        service, stub = await self.sessionServer(session, maxQueue)
        client = RecordingProtocol()
        stream = grpcbridge.openStream(stub.Bidirectional_s_and_c, client)
        return service, client, stream

    async def assertCallFails(self, d, code):
        """Assert that the call C{d} fails with status C{code}; return the error."""
        try:
            await d
        except errors.RemoteError as e:
            self.assertEqual(e.status, code)
            return e
        self.fail("the call succeeded; expected %s" % (code,))


class UnaryCallTests(GrpcTestCase):
    async def test_call_returns_a_deferred_of_the_reply(self):
        """grpcbridge.call gives a Deferred that fires with the servicer's reply."""
        stub = await self.routerStub(lambda request, ctx: pb.StatusReply(uptime=7.5))
        d = grpcbridge.call(stub.Status, pb.StatusRequest())
        self.assertIsInstance(d, defer.Deferred)
        reply = await d
        self.assertEqual(reply.uptime, 7.5)

    async def test_servicer_may_answer_with_a_deferred(self):
        """A servicer function's pending Deferred becomes the reply when it fires."""
        arrived = defer.Deferred()
        answer = defer.Deferred()

        def status(request, ctx):
            arrived.callback(None)
            return answer

        stub = await self.routerStub(status)
        d = grpcbridge.call(stub.Status, pb.StatusRequest())
        await arrived
        self.assertNoResult(d)
        answer.callback(pb.StatusReply(uptime=3.0))
        reply = await d
        self.assertEqual(reply.uptime, 3.0)

    async def test_call_metadata_reaches_the_servicer(self):
        """Metadata given to call is in the servicer's call context."""
        seen = []

        def status(request, ctx):
            seen.append(ctx.metadata.get(grpcbridge.SESSION_METADATA))
            return pb.StatusReply()

        stub = await self.routerStub(status)
        await grpcbridge.call(stub.Status, pb.StatusRequest(),
                              metadata=((grpcbridge.SESSION_METADATA, "token-1"),))
        self.assertEqual(seen, ["token-1"])

    async def test_domain_error_arrives_with_its_status_and_message(self):
        """UnknownUser raised by a servicer is NOT_FOUND with the error's message."""
        def status(request, ctx):
            raise errors.UnknownUser("no user named bob")

        stub = await self.routerStub(status)
        e = await self.assertCallFails(grpcbridge.call(stub.Status, pb.StatusRequest()),
                                       errors.Status.NOT_FOUND)
        self.assertEqual(e.message, "no user named bob")

    async def test_domain_error_from_a_deferred_arrives_with_its_status(self):
        """A servicer's Deferred failing with AlreadyFollowing is ALREADY_EXISTS."""
        stub = await self.routerStub(
            lambda request, ctx: defer.fail(errors.AlreadyFollowing()))
        e = await self.assertCallFails(grpcbridge.call(stub.Status, pb.StatusRequest()),
                                       errors.Status.ALREADY_EXISTS)
        self.assertEqual(e.message, errors.AlreadyFollowing().message)

    async def test_unexpected_exception_is_internal(self):
        """An exception that is not a domain error is INTERNAL, and logged."""
        def status(request, ctx):
            raise ZeroDivisionError("oops")

        stub = await self.routerStub(status)
        e = await self.assertCallFails(grpcbridge.call(stub.Status, pb.StatusRequest()),
                                       errors.Status.INTERNAL)
        self.assertEqual(e.message, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    async def test_a_remote_error_in_a_servicer_is_internal_and_logged(self):
        """
        A servicer failing because a call it made failed does not pass the
        other process's status on as its own: INTERNAL, and a log line.
        """
        def status(request, ctx):
            raise errors.RemoteError(errors.Status.NOT_FOUND, "elsewhere")

        stub = await self.routerStub(status)
        e = await self.assertCallFails(grpcbridge.call(stub.Status, pb.StatusRequest()),
                                       errors.Status.INTERNAL)
        self.assertEqual(e.message, "internal error")
        self.assertEqual(len(self.flushLoggedErrors(errors.RemoteError)), 1)

    async def test_status_of_a_failed_call_is_its_code(self):
        """statusOf gives the gRPC code of a failed call and None for other failures."""
        stub = await self.routerStub(
            lambda request, ctx: defer.fail(errors.NotFollowing()))
        d = grpcbridge.call(stub.Status, pb.StatusRequest())
        failures = []
        d.addErrback(failures.append)
        await d
        self.assertEqual(grpcbridge.statusOf(failures[0]),
                         errors.Status.FAILED_PRECONDITION)
        self.assertIsNone(grpcbridge.statusOf(Failure(ValueError())))

    async def test_timeout_gives_twisted_timeout_error(self):
        """addTimeout on a call to a slow servicer fails with defer.TimeoutError."""
        stub = await self.routerStub(lambda request, ctx: defer.Deferred())
        d = grpcbridge.call(stub.Status, pb.StatusRequest())
        d.addTimeout(0.05, reactor)
        with self.assertRaises(defer.TimeoutError):
            await d

    async def test_cancel_gives_twisted_cancelled_error(self):
        """Cancelling a call's Deferred fails it with defer.CancelledError."""
        arrived = defer.Deferred()

        def status(request, ctx):
            arrived.callback(None)
            return defer.Deferred()

        stub = await self.routerStub(status)
        d = grpcbridge.call(stub.Status, pb.StatusRequest())
        await arrived
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            await d

    async def test_cancel_cancels_the_servicer_deferred(self):
        """Cancelling a call really cancels the RPC: the servicer's Deferred is cancelled."""
        arrived = defer.Deferred()
        serverCancelled = defer.Deferred()
        answers = []

        def status(request, ctx):
            answers.append(defer.Deferred(serverCancelled.callback))
            arrived.callback(None)
            return answers[0]

        stub = await self.routerStub(status)
        d = grpcbridge.call(stub.Status, pb.StatusRequest())
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        await arrived
        d.cancel()
        self.assertIs(await serverCancelled, answers[0])


class StreamTests(GrpcTestCase):
    async def openBusySession(self, maxQueue):
        """
        A session whose server has heard from the client, so the server's
        handler is waiting for something to send; return client and server.
        """
        server = RecordingProtocol()
        _, client, stream = await self.openSession(lambda ctx: server, maxQueue=maxQueue)
        stream.send(clientMessage(1))
        await server.receivedAtLeast(1)
        return client, server

    async def test_client_messages_arrive_at_the_server_in_order(self):
        """What the client sends reaches the server protocol, in order."""
        server = RecordingProtocol()
        _, _, stream = await self.openSession(lambda ctx: server)
        for n in (1, 2, 3):
            self.assertTrue(stream.send(clientMessage(n)))
        received = await server.receivedAtLeast(3)
        self.assertEqual(numbers(received), [1, 2, 3])

    async def test_server_messages_arrive_at_the_client_in_order(self):
        """What the server protocol sends reaches the client protocol, in order."""
        server = RecordingProtocol()
        _, client, _ = await self.openSession(lambda ctx: server)
        transport = await server.connected
        for n in (1, 2, 3):
            self.assertTrue(transport.send(push(n)))
        received = await client.receivedAtLeast(3)
        self.assertEqual(numbers(received), [1, 2, 3])

    async def test_server_messages_sent_encoded_arrive_as_messages(self):
        """
        A server protocol may send a message already encoded (bytes: one
        encoding for many streams); the client gets the message, in order
        with those sent as messages.
        """
        server = RecordingProtocol()
        # Registered as the servers register it (Servicer.register), with
        # its serializers, not the generated ones.
        _, channel = await self.serve(
            lambda port, openStreams: servicer(
                "SNS", streams={"Bidirectional_s_and_c": lambda ctx: server},
                openStreams=openStreams).register(port, pb.DESCRIPTOR.services_by_name["SNS"]))
        client = RecordingProtocol()
        grpcbridge.openStream(pbg.SNSStub(channel).Bidirectional_s_and_c, client)
        transport = await server.connected
        self.assertTrue(transport.send(push(1)))
        self.assertTrue(transport.send(push(2).SerializeToString()))
        self.assertTrue(transport.send(push(3)))
        received = await client.receivedAtLeast(3)
        self.assertEqual(numbers(received), [1, 2, 3])

    async def test_stream_metadata_reaches_the_server_transport(self):
        """Metadata given to openStream is on the server-side transport."""
        server = RecordingProtocol()
        _, stub = await self.sessionServer(lambda ctx: server)
        grpcbridge.openStream(stub.Bidirectional_s_and_c, RecordingProtocol(),
                              metadata=((grpcbridge.SESSION_METADATA, "token-2"),))
        transport = await server.connected
        self.assertEqual(transport.metadata.get(grpcbridge.SESSION_METADATA), "token-2")

    async def test_server_close_ends_the_client_stream_cleanly(self):
        """Closing on the server side gives the client connectionLost(None)."""
        server = RecordingProtocol()
        _, client, _ = await self.openSession(lambda ctx: server)
        (await server.connected).close()
        self.assertIsNone(await client.lost())

    async def test_server_close_delivers_what_was_queued_first(self):
        """Messages sent before the server closes reach the client before the end."""
        server = RecordingProtocol()
        _, client, _ = await self.openSession(lambda ctx: server)
        transport = await server.connected
        transport.send(push(1))
        transport.send(push(2))
        transport.close()
        await client.lost()
        self.assertEqual(numbers(client.received), [1, 2])

    async def test_client_close_ends_the_server_stream_cleanly(self):
        """Closing on the client side gives the server protocol connectionLost(None)."""
        server = RecordingProtocol()
        _, client, stream = await self.openSession(lambda ctx: server)
        await server.connected
        stream.close()
        self.assertIsNone(await server.lost())
        self.assertIsNone(await client.lost())

    async def test_client_abort_reaches_the_server_protocol(self):
        """A client abort gives the server protocol connectionLost with a failure."""
        server = RecordingProtocol()
        _, _, stream = await self.openSession(lambda ctx: server)
        await server.connected
        stream.abort()
        reason = await server.lost()
        self.assertTrue(reason.check(defer.CancelledError))

    async def test_client_abort_gives_the_client_cancelled_error(self):
        """A client abort gives its own protocol connectionLost(CancelledError)."""
        server = RecordingProtocol()
        _, client, stream = await self.openSession(lambda ctx: server)
        await server.connected
        stream.abort()
        reason = await client.lost()
        self.assertTrue(reason.check(defer.CancelledError))

    async def test_factory_permission_denied_refuses_the_stream(self):
        """A stream factory raising PermissionDenied gives PERMISSION_DENIED."""
        def session(ctx):
            raise errors.PermissionDenied()

        _, client, _ = await self.openSession(session)
        reason = await client.lost()
        self.assertTrue(reason.check(errors.RemoteError))
        self.assertEqual(grpcbridge.statusOf(reason), errors.Status.PERMISSION_DENIED)
        self.assertEqual(reason.value.message, errors.PermissionDenied().message)

    async def test_a_refusal_reaches_a_client_that_writes_at_once(self):
        """
        A client that writes as soon as it opens (a hello, heartbeats) gets
        the refusal's own status, every time: grpc would report INTERNAL
        "Internal error from Core" for a write that lost the race with the
        refusal (grpc/grpc#36066), so nothing is written before the server
        has accepted the stream.
        """
        def session(ctx):
            raise errors.Overloaded("refused at once")

        class Eager(RecordingProtocol):
            def makeConnection(self, transport):
                RecordingProtocol.makeConnection(self, transport)
                for n in range(20):
                    transport.send(clientMessage(n))

        _, stub = await self.sessionServer(session)
        for _ in range(30):
            client = Eager()
            grpcbridge.openStream(stub.Bidirectional_s_and_c, client)
            reason = await client.lost()
            self.assertTrue(reason.check(errors.RemoteError), reason)
            self.assertEqual((reason.value.status, reason.value.message),
                             (errors.Status.RESOURCE_EXHAUSTED, "refused at once"))

    async def test_a_stream_ended_with_a_farewell_tells_an_eager_writer_why(self):
        """
        A server that ends an accepted stream with a reason (Stream.end)
        sends its farewell first: the client reads it every time, even when
        its own writes, racing the status, make grpc report INTERNAL "Internal
        error from Core" instead (grpc/grpc#36066), as abort alone did in
        about one stream of eight here.
        """
        class Ender(RecordingProtocol):
            def messageReceived(self, message):
                RecordingProtocol.messageReceived(self, message)
                if len(self.received) == 3:
                    self.transport.end(errors.NotLoggedIn("expired"), push(7))

        class Eager(RecordingProtocol):
            def makeConnection(self, transport):
                RecordingProtocol.makeConnection(self, transport)
                self.writes = task.LoopingCall(transport.send, clientMessage(1))
                self.writes.start(0.001)

        _, stub = await self.sessionServer(lambda ctx: Ender())
        for _ in range(30):
            client = Eager()
            grpcbridge.openStream(stub.Bidirectional_s_and_c, client)
            reason = await client.lost()
            client.writes.stop()
            self.assertEqual(numbers(client.received), [7])
            self.assertIn(grpcbridge.statusOf(reason),
                          (errors.Status.UNAUTHENTICATED, errors.Status.INTERNAL))

    async def test_send_beyond_max_queue_returns_false(self):
        """A send that would queue more than maxQueue messages returns False."""
        _, server = await self.openBusySession(maxQueue=2)
        results = [server.transport.send(push(n)) for n in (1, 2, 3)]
        self.assertEqual(results, [True, True, False])

    async def test_send_beyond_max_queue_cuts_the_server_protocol_off(self):
        """Overflowing the queue aborts the stream: the server protocol is lost."""
        _, server = await self.openBusySession(maxQueue=2)
        for n in (1, 2, 3):
            server.transport.send(push(n))
        self.assertIsInstance(await server.lost(), Failure)

    async def test_send_beyond_max_queue_ends_the_stream_for_the_client(self):
        """The cut-off client sees its stream end with ABORTED, not a hang."""
        client, server = await self.openBusySession(maxQueue=2)
        for n in (1, 2, 3):
            server.transport.send(push(n))
        self.assertEqual(grpcbridge.statusOf(await client.lost()), errors.Status.ABORTED)

    async def test_overflow_while_opening_ends_the_stream_for_the_client(self):
        """Overflowing the queue from makeConnection also ends the client's stream."""
        server = RecordingProtocol()
        server.makeConnection = lambda transport: [transport.send(push(n)) for n in (1, 2, 3)]
        _, client, _ = await self.openSession(lambda ctx: server, maxQueue=2)
        self.assertEqual(grpcbridge.statusOf(await client.lost()), errors.Status.ABORTED)

    async def test_server_abort_ends_the_stream_for_the_client(self):
        """Stream.abort on the server side ends the client's stream with ABORTED."""
        client, server = await self.openBusySession(maxQueue=1000)
        server.transport.abort()
        self.assertEqual(grpcbridge.statusOf(await client.lost()), errors.Status.ABORTED)

    async def test_send_after_close_returns_false(self):
        """Nothing can be sent on a closed stream."""
        server = RecordingProtocol()
        _, _, stream = await self.openSession(lambda ctx: server)
        stream.close()
        self.assertFalse(stream.send(clientMessage(1)))
        await server.lost()


class ServiceTests(GrpcTestCase):
    async def test_address_names_the_bound_port(self):
        """Listening on port 0 binds a free port, and address names it."""
        service, _ = await self.serve(lambda server, openStreams: None)
        self.assertGreater(service.port, 0)
        self.assertEqual(service.address, "127.0.0.1:%d" % (service.port,))

    async def test_health_service_reports_serving(self):
        """The standard grpc.health.v1 service answers SERVING once started."""
        _, channel = await self.serve(lambda server, openStreams: None)
        reply = await grpcbridge.call(health_pb2_grpc.HealthStub(channel).Check,
                                      health_pb2.HealthCheckRequest(service=""))
        self.assertEqual(reply.status, health_pb2.HealthCheckResponse.SERVING)

    async def test_stop_ends_open_streams_well_before_the_grace(self):
        """stopService closes open streams instead of waiting out the grace period."""
        server = RecordingProtocol()
        service, client, _ = await self.openSession(lambda ctx: server)
        await server.connected
        service.grace = 60
        started = reactor.seconds()
        await service.stopService()
        self.assertLess(reactor.seconds() - started, service.grace / 4)
        self.assertIsNone(await client.lost())
