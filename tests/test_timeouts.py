"""
Failure detection happens when docs/design.md (sections 8 and 9) says it
does: each detector, on a Clock, is checked just before its documented
deadline and just after it, in seconds written out here rather than read
from the code's constants, so that a doubled (or halved) timeout fails.

Documented: router links 0.5 s heartbeats, 2 s deadline; buddies 0.25 s /
2 s; client sessions 2 s / 6 s; replication 1 s / 3 s, 5 s acknowledgement
wait; a slave that dies within 1 s of starting waits 0.1 s, then twice as
long each time, and after 5 restarts in 30 s the master gives up; a stop
sends SIGTERM, then SIGKILL 5 s later.
"""

import signal

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from snstwist import buddy
from snstwist.client.client import Client
from snstwist.router import Registry, RouterService, ServerIdentity
from snstwist.rpc import sns_pb2 as pb
from snstwist.core.node import Node
from snstwist.server.peers import ReplicaReceiver
from snstwist.server.replication import Replicator
from snstwist.storage.store import MemoryStore
from tests.fakes import FakeStream
from tests.test_buddy import dieQuickly, masterLink, slaveLink, supervisor
from tests.test_sessions import connect, makeHub
from tests.test_state import postUpdate


def steps(clock, seconds, step=0.25):
    """
    Advance C{clock} by C{seconds}, C{step} at a time, so that periodic
    timers fire at each of their times (steps are exact binary fractions:
    no rounding drift).
    """
    for _ in range(int(round(seconds / step))):
        clock.advance(step)


class RouterTests(SynchronousTestCase):
    def registered(self):
        clock = Clock()
        clock.advance(1000)  # the deadline is measured from the last heartbeat, not from 0
        router = RouterService("127.0.0.1:0", "a-secret-of-16-chars", clock=clock)
        router.registry.register(ServerIdentity("vm1", pb.MASTER, "127.0.0.2:1", 7, "i1"),
                                 _Link())
        return clock, router

    def test_the_router_ticks_every_half_second(self):
        clock, router = self.registered()
        (timer,) = [s for s in router if isinstance(s, TimerService)]
        self.assertEqual(timer.step, 0.5)

    def test_a_silent_server_is_deactivated_after_two_seconds(self):
        """Silent from 0: kept at 2 s, deactivated by the first tick after 2 s (2.5 s)."""
        clock, router = self.registered()
        for _ in range(4):
            clock.advance(0.5)
            router.tick()
        self.assertEqual(len(router.registry.servers), 1)
        clock.advance(0.5)
        router.tick()
        self.assertEqual(router.registry.servers, {})

    def test_a_heartbeat_restarts_the_two_seconds(self):
        clock, router = self.registered()
        for _ in range(3):
            clock.advance(0.5)
            router.tick()
        router.registry.heartbeat("i1", pb.Heartbeat())
        for _ in range(4):
            clock.advance(0.5)
            router.tick()
        self.assertEqual(len(router.registry.servers), 1)
        clock.advance(0.01)
        router.registry.expire()
        self.assertEqual(router.registry.servers, {})

    def test_the_registry_deadline_is_two_seconds(self):
        clock = Clock()
        clock.advance(1000)
        registry = Registry(clock)
        registry.register(ServerIdentity("vm1", pb.SLAVE, "127.0.0.2:1", 7, "i1"), _Link())
        for _ in range(4):  # its timer, every half second
            clock.advance(0.5)
            registry.expire()
        self.assertIn("i1", registry.servers)
        clock.advance(0.001)
        registry.expire()
        self.assertNotIn("i1", registry.servers)


