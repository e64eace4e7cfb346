"""The one heartbeat-with-deadline used on every long stream."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.rpc.heartbeat import Heartbeat


def start(interval=1.0, timeout=3.0):
    clock, beats, silences = Clock(), [], []
    hb = Heartbeat(clock, interval, timeout, lambda: beats.append(clock.seconds()),
                   silences.append)
    return clock, hb, beats, silences


class HeartbeatTests(SynchronousTestCase):
    def test_beats_every_interval_while_the_peer_talks(self):
        """A peer heard from in time gets a beat every interval, forever."""
        clock, hb, beats, silences = start()
        for _ in range(10):
            clock.advance(1.0)
            hb.heard()
        self.assertEqual(beats, [float(t) for t in range(1, 11)])
        self.assertEqual(silences, [])

    def test_silence_past_the_timeout_is_reported_once_and_beats_stop(self):
        """After timeout seconds of silence: one onSilence, no more beats, no timer left."""
        clock, hb, beats, silences = start()
        clock.advance(1.0)
        clock.advance(1.0)
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertEqual(silences, [4.0])
        self.assertEqual(beats, [1.0, 2.0, 3.0])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_hearing_the_peer_postpones_the_deadline(self):
        """Each message heard restarts the count of silence."""
        clock, hb, beats, silences = start()
        clock.pump([1.0, 1.0])
        hb.heard()
        clock.pump([1.0, 1.0, 1.0])
        self.assertEqual(silences, [])
        clock.advance(1.0)
        self.assertEqual(silences, [4.0])

    def test_stop_leaves_no_delayed_call(self):
        """A stopped heartbeat sends nothing more and leaves the clock clean."""
        clock, hb, beats, silences = start()
        hb.stop()
        clock.advance(10)
        self.assertEqual((beats, silences, clock.getDelayedCalls()), ([], [], []))

    def test_stopping_from_inside_a_beat_is_allowed(self):
        """The beat callback may stop the heartbeat (its stream closed)."""
        clock = Clock()
        hb = Heartbeat(clock, 1.0, 3.0, lambda: hb.stop(), lambda s: None)
        clock.advance(1.0)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(hb.timer)
