"""
The buddies' parts on a Clock, with no real process, signal or stream: the
L{buddy.Role} machine, L{buddy.BuddySupervisor} on a fake process reactor
(as twisted.runner's procmon tests do), the two ends of C{BuddyConnection},
and L{buddy.fence}.  Deterministic: time moves only by C{Clock.advance}.
"""

import os
import signal
import sys

from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from snstwist import buddy
from snstwist.buddy.link import HEARTBEAT, TIMEOUT
from snstwist.rpc import sns_pb2 as pb
from tests.fakes import FakeStream

# -- the role machine


class RecordingHooks:
    """The server side of L{buddy.Role}: records which hook ran, with what."""

    def __init__(self):
        self.calls = []

    def serveAsMaster(self, promoted):
        self.calls.append(("serveAsMaster", promoted))

    def standBy(self):
        self.calls.append(("standBy",))

    def takeOver(self, why):
        self.calls.append(("takeOver", why))

    def shutdown(self):
        self.calls.append(("shutdown",))


def roleIn(state):
    """A fresh L{buddy.Role} brought into C{state}, and its hooks (cleared)."""
    hooks = RecordingHooks()
    role = buddy.Role(hooks)
    if state == "master":
        role.startAsMaster()
    elif state in ("slave", "promoting"):
        role.startAsSlave()
        if state == "promoting":
            role.masterLost("test")
    elif state == "stopping":
        role.stop()
    del hooks.calls[:]
    return role, hooks


class RoleTests(SynchronousTestCase):
    timeout = 120

    def test_starts_in_starting_and_calls_no_hook(self):
        """A new role is C{starting} until told what it is."""
        role, hooks = roleIn("starting")
        self.assertEqual((role.state, hooks.calls), ("starting", []))

    def test_start_as_master_serves_as_master(self):
        """starting -> master runs serveAsMaster once, not as a promotion."""
        role, hooks = roleIn("starting")
        role.startAsMaster()
        self.assertEqual((role.state, hooks.calls), ("master", [("serveAsMaster", False)]))

    def test_start_as_slave_stands_by(self):
        """starting -> slave runs standBy once."""
        role, hooks = roleIn("starting")
        role.startAsSlave()
        self.assertEqual((role.state, hooks.calls), ("slave", [("standBy",)]))

    def test_slave_losing_its_master_takes_over_with_the_reason(self):
        """slave -> promoting on masterLost; takeOver gets the reason."""
        role, hooks = roleIn("slave")
        role.masterLost("buddy stream broke: gone")
        self.assertEqual((role.state, hooks.calls),
                         ("promoting", [("takeOver", "buddy stream broke: gone")]))

    def test_promoting_becomes_master_when_promoted(self):
        """promoting -> master on promoted runs serveAsMaster, as a promotion."""
        role, hooks = roleIn("promoting")
        role.promoted()
        self.assertEqual((role.state, hooks.calls), ("master", [("serveAsMaster", True)]))

    def test_master_lost_again_while_promoting_is_ignored(self):
        """A second masterLost during a take-over does not start another one."""
        role, hooks = roleIn("promoting")
        role.masterLost("master hung: again")
        self.assertEqual((role.state, hooks.calls), ("promoting", []))

    def test_master_lost_is_ignored_by_a_master(self):
        """A master has no master to lose: nothing happens."""
        role, hooks = roleIn("master")
        role.masterLost("late news")
        self.assertEqual((role.state, hooks.calls), ("master", []))

    def test_stop_from_every_state_shuts_down_once(self):
        """From starting, slave, promoting and master, stop runs shutdown once."""
        for state in ("starting", "slave", "promoting", "master"):
            role, hooks = roleIn(state)
            role.stop()
            self.assertEqual((role.state, hooks.calls), ("stopping", [("shutdown",)]), state)

    def test_every_input_after_stop_is_ignored(self):
        """Once stopping, no input changes the role or calls a hook."""
        role, hooks = roleIn("stopping")
        role.stop()
        role.masterLost("too late")
        role.promoted()
        role.startAsMaster()
        role.startAsSlave()
        self.assertEqual((role.state, hooks.calls), ("stopping", []))


    def test_hooks_see_the_state_they_were_called_for(self):
        """
        A hook that asks the role (a new master's hello says "master") gets
        the state being entered: the role has changed before its work runs.
        """
        seen = []

        class Asking(RecordingHooks):
            def serveAsMaster(self, promoted):
                seen.append(role.state)

            def standBy(self):
                seen.append(role.state)

        role = buddy.Role(Asking())
        role.startAsSlave()
        role.masterLost("gone")
        role.promoted()
        self.assertEqual(seen, ["slave", "master"])

    def test_a_promotion_done_within_the_take_over_follows_it(self):
        """
        A take-over that finishes at once (the lock was free) reports
        promoted() from inside takeOver: serveAsMaster runs after takeOver
        has returned, never inside it.
        """
        calls = []

        class AtOnce(RecordingHooks):
            def takeOver(self, why):
                calls.append("takeOver")
                role.promoted()
                calls.append("takeOver done")

            def serveAsMaster(self, promoted):
                calls.append("serveAsMaster")

        role = buddy.Role(AtOnce())
        role.startAsSlave()
        role.masterLost("gone")
        self.assertEqual((role.state, calls),
                         ("master", ["takeOver", "takeOver done", "serveAsMaster"]))


