"""
A server built from its parts, on a Clock and in-memory stores (no gRPC, no
process): the write path, the role machine's hooks (L{Lifecycle}), the
take-over's lock loop, and what the process does to itself.
"""

import gc
import os

from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors
from snstwist.core.node import Node
from snstwist.core.observers import Observers
from snstwist.rpc import sns_pb2 as pb
from snstwist.server import process
from snstwist.server.lifecycle import CurrentRole, Lifecycle, takeLock
from snstwist.server.service import ServerService
from snstwist.storage.store import DataLocked, MemoryStore
from tests.fakes import FakeCallContext, FakeHasher, session
from tests.servers import serverConfig, serverParts


def makeServer(test):
    """The parts of a master whose node runs on a manual MemoryStore; alice exists."""
    parts = serverParts(test)
    parts.node.login("alice")
    parts.node.store.flush()
    return parts, parts.node.store


def as_(parts, user):
    """The context of a call carrying C{user}'s genuine session token."""
    return session(parts.admission.loginReply(user).token)


class WritePathTests(SynchronousTestCase):
    def test_a_write_is_answered_once_durable_with_its_copies(self):
        """With no peer VM, a post is answered after the local flush: one copy."""
        parts, store = makeServer(self)
        d = parts.api.post(pb.PostRequest(text="hi", request_id="r1"), as_(parts, "alice"))
        self.assertNoResult(d)
        store.flush()
        reply = self.successResultOf(d)
        self.assertEqual((reply.copies, reply.post.text), (1, "hi"))

    def test_a_retried_request_is_answered_with_the_first_write(self):
        """The same request id twice: one post, the same id in both replies."""
        parts, store = makeServer(self)
        alice = as_(parts, "alice")
        first = parts.api.post(pb.PostRequest(text="hi", request_id="r1"), alice)
        again = parts.api.post(pb.PostRequest(text="hi", request_id="r1"), alice)
        store.flush()
        self.assertEqual(self.successResultOf(first).id, self.successResultOf(again).id)
        self.assertEqual(len(parts.node.replica.postsBy("alice")), 1)

    def test_a_request_id_of_another_user_is_a_new_request(self):
        """
        Request ids are scoped to their user: bob's r1 is not alice's r1,
        so bob's post is stored and answered with his own write.
        """
        parts, store = makeServer(self)
        parts.node.login("bob")
        mine = parts.api.post(pb.PostRequest(text="alice's", request_id="r1"),
                              as_(parts, "alice"))
        theirs = parts.api.post(pb.PostRequest(text="bob's", request_id="r1"), as_(parts, "bob"))
        store.flush()
        self.assertEqual([self.successResultOf(d).post.text for d in (mine, theirs)],
                         ["alice's", "bob's"])
        self.assertEqual([p.text for p in parts.node.replica.postsBy("bob")], ["bob's"])

    def test_too_many_writes_in_flight_are_refused_as_overloaded(self):
        """Past maxWriting unanswered writes, the next is refused, not queued."""
        parts, store = makeServer(self)
        alice = as_(parts, "alice")
        parts.writes.maxWriting = 2
        pending = [parts.api.post(pb.PostRequest(text="p%d" % i, request_id="r%d" % i), alice)
                   for i in range(2)]
        self.assertRaises(errors.Overloaded, parts.api.post,
                          pb.PostRequest(text="p2", request_id="r2"), alice)
        store.flush()
        for d in pending:
            self.successResultOf(d)
        self.assertEqual(parts.writes.writing, 0)
        d = parts.api.post(pb.PostRequest(text="p3", request_id="r3"), alice)
        store.flush()
        self.assertEqual(self.successResultOf(d).post.text, "p3")

    def test_an_overly_long_request_id_is_invalid(self):
        """Request ids are bounded: a 65-character one is an invalid request."""
        parts, store = makeServer(self)
        self.assertRaises(errors.InvalidRequest, parts.api.post,
                          pb.PostRequest(text="hi", request_id="x" * 65), as_(parts, "alice"))

    def test_acknowledged_posts_are_counted_in_the_load(self):
        """The routers hear how many posts this master acknowledged."""
        parts, store = makeServer(self)
        parts.api.post(pb.PostRequest(text="hi", request_id="r1"), as_(parts, "alice"))
        self.assertEqual(parts.report.load().acknowledged, 0)
        store.flush()
        self.assertEqual(parts.report.load().acknowledged, 1)


