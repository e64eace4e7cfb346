"""
Hostile clients and peers against real processes: each case of issue 9 that
broke a running cluster, as it was found, now a regression test.
"""

import os
import signal
import time

from twisted.internet import defer, task
from twisted.trial import unittest

from snstwist.client.client import Client
from snstwist.commands import compare
from snstwist.core import errors
from snstwist.core.limits import CLOCK_WINDOW_US, MAX_MESSAGE_BYTES
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.rpc.grpcbridge import GrpcServerService, Servicer
from tests.processes import DEADLINE, PASSWORD, SECRET, Cluster, childEnv, spawn, waitUntil
from tests.strategies import LAST_US, userUpdate
from tests.test_integration import inlineAsync


class _Recorder:
    """A stream protocol that remembers how its stream ended."""

    def __init__(self):
        self.stream = None
        self.messages = []
        self.ended = defer.Deferred()

    def makeConnection(self, stream):
        self.stream = stream

    def messageReceived(self, message):
        self.messages.append(message)

    def connectionLost(self, reason):
        self.reason = reason
        self.ended.callback(None)


def largestCursorAck():
    """A session ack whose id is as long as one client message may carry."""
    message = pb.ClientMessage(ack=pb.Cursor(time_us=1, id=""))
    message.ack.id = "x" * (MAX_MESSAGE_BYTES - message.ByteSize() - 8)
    return message


async def hostileSession(address, user, message):
    """Log in on C{address} as C{user}, send C{message} on a session; how it ended."""
    channel = grpcbridge.channel(address)
    try:
        stub = pbg.SNSStub(channel)
        login = await grpcbridge.call(stub.Login, pb.LoginRequest(user=user, password=PASSWORD),
                                  timeout=10)
        session = _Recorder()
        grpcbridge.openStream(stub.Bidirectional_s_and_c, session,
                              metadata=auth.sessionMetadata(login.token))
        session.stream.send(message)
        await session.ended.addTimeout(DEADLINE, _reactor())
        return session.reason
    finally:
        await grpcbridge.closeChannel(channel)


def _reactor():
    from twisted.internet import reactor
    return reactor


async def postAll(router, user, texts):
    """Post C{texts} as C{user} through the client library; the replies."""
    client = Client([router], user, PASSWORD)
    try:
        await client.connect()
        return [await client.post(text) for text in texts]
    finally:
        await client.close()


async def agree(cluster):
    """Do the VMs hold the same files, and the same number of updates (read marks too)?"""
    digests = await compare.digests(cluster.router, SECRET)
    return (len(digests) == cluster.vms and not compare.differences(digests)
            and len({d.updates for d in digests.values()}) == 1)


class OneMessageNeverStopsReplicationTests(unittest.TestCase):
    timeout = 120

    @inlineAsync
    async def test_a_huge_cursor_is_refused_and_replication_goes_on(self):
        """
        A logged-in client acks a cursor with an id as long as a client
        message may carry.  Its read mark would be larger than a replication
        message may be: the session is refused with INVALID_ARGUMENT, and
        later posts are still acknowledged on two VMs, which agree.
        """
        cluster = await Cluster(self, vms=2).start()
        masters = await cluster.masters()
        reason = await hostileSession(masters["vm1"].address, "mallory", largestCursorAck())

        replies = await postAll(cluster.router, "alice", ["post %d" % (i,) for i in range(20)])
        self.assertEqual([r.copies >= 2 for r in replies], [True] * 20,
                         [r.copies for r in replies])

        await waitUntil(lambda: agree(cluster), "the VMs to agree")
        self.assertEqual(cluster.postFiles("vm1"), cluster.postFiles("vm2"))
        self.assertIsNotNone(reason, "the hostile session was ended cleanly")
        self.assertEqual(grpcbridge.statusOf(reason), errors.Status.INVALID_ARGUMENT)
        self.assertLess(len(reason.value.message), 200)


