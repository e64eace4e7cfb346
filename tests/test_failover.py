"""
Clients that never notice a dead server: master1/master2 failover with real
processes and real signals (docs/design.md sections 2, 3, 6 and 8).
"""

import os
import signal

from twisted.internet import defer, reactor
from twisted.trial import unittest

from snstwist.rpc import sns_pb2 as pb
from tests.processes import PASSWORD, Cluster, killIfStill, masterOf, waitUntil
from tests.test_integration import inlineAsync, posts


class FailoverTests(unittest.TestCase):
    timeout = 120

    @inlineAsync
    async def test_idle_client_fails_over_when_master1_is_killed(self):
        """
        SIGKILL master1 of an idle client: its next command prints
        Reconnecting to master2's address, and succeeds there.
        """
        cluster = await Cluster(self, vms=2).start()
        alice = cluster.client("alice")
        alice.write("LIST\n")
        await alice.waitFor("Followers:")
        master1 = await masterOf(cluster, "alice")
        others = {s.vm: s.address for s in (await cluster.status()).servers
                  if s.role == pb.MASTER and s.vm != master1.vm}
        os.kill(master1.pid, signal.SIGKILL)
        alice.write("LIST\n")
        await alice.waitFor("Followers:", count=2)
        alice.closeStdin()
        self.assertEqual(await alice.ended, 0, alice.err)
        reconnects = [line for line in alice.lines if line.startswith("Reconnecting to ")]
        self.assertEqual(reconnects, ["Reconnecting to %s..." % (others.popitem()[1],)])
        self.assertEqual(alice.lines.count("Command completed successfully"), 2)

    @inlineAsync
    async def test_timeline_shows_every_post_once_across_a_failover(self):
        """
        A reader in timeline mode whose master1 is killed sees every post of
        the user it follows exactly once, in order, with one reconnect line.
        """
        cluster = await Cluster(self, vms=2).start()
        await cluster.run("bob", "LIST\n")
        alice = cluster.client("alice")
        alice.write("FOLLOW bob\nTIMELINE\n")
        await alice.waitFor("Now you are in the timeline")
        master1 = await masterOf(cluster, "alice")
        bob = await cluster.run("bob", "TIMELINE\nb1\nb2\nb3\n")
        self.assertEqual(bob.exitCode, 0, bob.err)
        await alice.waitFor(">> b3")
        os.kill(master1.pid, signal.SIGKILL)
        bob = await cluster.run("bob", "TIMELINE\nb4\nb5\nb6\n")
        self.assertEqual(bob.exitCode, 0, bob.err)
        await alice.waitFor(">> b6")
        alice.closeStdin()
        self.assertEqual(await alice.ended, 0, alice.err)
        self.assertEqual(posts(alice.lines), [("bob", "b%d" % (i,)) for i in range(1, 7)])
        self.assertEqual(len([line for line in alice.lines
                              if line.startswith("Reconnecting to ")]), 1)

    @inlineAsync
    async def test_command_in_flight_when_master1_dies_is_applied_once(self):
        """
        A post sent to a hung master1 that is then killed is retried on
        master2 with the same request id and stored exactly once.
        """
        cluster = await Cluster(self, vms=2).start()
        alice = cluster.client("alice")
        alice.write("TIMELINE\nbefore\n")
        await alice.waitFor(">> before")
        master1 = await masterOf(cluster, "alice")
        os.kill(master1.pid, signal.SIGSTOP)
        self.addCleanup(killIfStill, master1.pid, cluster.base)
        alice.write("in flight\n")
        await alice.waitFor("Reconnecting to ")
        alice.closeStdin()
        self.assertEqual(await alice.ended, 0, alice.err)
        again = await cluster.run("alice", "TIMELINE\n")
        self.assertEqual(posts(again.lines), [("alice", "before"), ("alice", "in flight")])

    @inlineAsync
    async def test_new_clients_spread_over_the_least_loaded_vms(self):
        """Four live clients on two VMs: two on each master."""
        cluster = await Cluster(self, vms=2).start()
        clients = []
        for name in ("u1", "u2", "u3", "u4"):
            c = cluster.client(name)
            c.write("LIST\n")
            await c.waitFor("Followers:")
            clients.append(c)

        async def spread():
            loads = sorted(s.clients for s in (await cluster.status()).servers
                           if s.role == pb.MASTER)
            return loads == [2, 2]

        await waitUntil(spread, "two sessions on each master")
        for c in clients:
            c.closeStdin()
            await c.ended


