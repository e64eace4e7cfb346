"""
The length of the reactor's turns, measured from inside: a timer due every
C{interval} seconds notes how late it fires, and how much CPU the reactor
thread used meanwhile.  Lateness over C{threshold} is logged with the time,
so a benchmark can say which phase (start, warm-up, promotion, catch-up)
held the loop and for how long, and whether the thread was running (a long
turn) or waiting (for the CPU of a loaded machine, or for the GIL).

The garbage collector's passes on the reactor thread are timed too, so a
long turn says how much of it was a collection (a pass started by any
allocation, wherever it falls) rather than the code that ran in it.

Off unless $SNS_LOOP_LAG_MS gives the threshold in milliseconds: a timer
firing 200 times a second is a measurement's cost, not a server's.
"""

import gc
import os
import threading
import time

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()


class LoopLag(Service):
    interval = 0.005

    def __init__(self, clock, threshold, cpu=time.thread_time, gcCallbacks=gc.callbacks,
                 thread=threading.get_ident):
        self.clock = clock
        self.threshold = threshold
        self.cpu = cpu
        self.gcCallbacks = gcCallbacks
        self.thread = thread
        self.worst = 0.0
        self.timer = None
        self.collecting = 0.0  # CPU of the reactor thread's collections since the last tick
        self.collectionStart = None
        self.reactorThread = None

    @classmethod
    def fromEnvironment(cls, clock, environ=None):
        """A monitor when $SNS_LOOP_LAG_MS asks for one, else None."""
        value = (os.environ if environ is None else environ).get("SNS_LOOP_LAG_MS")
        return cls(clock, float(value) / 1000) if value else None

    def startService(self):
        Service.startService(self)
        self.reactorThread = self.thread()
        self.gcCallbacks.append(self._collection)
        self._schedule(self.cpu())

    def _collection(self, phase, info):
        """A gc callback: time the passes that run on the reactor thread."""
        if self.thread() != self.reactorThread:
            return
        if phase == "start":
            self.collectionStart = self.cpu()
        elif self.collectionStart is not None:
            self.collecting += self.cpu() - self.collectionStart
            self.collectionStart = None

    def _schedule(self, used):
        self.due = self.clock.seconds() + self.interval
        self.used = used
        self.timer = self.clock.callLater(self.interval, self._tick)

    def _tick(self):
        now = self.clock.seconds()
        late = now - self.due
        # The reactor thread's own CPU time tells a long turn (it ran all
        # along) from a thread that got no CPU (a loaded machine) or
        # waited for the GIL.
        used = self.cpu()
        busy = used - self.used
        self.worst = max(self.worst, late)
        if late > self.threshold:
            log.warn("loop lag: a timer fired {ms:.1f} ms late at {at:.3f},"
                     " the reactor thread busy {busy:.1f} ms of it,"
                     " {collecting:.1f} ms collecting garbage",
                     ms=late * 1000, at=now, busy=busy * 1000,
                     collecting=self.collecting * 1000)
        self.collecting = 0.0
        self._schedule(used)

    def stopService(self):
        Service.stopService(self)
        if self._collection in self.gcCallbacks:
            self.gcCallbacks.remove(self._collection)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