async def loggedIn(address, user):
    """A channel to C{address}, its SNS stub and C{user}'s session metadata."""
    channel = grpcbridge.channel(address)
    stub = pbg.SNSStub(channel)
    login = await grpcbridge.call(stub.Login, pb.LoginRequest(user=user, password=PASSWORD),
                                  timeout=10)
    return channel, stub, auth.sessionMetadata(login.token)


class RequestIdsPerUserTests(unittest.TestCase):
    timeout = 120

    @inlineAsync
    async def test_two_users_with_one_request_id_on_two_vms_both_post(self):
        """
        alice on vm1 and bob on vm2 post at the same moment with the same
        request id: both are answered with their own post, and both posts
        are in every VM's post files.
        """
        cluster = await Cluster(self, vms=2).start()
        masters = await cluster.masters()
        sessions = [await loggedIn(masters[vm].address, user)
                    for vm, user in (("vm1", "alice"), ("vm2", "bob"))]
        try:
            replies = await defer.gatherResults([
                grpcbridge.call(stub.Post, pb.PostRequest(
                    text="%s's post" % (user,), request_id="same-id", prefer_vm=other),
                    timeout=10, metadata=metadata)
                for (_, stub, metadata), user, other in zip(
                    sessions, ("alice", "bob"), ("vm2", "vm1"))])
        finally:
            for channel, _, _ in sessions:
                await grpcbridge.closeChannel(channel)
        self.assertEqual([(r.post.author, r.post.text) for r in replies],
                         [("alice", "alice's post"), ("bob", "bob's post")])
        await waitUntil(lambda: agree(cluster), "the VMs to agree")
        for vm in ("vm1", "vm2"):
            files = cluster.postFiles(vm)
            self.assertIn(b"alice's post", files["alice.txt"])
            self.assertIn(b"bob's post", files["bob.txt"])


class _Peer(_Recorder):
    """A hostile peer VM on BroadcastPosts: says hello, then sends C{updates}."""

    def __init__(self, updates):
        super().__init__()
        self.updates = updates
        self.acked = defer.Deferred()

    def makeConnection(self, stream):
        super().makeConnection(stream)
        stream.send(pb.ReplicationMessage(hello=pb.ReplicaHello(vm="evil", origin="evil.1")))
        stream.send(pb.ReplicationMessage(updates=pb.UpdateBatch(
            updates=[u.toProto() for u in self.updates])))

    def messageReceived(self, message):
        super().messageReceived(message)
        if message.WhichOneof("kind") == "ack" and not self.acked.called:
            self.acked.callback(list(message.ack.ids))


class ClockWindowTests(unittest.TestCase):
    timeout = 120

    @inlineAsync
    async def test_a_far_future_peer_update_is_refused_and_posts_go_on(self):
        """
        A peer sends an update dated in the year 9999 with a sound one: only
        the sound one is acknowledged, and posts still succeed, dated now,
        also after the master is killed and its slave takes over.
        """
        cluster = await Cluster(self, vms=2).start()
        masters = await cluster.masters()
        now = int(time.time() * 1e6)
        peer = _Peer([userUpdate("evil.1", 1, LAST_US, "mallory"),
                      userUpdate("evil.1", 2, now, "mallet")])
        channel = grpcbridge.channel(masters["vm1"].peer_address)
        try:
            grpcbridge.openStream(pbg.ClusterStub(channel).BroadcastPosts, peer,
                                  metadata=auth.secretMetadata(SECRET))
            acked = await peer.acked.addTimeout(DEADLINE, _reactor())
            peer.stream.close()
        finally:
            await grpcbridge.closeChannel(channel)
        self.assertEqual(acked, ["evil.1/2"])

        async def postNow():
            [reply] = await postAll(cluster.router, "alice", ["still here"])
            self.assertLess(reply.post.time_us, int(time.time() * 1e6) + CLOCK_WINDOW_US)
            return reply

        await postNow()
        os.kill(masters["vm1"].pid, signal.SIGKILL)

        async def promoted():
            now = await cluster.masters()
            return "vm1" in now and now["vm1"].pid != masters["vm1"].pid

        await waitUntil(promoted, "vm1's slave to take over")
        await postNow()
        await waitUntil(lambda: agree(cluster), "the VMs to agree")