def readMark(cluster, vm, user):
    """The read mark of C{user} stored on C{vm}'s disk, or None."""
    import sqlite3
    path = os.path.join(cluster.data(vm), "sns.sqlite3")
    db = sqlite3.connect("file:%s?mode=ro" % (path,), uri=True)
    try:
        return db.execute("SELECT time_us, post_id FROM marks WHERE user = ?",
                          (user,)).fetchone()
    finally:
        db.close()


class ReturningClientTests(unittest.TestCase):
    timeout = 120

    @inlineAsync
    async def test_returning_client_gets_every_post_it_missed(self):
        """
        A reader that left and comes back gets every post it missed while
        away, in order, even more than the usual 20 of history.
        """
        cluster = await Cluster(self, vms=2).start()
        await cluster.run("bob", "LIST\n")
        alice = cluster.client("alice")
        alice.write("FOLLOW bob\nTIMELINE\n")
        await alice.waitFor("Now you are in the timeline")
        await cluster.run("bob", "TIMELINE\nb0\n")
        await alice.waitFor(">> b0")
        alice.closeStdin()
        await alice.ended
        # How far alice read is saved and replicated to both VMs.
        await waitUntil(lambda: all(readMark(cluster, vm, "alice") for vm in ("vm1", "vm2")),
                        "alice's read mark on both VMs")
        bob = await cluster.run("bob", "TIMELINE\n" + "".join(
            "b%d\n" % (i,) for i in range(1, 26)))
        self.assertEqual(bob.exitCode, 0, bob.err)
        back = await cluster.run("alice", "TIMELINE\n")
        self.assertEqual(posts(back.lines), [("bob", "b%d" % (i,)) for i in range(1, 26)])


    @inlineAsync
    async def test_a_returning_reader_with_thousands_missed_gets_them_all(self):
        """
        A reader away while 5,000 posts came gets every one of them on its
        return, in order, and exits 0: the catch-up is paced by the reader,
        never cut off as a slow reader, and no reconnect loop starts.
        """
        from snstwist.client.client import Client

        # bob posts thousands as fast as he can: past what one user may post.
        cluster = await Cluster(self, vms=2, postsPerSecond=100000).start()
        await cluster.run("bob", "LIST\n")
        alice = cluster.client("alice")
        alice.write("FOLLOW bob\nTIMELINE\n")
        await alice.waitFor("Now you are in the timeline")
        bob = Client([cluster.router], "bob", PASSWORD, clock=reactor)
        await bob.connect()
        self.addCleanup(bob.close)
        await bob.post("b0")
        await alice.waitFor(">> b0")
        alice.closeStdin()
        await alice.ended
        await waitUntil(lambda: all(readMark(cluster, vm, "alice") for vm in ("vm1", "vm2")),
                        "alice's read mark on both VMs")

        async def post(numbers):
            for n in numbers:
                await bob.post("b%d" % (n,))

        missed = 5000
        await defer.gatherResults([defer.ensureDeferred(post(range(i, missed + 1, 20)))
                                   for i in range(1, 21)], consumeErrors=True)
        back = await cluster.run("alice", "TIMELINE\n")
        self.assertEqual(back.exitCode, 0, back.err)
        self.assertEqual(sorted(posts(back.lines), key=lambda p: int(p[1][1:])),
                         [("bob", "b%d" % (n,)) for n in range(1, missed + 1)])
        self.assertEqual([line for line in back.lines if line.startswith("Reconnecting")], [])


