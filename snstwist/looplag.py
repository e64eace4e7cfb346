"""
The length of the reactor's turns, measured from inside: a timer due every
C{interval} seconds notes how late it fires.  A turn that kept the reactor
from running for longer than C{threshold} is logged with the time it ended,
so a benchmark can say which phase (start, warm-up, promotion, catch-up)
held the loop and for how long.

Off unless $SNS_LOOP_LAG_MS gives the threshold in milliseconds: a timer
firing 200 times a second is a measurement's cost, not a server's.
"""

import os

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()


class LoopLag(Service):
    interval = 0.005

    def __init__(self, clock, threshold):
        self.clock = clock
        self.threshold = threshold
        self.worst = 0.0
        self.timer = None

    @classmethod
    def fromEnvironment(cls, clock, environ=None):
        """A monitor when $SNS_LOOP_LAG_MS asks for one, else None."""
        value = (os.environ if environ is None else environ).get("SNS_LOOP_LAG_MS")
        return cls(clock, float(value) / 1000) if value else None

    def startService(self):
        Service.startService(self)
        self._schedule()

    def _schedule(self):
        self.due = self.clock.seconds() + self.interval
        self.timer = self.clock.callLater(self.interval, self._tick)

    def _tick(self):
        now = self.clock.seconds()
        late = now - self.due
        self.worst = max(self.worst, late)
        if late > self.threshold:
            log.warn("loop lag: a reactor turn of {ms:.1f} ms ended at {at:.3f}",
                     ms=late * 1000, at=now)
        self._schedule()

    def stopService(self):
        Service.stopService(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
