"""
A VM's spare process: started ahead with the slave's command and
C{--spare}, imported and waiting on its stdin for the order to go on, so
that a new slave does not pay a cold interpreter's start.

On a fake process reactor and a Clock: the supervisor that makes the spare
its next slave, the spare's own bounded supervision, the master's end that
keeps one once the pair is complete, and the spare's lifecycle.  On real
pipes: the order itself.  (Real processes and signals: tests/test_buddies.py.)
"""

import os
import signal

import attrs
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from snstwist import buddy
from snstwist.commands import tap
from snstwist.core.node import Node
from snstwist.rpc import sns_pb2 as pb
from snstwist.server.buddylink import SPARE_DELAY, MasterEnd, slaveCommand
from snstwist.server.lifecycle import CurrentRole, Lifecycle
from tests.servers import serverConfig
from tests.test_buddy import COMMAND, FakeProcessReactor
from tests.test_server import FakeMasterEnd, FakeSlaveEnd, VMDisk

SPARE = attrs.evolve(COMMAND, args=COMMAND.args + ("--spare",))


def pairWithSpare(**attributes):
    """
    A slave's supervisor and the supervisor of its spare on one fake
    reactor, the spare started first (as a pair keeps one): (slaves,
    spares, reactor).
    """
    reactor = FakeProcessReactor()
    spares = buddy.BuddySupervisor(SPARE, reactor, jitter=lambda: 0.0, spare=True)
    for name, value in attributes.items():
        setattr(spares, name, value)
    spares.start()
    slaves = buddy.BuddySupervisor(COMMAND, reactor, jitter=lambda: 0.0, spares=spares)
    return slaves, spares, reactor


class SpareBecomesSlaveTests(SynchronousTestCase):
    def test_the_first_slave_is_the_spare_told_to_go_on(self):
        """With a spare running, starting the slave spawns nothing: the spare is told to go."""
        slaves, spares, reactor = pairWithSpare()
        (spare,) = reactor.spawned
        slaves.start()
        self.assertEqual((len(reactor.spawned), slaves.pid, spare.written),
                         (1, spare.pid, [b"go\n"]))

    def test_a_dead_slave_is_replaced_by_the_spare(self):
        """The slave's death hands the spare over at once; no cold interpreter starts."""
        slaves, spares, reactor = pairWithSpare()
        reactor.advance(5)
        slaves.start()
        (first,) = reactor.spawned
        spares.start()
        second = reactor.spawned[-1]
        reactor.advance(5)
        first.end(signum=signal.SIGKILL)
        reactor.advance(0)
        self.assertEqual((len(reactor.spawned), slaves.pid, second.written),
                         (2, second.pid, [b"go\n"]))

    def test_the_spare_taken_is_not_replaced_until_the_pair_asks_again(self):
        """
        Taking the spare leaves its supervision idle: the next spare starts
        on the next start(), once the new pair is complete, not in the
        middle of the new slave's start.
        """
        slaves, spares, reactor = pairWithSpare()
        slaves.start()
        reactor.advance(60)
        self.assertEqual((spares.state, spares.pid, len(reactor.spawned)), ("idle", None, 1))
        spares.start()
        self.assertEqual((spares.state, len(reactor.spawned)), ("running", 2))
        self.assertEqual(reactor.spawned[-1].args, list(SPARE.args))

    def test_the_end_of_a_taken_spare_is_the_slave_supervisors(self):
        """
        Once taken, the process's end is a slave's death: the slave
        supervisor respawns, through a spare started at once (the process
        that would take the VM over until the respawn).
        """
        slaves, spares, reactor = pairWithSpare()
        slaves.start()
        (taken,) = reactor.spawned
        reactor.advance(5)
        taken.end(signum=signal.SIGKILL)
        self.assertEqual((len(reactor.spawned), spares.state), (2, "running"))
        reactor.advance(0)
        new = reactor.spawned[-1]
        self.assertEqual((len(reactor.spawned), new.args, new.written, slaves.pid),
                         (2, list(SPARE.args), [b"go\n"], new.pid))
        self.assertEqual(spares.state, "idle")

    def test_a_slave_waiting_for_its_respawn_leaves_a_spare_standing_by(self):
        """
        A slave that died at once is respawned later (backoff); meanwhile
        its master would be alone: a spare starts at once, and the respawn
        makes it the slave.
        """
        slaves, spares, reactor = pairWithSpare()
        slaves.start()
        reactor.spawned[0].end(exitCode=3)
        spare = reactor.spawned[-1]
        self.assertEqual((slaves.state, spares.state, spare.args),
                         ("waiting", "running", list(SPARE.args)))
        reactor.advance(slaves.minRestartDelay)
        self.assertEqual((slaves.pid, spare.written, len(reactor.spawned)),
                         (spare.pid, [b"go\n"], 2))

    def test_a_slave_given_up_on_leaves_a_spare_standing_by(self):
        slaves, spares, reactor = pairWithSpare(intensity=0)
        slaves.intensity = 0
        slaves.start()
        reactor.spawned[0].end(exitCode=3)
        self.assertEqual((slaves.state, spares.state), ("gaveUp", "running"))

    def test_a_slave_stopped_in_order_leaves_no_spare(self):
        slaves, spares, reactor = pairWithSpare()
        slaves.start()
        slaves.stopping(reactor.spawned[0].pid)
        reactor.spawned[0].end(signum=signal.SIGTERM)
        self.assertEqual((slaves.state, spares.state, len(reactor.spawned)), ("idle", "idle", 1))

    def test_a_slave_that_dies_right_after_the_order_is_a_quick_death(self):
        """A spare's age before the order does not count: dying at once backs off."""
        slaves, spares, reactor = pairWithSpare()
        reactor.advance(60)
        slaves.start()
        reactor.spawned[0].end(exitCode=3)
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        (call,) = reactor.getDelayedCalls()
        self.assertAlmostEqual(call.getTime() - reactor.seconds(), slaves.minRestartDelay)

    def test_no_spare_running_means_a_cold_start(self):
        """A spare waiting to be respawned, given up on, or never started: spawn the slave."""
        for prepare in (lambda spares, r: r.spawned[0].end(exitCode=3),  # waiting
                        lambda spares, r: spares.stop()):  # stopping
            slaves, spares, reactor = pairWithSpare()
            prepare(spares, reactor)
            slaves.start()
            self.assertEqual((reactor.spawned[-1].args, reactor.spawned[-1].written),
                             (list(COMMAND.args), []))
        reactor = FakeProcessReactor()
        idle = buddy.BuddySupervisor(SPARE, reactor, spare=True)
        buddy.BuddySupervisor(COMMAND, reactor, spares=idle).start()
        self.assertEqual([p.args for p in reactor.spawned], [list(COMMAND.args)])