class BuddyTests(SynchronousTestCase):
    def test_a_silent_master_is_lost_after_two_seconds(self):
        """Silent from 0: still the master at 2 s, lost at the next beat (2.25 s)."""
        link, clock, stream, events = slaveLink()
        steps(clock, 2.0)
        self.assertEqual(events, [])
        steps(clock, 0.25)
        self.assertEqual([e[0] for e in events], ["lost"])

    def test_a_silent_slave_is_hung_after_two_seconds(self):
        link, clock, stream, events = masterLink()
        link.messageReceived(pb.BuddyMessage(hello=pb.BuddyHello(
            vm="vm1", pid=77, address="127.0.0.2:1", incarnation="i1")))
        steps(clock, 2.0)
        self.assertEqual([e[0] for e in events], ["hello"])
        steps(clock, 0.25)
        self.assertEqual([e[0] for e in events], ["hello", "hung"])

    def test_a_slave_dials_a_master_that_has_not_answered_for_two_seconds(self):
        """
        Before the master's hello, failed dials are retried for 2 s from when
        the slave started (here at 1000 s), then the master is lost.
        """
        clock = Clock()
        clock.advance(1000)
        events = []
        dialled = []

        def dial(link):
            dialled.append(clock.seconds())
            link.makeConnection(FakeStream())

        link = buddy.SlaveLink(clock, lambda: pb.BuddyHello(pid=2),
                               lambda why: events.append(why), lambda: None, dial)
        link.start()
        while not events:
            link.connectionLost(Failure(Exception("connection refused")))
            clock.advance(0.05)
        # The last dial follows the last failure within the 2 s by one redial delay.
        self.assertTrue(1001.95 < dialled[-1] < 1002.1, dialled[-1])

    def test_buddies_heartbeat_every_quarter_second(self):
        link, clock, stream, events = slaveLink()
        steps(clock, 0.75, 0.125)
        self.assertEqual(stream.kinds(), ["hello"] + ["heartbeat"] * 3)
        steps(clock, 0.25, 0.125)
        self.assertEqual(stream.kinds(), ["hello"] + ["heartbeat"] * 4)

    def test_a_slave_that_dies_at_start_up_waits_a_tenth_then_twice_as_long(self):
        """Quick deaths wait 0.1, 0.2, 0.4, 0.8, 1.6 s; the sixth in 30 s is not respawned."""
        sup, reactor, spawned = supervisor()
        self.assertEqual([round(d, 6) for d in dieQuickly(reactor, 5)],
                         [0.1, 0.2, 0.4, 0.8, 1.6])
        reactor.spawned[-1].end(exitCode=3)
        reactor.advance(60)
        self.assertTrue(sup.gaveUp)
        self.assertEqual(len(spawned), 6)

    def test_the_respawn_delay_stops_growing_at_ten_seconds(self):
        """With the restart intensity out of the way: 0.1 s doubling up to 10 s."""
        sup, reactor, spawned = supervisor(intensity=100)
        self.assertEqual([round(d, 6) for d in dieQuickly(reactor, 9)],
                         [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0])

    def test_a_slave_that_lived_a_second_is_respawned_at_once(self):
        sup, reactor, spawned = supervisor()
        reactor.advance(0.99)
        reactor.spawned[-1].end(exitCode=3)
        (call,) = reactor.getDelayedCalls()
        self.assertAlmostEqual(call.getTime() - reactor.seconds(), 0.1)
        reactor.advance(0.1)
        reactor.advance(1.01)
        reactor.spawned[-1].end(exitCode=3)
        reactor.advance(0)
        self.assertEqual(len(spawned), 3)

    def test_a_stop_kills_a_slave_still_there_five_seconds_after_sigterm(self):
        sup, reactor, spawned = supervisor()
        process = reactor.spawned[0]
        sup.stop()
        self.assertEqual(process.signals, [signal.SIGTERM])
        reactor.advance(4.99)
        self.assertEqual(process.signals, [signal.SIGTERM])
        reactor.advance(0.01)
        self.assertEqual(process.signals, [signal.SIGTERM, signal.SIGKILL])


class SessionTests(SynchronousTestCase):
    def test_a_silent_client_is_cut_off_after_six_seconds(self):
        """Heard last at 0: still served at 6 s, cut off by the hub's next beat (8 s)."""
        clock, node, hub = makeHub(self)
        session, stream = connect(hub, "alice")
        steps(clock, 6.0, 0.5)
        self.assertFalse(stream.aborted)
        steps(clock, 2.0, 0.5)
        self.assertTrue(stream.aborted)

    def test_the_master_heartbeats_a_session_every_two_seconds(self):
        clock, node, hub = makeHub(self)
        session, stream = connect(hub, "alice")
        steps(clock, 1.75)
        self.assertEqual(stream.sent, [])
        steps(clock, 0.25)
        self.assertEqual([m.WhichOneof("kind") for m in stream.sent], ["heartbeat"])

    def test_a_client_gives_up_on_a_master_silent_for_six_seconds(self):
        """The client's end: kept at 6 s of silence, aborted at its next beat (8 s)."""
        clock = Clock()
        client = Client(["127.0.0.1:1"], "alice", "pw", clock=clock)
        session = client._newSession()
        stream = FakeStream()
        session.makeConnection(stream)
        steps(clock, 6.0, 0.5)
        self.assertFalse(stream.aborted)
        self.assertEqual([m.WhichOneof("kind") for m in stream.sent],
                         ["open", "heartbeat", "heartbeat", "heartbeat"])
        steps(clock, 2.0, 0.5)
        self.assertTrue(stream.aborted)