class DurableObserverTests(SynchronousTestCase):
    def test_a_new_password_ends_the_sessions_of_the_older_one(self):
        """
        The sessions subscribe to the node: once a password change is
        durable, a session opened under the old password is cut off.
        """
        parts, store = makeServer(self)
        session = parts.api.session(as_(parts, "alice"))
        stream = _Stream()
        session.makeConnection(stream)
        parts.node.setPassword("alice", "fake$new")
        self.assertFalse(stream.aborted)
        store.flush()
        self.assertTrue(stream.aborted)


class CompositionTests(SynchronousTestCase):
    def test_a_server_still_starting_refuses_clients_naming_its_role(self):
        """
        Until its role machine has made it master (while it loads), a server
        answers every client call with NOT_MASTER, saying it is starting.
        """
        reactor = MemoryReactorClock()
        service = ServerService(serverConfig(self), clock=reactor, reactor=reactor,
                                store=MemoryStore(), hasher=FakeHasher())
        e = self.assertRaises(errors.NotMaster, service.parts.api.list, pb.ListRequest(),
                              FakeCallContext())
        self.assertIn("starting", e.message)


class _Stream:
    peer = "ipv4:127.0.0.1:5555"
    aborted = False

    def send(self, message):
        return True

    def abort(self, reason=None):
        self.aborted = True

    def end(self, reason, farewell=None):
        self.aborted = True


class FakeMasterEnd:
    """Records what the lifecycle asks of a master's end of the buddy pair."""

    def __init__(self):
        self.calls = []

    def supervise(self):
        self.calls.append("supervise")

    def alone(self):
        self.calls.append("alone")

    def shutdown(self):
        self.calls.append("shutdown")


class FakeSlaveEnd:
    """A slave's end whose master is lost or stops when the test says so."""

    def __init__(self):
        self.lost = Observers("the master's loss")
        self.stopping = Observers("the master's orderly stop")
        self.calls = []
        self.master = "127.0.0.1:2"

    def start(self):
        self.calls.append("start")

    def masterPid(self):
        return 0

    def fence(self):
        self.calls.append("fence")

    def shutdown(self):
        self.calls.append("shutdown")


class VMDisk(MemoryStore):
    """A VM's data that a warming slave can read without the writer lock."""

    def read(self, posts=True):
        return MemoryStore.open(self, posts=posts)


def lifecycleOn(test, role, node, openStore=None):
    """
    A L{Lifecycle} of C{role} on C{node}, serving nowhere: (lifecycle,
    master end, slave end, list of serve calls, reactor).
    """
    reactor = MemoryReactorClock()
    served = []

    def serve():
        served.append(lifecycle.current.name)
        return "127.0.0.1:1"

    masterEnd, slaveEnd = FakeMasterEnd(), FakeSlaveEnd()
    lifecycle = Lifecycle(serverConfig(test, role), CurrentRole(), node, serve, masterEnd,
                          slaveEnd, openStore, reactor, reactor)
    test.addCleanup(lambda: lifecycle.settler.running and lifecycle.settler.stop())
    test.addCleanup(gc.unfreeze)
    return lifecycle, masterEnd, slaveEnd, served, reactor


def oneTurn(clock):
    """
    Run the calls due now on C{clock}, not those they schedule for now in
    turn (C{Clock.advance(0)} runs those too): one turn of a reactor.
    """
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