# -- the supervisor on a fake process reactor


class FakeProcess:
    """
    The transport of a fake child: a pid, and the signals it was sent.  It
    ends only when the test says so (L{end}), as a real one would after a
    signal or an exit.
    """

    def __init__(self, protocol, executable, args, env, pid):
        self.protocol = protocol
        self.executable = executable
        self.args = args
        self.env = env
        self.pid = pid
        self.signals = []
        self.written = []  # to its stdin

    def write(self, data):
        self.written.append(data)

    def signalProcess(self, signum):
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(signum)

    def end(self, exitCode=None, signum=None):
        """The process ended (exit code, or killed by a signal)."""
        self.pid = None
        self.protocol.processEnded(Failure(ProcessTerminated(exitCode, signum)))


class FakeProcessReactor(MemoryReactor, Clock):
    """A reactor whose spawnProcess records the call and connects a L{FakeProcess}."""

    def __init__(self):
        MemoryReactor.__init__(self)
        Clock.__init__(self)
        self.spawned = []
        self.nextPid = 1000

    def spawnProcess(self, processProtocol, executable, args=(), env=None, path=None,
                     uid=None, gid=None, usePTY=False, childFDs=None):
        process = FakeProcess(processProtocol, executable, args, env, self.nextPid)
        self.nextPid += 1
        processProtocol.makeConnection(process)
        self.spawned.append(process)
        return process


COMMAND = buddy.BuddyCommand("/usr/bin/python3", ("python3", "-c", "pass"), {"SNS": "1"})


def supervisor(jitter=0.0, **attributes):
    """A started supervisor on a fresh fake reactor, with policy overrides."""
    reactor = FakeProcessReactor()
    spawned = []
    sup = buddy.BuddySupervisor(COMMAND, reactor, onSpawn=spawned.append,
                                jitter=lambda: jitter)
    for name, value in attributes.items():
        setattr(sup, name, value)
    sup.start()
    return sup, reactor, spawned


def dieQuickly(reactor, times):
    """
    The current buddy ends right after it started, C{times} times in a row;
    returns each respawn delay the supervisor chose.
    """
    delays = []
    for _ in range(times):
        reactor.spawned[-1].end(exitCode=3)
        (call,) = reactor.getDelayedCalls()
        delays.append(call.getTime() - reactor.seconds())
        reactor.advance(delays[-1])
    return delays


