"""
The master's side of resurrection: L{BuddySupervisor} keeps the slave
process alive.

It spawns the slave, watches it through its L{WatchedProcess} and respawns
it when it dies, with backoff for a buddy that dies at start-up and a bounded
restart intensity (like L{twisted.runner.procmon} and OTP supervisors), so
that a broken buddy is never respawned in a tight loop.  A hung buddy (its
heartbeats stopped: L{snstwist.buddy.link.MasterLink} says so) is killed and
then respawned like a dead one.

The supervision is a typed Automat machine (L{Supervision}): idle, running,
waiting (to respawn), gave up, stopping, stopped.

The same supervision keeps a VM's I{spare}: a process started ahead with
the slave's command and C{--spare}, imported and waiting for its order
(L{orders.awaitGo}).  A supervisor given C{spares} (another supervisor,
keeping that spare) makes the spare its new slave (L{orders.tellGo})
instead of starting a cold interpreter, and starts one only when no spare
is there; the spare's supervisor starts the next spare when told to
(L{Supervision.start}, once the new pair is complete).
"""

import random
import signal
from typing import Protocol

from automat import TypeMachineBuilder, pep614
from twisted.internet import defer
from twisted.logger import Logger

from snstwist.buddy.orders import tellGo
from snstwist.buddy.processes import signalChild, spawn, terminate
from snstwist.core import metrics
from snstwist.core.backoff import backoffPolicy
from snstwist.core.machines import stateOf

log = Logger()


class Supervision(Protocol):
    """What can happen to the supervision of one buddy."""

    def start(self) -> None:
        """Spawn the buddy and keep it alive (nothing more if it is kept already)."""

    def take(self) -> object:
        """
        Hand the running buddy over to another owner: its process, which
        this supervision forgets (no respawn); None when none runs.
        """

    def ended(self, process: object, reason: object) -> None:
        """The buddy C{process} ended (C{reason}: its Failure)."""

    def respawn(self) -> None:
        """The wait before a respawn is over."""

    def kill(self, why: str) -> None:
        """The buddy hangs: kill it (it is then respawned like a dead one)."""

    def stop(self) -> defer.Deferred:
        """Stop for good: TERM, then KILL; fires once the buddy has ended."""

    def _died(self, delay: float) -> None:
        """The buddy died and is respawned C{delay} seconds from now."""

    def _tooOften(self) -> None:
        """The buddy died too often: no more respawns."""

    def _endedInOrder(self) -> None:
        """The buddy had announced its orderly stop: no respawn."""