class PidfileTests(SynchronousTestCase):
    def test_a_child_has_its_pidfile_from_its_spawn_to_its_end(self):
        """
        Written by the spawner at once (before the child imported anything,
        so that sns-cluster's stop finds it), removed when its end is
        heard, whatever the end: a SIGKILLed child can not remove its own.
        """
        run = self.mktemp()
        reactor = FakeProcessReactor()
        command = attrs.evolve(COMMAND, run=run)
        process = buddy.spawn(reactor, "spare", command)
        self.assertEqual(os.listdir(run), ["%d.pid" % (process.pid,)])
        reactor.spawned[0].end(signum=signal.SIGKILL)
        self.assertEqual(os.listdir(run), [])


class SpareSupervisionTests(SynchronousTestCase):
    def test_a_started_spare_is_not_started_twice(self):
        slaves, spares, reactor = pairWithSpare()
        spares.start()
        spares.start()
        self.assertEqual(len(reactor.spawned), 1)

    def test_a_spare_killed_is_respawned(self):
        slaves, spares, reactor = pairWithSpare()
        reactor.advance(5)
        reactor.spawned[0].end(signum=signal.SIGKILL)
        reactor.advance(0)
        self.assertEqual((len(reactor.spawned), spares.pid), (2, reactor.spawned[1].pid))

    def test_a_spare_that_dies_at_start_up_is_given_up_on(self):
        """Bounded: backoff between quick deaths, and no more spares past the intensity."""
        slaves, spares, reactor = pairWithSpare(intensity=3, period=30.0)
        for _ in range(4):
            reactor.spawned[-1].end(exitCode=1)
            for call in reactor.getDelayedCalls():
                reactor.advance(call.getTime() - reactor.seconds())
        self.assertEqual((spares.state, len(reactor.spawned), reactor.getDelayedCalls()),
                         ("gaveUp", 4, []))
        spares.start()
        self.assertEqual(len(reactor.spawned), 4)

    def test_a_spare_stopped_by_sigterm_is_not_respawned(self):
        """sns-cluster stops every process of a VM with SIGTERM: a spare stopped so stays down."""
        for end in ({"signum": signal.SIGTERM}, {"exitCode": 128 + signal.SIGTERM}):
            slaves, spares, reactor = pairWithSpare()
            reactor.advance(5)
            reactor.spawned[0].end(**end)
            reactor.advance(60)
            self.assertEqual((len(reactor.spawned), spares.state), (1, "idle"))

    def test_a_slave_stopped_by_sigterm_is_still_respawned(self):
        """Only a spare's SIGTERM means an orderly stop; a slave's says so on its stream."""
        slaves, spares, reactor = pairWithSpare()
        slaves.start()
        reactor.advance(5)
        reactor.spawned[0].end(signum=signal.SIGTERM)
        reactor.advance(0)
        self.assertEqual(slaves.state, "running")
        self.assertEqual(len(reactor.spawned), 2)

    def test_stop_terminates_the_spare_and_waits_for_its_end(self):
        slaves, spares, reactor = pairWithSpare()
        d = spares.stop()
        (spare,) = reactor.spawned
        self.assertEqual(spare.signals, [signal.SIGTERM])
        self.assertNoResult(d)
        spare.end(signum=signal.SIGTERM)
        self.successResultOf(d)