class LifecycleTests(SynchronousTestCase):
    def test_a_master_loads_then_serves_and_spawns_its_slave(self):
        node = Node("vm1", "vm1.a", MemoryStore(), Clock())
        lifecycle, masterEnd, slaveEnd, served, reactor = lifecycleOn(self, "master", node)
        lifecycle.start()
        reactor.advance(0)
        reactor.advance(0)
        self.successResultOf(lifecycle.ready)
        self.assertEqual((lifecycle.current.name, served, masterEnd.calls),
                         ("master", ["master"], ["alone", "supervise"]))
        self.assertTrue(os.path.exists(lifecycle.pidfile.path))

    def test_a_master_keeps_a_spare_before_it_loads(self):
        """
        Alone on its VM until its slave runs: its spare is started before
        anything else, so that a process that would take the VM over is
        there as early as can be.
        """
        node = Node("vm1", "vm1.a", MemoryStore(), Clock())
        lifecycle, masterEnd, slaveEnd, served, reactor = lifecycleOn(self, "master", node)
        node.load = lambda: masterEnd.calls.append("load") or defer.succeed(None)
        lifecycle.start()
        self.assertEqual((lifecycle.current.name, masterEnd.calls), ("starting", ["alone", "load"]))

    def test_a_master_loads_serves_and_spawns_in_three_turns(self):
        """
        Each reactor turn of a start is bounded: the load ends one, serving
        (the gRPC servers, the router links) is the next, the slave's spawn
        the one after.
        """
        node = Node("vm1", "vm1.a", MemoryStore(), Clock())
        lifecycle, masterEnd, slaveEnd, served, reactor = lifecycleOn(self, "master", node)
        lifecycle.start()
        self.assertEqual((served, masterEnd.calls), ([], ["alone"]))
        oneTurn(reactor)
        self.assertEqual((served, masterEnd.calls), (["master"], ["alone"]))
        oneTurn(reactor)
        self.assertEqual((served, masterEnd.calls), (["master"], ["alone", "supervise"]))

    def test_a_stop_before_the_spawns_turn_spawns_nothing(self):
        """Stopped between serving and spawning: no slave is spawned, no call is left."""
        node = Node("vm1", "vm1.a", MemoryStore(), Clock())
        lifecycle, masterEnd, slaveEnd, served, reactor = lifecycleOn(self, "master", node)
        lifecycle.start()
        oneTurn(reactor)
        lifecycle.stop()
        reactor.advance(0)
        self.assertEqual(masterEnd.calls, ["alone", "shutdown"])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_an_orderly_stop_tells_both_ends_and_takes_nothing_over(self):
        node = Node("vm1", "vm1.a", MemoryStore(), Clock())
        lifecycle, masterEnd, slaveEnd, served, reactor = lifecycleOn(self, "master", node)
        lifecycle.start()
        reactor.advance(0)
        reactor.advance(0)
        lifecycle.stop()
        slaveEnd.lost("the master died")
        self.assertEqual((lifecycle.current.name, masterEnd.calls, slaveEnd.calls),
                         ("stopping", ["alone", "supervise", "shutdown"], ["shutdown"]))

    def test_a_slave_that_loses_its_master_fences_it_and_takes_over(self):
        """
        Warm from the VM's files, the slave dials its master; when the
        master is lost it fences it, takes the data over (what it had not
        read too) and serves as master with a slave of its own.
        """
        disk = VMDisk()
        old = Node("vm1", "vm1.old", disk, Clock())
        old.login("alice")
        node = Node("vm1", "vm1.new", disk, Clock())
        lifecycle, masterEnd, slaveEnd, served, reactor = lifecycleOn(
            self, "slave", node, openStore=lambda: disk)
        lifecycle.start()
        self.assertEqual((lifecycle.current.name, slaveEnd.calls), ("slave", ["start"]))
        self.assertIn("alice", node.replica.users)
        old.login("bob")
        slaveEnd.lost("buddy stream broke")
        reactor.advance(lifecycle.promotedSpareDelay)
        self.assertEqual((lifecycle.current.name, served, slaveEnd.calls, masterEnd.calls),
                         ("master", ["slave", "master"], ["start", "fence"],
                          ["alone", "supervise"]))
        self.assertIn("bob", node.replica.users)

    def test_a_promoted_master_tells_its_spare_to_go_a_moment_after_it_serves(self):
        """
        The new slave (its spare) is not started in the promotion's first
        moments: it would compete with them for the CPU.
        """
        disk = VMDisk()
        node = Node("vm1", "vm1.new", disk, Clock())
        lifecycle, masterEnd, slaveEnd, served, reactor = lifecycleOn(
            self, "slave", node, openStore=lambda: disk)
        lifecycle.start()
        slaveEnd.lost("buddy stream broke")
        reactor.advance(lifecycle.promotedSpareDelay - 0.01)
        self.assertEqual((lifecycle.current.name, masterEnd.calls), ("master", ["alone"]))
        reactor.advance(0.01)
        self.assertEqual(masterEnd.calls, ["alone", "supervise"])

    def test_a_slave_told_its_master_stops_stops_by_itself_if_not_signalled(self):
        node = Node("vm1", "vm1.new", VMDisk(), Clock())
        lifecycle, masterEnd, slaveEnd, served, reactor = lifecycleOn(self, "slave", node)
        lifecycle.start()
        slaveEnd.stopping()
        slaveEnd.lost("buddy stream broke")
        self.assertEqual(lifecycle.current.name, "stopping")
        reactor.advance(lifecycle.orphanStop - 0.1)
        self.assertFalse(reactor.hasStopped)
        reactor.advance(0.1)
        self.assertTrue(reactor.hasStopped)


