"""
Application heartbeats on a long stream, and the deadline that catches a
silent peer.

gRPC keepalive is off by default on clients and punished by servers, so a
hung peer on an idle stream can look alive for hours; every long stream in
snstwist (router, buddies, replication, client sessions) sends its own
heartbeats and gives up on a peer it has not heard from for a few intervals.
This is the one implementation of that.

Silence is counted only while this process could have heard (L{Asleep}): a
timer of its own that fires more than an interval late says the process
itself did not run (a machine short of CPU, a long turn of its own), and
whatever the peer sent meanwhile is still unread behind that timer.  That
time is not the peer's silence, so a process starved for as long as a
deadline does not judge a live peer hung the moment it runs again; a peer
that is really silent is caught by the timers that come on time.
"""


class Asleep:
    """
    How long, in all, this process has not run: the lateness of a timer of
    its own due every C{interval} seconds (L{ticked} from it), where it is
    more than an interval.  L{awake} is the clock less that: a peer last
    heard at C{awake() == a} has been silent C{awake() - a} seconds of our
    running time.
    """

    def __init__(self, clock, interval):
        self.clock = clock
        self.interval = interval
        self.total = 0.0
        self.started()

    def started(self):
        """The timer is (re)started now: it is due an interval from now."""
        self.due = self.clock.seconds() + self.interval

    def _late(self):
        late = self.clock.seconds() - self.due
        return late if late > self.interval else 0.0

    def now(self):
        """
        Seconds not run so far, the wake-up under way included: a message
        read before the late timer in the same wake-up was sent after the
        sleep, which is then none of its silence.
        """
        return self.total + self._late()

    def awake(self):
        """The clock's seconds, less the time this process did not run."""
        return self.clock.seconds() - self.now()

    def ticked(self):
        """The timer fired; it is due again an interval from now."""
        self.total += self._late()
        self.started()


class Heartbeat:
    """
    Call C{beat()} every C{interval} seconds; when nothing has been heard
    (L{heard}) for more than C{timeout} seconds of this process's own
    running time (L{silence}), stop and call C{onSilence(seconds)} instead.
    """

    def __init__(self, clock, interval, timeout, beat, onSilence):
        self.clock = clock
        self.interval = interval
        self.timeout = timeout
        self.beat = beat
        self.onSilence = onSilence
        self.asleep = Asleep(clock, interval)
        self.heard()
        self._stopped = False
        self.timer = clock.callLater(interval, self._tick)

    def heard(self):
        self.lastHeard = self.asleep.awake()

    @property
    def silence(self):
        """Seconds since the peer was last heard, less the time we did not run."""
        return self.asleep.awake() - self.lastHeard

    def _tick(self):
        self.timer = None
        self.asleep.ticked()
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
