"""
Nobody left to respawn a VM's server: what a spare is told about who would
take the VM over from its spawner (C{standby PID} orders), what it does
when its spawner ends, and a slave whose master ended while it started.

On a fake process reactor and Clocks, with a few real processes where a
pid must be alive or dead.  (Real servers and SIGKILLs:
tests/test_last_server.py.)
"""

import os
import signal
import sys

import attrs
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from snstwist import buddy
from snstwist.core.node import Node
from snstwist.server.buddylink import SPARE_DELAY, MasterEnd, SlaveEnd, slaveCommand
from snstwist.server.lifecycle import CurrentRole, Lifecycle, Outrun, takeLock
from snstwist.storage.store import MemoryStore
from tests.servers import serverConfig
from tests.test_integration import inlineAsync
from tests.test_buddy import FakeProcessReactor
from tests.test_server import FakeMasterEnd, FakeSlaveEnd, LockedDisk, VMDisk
from tests.test_stale_pids import sleeper

class Role:
    """A role fixed by the test, as L{CurrentRole} reads it."""

    def __init__(self, name):
        self.name = name


def endOf(test, role, master=0):
    """A L{MasterEnd} of a process in C{role} on a fake process reactor: (end, reactor)."""
    reactor = FakeProcessReactor()
    config = serverConfig(test)
    current = Role(role)
    end = MasterEnd(None, reactor, reactor, "s", lambda: None,
                    lambda spare=False: slaveCommand(config, "127.0.0.1:7", spare),
                    current=current)
    end.master = lambda: master
    return end, reactor, current


class StandbyOrderTests(SynchronousTestCase):
    def test_a_slaves_spare_is_told_its_master_takes_over(self):
        end, reactor, current = endOf(self, "slave", master=4242)
        end.keepSpare()
        reactor.advance(SPARE_DELAY)
        (spare,) = reactor.spawned
        self.assertEqual(spare.written, [b"standby 4242\n"])

    def test_a_slave_taking_over_tells_its_spare_nobody_would(self):
        end, reactor, current = endOf(self, "slave", master=4242)
        end.keepSpare()
        reactor.advance(SPARE_DELAY)
        current.name = "promoting"
        end.tellSpare()
        self.assertEqual(reactor.spawned[0].written, [b"standby 4242\n", b"standby 0\n"])

    def test_a_masters_spare_hears_of_its_slave_and_of_its_end(self):
        """
        The slave named while it runs; nobody from its end until the next
        slave (the spare itself, told to go on: no more standbys for it).
        """
        end, reactor, current = endOf(self, "master")
        end.supervise()
        (slave,) = reactor.spawned
        end.keepSpare()
        reactor.advance(SPARE_DELAY)
        spare = reactor.spawned[1]
        self.assertEqual(spare.written, [b"standby %d\n" % (slave.pid,)])
        reactor.advance(5)
        slave.end(signum=signal.SIGKILL)
        self.assertEqual(spare.written[-1], b"standby 0\n")
        reactor.advance(0)
        self.assertEqual((spare.written[-1], end.supervisor.pid),
                         (b"go 127.0.0.1:7\n", spare.pid))

    def test_a_master_waiting_to_respawn_its_slave_names_nobody(self):
        """A slave that died at once is respawned later: meanwhile the spare would take over."""
        end, reactor, current = endOf(self, "master")
        end.supervise()
        end.supervisor.threshold = 5.0
        end.keepSpare()
        reactor.advance(SPARE_DELAY)
        slave, spare = reactor.spawned
        slave.end(exitCode=1)
        self.assertEqual((end.supervisor.state, spare.written[-1]), ("waiting", b"standby 0\n"))
        reactor.advance(end.supervisor.maxRestartDelay)
        self.assertEqual((end.supervisor.pid, spare.written[-1]),
                         (spare.pid, b"go 127.0.0.1:7\n"))

    def test_a_stopping_process_tells_nothing(self):
        end, reactor, current = endOf(self, "stopping")
        end.keepSpare()
        reactor.advance(SPARE_DELAY)
        end.tellSpare()
        self.assertEqual(reactor.spawned[0].written, [])

    def test_a_starting_master_names_nobody(self):
        """Its spare, started before it loads, would take the VM over."""
        end, reactor, current = endOf(self, "starting")
        end.alone()
        self.assertEqual(reactor.spawned[0].written, [b"standby 0\n"])