class ReplicationTests(SynchronousTestCase):
    def receiver(self):
        clock = Clock()
        node = Node("vm1", "vm1.a", MemoryStore(), clock)
        receiver = ReplicaReceiver(node, clock)
        stream = FakeStream()
        receiver.makeConnection(stream)
        return clock, receiver, stream

    def test_the_receiver_says_what_it_holds_every_second(self):
        clock, receiver, stream = self.receiver()
        steps(clock, 0.75)
        self.assertEqual(stream.kinds(), ["hello"])
        steps(clock, 0.25)
        self.assertEqual(stream.kinds(), ["hello", "hello"])

    def test_a_silent_sender_is_dropped_after_three_seconds(self):
        """Heard last at 0: kept at 3 s, aborted at the next hello (4 s)."""
        clock, receiver, stream = self.receiver()
        steps(clock, 3.0)
        self.assertFalse(stream.aborted)
        steps(clock, 1.0)
        self.assertTrue(stream.aborted)

    def test_a_writer_waits_five_seconds_at_most_for_a_peer(self):
        """A write pushed to a peer that never acknowledges is answered at 5 s."""
        clock = Clock()
        node = Node("vm1", "vm1.a", MemoryStore(), clock)
        replicator = Replicator(node, "a-secret-of-16-chars", clock)
        link = _SyncedLink()
        replicator.links["vm2"] = link
        d = replicator.broadcast(postUpdate("vm1.a", 1, 1, "alice"))
        steps(clock, 4.75)
        self.assertNoResult(d)
        steps(clock, 0.25)
        self.assertEqual(self.successResultOf(d), 0)


class _Link:
    """The router's end of a server's stream: takes what is sent, can be aborted."""

    def __init__(self):
        self.sent = []
        self.aborted = False

    def send(self, message):
        self.sent.append(message)

    def abort(self):
        self.aborted = True


class _SyncedLink:
    """A peer link that has synced and swallows what is offered to it."""

    synced = True
    address = "127.0.0.3:1"
    inflight = {}

    def offer(self, update):
        pass

    def stop(self):
        return defer.succeed(None)


class StillAliveTests(SynchronousTestCase):
    """A peer that keeps talking is never given up, on any stream."""

    def test_a_client_keeps_a_master_that_heartbeats(self):
        clock = Clock()
        session = Client(["127.0.0.1:1"], "alice", "pw", clock=clock)._newSession()
        stream = FakeStream()
        session.makeConnection(stream)
        for _ in range(40):
            session.messageReceived(pb.ServerPush(heartbeat=pb.Heartbeat()))
            clock.advance(1)
        self.assertFalse(stream.aborted)
        session.beats.stop()


class AckWaitTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.node = Node("vm1", "vm1.a", MemoryStore(), self.clock)
        self.replicator = Replicator(self.node, "a-secret-of-16-chars", self.clock)
        self.replicator.links["vm2"] = _SyncedLink()

    def post(self, n):
        return postUpdate("vm1.a", n, n, "alice")

    def test_the_five_seconds_hold_after_earlier_writes_were_acknowledged(self):
        """Once every writer was answered, a later unanswered write still waits 5 s only."""
        first = self.post(1)
        d = self.replicator.broadcast(first)
        self.replicator.acked("vm2", first.id)
        self.assertEqual(self.successResultOf(d), 1)
        steps(self.clock, 10)
        d = self.replicator.broadcast(self.post(2))
        steps(self.clock, 4.75)
        self.assertNoResult(d)
        steps(self.clock, 0.25)
        self.assertEqual(self.successResultOf(d), 0)

    def test_answered_writers_leave_no_timer_behind(self):
        updates = [self.post(n) for n in (1, 2, 3)]
        waiting = [self.replicator.broadcast(u) for u in updates]
        steps(self.clock, 1)
        for u in updates:
            self.replicator.acked("vm2", u.id)
        for d in waiting:
            self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopping_answers_every_writer_and_leaves_no_timer(self):
        d = self.replicator.broadcast(self.post(1))
        self.replicator.stop()
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RouterServiceTests(SynchronousTestCase):
    def test_the_router_serves_grpc_and_keeps_time_with_the_reactor(self):
        """Its gRPC server is one of its services; with no clock given, the reactor is it."""
        from twisted.internet import reactor
        router = RouterService("127.0.0.1:0", "a-secret-of-16-chars")
        self.assertIs(router.grpc.parent, router)
        self.assertIs(router.clock, reactor)

    def test_the_master_of_a_vm_is_the_one_that_registered_as_master_last(self):
        """
        A slave (registered first) promoted while its old master is still
        registered is its VM's master from then on.
        """
        clock = Clock()
        registry = Registry(clock)
        slave = ServerIdentity("vm1", pb.SLAVE, "127.0.0.2:2", 8, "b")
        registry.register(slave, _Link())
        clock.advance(1)
        registry.register(ServerIdentity("vm1", pb.MASTER, "127.0.0.2:1", 7, "a"), _Link())
        clock.advance(1)
        registry.register(ServerIdentity("vm1", pb.MASTER, "127.0.0.2:2", 8, "b"), _Link())
        self.assertEqual(registry.masters()["vm1"].identity.incarnation, "b")