def masterEnd(test, spawned=None):
    """A master's end on a fake process reactor (no gRPC): (end, reactor)."""
    reactor = FakeProcessReactor()
    config = serverConfig(test)
    end = MasterEnd(None, reactor, reactor, "s", lambda: None,
                    lambda spare=False: slaveCommand(config, "127.0.0.1:7", spare))
    return end, reactor


HELLO = pb.BuddyHello(pid=77, address="127.0.0.1:8")


class MasterEndSpareTests(SynchronousTestCase):
    def test_the_spare_command_is_the_slaves_with_spare(self):
        config = serverConfig(self)
        cold, spare = slaveCommand(config, "127.0.0.1:7"), slaveCommand(config, spare=True)
        at = cold.args.index("--buddy")
        self.assertEqual(spare.args, cold.args[:at] + cold.args[at + 2:] + ("--spare",))
        self.assertEqual((cold.master, spare.master), ("127.0.0.1:7", None))

    def test_a_master_keeps_a_spare_once_its_slave_said_hello(self):
        """The spare starts SPARE_DELAY after the pair is complete, not during its start."""
        end, reactor = masterEnd(self)
        end.supervise()
        self.assertEqual(len(reactor.spawned), 1)
        end.feedTo = lambda address, secret: _NoFeed()
        end.node = _NoHistory()
        end.slaveHello(object(), HELLO)
        reactor.advance(SPARE_DELAY - 0.01)
        self.assertEqual(len(reactor.spawned), 1)
        reactor.advance(0.01)
        self.assertEqual(len(reactor.spawned), 2)
        self.assertIn("--spare", reactor.spawned[-1].args)

    def test_keeping_a_spare_twice_starts_one(self):
        end, reactor = masterEnd(self)
        end.keepSpare()
        reactor.advance(0.5)
        end.keepSpare()
        reactor.advance(SPARE_DELAY * 3)
        self.assertEqual(len(reactor.spawned), 1)

    def test_a_stop_before_the_spare_is_due_starts_none(self):
        end, reactor = masterEnd(self)
        end.keepSpare()
        self.successResultOf(end.stop())
        reactor.advance(SPARE_DELAY * 3)
        self.assertEqual((reactor.spawned, reactor.getDelayedCalls()), ([], []))

    def test_a_master_whose_slave_dies_makes_its_spare_the_slave(self):
        end, reactor = masterEnd(self)
        end.keepSpare()
        reactor.advance(5)
        end.supervise()
        (spare,) = reactor.spawned
        self.assertEqual((spare.written[-1], end.supervisor.pid),
                         (b"go 127.0.0.1:7\n", spare.pid))

    def test_stop_stops_the_slave_and_the_spare(self):
        end, reactor = masterEnd(self)
        end.supervise()
        end.keepSpare()
        reactor.advance(SPARE_DELAY)
        d = end.stop()
        slave, spare = reactor.spawned
        self.assertEqual((slave.signals, spare.signals), ([signal.SIGTERM], [signal.SIGTERM]))
        slave.end(signum=signal.SIGTERM)
        self.assertNoResult(d)
        spare.end(signum=signal.SIGTERM)
        self.successResultOf(d)


class _NoFeed:
    traffic = None

    def pushPage(self, updates):
        return None


class _NoHistory:
    class history:
        @staticmethod
        def missingPages(have, push):
            from twisted.internet import defer
            return defer.succeed(None)


