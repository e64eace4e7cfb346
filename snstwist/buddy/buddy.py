"""
Buddies: the master and the slave of one VM, which resurrect each other.

- L{Role} is the state machine of a server process: starting, slave,
  promoting, master, stopping.  Roles change only by its inputs.
- L{BuddySupervisor} is the master's side of resurrection: it spawns the
  slave with C{reactor.spawnProcess}, watches it with a ProcessProtocol and
  respawns it when it dies, with backoff for a buddy that dies at start-up
  and a bounded restart intensity (like L{twisted.runner.procmon} and OTP
  supervisors), so a broken buddy is never respawned in a tight loop.
- L{SlaveLink} and L{MasterLink} are the two ends of C{BuddyConnection}:
  hello with pids, heartbeats both ways with a timeout that catches a hung
  process (not only a dead one), and the orderly-shutdown notice.
- L{fence} is how a slave makes sure the old master can never write again
  before it takes the VM's writer lock: it kills it, by pid, on this VM.

This is the only module that spawns or signals processes.
"""

import os
import random
import signal

import attrs
from automat import MethodicalMachine
from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from snstwist.core import errors, metrics
from snstwist.core.model import checkHeartbeat, checkServerHello, checkVersionVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc.heartbeat import Heartbeat

log = Logger()

HEARTBEAT = 0.25
_BEAT = pb.BuddyMessage(heartbeat=pb.Heartbeat())
TIMEOUT = 8 * HEARTBEAT  # 2 s: a hung master is caught, a starved one is not


class Role:
    """
    The role of one server process.  C{hooks} does the work of each
    transition: C{serveAsMaster()}, C{standBy()}, C{takeOver(why)},
    C{shutdown()}.
    """

    _machine = MethodicalMachine()

    def __init__(self, hooks):
        self._hooks = hooks
        self.name = "starting"

    @_machine.state(initial=True)
    def starting(self):
        """Loading; not serving anything yet."""

    @_machine.state()
    def slave(self):
        """Hot standby: mirrors the master's updates, watches the master."""

    @_machine.state()
    def promoting(self):
        """The master is gone: fencing it and taking the writer lock."""

    @_machine.state()
    def master(self):
        """The VM's only writer: serves clients and replicates."""

    @_machine.state()
    def stopping(self):
        """An orderly stop: nothing is taken over or respawned any more."""

    @_machine.input()
    def startAsMaster(self):
        """Started with the master role."""

    @_machine.input()
    def startAsSlave(self):
        """Started with the slave role."""

    @_machine.input()
    def masterLost(self, why):
        """The master's stream broke or its heartbeats stopped."""

    @_machine.input()
    def promoted(self):
        """Fencing done and writer lock taken."""

    @_machine.input()
    def stop(self):
        """Orderly shutdown (SIGTERM, or the master's stopping notice)."""

    @_machine.output()
    def _serveAsMaster(self):
        self.name = "master"
        self._hooks.serveAsMaster()

    @_machine.output()
    def _standBy(self):
        self.name = "slave"
        self._hooks.standBy()

    @_machine.output()
    def _takeOver(self, why):
        self.name = "promoting"
        self._hooks.takeOver(why)

    @_machine.output()
    def _countPromotion(self):
        metrics.promotions.inc()

    @_machine.output()
    def _shutdown(self):
        self.name = "stopping"
        self._hooks.shutdown()

    starting.upon(startAsMaster, enter=master, outputs=[_serveAsMaster])
    starting.upon(startAsSlave, enter=slave, outputs=[_standBy])
    slave.upon(masterLost, enter=promoting, outputs=[_takeOver])
    promoting.upon(promoted, enter=master, outputs=[_countPromotion, _serveAsMaster])
    promoting.upon(masterLost, enter=promoting, outputs=[])
    master.upon(masterLost, enter=master, outputs=[])
    for _state in (starting, slave, promoting, master):
        _state.upon(stop, enter=stopping, outputs=[_shutdown])
    # A stop during start-up (SIGTERM while loading) must not be undone when
    # the loading finishes.
    stopping.upon(startAsMaster, enter=stopping, outputs=[])
    stopping.upon(startAsSlave, enter=stopping, outputs=[])
    stopping.upon(stop, enter=stopping, outputs=[])
    stopping.upon(masterLost, enter=stopping, outputs=[])
    stopping.upon(promoted, enter=stopping, outputs=[])
    del _state


@attrs.frozen
class BuddyCommand:
    """What to spawn as the buddy: executable, argv and environment."""

    executable: str
    args: tuple
    env: dict = attrs.field(factory=dict, eq=False)