class SlowReaderTests(unittest.TestCase):
    timeout = 180

    @inlineAsync
    async def test_a_reader_that_stops_reading_is_cut_off(self):
        """
        A timeline session whose client stops reading (but still heartbeats)
        is cut off once its bounded queue is full, instead of growing the
        master's memory; the user can come back afterwards.
        """
        import asyncio

        import grpc

        from snstwist.client.client import Client
        from snstwist.core import errors
        from snstwist.rpc import auth, grpcbridge
        from snstwist.rpc import sns_pb2_grpc as pbg

        # flood posts as fast as it can: past what one user may post.
        cluster = await Cluster(self, vms=2, postsPerSecond=100000).start()
        flood = Client([cluster.router], "flood", PASSWORD, clock=reactor)
        await flood.connect()
        self.addCleanup(flood.close)
        sloth = Client([cluster.router], "sloth", PASSWORD, clock=reactor)
        await sloth.connect()
        await sloth.follow("flood")
        master = sloth.master1
        await sloth.close()

        # Without BDP probing the flow-control window stays small, so what
        # the client does not read backs up into the server's queue soon.
        channel = grpc.aio.secure_channel(
            master.address, grpcbridge.defaultTLS().channelCredentials(),
            options=[("grpc.http2.bdp_probe", 0),
                     ("grpc.ssl_target_name_override", grpcbridge.CLUSTER_NAME)])
        self.addCleanup(lambda: grpcbridge.closeChannel(channel))
        stub = pbg.SNSStub(channel)
        login = await grpcbridge.call(stub.Login,
                                      pb.LoginRequest(user="sloth", password=PASSWORD))
        stop = asyncio.Event()

        async def requests():
            yield pb.ClientMessage(open=pb.SessionOpen(timeline=True, history=20))
            while not stop.is_set():
                yield pb.ClientMessage(heartbeat=pb.Heartbeat())
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass

        call = stub.Bidirectional_s_and_c(requests(),
                                          metadata=auth.sessionMetadata(login.token))
        self.addCleanup(stop.set)
        self.addCleanup(call.cancel)
        await waitUntil(lambda: _hasSession(cluster, master.vm, "sloth"),
                        "sloth's slow session to be live")

        text = "x" * 900

        sent = []

        async def post(n):
            for i in range(n):
                if stop.is_set():
                    return
                await flood.post("%d %s" % (i, text))
                sent.append(i)

        # Never reading while more than a queue's worth (and every buffer in
        # between) is pushed at it.
        posting = defer.gatherResults([defer.ensureDeferred(post(600)) for _ in range(5)],
                                      consumeErrors=True)
        await waitUntil(lambda: _hasSession(cluster, master.vm, "sloth", present=False),
                        "the slow session to be cut off", timeout=120)
        stop.set()
        await posting
        async def drain():
            async for _ in call:
                pass

        # What was queued before the cut-off is delivered; then the stream
        # ends with an error status, not cleanly.
        with self.assertRaises(errors.RemoteError):
            await grpcbridge.deferredFromAwaitable(drain())

        back = await cluster.run("sloth", "LIST\n")
        self.assertEqual(back.lines[:2], ["Command completed successfully",
                                          "All users: flood, sloth"])


async def _hasSession(cluster, vm, user, present=True):
    for s in (await cluster.status()).servers:
        if s.vm == vm and s.role == pb.MASTER:
            return (user in s.users) == present
    return False


class _HeldSession:
    """A session stream kept open (heartbeating) and otherwise idle."""

    def makeConnection(self, stream):
        from snstwist.rpc.heartbeat import Heartbeat
        from snstwist.server.sessions import HEARTBEAT
        self.stream = stream
        stream.send(pb.ClientMessage(open=pb.SessionOpen(timeline=False)))
        self.beats = Heartbeat(reactor, HEARTBEAT, 1000, lambda: stream.send(
            pb.ClientMessage(heartbeat=pb.Heartbeat())), lambda s: None)

    def messageReceived(self, message):
        pass

    def connectionLost(self, reason):
        self.beats.stop()


class SessionCapTests(unittest.TestCase):
    timeout = 180

    @inlineAsync
    async def test_a_user_at_the_session_cap_everywhere_gets_a_clear_error(self):
        """
        With the most sessions of 'hog' open on both masters, another
        sns-client of hog is refused a session everywhere: it backs off,
        gives up within seconds with 'Command failed with unknown reason'
        (the cause on stderr) and exits 1, instead of reconnecting forever.
        """
        from snstwist.core.limits import MAX_SESSIONS_PER_USER
        from snstwist.rpc import auth, grpcbridge
        from snstwist.rpc import sns_pb2_grpc as pbg

        cluster = await Cluster(self, vms=2).start()
        await cluster.run("hog", "LIST\n")
        for master in (await cluster.masters()).values():
            channel = grpcbridge.channel(master.address)
            self.addCleanup(grpcbridge.closeChannel, channel)
            stub = pbg.SNSStub(channel)
            login = await grpcbridge.call(
                stub.Login, pb.LoginRequest(user="hog", password=PASSWORD), timeout=10)
            for _ in range(MAX_SESSIONS_PER_USER):
                stream = grpcbridge.openStream(stub.Bidirectional_s_and_c, _HeldSession(),
                                               metadata=auth.sessionMetadata(login.token))
                self.addCleanup(stream.abort)

        async def atCap():
            return all(s.clients == MAX_SESSIONS_PER_USER
                       for s in (await cluster.masters()).values())

        await waitUntil(atCap, "both masters to hold hog's sessions")
        hog = await cluster.run("hog", "TIMELINE\n")
        self.assertEqual(hog.exitCode, 1, hog.err)
        self.assertIn("Command failed with unknown reason", hog.lines)
        err = hog.err.decode("utf-8")
        self.assertIn("sessions open on this master", err)
        reconnects = [line for line in hog.lines if line.startswith("Reconnecting to ")]
        self.assertLess(len(reconnects), 60)
