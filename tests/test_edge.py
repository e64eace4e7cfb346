"""
What a hostile or careless client meets at the gRPC edge of a master, over a
real grpc.aio connection in this process: long input is never echoed whole,
and garbage is answered with INVALID_ARGUMENT.
"""

from twisted.internet.task import Clock

from snstwist.core import errors
from snstwist.core.limits import MAX_ECHO
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.storage.store import MemoryStore
from tests.servers import serverParts
from tests.test_grpcbridge import GrpcTestCase

PASSWORD = "pw"


def masterService(test, clock=None):
    """The parts of a master, on a MemoryStore; nothing spawned."""
    return serverParts(test, "master", store=MemoryStore(), clock=clock or Clock())


class EdgeTestCase(GrpcTestCase):
    async def serveMaster(self, clock=None):
        """The SNS service of a master over gRPC: (service, stub, channel)."""
        service = masterService(self, clock)
        grpcService, channel = await self.serve(service.register)
        return service, pbg.SNSStub(channel), channel


class LongInputTests(EdgeTestCase):
    async def test_a_20kb_username_is_invalid_not_resource_exhausted(self):
        """
        Login with a 20 KB name: INVALID_ARGUMENT, with a message that quotes
        only the start of the name and says how long it was.
        """
        service, stub, _ = await self.serveMaster()
        e = await self.assertCallFails(
            grpcbridge.call(stub.Login, pb.LoginRequest(user="x" * 20000, password=PASSWORD),
                            timeout=10),
            errors.Status.INVALID_ARGUMENT)
        self.assertLess(len(e.message), 200)
        self.assertIn("20000 characters", e.message)
        self.assertIn("x" * (MAX_ECHO // 2), e.message)

    async def test_a_20kb_follow_target_is_invalid_and_not_echoed(self):
        """FOLLOW of a 20 KB name by a logged-in user: INVALID_ARGUMENT, short message."""
        service, stub, _ = await self.serveMaster()
        login = await grpcbridge.call(stub.Login,
                                      pb.LoginRequest(user="alice", password=PASSWORD),
                                      timeout=10)
        e = await self.assertCallFails(
            grpcbridge.call(stub.Follow, pb.FollowRequest(target="\x1b" * 20000),
                            timeout=10, metadata=auth.sessionMetadata(login.token)),
            errors.Status.INVALID_ARGUMENT)
        self.assertLess(len(e.message), 200)


def rawCall(channel, method, kind="unary"):
    """A multicallable on C{channel} that sends and receives raw bytes."""
    make = channel.unary_unary if kind == "unary" else channel.stream_stream
    return make(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


GARBAGE = b"\xff\xff\xff\xff\x0f\x0a\x80"


class GarbageTests(EdgeTestCase):
    async def test_garbage_bytes_on_a_unary_rpc_are_invalid_argument(self):
        """
        Bytes that are no protobuf message, sent to Login: INVALID_ARGUMENT,
        saying which message was expected, not UNKNOWN with a protobuf
        exception's name.
        """
        service, stub, channel = await self.serveMaster()
        e = await self.assertCallFails(
            grpcbridge.call(rawCall(channel, "/snstwist.SNS/Login"), GARBAGE, timeout=10),
            errors.Status.INVALID_ARGUMENT)
        self.assertIn("LoginRequest", e.message)
        self.assertNotIn("Error", e.message)

    async def test_garbage_on_every_unary_rpc_of_every_service_is_invalid_argument(self):
        """The same for every unary method a server process serves, cluster ones too."""
        service, stub, channel = await self.serveMaster()
        for name in ("SNS", "Cluster"):
            for method in pb.DESCRIPTOR.services_by_name[name].methods:
                if method.client_streaming:
                    continue
                path = "/snstwist.%s/%s" % (name, method.name)
                await self.assertCallFails(
                    grpcbridge.call(rawCall(channel, path), GARBAGE, timeout=10),
                    errors.Status.INVALID_ARGUMENT)

    async def test_garbage_on_the_session_stream_ends_it_as_invalid_argument(self):
        """A garbage message on Bidirectional_s_and_c ends the stream with INVALID_ARGUMENT."""
        service, stub, channel = await self.serveMaster()
        login = await grpcbridge.call(stub.Login,
                                      pb.LoginRequest(user="alice", password=PASSWORD),
                                      timeout=10)
        call = rawCall(channel, "/snstwist.SNS/Bidirectional_s_and_c", "stream")(
            iter([GARBAGE]), metadata=auth.sessionMetadata(login.token), timeout=10)

        async def drain():
            async for _ in call:
                pass

        await self.assertCallFails(grpcbridge.deferredFromAwaitable(drain()),
                                   errors.Status.INVALID_ARGUMENT)