class WatchedProcess(protocol.ProcessProtocol):
    """
    A child process of ours: what it prints goes to our log, prefixed with
    its name; C{ended} fires (with the reason's value) when it has exited,
    after C{onEnded(process, reason)} is called.
    """

    def __init__(self, name, started=0.0, onEnded=None):
        self.name = name
        self.started = started
        self.onEnded = onEnded
        self.ended = defer.Deferred()
        self.pid = None

    def connectionMade(self):
        self.pid = self.transport.pid

    def outReceived(self, data):
        for line in data.decode("utf-8", "replace").splitlines():
            log.info("{name} {pid}: {line}", name=self.name, pid=self.pid, line=line)

    errReceived = outReceived

    def processEnded(self, reason):
        log.info("{name} (pid {pid}) ended: {why}", name=self.name, pid=self.pid,
                 why=reason.getErrorMessage())
        if self.onEnded is not None:
            self.onEnded(self, reason)
        self.ended.callback(reason.value)


def spawn(reactor, name, command, onEnded=None):
    """Start C{command} (a L{BuddyCommand}) as a L{WatchedProcess}."""
    process = WatchedProcess(name, reactor.seconds(), onEnded)
    reactor.spawnProcess(process, command.executable, list(command.args), env=command.env)
    return process


def terminate(reactor, process, killTime):
    """
    Stop C{process}: SIGTERM now, SIGKILL C{killTime} seconds later if it is
    still there.  The Deferred fires once it has exited.
    """
    if process.ended.called:
        return defer.succeed(None)
    _signal(process, signal.SIGTERM)
    kill = reactor.callLater(killTime, _signal, process, signal.SIGKILL)
    done = defer.Deferred()

    def ended(result):
        if kill.active():
            kill.cancel()
        done.callback(None)
        return result

    process.ended.addBoth(ended)
    return done


class BuddySupervisor:
    """
    Keeps one buddy process alive, as ProcessMonitor does for its processes:
    a buddy that dies within C{threshold} seconds of starting waits twice as
    long (from C{minRestartDelay} up to C{maxRestartDelay}, with jitter)
    before the next start; one that ran longer is respawned at once.  More
    than C{intensity} restarts within C{period} seconds and it gives up,
    logging why.  A stop sends TERM and, C{killTime} later, KILL, and waits
    for the process to end.
    """

    threshold = 1.0
    minRestartDelay = 0.1
    maxRestartDelay = 10.0
    killTime = 5.0
    intensity = 5
    period = 30.0

    def __init__(self, command, reactor, onSpawn=lambda pid: None, jitter=random.random):
        self.command = command
        self.reactor = reactor
        self.onSpawn = onSpawn
        self.jitter = jitter
        self.process = None
        self.delay = 0.0
        self.restarts = []
        self.pending = None
        self.stopped = False
        self.gaveUp = False
        self.noRespawn = set()

    @property
    def pid(self):
        return self.process.pid if self.process is not None else None

    def start(self):
        self.stopped = False
        self._spawn()

    def _spawn(self):
        self.pending = None
        if self.stopped:
            return
        process = spawn(self.reactor, "buddy", self.command, self._ended)
        self.process = process
        log.info("spawned buddy, pid {pid}", pid=process.pid)
        self.onSpawn(process.pid)

    def _ended(self, process, reason):
        if process is not self.process:
            return
        self.process = None
        if self.stopped:
            return
        if process.pid in self.noRespawn:
            log.info("buddy {pid} stopped in order: not respawning it", pid=process.pid)
            return
        now = self.reactor.seconds()
        lived = now - process.started
        self.restarts = [t for t in self.restarts if now - t < self.period]
        if len(self.restarts) >= self.intensity:
            self.gaveUp = True
            log.critical(
                "buddy died {n} times within {period}s (last: {why}): giving up;"
                " this VM runs without a standby until restarted",
                n=len(self.restarts) + 1, period=self.period, why=reason.getErrorMessage())
            return
        self.restarts.append(now)
        if lived < self.threshold:
            self.delay = min(max(self.delay * 2, self.minRestartDelay), self.maxRestartDelay)
            delay = self.delay * (1 + self.jitter() / 4)
        else:
            self.delay = 0.0
            delay = 0.0
        metrics.respawns.inc()
        log.warn("buddy {pid} ended after {lived:.2f}s ({why}); respawning in {delay:.2f}s",
                 pid=process.pid, lived=lived, why=reason.getErrorMessage(), delay=delay)
        self.pending = self.reactor.callLater(delay, self._spawn)

    def kill(self, why):
        """Kill a hung buddy; it is then respawned like a dead one."""
        if self.process is not None:
            log.warn("killing hung buddy {pid}: {why}", pid=self.process.pid, why=why)
            _signal(self.process, signal.SIGKILL)

    def stopping(self, pid):
        """The buddy C{pid} announced an orderly stop: do not respawn it."""
        self.noRespawn.add(pid)

    def stop(self):
        self.stopped = True
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None
        if self.process is None:
            return defer.succeed(None)
        return terminate(self.reactor, self.process, self.killTime)


def _signal(process, signum):
    try:
        process.transport.signalProcess(signum)
    except error.ProcessExitedAlready:
        pass