class _FakeMaster:
    """
    A master of a VM "vm9" that the router knows, whose BroadcastPosts refuses
    every stream: what a peer whose stream fails the same way forever looks
    like from vm1.
    """

    def __init__(self, testCase, router):
        self.router = router
        self.grpc = GrpcServerService("127.0.0.9:0", self._register)
        self.grpc.startService()
        testCase.addCleanup(self.grpc.stopService)
        self.channel = grpcbridge.channel(router)
        testCase.addCleanup(lambda: grpcbridge.closeChannel(self.channel))

    def _register(self, server, openStreams):
        Servicer(unary={"Digest": lambda request, ctx: pb.DigestReply(vm="vm9"),
                        "Onetime_s_to_buddy": lambda request, ctx: self._refuse(ctx)},
                 streams={"BroadcastPosts": self._refuse, "BuddyConnection": self._refuse},
                 openStreams=openStreams).register(
            server, pb.DESCRIPTOR.services_by_name["Cluster"])

    def _refuse(self, ctx):
        raise errors.Overloaded("vm9 refuses every replication stream")

    def makeConnection(self, stream):
        self.stream = stream
        stream.send(pb.ServerMessage(hello=pb.ServerHello(
            vm="vm9", role=pb.MASTER, address=self.grpc.address, pid=1, incarnation="fake9")))
        self.beats = task.LoopingCall(stream.send, pb.ServerMessage(heartbeat=pb.Heartbeat()))
        self.beats.start(0.25)

    def messageReceived(self, message):
        pass

    def connectionLost(self, reason):
        if self.beats.running:
            self.beats.stop()

    def register(self, testCase):
        """Say hello to the router, and heartbeat until the test ends."""
        stream = grpcbridge.openStream(pbg.RouterStub(self.channel).Bidirectional_r_and_s, self,
                                       metadata=auth.secretMetadata(SECRET))
        testCase.addCleanup(stream.abort)


class VisibleStreamFailureTests(unittest.TestCase):
    timeout = 120

    @inlineAsync
    async def test_a_stream_that_keeps_failing_shows_in_status_and_compare(self):
        """
        vm1's stream to a peer VM fails again and again: sns-status shows a
        LAG above 0 for vm1 and says which VM is behind and why; so does
        sns-compare.
        """
        cluster = await Cluster(self, vms=1).start()
        _FakeMaster(self, cluster.routerPeer).register(self)
        await postAll(cluster.router, "alice", ["one", "two"])

        async def troubleShown():
            run = spawn(self, ["-m", "snstwist.commands.status", "-r", cluster.router],
                        env=childEnv())
            await run.ended
            # The stream to vm9 breaks again and again, and sns-status shows
            # the last break.  gRPC sometimes reports a stream refused while
            # the caller was already writing as INTERNAL "Internal error from
            # Core" instead of the refusal (a race inside gRPC core, see
            # docs/design.md "Not yet"), so wait for a break that carries
            # vm9's own reason.
            # sns-status shows the router's copy of vm1's last heartbeat (one
            # every 0.5 s): one sent before alice's posts carries the failing
            # stream already, with nothing held yet to lag.  Wait for one
            # sent after them.
            masters = [line.split() for line in run.lines
                       if line.startswith("vm1 ") and " master " in line]
            return [line for line in run.lines if line.startswith("vm1 -> vm9: ")
                    and "vm9 refuses every replication stream" in line] and [
                        m for m in masters if int(m[6]) > 0] and run

        run = await waitUntil(troubleShown, "sns-status to show the failing stream, why,"
                              " and a LAG above 0 for vm1")
        [line] = [line for line in run.lines if line.startswith("vm1 -> vm9: ")]
        self.assertIn("not confirmed; the stream broke", line)
        self.assertIn("RESOURCE_EXHAUSTED: vm9 refuses every replication stream", line)

        compared = spawn(self, ["-m", "snstwist.commands.compare", "-r", cluster.router],
                         env=childEnv())
        await compared.ended
        self.assertTrue([line for line in compared.lines if line.startswith("vm1 -> vm9: ")],
                        compared.text)