class SpareOptionTests(SynchronousTestCase):
    def options(self, *args):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("a-secret-of-the-tests\n")
        options = tap.ServerOptions()
        options.parseOptions(["--router", "127.0.0.1:1", "--secret-file", path, *args])
        return options

    def test_a_spare_is_a_slave(self):
        e = self.assertRaises(tap.usage.UsageError, self.options, "--spare")
        self.assertIn("--spare is for a slave", str(e))

    def test_a_spare_needs_no_masters_address(self):
        options = self.options("--spare", "--role", "slave")
        self.assertEqual((options["spare"], options["buddy"]), (True, None))

    def test_a_slave_that_is_no_spare_needs_its_masters_address(self):
        e = self.assertRaises(tap.usage.UsageError, self.options, "--role", "slave")
        self.assertIn("--buddy", str(e))

    def test_a_spare_slave_is_configured_as_a_spare(self):
        options = self.options("--spare", "--role", "slave", "--buddy", "127.0.0.1:3")
        service = tap.makeServerService(options)
        self.assertEqual((service.config.role, service.config.spare), ("slave", True))


def spareLifecycle(test):
    """
    A spare's L{Lifecycle} whose order comes from a Deferred the test
    fires: (lifecycle, that Deferred, master end, slave end, served, reactor).
    """
    reactor = MemoryReactorClock()
    served = []
    masterEnd, slaveEnd = FakeMasterEnd(), FakeSlaveEnd()
    node = Node("vm1", "vm1.a", VMDisk(), Clock())
    config = attrs.evolve(serverConfig(test, "slave"), spare=True)
    lifecycle = Lifecycle(config, CurrentRole(), node,
                          lambda: served.append(lifecycle.current.name) or "127.0.0.1:1",
                          masterEnd, slaveEnd, None, reactor, reactor)
    order = []
    lifecycle.awaitGo = lambda r: order.append(r) or order.append(_deferred()) or order[-1]
    test.addCleanup(lambda: lifecycle.settler.running and lifecycle.settler.stop())
    return lifecycle, order, masterEnd, slaveEnd, served, reactor


def _deferred():
    from twisted.internet import defer
    return defer.Deferred()


class SpareLifecycleTests(SynchronousTestCase):
    def test_a_spare_waits_for_its_order_serving_nothing(self):
        """Started, a spare has its pidfile, but no role, no gRPC, no link to anyone."""
        lifecycle, order, masterEnd, slaveEnd, served, reactor = spareLifecycle(self)
        lifecycle.start()
        self.assertEqual((lifecycle.current.name, served, slaveEnd.calls, order[0]),
                         ("starting", [], [], reactor))
        self.assertTrue(os.path.exists(lifecycle.pidfile.path))

    def test_told_to_go_on_a_spare_stands_by_as_the_slave(self):
        lifecycle, order, masterEnd, slaveEnd, served, reactor = spareLifecycle(self)
        lifecycle.start()
        order[1].callback(buddy.Order(go=True))
        self.successResultOf(lifecycle.ready)
        self.assertEqual((lifecycle.current.name, served, slaveEnd.calls),
                         ("slave", ["slave"], ["start"]))
        self.assertFalse(reactor.hasStopped)

    def test_a_spare_dials_the_master_its_order_names(self):
        """A spare may be started before its spawner serves: the address comes with the order."""
        lifecycle, order, masterEnd, slaveEnd, served, reactor = spareLifecycle(self)
        lifecycle.start()
        order[1].callback(buddy.Order(go=True, master="127.0.0.9:45"))
        self.assertEqual((lifecycle.current.name, slaveEnd.master, slaveEnd.calls),
                         ("slave", "127.0.0.9:45", ["start"]))

    def test_a_spare_told_no_masters_address_stops(self):
        lifecycle, order, masterEnd, slaveEnd, served, reactor = spareLifecycle(self)
        slaveEnd.master = None
        lifecycle.start()
        order[1].callback(buddy.Order(go=True))
        self.assertEqual((lifecycle.current.name, served, slaveEnd.calls, reactor.hasStopped),
                         ("starting", [], [], True))

    def test_a_spare_whose_spawner_ended_stops(self):
        """No order, the pipe closed: nobody's spare any more; it stops, having served nothing."""
        lifecycle, order, masterEnd, slaveEnd, served, reactor = spareLifecycle(self)
        lifecycle.start()
        order[1].callback(buddy.Order(go=False))
        self.assertEqual((lifecycle.current.name, served, slaveEnd.calls, reactor.hasStopped),
                         ("starting", [], [], True))

    def test_a_spare_stopped_before_its_order_never_stands_by(self):
        lifecycle, order, masterEnd, slaveEnd, served, reactor = spareLifecycle(self)
        lifecycle.start()
        lifecycle.stop()
        order[1].callback(buddy.Order(go=True))
        self.assertEqual((lifecycle.current.name, served, slaveEnd.calls),
                         ("stopping", [], ["shutdown"]))