class BuddySupervisorTests(SynchronousTestCase):
    timeout = 120

    def test_start_spawns_the_buddy_command(self):
        """start() spawns the command's executable, argv and environment."""
        sup, reactor, spawned = supervisor()
        (process,) = reactor.spawned
        self.assertEqual((process.executable, process.args, process.env),
                         (COMMAND.executable, list(COMMAND.args), COMMAND.env))

    def test_start_reports_the_pid_of_the_spawned_buddy(self):
        """onSpawn is called with the new pid, which is also C{sup.pid}."""
        sup, reactor, spawned = supervisor()
        self.assertEqual((spawned, sup.pid), ([1000], 1000))

    def test_buddy_that_ran_longer_than_threshold_is_respawned_at_once(self):
        """A buddy that lived past C{threshold} is respawned with no delay."""
        sup, reactor, spawned = supervisor(threshold=1.0)
        reactor.advance(5)
        reactor.spawned[0].end(signum=signal.SIGKILL)
        reactor.advance(0)
        self.assertEqual(spawned, [1000, 1001])

    def test_buddy_dying_within_threshold_waits_min_restart_delay_first(self):
        """The first quick death waits C{minRestartDelay} before the respawn."""
        sup, reactor, spawned = supervisor(minRestartDelay=0.1)
        reactor.spawned[0].end(exitCode=3)
        reactor.advance(0.099)
        self.assertEqual(spawned, [1000])
        reactor.advance(0.001)
        self.assertEqual(spawned, [1000, 1001])

    def test_restart_delay_doubles_for_each_quick_death_up_to_the_maximum(self):
        """Quick deaths back off 0.1, 0.2, 0.4, ... and never past C{maxRestartDelay}."""
        sup, reactor, spawned = supervisor(minRestartDelay=0.1, maxRestartDelay=1.0,
                                           intensity=100)
        delays = dieQuickly(reactor, 7)
        self.assertEqual([round(d, 6) for d in delays], [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])

    def test_restart_delay_is_stretched_by_the_jitter(self):
        """The delay is multiplied by 1 + jitter/4 (jitter in [0, 1))."""
        sup, reactor, spawned = supervisor(jitter=0.5, minRestartDelay=0.1, intensity=100)
        delays = dieQuickly(reactor, 3)
        self.assertEqual([round(d, 6) for d in delays], [0.1125, 0.225, 0.45])

    def test_a_long_run_resets_the_backoff(self):
        """After a buddy ran past C{threshold}, the next quick death starts again at the minimum."""
        sup, reactor, spawned = supervisor(minRestartDelay=0.1, intensity=100)
        dieQuickly(reactor, 3)
        reactor.advance(10)
        reactor.spawned[-1].end(signum=signal.SIGKILL)
        reactor.advance(0)
        self.assertEqual([round(d, 6) for d in dieQuickly(reactor, 1)], [0.1])

    def test_gives_up_after_intensity_restarts_within_period(self):
        """The death after C{intensity} restarts within C{period} is not respawned."""
        sup, reactor, spawned = supervisor(intensity=3, period=30.0)
        dieQuickly(reactor, 3)
        reactor.spawned[-1].end(exitCode=3)
        reactor.advance(60)
        self.assertEqual((sup.gaveUp, len(spawned), reactor.getDelayedCalls()),
                         (True, 4, []))

    def test_giving_up_is_logged_as_critical(self):
        """Giving up is a critical event naming the count, the period and the cause."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        sup, reactor, spawned = supervisor(intensity=1, period=30.0)
        dieQuickly(reactor, 1)
        reactor.spawned[-1].end(exitCode=3)
        (event,) = [e for e in logged if e["log_level"] == LogLevel.critical]
        self.assertEqual((event["n"], event["period"]), (2, 30.0))
        self.assertIn("exit code 3", event["why"])

    def test_deaths_spread_over_more_than_period_are_always_respawned(self):
        """Restarts older than C{period} do not count towards the intensity."""
        sup, reactor, spawned = supervisor(intensity=2, period=30.0)
        for _ in range(10):
            reactor.advance(20)
            reactor.spawned[-1].end(signum=signal.SIGKILL)
            reactor.advance(0)
        self.assertEqual((sup.gaveUp, len(spawned)), (False, 11))

    def test_no_respawn_after_stop(self):
        """A buddy that ends after stop() is not respawned."""
        sup, reactor, spawned = supervisor()
        sup.stop()
        reactor.spawned[0].end(signum=signal.SIGTERM)
        reactor.advance(60)
        self.assertEqual((spawned, reactor.getDelayedCalls()), ([1000], []))

    def test_stop_cancels_a_pending_respawn(self):
        """stop() during a backoff cancels the respawn and fires at once."""
        sup, reactor, spawned = supervisor()
        reactor.spawned[0].end(exitCode=3)
        d = sup.stop()
        self.successResultOf(d)
        reactor.advance(60)
        self.assertEqual((spawned, reactor.getDelayedCalls()), ([1000], []))

    def test_buddy_that_announced_stopping_is_not_respawned(self):
        """After stopping(pid), the end of that buddy is not answered by a spawn."""
        sup, reactor, spawned = supervisor()
        sup.stopping(1000)
        reactor.spawned[0].end(exitCode=0)
        reactor.advance(60)
        self.assertEqual((spawned, reactor.getDelayedCalls()), ([1000], []))

    def test_stop_sends_sigterm(self):
        """stop() asks the buddy to end with SIGTERM, and nothing more yet."""
        sup, reactor, spawned = supervisor(killTime=5.0)
        sup.stop()
        reactor.advance(4.9)
        self.assertEqual(reactor.spawned[0].signals, [signal.SIGTERM])

    def test_stop_sends_sigkill_after_kill_time(self):
        """A buddy still alive C{killTime} after the SIGTERM gets SIGKILL."""
        sup, reactor, spawned = supervisor(killTime=5.0)
        sup.stop()
        reactor.advance(5.0)
        self.assertEqual(reactor.spawned[0].signals, [signal.SIGTERM, signal.SIGKILL])

    def test_stop_fires_only_when_the_buddy_has_ended(self):
        """The Deferred of stop() waits for processEnded, even past the SIGKILL."""
        sup, reactor, spawned = supervisor(killTime=5.0)
        d = sup.stop()
        reactor.advance(10)
        self.assertNoResult(d)
        reactor.spawned[0].end(signum=signal.SIGKILL)
        self.assertIsNone(self.successResultOf(d))

    def test_buddy_ending_before_kill_time_cancels_the_sigkill(self):
        """A buddy that obeys SIGTERM leaves no SIGKILL timer behind."""
        sup, reactor, spawned = supervisor(killTime=5.0)
        d = sup.stop()
        reactor.spawned[0].end(exitCode=0)
        self.successResultOf(d)
        self.assertEqual((reactor.getDelayedCalls(), reactor.spawned[0].signals),
                         ([], [signal.SIGTERM]))

    def test_stop_with_no_buddy_fires_at_once(self):
        """stop() when the buddy already ended (and was given up on) succeeds at once."""
        sup, reactor, spawned = supervisor(intensity=0)
        reactor.spawned[0].end(exitCode=3)
        self.assertIsNone(self.successResultOf(sup.stop()))

    def test_kill_sends_sigkill(self):
        """kill() (a hung buddy) sends SIGKILL at once."""
        sup, reactor, spawned = supervisor()
        sup.kill("no heartbeat")
        self.assertEqual(reactor.spawned[0].signals, [signal.SIGKILL])

    def test_killed_buddy_is_respawned(self):
        """A buddy killed for hanging is respawned like any dead buddy."""
        sup, reactor, spawned = supervisor()
        reactor.advance(5)
        sup.kill("no heartbeat")
        reactor.spawned[0].end(signum=signal.SIGKILL)
        reactor.advance(0)
        self.assertEqual(spawned, [1000, 1001])

    def test_signal_to_a_buddy_that_already_exited_is_harmless(self):
        """kill() racing with the buddy's exit does not raise."""
        sup, reactor, spawned = supervisor()
        reactor.spawned[0].pid = None  # exited, processEnded not yet delivered
        sup.kill("no heartbeat")
        self.assertEqual(reactor.spawned[0].signals, [])


    def test_the_states_of_a_buddys_life(self):
        """running, waiting to respawn, running again, stopping, stopped."""
        sup, reactor, spawned = supervisor(minRestartDelay=0.1)
        states = [sup.state]
        reactor.spawned[0].end(exitCode=3)
        states.append(sup.state)
        reactor.advance(0.1)
        states.append(sup.state)
        d = sup.stop()
        states.append(sup.state)
        reactor.spawned[1].end(signum=signal.SIGTERM)
        states.append(sup.state)
        self.successResultOf(d)
        self.assertEqual(states, ["running", "waiting", "running", "stopping", "stopped"])

    def test_a_second_stop_waits_for_the_same_end(self):
        """stop() while stopping sends nothing more and fires when the buddy has ended."""
        sup, reactor, spawned = supervisor(killTime=5.0)
        first, second = sup.stop(), sup.stop()
        self.assertNoResult(second)
        reactor.spawned[0].end(signum=signal.SIGTERM)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual((reactor.spawned[0].signals, reactor.getDelayedCalls()),
                         ([signal.SIGTERM], []))

    def test_start_after_stop_spawns_again(self):
        """A stopped supervisor started again (a new master role) spawns a new buddy."""
        sup, reactor, spawned = supervisor()
        sup.stop()
        reactor.spawned[0].end(signum=signal.SIGTERM)
        sup.start()
        self.assertEqual((spawned, sup.state), ([1000, 1001], "running"))

    def test_the_end_of_a_buddy_replaced_already_is_ignored(self):
        """A late end report of an older buddy neither respawns nor forgets the current one."""
        sup, reactor, spawned = supervisor()
        reactor.advance(5)
        old = reactor.spawned[0]
        old.end(signum=signal.SIGKILL)
        reactor.advance(0)
        old.protocol.onEnded(old.protocol, Failure(ProcessTerminated(None, signal.SIGKILL)))
        self.assertEqual((spawned, sup.pid, reactor.getDelayedCalls()), ([1000, 1001], 1001, []))

    def test_kill_with_no_buddy_running_does_nothing(self):
        """A hang reported while waiting to respawn kills nothing and keeps the respawn."""
        sup, reactor, spawned = supervisor(minRestartDelay=0.1)
        reactor.spawned[0].end(exitCode=3)
        sup.kill("no heartbeat")
        self.assertEqual(reactor.spawned[0].signals, [])
        reactor.advance(0.1)
        self.assertEqual(spawned, [1000, 1001])


