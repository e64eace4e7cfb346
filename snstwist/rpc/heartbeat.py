"""
Application heartbeats on a long stream, and the deadline that catches a
silent peer.

gRPC keepalive is off by default on clients and punished by servers, so a
hung peer on an idle stream can look alive for hours; every long stream in
snstwist (router, buddies, replication, client sessions) sends its own
heartbeats and gives up on a peer it has not heard from for a few intervals.
This is the one implementation of that.
"""


class Heartbeat:
    """
    Call C{beat()} every C{interval} seconds; when nothing has been heard
    (L{heard}) for more than C{timeout} seconds, stop and call
    C{onSilence(seconds)} instead.
    """

    def __init__(self, clock, interval, timeout, beat, onSilence):
        self.clock = clock
        self.interval = interval
        self.timeout = timeout
        self.beat = beat
        self.onSilence = onSilence
        self.lastHeard = clock.seconds()
        self._stopped = False
        self.timer = clock.callLater(interval, self._tick)

    def heard(self):
        self.lastHeard = self.clock.seconds()

    @property
    def silence(self):
        return self.clock.seconds() - self.lastHeard

    def _tick(self):
        self.timer = None
        silent = self.silence
        if silent > self.timeout:
            self.onSilence(silent)
            return
        self.beat()
        if not self._stopped:
            self.timer = self.clock.callLater(self.interval, self._tick)

    def stop(self):
        self._stopped = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
