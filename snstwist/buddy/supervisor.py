"""
The master's side of resurrection: L{BuddySupervisor} keeps the slave
process alive.

It spawns the slave, watches it through its L{WatchedProcess} and respawns
it when it dies, with backoff for a buddy that dies at start-up and a bounded
restart intensity (like L{twisted.runner.procmon} and OTP supervisors), so
that a broken buddy is never respawned in a tight loop.  A hung buddy (its
heartbeats stopped: L{snstwist.buddy.link.MasterLink} says so) is killed and
then respawned like a dead one.
"""

import random
import signal

from twisted.internet import defer
from twisted.logger import Logger

from snstwist.buddy.processes import signalChild, spawn, terminate
from snstwist.core import metrics
from snstwist.core.backoff import backoffPolicy

log = Logger()


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
        self.quickDeaths = 0
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
        self.restarts = [t for t in self.restarts if now - t < self.period]
        if len(self.restarts) >= self.intensity:
            self.gaveUp = True
            log.critical(
                "buddy died {n} times within {period}s (last: {why}): giving up;"
                " this VM runs without a standby until restarted",
                n=len(self.restarts) + 1, period=self.period, why=reason.getErrorMessage())
            return
        self.restarts.append(now)
        lived = now - process.started
        delay = self._restartDelay(lived)
        metrics.respawns.inc()
        log.warn("buddy {pid} ended after {lived:.2f}s ({why}); respawning in {delay:.2f}s",
                 pid=process.pid, lived=lived, why=reason.getErrorMessage(), delay=delay)
        self.pending = self.reactor.callLater(delay, self._spawn)

    def kill(self, why):
        """Kill a hung buddy; it is then respawned like a dead one."""
        if self.process is not None:
            log.warn("killing hung buddy {pid}: {why}", pid=self.process.pid, why=why)
            signalChild(self.process, signal.SIGKILL)

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