# -- the two ends of BuddyConnection


def hello(pid, role=pb.SLAVE, address="127.0.0.2:4000"):
    return pb.BuddyHello(vm="vm1", role=role, pid=pid, address=address,
                         incarnation="i%d" % (pid,))


HEARTBEAT_MESSAGE = pb.BuddyMessage(heartbeat=pb.Heartbeat())
STOPPING_MESSAGE = pb.BuddyMessage(stopping=True)


class FakeDialer:
    """The slave's C{connect}: each dial connects the link to a new FakeStream."""

    def __init__(self):
        self.streams = []

    def __call__(self, link):
        self.streams.append(FakeStream())
        link.makeConnection(self.streams[-1])


def slaveLink(heard=True):
    """
    A started SlaveLink on a Clock, with a FakeDialer as C{link.connect};
    with C{heard}, the master has said hello.  Returns the link, the clock,
    the first stream and the events.
    """
    clock = Clock()
    events = []
    link = buddy.SlaveLink(clock, lambda: hello(2000),
                           onMasterLost=lambda why: events.append(("lost", why)),
                           onMasterStopping=lambda: events.append(("stopping",)),
                           connect=FakeDialer())
    link.start()
    if heard:
        link.messageReceived(pb.BuddyMessage(hello=hello(1000, pb.MASTER)))
    return link, clock, link.connect.streams[0], events