class OrderTests(unittest.TestCase):
    """The order on a real pipe, read by the real reactor."""

    def pipe(self):
        r, w = os.pipe()
        self.addCleanup(self.closeEnd, r)
        self.addCleanup(self.closeEnd, w)
        self.open = getattr(self, "open", set()) | {r, w}
        return r, w

    def closeEnd(self, fd):
        """
        Close C{fd} once: closed twice, its number may be another's by then
        (the reactor's own wake-up pipe, say).
        """
        if fd in self.open:
            self.open.discard(fd)
            os.close(fd)

    def test_go_on_the_pipe_fires_true(self):
        r, w = self.pipe()
        d = buddy.awaitGo(reactor, r)
        os.write(w, b"go\n")
        return d.addCallback(self.assertEqual, buddy.Order(go=True))

    def test_the_order_may_come_in_pieces(self):
        r, w = self.pipe()
        d = buddy.awaitGo(reactor, r)
        os.write(w, b"g")
        reactor.callLater(0, os.write, w, b"o\n")
        return d.addCallback(self.assertEqual, buddy.Order(go=True))

    def test_the_pipe_closed_fires_false(self):
        """The spawner's process ended (the kernel closes its end): no order will come."""
        r, w = self.pipe()
        d = buddy.awaitGo(reactor, r)
        self.closeEnd(w)
        return d.addCallback(self.assertEqual, buddy.Order(go=False, standby=None))

    def test_the_pipe_closed_names_the_last_standby_told(self):
        """Every standby told replaces the one before; the last is what the spare goes by."""
        r, w = self.pipe()
        d = buddy.awaitGo(reactor, r)
        os.write(w, b"standby 4242\nstandby 0\nstand")
        reactor.callLater(0, os.write, w, b"by 77\n")
        reactor.callLater(0, reactor.callLater, 0, self.closeEnd, w)
        return d.addCallback(self.assertEqual, buddy.Order(go=False, standby=77))

    def test_go_after_standbys_is_go(self):
        r, w = self.pipe()
        d = buddy.awaitGo(reactor, r)
        os.write(w, b"standby 0\ngo\n")
        self.closeEnd(w)
        return d.addCallback(self.assertEqual, buddy.Order(go=True))

    def test_anything_else_fires_false(self):
        """A line no spawner says: the spare only stops (no standby to go by)."""
        heard = []
        for line in (b"stay\n", b"standby me\n", b"standby -1\n"):
            r, w = self.pipe()
            heard.append(buddy.awaitGo(reactor, r))
            os.write(w, b"standby 0\n" + line)
        return defer.gatherResults(heard).addCallback(
            self.assertEqual, [buddy.Order(go=False, standby=None)] * 3)

    def test_an_order_without_an_end_is_bounded(self):
        r, w = self.pipe()
        d = buddy.awaitGo(reactor, r)
        os.write(w, b"g" * 1000)
        return d.addCallback(self.assertEqual, buddy.Order(go=False))

    def test_go_with_an_address_names_the_master(self):
        r, w = self.pipe()
        d = buddy.awaitGo(reactor, r)
        os.write(w, b"standby 0\ngo 127.0.0.2:40123\n")
        return d.addCallback(self.assertEqual, buddy.Order(go=True, master="127.0.0.2:40123"))

    def test_go_with_an_address_of_control_characters_is_no_order(self):
        r, w = self.pipe()
        d = buddy.awaitGo(reactor, r)
        os.write(w, b"go 127.0.0.2:1\x1b[2J\n")
        return d.addCallback(self.assertEqual, buddy.Order(go=False))

    def test_the_pipe_stays_open_after_the_order(self):
        """Nothing else may take the descriptor's number (stdin) afterwards."""
        r, w = self.pipe()
        d = buddy.awaitGo(reactor, r)
        os.write(w, b"go\n")

        def check(go):
            os.fstat(r)
            self.assertNotIn(r, [getattr(x, "fd", None) for x in reactor.getReaders()])
        return d.addCallback(check)

    def test_tell_go_writes_the_order_to_the_childs_stdin(self):
        written = []

        class Transport:
            write = written.append

        class Process:
            transport = Transport()

        buddy.tellGo(Process())
        buddy.tellGo(Process(), "127.0.0.2:7")
        buddy.tellStandby(Process(), 4242)
        buddy.tellStandby(Process(), None)
        self.assertEqual(written, [b"go\n", b"go 127.0.0.2:7\n", b"standby 4242\n",
                                   b"standby 0\n"])