def _build():
    machine = TypeMachineBuilder(Supervision, BuddySupervisor)
    idle = machine.state("idle")
    running = machine.state("running")
    waiting = machine.state("waiting", lambda inputs, sup, delay:
                            sup.reactor.callLater(delay, inputs.respawn))
    gaveUp = machine.state("gaveUp")
    stopping = machine.state("stopping", lambda inputs, sup: [])
    stopped = machine.state("stopped")

    @pep614(idle.upon(Supervision.start).to(running))
    @pep614(stopped.upon(Supervision.start).to(running))
    def spawnBuddy(inputs: Supervision, sup: BuddySupervisor) -> None:
        sup._spawn(inputs)

    # Kept already, waiting to respawn, given up (bounded: only a stop and a
    # new start begin again) or stopping: a start changes nothing.
    for state in (running, waiting, gaveUp, stopping):
        state.upon(Supervision.start).loop().returns(None)

    @pep614(running.upon(Supervision.take).to(idle))
    def handOver(inputs: Supervision, sup: BuddySupervisor) -> object:
        process, sup.process = sup.process, None
        return process

    for state in (idle, waiting, gaveUp, stopping, stopped):
        state.upon(Supervision.take).loop().returns(None)

    @pep614(waiting.upon(Supervision.respawn).to(running))
    def respawnBuddy(inputs: Supervision, sup: BuddySupervisor, pending: object) -> None:
        sup._spawn(inputs)

    @pep614(running.upon(Supervision.ended).loop())
    def died(inputs: Supervision, sup: BuddySupervisor, process: object,
             reason: object) -> None:
        # Which way it goes depends on the history: the verdict is the
        # next input (run once this transition is over).
        if process is sup.process:
            sup.process = None
            sup.onEnd(process.pid)
            sup._verdict(inputs, process, reason)

    running.upon(Supervision._died).to(waiting).returns(None)
    running.upon(Supervision._tooOften).to(gaveUp).returns(None)
    running.upon(Supervision._endedInOrder).to(idle).returns(None)

    @pep614(running.upon(Supervision.kill).loop())
    def killBuddy(inputs: Supervision, sup: BuddySupervisor, why: str) -> None:
        if sup.process is not None:
            log.warn("killing hung {name} {pid}: {why}", name=sup.name, pid=sup.process.pid,
                     why=why)
            signalChild(sup.process, signal.SIGKILL)

    for state in (idle, waiting, gaveUp, stopping, stopped):
        state.upon(Supervision.kill).loop().returns(None)
    for state in (idle, gaveUp, stopped):
        state.upon(Supervision.ended).loop().returns(None)

    @pep614(idle.upon(Supervision.stop).to(stopped))
    @pep614(gaveUp.upon(Supervision.stop).to(stopped))
    @pep614(stopped.upon(Supervision.stop).loop())
    def alreadyStopped(inputs: Supervision, sup: BuddySupervisor) -> defer.Deferred:
        return defer.succeed(None)

    @pep614(waiting.upon(Supervision.stop).to(stopped))
    def cancelRespawn(inputs: Supervision, sup: BuddySupervisor,
                      pending: object) -> defer.Deferred:
        pending.cancel()
        return defer.succeed(None)

    @pep614(running.upon(Supervision.stop).to(stopping))
    def terminateBuddy(inputs: Supervision, sup: BuddySupervisor) -> defer.Deferred:
        # The buddy's end (ended, below) comes before this Deferred fires.
        return terminate(sup.reactor, sup.process, sup.killTime)

    @pep614(stopping.upon(Supervision.stop).loop())
    def alsoWait(inputs: Supervision, sup: BuddySupervisor, waiters: list) -> defer.Deferred:
        waiters.append(defer.Deferred())
        return waiters[-1]

    @pep614(stopping.upon(Supervision.ended).to(stopped))
    def buddyGone(inputs: Supervision, sup: BuddySupervisor, waiters: list,
                  process: object, reason: object) -> None:
        sup.process = None
        for waiter in waiters:
            waiter.callback(None)

    return machine.build()