def masterLink():
    """A connected MasterLink on a Clock; returns it, the clock, the stream and the events."""
    clock = Clock()
    events = []
    link = buddy.MasterLink(
        clock, lambda: hello(1000, pb.MASTER),
        onSlaveHello=lambda link, h: events.append(("hello", link, h.pid)),
        onSlaveHung=lambda h, why: events.append(("hung", h and h.pid, why)),
        onSlaveStopping=lambda pid: events.append(("stopping", pid)))
    stream = FakeStream()
    link.makeConnection(stream)
    return link, clock, stream, events


def talking(clock, link, seconds):
    """Let C{seconds} pass with the peer heartbeating every HEARTBEAT."""
    for _ in range(int(round(seconds / HEARTBEAT))):
        link.messageReceived(HEARTBEAT_MESSAGE)
        clock.advance(HEARTBEAT)


def silent(clock, seconds):
    for _ in range(int(round(seconds / HEARTBEAT))):
        clock.advance(HEARTBEAT)


class SlaveLinkTests(SynchronousTestCase):
    timeout = 120

    def test_says_hello_with_its_pid_on_connect(self):
        """The first message on the stream is the slave's hello."""
        link, clock, stream, events = slaveLink()
        self.assertEqual(stream.sent, [pb.BuddyMessage(hello=hello(2000))])

    def test_sends_a_heartbeat_every_interval(self):
        """A heartbeat goes out every HEARTBEAT while the master answers."""
        link, clock, stream, events = slaveLink()
        talking(clock, link, 10 * HEARTBEAT)
        self.assertEqual(stream.kinds(), ["hello"] + ["heartbeat"] * 10)

    def test_a_talking_master_is_never_lost(self):
        """Heartbeats from the master keep it alive however long it runs."""
        link, clock, stream, events = slaveLink()
        talking(clock, link, 100 * TIMEOUT)
        self.assertEqual((events, stream.aborted), ([], False))

    def test_silence_up_to_timeout_is_tolerated(self):
        """A master silent for TIMEOUT is still the master."""
        link, clock, stream, events = slaveLink()
        silent(clock, TIMEOUT)
        self.assertEqual((events, stream.aborted), ([], False))

    def test_silence_beyond_timeout_loses_the_master(self):
        """A master silent beyond TIMEOUT (hung) is lost, as "master hung"."""
        link, clock, stream, events = slaveLink()
        silent(clock, TIMEOUT + HEARTBEAT)
        (event,) = events
        self.assertEqual(event[0], "lost")
        self.assertTrue(event[1].startswith("master hung: no heartbeat"), event[1])

    def test_silence_beyond_timeout_aborts_the_stream(self):
        """The stream of a hung master is torn down."""
        link, clock, stream, events = slaveLink()
        silent(clock, TIMEOUT + HEARTBEAT)
        self.assertTrue(stream.aborted)

    def test_hung_master_is_lost_only_once(self):
        """The stream ending after the abort does not report the loss again."""
        link, clock, stream, events = slaveLink()
        silent(clock, TIMEOUT + HEARTBEAT)
        link.connectionLost(Failure(Exception("cancelled")))
        silent(clock, 10 * TIMEOUT)
        self.assertEqual(len(events), 1)

    def test_broken_stream_loses_the_master(self):
        """The stream failing is the master lost, with the reason."""
        link, clock, stream, events = slaveLink()
        link.connectionLost(Failure(Exception("connection reset")))
        self.assertEqual(events, [("lost", "buddy stream broke: connection reset")])

    def test_stream_ended_by_the_master_without_notice_loses_it(self):
        """A clean end of stream with no stopping notice is the master lost too."""
        link, clock, stream, events = slaveLink()
        link.connectionLost(None)
        self.assertEqual(events, [("lost", "buddy stream broke: ended")])

    def test_stream_lost_stops_the_heartbeats(self):
        """No timer is left behind once the stream is gone."""
        link, clock, stream, events = slaveLink()
        link.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stream_ending_after_close_is_not_a_lost_master(self):
        """After close() (our own stop), the end of the stream means nothing."""
        link, clock, stream, events = slaveLink()
        link.close()
        link.connectionLost(None)
        self.assertEqual((events, stream.closed), ([], True))

    def test_stopping_notice_is_reported(self):
        """The master's stopping notice calls onMasterStopping."""
        link, clock, stream, events = slaveLink()
        link.messageReceived(STOPPING_MESSAGE)
        self.assertEqual(events, [("stopping",)])

    def test_stream_ending_after_a_stopping_notice_is_not_a_lost_master(self):
        """A master that said it is stopping is not taken over when it goes."""
        link, clock, stream, events = slaveLink()
        link.messageReceived(STOPPING_MESSAGE)
        link.connectionLost(Failure(Exception("connection reset")))
        self.assertEqual(events, [("stopping",)])

    def test_the_end_of_the_master_process_loses_the_master_at_once(self):
        """The kernel's word that the master's process ended: lost, before its stream ends."""
        link, clock, stream, events = slaveLink()
        link.masterEnded()
        link.connectionLost(Failure(Exception("connection reset")))
        self.assertEqual(events, [("lost", "master process ended")])

    def test_the_end_of_an_unreached_master_process_loses_it_without_a_redial(self):
        """Not merely unreached: dead.  No window to dial it again in, whatever the state."""
        link, clock, stream, events = slaveLink(heard=False)
        link.masterEnded()
        self.assertEqual(events, [("lost", "master process ended")])
        link, clock, stream, events = slaveLink(heard=False)
        link.connectionLost(Failure(Exception("connection attempt timed out")))
        link.masterEnded()
        clock.advance(10 * TIMEOUT)
        self.assertEqual((events, len(link.connect.streams)),
                         ([("lost", "master process ended")], 1))

    def test_the_end_of_a_master_that_said_it_stops_is_not_a_loss(self):
        link, clock, stream, events = slaveLink()
        link.messageReceived(STOPPING_MESSAGE)
        link.masterEnded()
        self.assertEqual(events, [("stopping",)])

    def test_learns_the_master_pid_from_its_hello(self):
        """The master's hello gives the pid to fence if it is lost."""
        link, clock, stream, events = slaveLink(heard=False)
        link.messageReceived(pb.BuddyMessage(hello=hello(1000, pb.MASTER)))
        self.assertEqual(link.masterPid, 1000)

    def test_start_dials_the_master_once(self):
        """start() opens one stream to the master."""
        link, clock, stream, events = slaveLink(heard=False)
        self.assertEqual(len(link.connect.streams), 1)

    def test_stream_failing_before_the_master_said_hello_is_not_a_lost_master(self):
        """A first connection attempt that fails does not make the slave take over."""
        link, clock, stream, events = slaveLink(heard=False)
        link.connectionLost(Failure(Exception("connection attempt timed out")))
        self.assertEqual(events, [])

    def test_stream_failing_before_the_master_said_hello_is_dialled_again(self):
        """The master is dialled again C{redialDelay} later, and greeted again."""
        link, clock, stream, events = slaveLink(heard=False)
        link.connectionLost(Failure(Exception("connection attempt timed out")))
        clock.advance(link.redialDelay)
        self.assertEqual([s.kinds() for s in link.connect.streams], [["hello"], ["hello"]])

    def test_master_not_reached_within_timeout_is_lost(self):
        """A master that never answers within TIMEOUT is lost (it died early)."""
        link, clock, stream, events = slaveLink(heard=False)
        while not events and clock.seconds() < 10 * TIMEOUT:
            link.connectionLost(Failure(Exception("connection refused")))
            clock.advance(link.redialDelay)
        self.assertEqual(events, [("lost", "buddy stream broke: connection refused")])
        self.assertGreaterEqual(clock.seconds(), TIMEOUT)

    def test_close_cancels_a_pending_redial(self):
        """After close(), the master is not dialled again and no timer is left."""
        link, clock, stream, events = slaveLink(heard=False)
        link.connectionLost(Failure(Exception("connection refused")))
        link.close()
        clock.advance(TIMEOUT)
        self.assertEqual((len(link.connect.streams), clock.getDelayedCalls(), events),
                         (1, [], []))

    def test_send_stopping_sends_the_notice(self):
        """sendStopping() puts a stopping message on the stream."""
        link, clock, stream, events = slaveLink()
        link.sendStopping()
        self.assertEqual(stream.sent[-1], STOPPING_MESSAGE)


    def test_the_states_of_a_link(self):
        """reaching, waiting to dial again, reaching, linked (hello), done (lost)."""
        link, clock, stream, events = slaveLink(heard=False)
        states = [link.state]
        link.connectionLost(Failure(Exception("connection refused")))
        states.append(link.state)
        clock.advance(link.redialDelay)
        states.append(link.state)
        link.messageReceived(pb.BuddyMessage(hello=hello(1000, pb.MASTER)))
        states.append(link.state)
        link.connectionLost(Failure(Exception("gone")))
        states.append(link.state)
        self.assertEqual(states, ["reaching", "waiting", "reaching", "linked", "done"])

    def test_a_lost_master_is_reported_once(self):
        """Silence, then the aborted stream's end: one report, the first."""
        link, clock, stream, events = slaveLink()
        link.silent("no heartbeat for 2.00s")
        link.connectionLost(Failure(Exception("aborted")))
        self.assertEqual(events, [("lost", "master hung: no heartbeat for 2.00s")])

    def test_silence_reported_after_the_streams_end_is_still_a_hung_master(self):
        """
        Before the hello, an aborted stream whose end arrives first (it then
        waits to dial again) and its silence second: the master hung, and
        nothing is dialled any more.
        """
        link, clock, stream, events = slaveLink(heard=False)
        link.connectionLost(Failure(Exception("aborted")))
        link.silent("no heartbeat for 2.00s")
        clock.advance(TIMEOUT)
        self.assertEqual((events, len(link.connect.streams), clock.getDelayedCalls()),
                         ([("lost", "master hung: no heartbeat for 2.00s")], 1, []))