def fence(pid, kill=os.kill):
    """
    Make sure the old master C{pid} (on this VM) can never write again: kill
    it.  SIGKILL also ends a stopped (SIGSTOP) process.  Returns True if it
    was alive.
    """
    if not pid or pid == os.getpid():
        return False
    try:
        kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warn("cannot fence old master {pid}: permission denied", pid=pid)
        return False


def checkBuddyMessage(message):
    """The bounds of a C{BuddyConnection} message."""
    kind = message.WhichOneof("kind")
    if kind == "hello":
        checkServerHello(message.hello)
        checkVersionVector(message.hello.have)
    elif kind == "heartbeat":
        checkHeartbeat(message.heartbeat)


class _BuddyEnd:
    """
    What both ends of C{BuddyConnection} do: say hello with our pid,
    heartbeat, notice silence (C{silent(why)}), and announce an orderly stop.
    """

    stream = None
    beats = None

    def makeConnection(self, stream):
        self.stream = stream
        stream.send(pb.BuddyMessage(hello=self.hello()))
        self.beats = Heartbeat(self.clock, HEARTBEAT, TIMEOUT, lambda: stream.send(_BEAT),
                               self._silent)

    def _silent(self, seconds):
        self.stream.abort()
        self.silent("no heartbeat for %.2fs" % (seconds,))

    def _checked(self, message):
        """
        Is C{message} within its bounds?  A buddy that breaks them is treated
        as one that went silent.
        """
        try:
            checkBuddyMessage(message)
        except errors.SNSError as e:
            log.warn("bad message from buddy: {e}", e=e.message)
            self.stream.abort(e)
            return False
        return True

    def sendStopping(self):
        if self.stream is not None:
            self.stream.send(pb.BuddyMessage(stopping=True))

    def _stopBeats(self):
        if self.beats is not None:
            self.beats.stop()
        self.stream = None


class SlaveLink(_BuddyEnd):
    """
    The slave's end of C{BuddyConnection}: C{connect(link)} opens a stream
    to the master and connects this link to it.  A broken stream or missing
    heartbeats mean the master is lost; a stopping notice means the pair is
    being shut down in order.

    Until the master's hello has arrived, a failed stream is dialled again
    for up to TIMEOUT: a live master on a loaded machine may miss one
    connection attempt, and a slave must never fence a live master for that.
    """

    redialDelay = HEARTBEAT / 5

    def __init__(self, clock, hello, onMasterLost, onMasterStopping, connect):
        self.clock = clock
        self.hello = hello
        self.onMasterLost = onMasterLost
        self.onMasterStopping = onMasterStopping
        self.connect = connect
        self.stream = None
        self.beats = None
        self.masterPid = None
        self.closing = False
        self.since = None
        self.redial = None
        self.redials = 0

    def start(self):
        """Dial the master."""
        self.since = self.clock.seconds()
        self.connect(self)

    def _redial(self):
        self.redial = None
        if not self.closing:
            self.connect(self)

    def silent(self, why):
        self.closing = True
        self.onMasterLost("master hung: " + why)

    def messageReceived(self, message):
        if not self._checked(message):
            return
        self.beats.heard()
        kind = message.WhichOneof("kind")
        if kind == "hello":
            self.masterPid = message.hello.pid
        elif kind == "stopping":
            self.closing = True
            self.onMasterStopping()

    def close(self):
        self.closing = True
        if self.redial is not None and self.redial.active():
            self.redial.cancel()
        self.redial = None
        if self.stream is not None:
            self.stream.close()

    def connectionLost(self, reason):
        self._stopBeats()
        if self.closing:
            return
        why = reason.getErrorMessage() if reason else "ended"
        if self.masterPid is None and self.clock.seconds() - self.since < TIMEOUT:
            if self.redials == 0:
                log.info("master not reached yet ({why}): dialling again", why=why)
            self.redials += 1
            self.redial = self.clock.callLater(self.redialDelay, self._redial)
            return
        self.onMasterLost("buddy stream broke: %s" % (why,))


class MasterLink(_BuddyEnd):
    """
    The master's end of C{BuddyConnection}: learns the slave's pid and
    address from its hello, and kills a slave whose heartbeats stop.
    """

    def __init__(self, clock, hello, onSlaveHello, onSlaveHung, onSlaveStopping):
        self.clock = clock
        self.hello = hello
        self.onSlaveHello = onSlaveHello
        self.onSlaveHung = onSlaveHung
        self.onSlaveStopping = onSlaveStopping
        self.stream = None
        self.beats = None
        self.slave = None

    def silent(self, why):
        self.onSlaveHung(self.slave, why)

    def messageReceived(self, message):
        if not self._checked(message):
            return
        self.beats.heard()
        kind = message.WhichOneof("kind")
        if kind == "hello":
            self.slave = message.hello
            self.onSlaveHello(self, message.hello)
        elif kind == "stopping" and self.slave is not None:
            self.onSlaveStopping(self.slave.pid)

    def connectionLost(self, reason):
        self._stopBeats()