class LockedDisk(MemoryStore):
    """A VM's data whose writer lock is held for the first C{busy} attempts."""

    def __init__(self, busy):
        MemoryStore.__init__(self)
        self.busy = busy
        self.attempts = 0

    def open(self, known=None, posts=True):
        self.attempts += 1
        if self.attempts <= self.busy:
            return defer.fail(DataLocked("held by the old master"))
        return MemoryStore.open(self, known, posts)


class TakeLockTests(SynchronousTestCase):
    def test_the_lock_is_tried_again_until_the_old_master_lets_go(self):
        clock, disk = Clock(), LockedDisk(busy=3)
        node = Node("vm1", "vm1.new", MemoryStore(), clock)
        d = takeLock(node, lambda: disk, clock, deadline=10.0, retry=0.01)
        self.assertNoResult(d)
        clock.pump([0.01] * 3)
        self.assertEqual((self.successResultOf(d), disk.attempts, node.store), (0, 4, disk))

    def test_past_the_deadline_the_take_over_fails_with_data_locked(self):
        clock, disk = Clock(), LockedDisk(busy=10**6)
        node = Node("vm1", "vm1.new", MemoryStore(), clock)
        d = takeLock(node, lambda: disk, clock, deadline=1.0, retry=0.25)
        clock.pump([0.25] * 5)
        self.failureResultOf(d, DataLocked)
        self.assertEqual(clock.getDelayedCalls(), [])


class LoadingMemoryTests(SynchronousTestCase):
    def test_a_history_loads_without_collections_and_is_frozen_after(self):
        """
        While a history loads the collector is off (no full pass over it on
        either thread); once loaded it is frozen and the collector is on.
        """
        loading = defer.Deferred()
        during = []

        def load():
            during.append(gc.isenabled())
            return loading

        self.addCleanup(gc.enable)
        self.addCleanup(gc.unfreeze)
        before = gc.get_freeze_count()
        result = process.withoutCollections(load)
        loaded = [{"post": n} for n in range(100)]
        loading.callback(loaded)
        self.assertEqual(
            (during, gc.isenabled(), self.successResultOf(result) is loaded,
             gc.get_freeze_count() > before),
            ([False], True, True, True))


class _StrictReactor:
    """A reactor's stop as Twisted's: a second call raises ReactorNotRunning."""

    def __init__(self):
        self.stops = 0

    def stop(self):
        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")


class StopOnceTests(SynchronousTestCase):
    def test_a_second_stop_is_a_no_op(self):
        """
        twistd's signal handler stops the reactor on each SIGTERM: a server
        process's reactor takes a second stop without an error.
        """
        reactor = _StrictReactor()
        process.stopOnlyOnce(reactor)
        reactor.stop()
        reactor.stop()
        self.assertEqual(reactor.stops, 2)

    def test_wrapping_twice_wraps_once(self):
        reactor = _StrictReactor()
        process.stopOnlyOnce(reactor)
        wrapped = reactor.stop
        process.stopOnlyOnce(reactor)
        self.assertIs(reactor.stop, wrapped)