class MasterLinkTests(SynchronousTestCase):
    timeout = 120

    def test_says_hello_on_connect(self):
        """The first message the master sends is its hello."""
        link, clock, stream, events = masterLink()
        self.assertEqual(stream.sent, [pb.BuddyMessage(hello=hello(1000, pb.MASTER))])

    def test_sends_a_heartbeat_every_interval(self):
        """A heartbeat goes out every HEARTBEAT while the slave answers."""
        link, clock, stream, events = masterLink()
        talking(clock, link, 10 * HEARTBEAT)
        self.assertEqual(stream.kinds(), ["hello"] + ["heartbeat"] * 10)

    def test_slave_hello_is_reported_with_the_link(self):
        """The slave's hello is handed on, with this link (to send it stopping later)."""
        link, clock, stream, events = masterLink()
        link.messageReceived(pb.BuddyMessage(hello=hello(2000)))
        self.assertEqual(events, [("hello", link, 2000)])

    def test_silence_up_to_timeout_is_tolerated(self):
        """A slave silent for TIMEOUT is not killed."""
        link, clock, stream, events = masterLink()
        link.messageReceived(pb.BuddyMessage(hello=hello(2000)))
        silent(clock, TIMEOUT)
        self.assertEqual((events[1:], stream.aborted), ([], False))

    def test_silence_beyond_timeout_reports_a_hung_slave(self):
        """A slave silent beyond TIMEOUT is reported hung, with its pid."""
        link, clock, stream, events = masterLink()
        link.messageReceived(pb.BuddyMessage(hello=hello(2000)))
        silent(clock, TIMEOUT + HEARTBEAT)
        (event,) = events[1:]
        self.assertEqual(event[:2], ("hung", 2000))

    def test_silence_beyond_timeout_aborts_the_stream(self):
        """The stream of a hung slave is torn down."""
        link, clock, stream, events = masterLink()
        silent(clock, TIMEOUT + HEARTBEAT)
        self.assertTrue(stream.aborted)

    def test_slave_stopping_notice_is_reported_with_its_pid(self):
        """A slave's stopping notice names the pid not to respawn."""
        link, clock, stream, events = masterLink()
        link.messageReceived(pb.BuddyMessage(hello=hello(2000)))
        link.messageReceived(STOPPING_MESSAGE)
        self.assertEqual(events[1:], [("stopping", 2000)])

    def test_stopping_notice_before_any_hello_is_ignored(self):
        """A stopping notice from a slave that never said who it is names no pid."""
        link, clock, stream, events = masterLink()
        link.messageReceived(STOPPING_MESSAGE)
        self.assertEqual(events, [])

    def test_stream_lost_stops_the_heartbeats(self):
        """No timer is left behind once the stream is gone."""
        link, clock, stream, events = masterLink()
        link.connectionLost(Failure(Exception("connection reset")))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_send_stopping_sends_the_notice(self):
        """sendStopping() puts a stopping message on the stream."""
        link, clock, stream, events = masterLink()
        link.sendStopping()
        self.assertEqual(stream.sent[-1], STOPPING_MESSAGE)