class BuddySupervisor:
    """
    Keeps one buddy process alive, as ProcessMonitor does for its processes:
    a buddy that dies within C{threshold} seconds of starting waits twice as
    long (from C{minRestartDelay} up to C{maxRestartDelay}, with jitter)
    before the next start; one that ran longer is respawned at once.  More
    than C{intensity} restarts within C{period} seconds and it gives up,
    logging why.  A stop sends TERM and, C{killTime} later, KILL, and waits
    for the process to end.  C{onSpawn(pid)} hears of each buddy started
    (or spare taken), C{onEnd(pid)} of the end of each, however it ended.
    """

    threshold = 1.0
    minRestartDelay = 0.1
    maxRestartDelay = 10.0
    killTime = 5.0
    intensity = 5
    period = 30.0

    def __init__(self, command, reactor, onSpawn=lambda pid: None, jitter=random.random,
                 spares=None, spare=False, onEnd=lambda pid: None):
        self.command = command
        self.reactor = reactor
        self.onSpawn = onSpawn
        self.onEnd = onEnd
        self.jitter = jitter
        self.spares = spares
        self.spare = spare
        self.name = "spare" if spare else "buddy"
        self.process = None  # the buddy now, if any
        self.quickDeaths = 0
        self.restarts = []
        self.noRespawn = set()
        self._machine = _Supervision(self)
        self.start = self._machine.start
        self.take = self._machine.take
        self.kill = self._machine.kill
        self.stop = self._machine.stop

    @property
    def pid(self):
        return self.process.pid if self.process is not None else None

    @property
    def state(self):
        """idle, running, waiting (to respawn), gaveUp, stopping or stopped."""
        return stateOf(self._machine)

    @property
    def gaveUp(self):
        return self.state == "gaveUp"

    def stopping(self, pid):
        """The buddy C{pid} announced an orderly stop: do not respawn it."""
        self.noRespawn.add(pid)

    def _spawn(self, machine):
        process = self.spares.take() if self.spares is not None else None
        if process is None:
            process = spawn(self.reactor, self.name, self.command, machine.ended)
            said = "spawned {name}, pid {pid}"
        else:
            # Ours from now on: its end, its name, and its age (a slave
            # that dies at once is a quick death, however old the spare).
            process.onEnded = machine.ended
            process.name = self.name
            process.started = self.reactor.seconds()
            tellGo(process, self.command.master)
            said = "spare {pid} told to go on as the {name}"
        self.process = process
        self.onSpawn(process.pid)
        # Logged once what the new process was told on spawning is in its
        # pipe (a spare's standby order): a spawner killed right after this
        # line leaves it knowing what to do.
        log.info(said, name=self.name, pid=process.pid)

    def _verdict(self, machine, process, reason):
        """
        What the death of C{process} calls for: a respawn, soon or later, or
        none.  Unless it stopped in order, a spare is started at once if none
        waits: until the respawn (which takes it), or for good once given up
        on, it is the process that takes the VM over should its spawner, left
        alone, end too (L{orders}).
        """
        if process.pid in self.noRespawn or self._terminated(reason):
            log.info("{name} {pid} stopped in order: not respawning it", name=self.name,
                     pid=process.pid)
            machine._endedInOrder()
            return
        if self.spares is not None:
            self.spares.start()
        now = self.reactor.seconds()
        self.restarts = [t for t in self.restarts if now - t < self.period]
        if len(self.restarts) >= self.intensity:
            log.critical(
                "{name} died {n} times within {period}s (last: {why}): giving up;"
                " {meaning}", name=self.name, n=len(self.restarts) + 1, period=self.period,
                why=reason.getErrorMessage(),
                meaning="the VM's next slaves start cold" if self.spare
                else "this VM runs without a standby until restarted")
            machine._tooOften()
            return
        self.restarts.append(now)
        lived = now - process.started
        delay = self._restartDelay(lived)
        metrics.respawns.inc()
        log.warn("{name} {pid} ended after {lived:.2f}s ({why}); respawning in {delay:.2f}s",
                 name=self.name, pid=process.pid, lived=lived, why=reason.getErrorMessage(),
                 delay=delay)
        machine._died(delay)

    def _terminated(self, reason):
        """
        Did a spare end by SIGTERM (or twistd's exit status after one)?  Then
        whoever sent it stopped it in order, as sns-cluster stops every
        process of a VM: it is not respawned.  (A slave says so on its
        stream before it goes: L{stopping}.)
        """
        value = getattr(reason, "value", None)
        return self.spare and (getattr(value, "signal", None) == signal.SIGTERM
                               or getattr(value, "exitCode", None) == 128 + signal.SIGTERM)

    def _restartDelay(self, lived):
        """
        How long to wait before respawning a buddy that lived C{lived}
        seconds: nothing after a long run; after quick deaths in a row, the
        backoff of the run (the class's bounds, read now: tests and
        operators may change them on an instance).
        """
        if lived >= self.threshold:
            self.quickDeaths = 0
            return 0.0
        policy = backoffPolicy(self.minRestartDelay, self.maxRestartDelay, jitter=self.jitter)
        self.quickDeaths += 1
        return policy(self.quickDeaths - 1)


_Supervision = _build()