class ImmediateOrderTests(SynchronousTestCase):
    def test_an_order_is_in_the_pipe_before_the_reactor_runs_again(self):
        """
        A spawner killed right after it logged an order must not take the
        order with it: it is written to the pipe at once, not held by the
        transport until the reactor writes.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        held = []

        @attrs.define
        class Writer:
            def fileno(self):
                return w

        @attrs.define
        class Transport:
            pipes: dict

            def write(self, data):
                held.append(data)

        @attrs.define
        class Process:
            transport: Transport

        process = Process(Transport({0: Writer()}))
        buddy.tellStandby(process, 77)
        buddy.tellGo(process)
        self.assertEqual((os.read(r, 100), held), (b"standby 77\ngo\n", []))


def spare(test, openStore=None):
    """
    A spare's L{Lifecycle} on a VM's C{openStore}; its order is the
    Deferred the test fires: (lifecycle, order, master end, slave end, served,
    reactor).
    """
    reactor = MemoryReactorClock()
    served = []
    masterEnd, slaveEnd = FakeMasterEnd(), FakeSlaveEnd()
    disk = VMDisk()
    node = Node("vm1", "vm1.new", disk, Clock())
    config = attrs.evolve(serverConfig(test, "slave"), spare=True)
    lifecycle = Lifecycle(config, CurrentRole(), node,
                          lambda: served.append(lifecycle.current.name) or "127.0.0.1:1",
                          masterEnd, slaveEnd, openStore or (lambda: disk), reactor, reactor)
    order = defer.Deferred()
    lifecycle.awaitGo = lambda r: order
    test.addCleanup(lambda: lifecycle.settler.running and lifecycle.settler.stop())
    lifecycle.start()
    return lifecycle, order, masterEnd, slaveEnd, served, reactor


def deadPid(test):
    """A pid that no process has now (a child of ours that ended)."""
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class SpareTakesOverTests(SynchronousTestCase):
    def test_a_spare_whose_spawner_named_nobody_takes_the_vm_over(self):
        lifecycle, order, masterEnd, slaveEnd, served, reactor = spare(self)
        order.callback(buddy.Order(go=False, standby=0))
        reactor.advance(lifecycle.promotedSpareDelay)
        self.assertEqual((lifecycle.current.name, served, slaveEnd.calls, masterEnd.calls,
                          reactor.hasStopped),
                         ("master", ["master"], ["fence"], ["alone", "supervise"], False))

    def test_a_spare_whose_named_standby_is_gone_too_takes_the_vm_over(self):
        lifecycle, order, masterEnd, slaveEnd, served, reactor = spare(self)
        order.callback(buddy.Order(go=False, standby=deadPid(self)))
        self.assertEqual((lifecycle.current.name, served), ("master", ["master"]))

    def test_a_spare_whose_named_standby_is_not_a_server_of_the_vm_takes_over(self):
        """The pid named may be another program's by now: only a server on the data counts."""
        lifecycle, order, masterEnd, slaveEnd, served, reactor = spare(self)
        order.callback(buddy.Order(go=False, standby=os.getpid()))
        self.assertEqual(lifecycle.current.name, "master")

    def test_a_spare_stopped_before_its_spawner_ended_takes_nothing_over(self):
        lifecycle, order, masterEnd, slaveEnd, served, reactor = spare(self)
        lifecycle.stop()
        order.callback(buddy.Order(go=False, standby=0))
        self.assertEqual((lifecycle.current.name, served), ("stopping", []))


class SpareStopsTests(unittest.TestCase):
    timeout = 60

    @inlineAsync
    async def test_a_spare_whose_named_standby_lives_stops(self):
        """The server named takes the VM over: the spare, nobody's now, stops."""
        lifecycle, order, masterEnd, slaveEnd, served, reactor = spare(self)
        standby = await sleeper(self, "sns-server", "--data", lifecycle.config.data)
        order.callback(buddy.Order(go=False, standby=standby.pid))
        self.assertEqual((lifecycle.current.name, served, reactor.hasStopped),
                         ("starting", [], True))


class OutrunTests(SynchronousTestCase):
    def test_another_live_server_holding_the_lock_ends_the_take_over_at_once(self):
        """Two spares that both take a VM over: the one that did not get the lock stops trying."""
        clock, disk = Clock(), LockedDisk(busy=10**6)
        node = Node("vm1", "vm1.new", MemoryStore(), clock)
        holders = iter([False, False, True])
        d = takeLock(node, lambda: disk, clock, deadline=10.0, retry=0.01,
                     outrun=lambda: next(holders))
        clock.pump([0.01] * 2)
        self.failureResultOf(d, Outrun)
        self.assertEqual((disk.attempts, clock.getDelayedCalls()), (3, []))


class RoleTests(SynchronousTestCase):
    def hooks(self):
        calls = []

        class Hooks:
            def __getattr__(self, name):
                return lambda *args: calls.append((name,) + args)

        return Hooks(), calls

    def test_only_a_starting_process_hears_of_the_last_servers_end(self):
        hooks, calls = self.hooks()
        role = buddy.Role(hooks)
        role.lastServerLost("gone")
        self.assertEqual((role.state, calls), ("promoting", [("takeOver", "gone")]))
        for start in ("startAsSlave", "startAsMaster"):
            hooks, calls = self.hooks()
            role = buddy.Role(hooks)
            getattr(role, start)()
            role.lastServerLost("gone")
            self.assertNotIn("takeOver", [c[0] for c in calls])


class MasterGoneTests(unittest.TestCase):
    timeout = 60

    def end(self, pid, data):
        return SlaveEnd(Clock(), "s", "127.0.0.1:1", pid, lambda: None, data=data)

    def test_our_live_parent_is_not_gone(self):
        self.assertFalse(self.end(os.getppid(), "/nowhere")._masterGone())

    def test_a_master_that_ended_is_gone(self):
        self.assertTrue(self.end(deadPid(self), "/nowhere")._masterGone())

    @inlineAsync
    async def test_a_live_server_on_our_data_is_not_gone_though_not_our_parent(self):
        """A slave started by hand names a master that is not its parent."""
        data = os.path.abspath(self.mktemp())
        master = await sleeper(self, "sns-server", "--data", data)
        self.assertFalse(self.end(master.pid, data)._masterGone())