# -- fencing


class RecordingKill:
    """An os.kill stand-in: records its calls, or raises C{error}."""

    def __init__(self, error=None):
        self.calls = []
        self.error = error

    def __call__(self, pid, signum):
        self.calls.append((pid, signum))
        if self.error is not None:
            raise self.error


def fence(pid, kill, still=lambda pid, data: True):
    """L{buddy.fence} of C{pid} on /data/vm1 with C{kill}; C{still} says it is a server there."""
    return buddy.fence(pid, "/data/vm1", kill=kill, still=still)


class FenceTests(SynchronousTestCase):
    timeout = 120

    def test_kills_the_old_master_with_sigkill(self):
        """The old master's pid gets SIGKILL (which also ends a stopped process)."""
        kill = RecordingKill()
        fence(4242, kill)
        self.assertEqual(kill.calls, [(4242, signal.SIGKILL)])

    def test_reports_a_live_old_master(self):
        """fence() is True when there was a process to kill."""
        self.assertTrue(fence(4242, RecordingKill()))

    def test_ignores_pid_zero(self):
        """Pid 0 (unknown) would signal our whole process group: never sent."""
        kill = RecordingKill()
        self.assertEqual((fence(0, kill), kill.calls), (False, []))

    def test_ignores_our_own_pid(self):
        """A slave never fences itself."""
        kill = RecordingKill()
        self.assertEqual((fence(os.getpid(), kill), kill.calls), (False, []))

    def test_already_dead_master_is_reported_as_such(self):
        """ProcessLookupError (nothing to kill) is False, not an error."""
        self.assertFalse(fence(4242, RecordingKill(ProcessLookupError())))

    def test_permission_denied_is_false_and_logged(self):
        """A pid we may not signal is not ours: False, with a warning."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.assertFalse(fence(4242, RecordingKill(PermissionError())))
        self.assertEqual([e["pid"] for e in logged if e["log_level"] == LogLevel.warn],
                         [4242])

    def test_a_pid_that_is_no_server_on_the_vms_data_is_left_alone(self):
        """
        The old master's pid is checked first (L{buddy.isServer} on the
        VM's data): once dead, its pid may be another program's.
        """
        kill = RecordingKill()
        asked = []
        self.assertFalse(fence(4242, kill, lambda pid, data: asked.append((pid, data))))
        self.assertEqual((kill.calls, asked), ([], [(4242, "/data/vm1")]))


# -- processes known by pid, and the launch line


class ProcessHelperTests(SynchronousTestCase):
    def test_signal_pid_reports_whether_the_process_was_there(self):
        """A signal to a gone process is no error, only False."""
        kill = RecordingKill()
        self.assertTrue(buddy.signalPid(4242, signal.SIGTERM, kill=kill))
        self.assertEqual(kill.calls, [(4242, signal.SIGTERM)])
        self.assertFalse(buddy.signalPid(4242, kill=RecordingKill(ProcessLookupError())))

    def test_we_are_alive_and_a_reaped_child_is_not(self):
        """pidAlive is True for this process and False for a child that has exited."""
        self.assertTrue(buddy.pidAlive(os.getpid()))
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        self.assertFalse(buddy.pidAlive(pid))

    def test_a_zombie_is_dead(self):
        """An exited child not yet reaped can not write any more: not alive."""
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        self.addCleanup(os.waitpid, pid, 0)
        # The child has exited once waitid can see it, without reaping it.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        self.assertFalse(buddy.pidAlive(pid))

    def test_the_launch_line_runs_twistd_in_the_foreground_with_this_python(self):
        """One foreground twistd, no pid file, logging to the file given, then the plugin."""
        args = buddy.twistdArgs("/tmp/x.log", "sns-router", "--listen", "127.0.0.1:0")
        self.assertEqual(args[0], sys.executable)
        self.assertEqual(args[1], "-c")
        self.assertIn("twistd", args[2])
        self.assertEqual(args[3:], ["-n", "--pidfile=", "--logfile=/tmp/x.log",
                                    "sns-router", "--listen", "127.0.0.1:0"])

    def test_a_pid_running_something_else_is_not_the_process_we_knew(self):
        """With C{running}, a live pid counts only if its command line says so."""
        self.assertTrue(buddy.pidAlive(os.getpid(), running=b"python"))
        self.assertFalse(buddy.pidAlive(os.getpid(), running=b"sns-server-not-this"))


# -- the kernel's word that our parent process ended


class FakeSignals:
    """Stands for the signal module: records the handlers set."""

    def __init__(self):
        self.handlers = {}

    def signal(self, signum, handler):
        self.handlers[signum] = handler


class FakePrctl:
    def __init__(self, result=0):
        self.calls = []
        self.result = result

    def __call__(self, *args):
        self.calls.append(args)
        return self.result


class WatchParentTests(SynchronousTestCase):
    def watch(self, pid, result=0):
        prctl, signals, called = FakePrctl(result), FakeSignals(), []
        watching = buddy.watchParent(pid, lambda f: called.append(f), "ended",
                                     prctl=lambda: prctl, signals=signals)
        return watching, prctl.calls, signals.handlers, called

    def test_the_parent_is_watched_through_its_death_signal(self):
        """prctl(PR_SET_PDEATHSIG) is asked; the signal's handler goes through callFromThread."""
        from snstwist.buddy.processes import PARENT_ENDED
        watching, calls, handlers, called = self.watch(os.getppid())
        handlers[PARENT_ENDED](PARENT_ENDED, None)
        self.assertEqual((watching, calls, called), (True, [(1, PARENT_ENDED, 0, 0, 0)],
                                                     ["ended"]))

    def test_a_process_not_our_parent_is_not_watched(self):
        """Its end would never be signalled: the request is taken back, the signal ignored."""
        from snstwist.buddy.processes import PARENT_ENDED
        watching, calls, handlers, called = self.watch(os.getppid() + 100000)
        self.assertEqual((watching, calls[-1], handlers[PARENT_ENDED]),
                         (False, (1, 0, 0, 0, 0), signal.SIG_IGN))

    def test_a_kernel_that_refuses_watches_nothing(self):
        from snstwist.buddy.processes import PARENT_ENDED
        watching, calls, handlers, called = self.watch(os.getppid(), result=-1)
        self.assertEqual((watching, handlers[PARENT_ENDED]), (False, signal.SIG_IGN))
