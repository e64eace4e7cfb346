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


class StarvedJudgeTests(SynchronousTestCase):
    """A process that did not run can not have heard: that time is not the peer's silence."""

    def test_a_tick_late_by_the_whole_deadline_does_not_judge_the_peer(self):
        """Starved past the timeout (one late tick): no silence, a beat instead."""
        clock, hb, beats, silences = start(interval=1.0, timeout=3.0)
        clock.advance(4.0)
        self.assertEqual((silences, beats), ([], [4.0]))

    def test_the_peer_heard_after_the_starvation_goes_on(self):
        """The peer's message read once this process runs again keeps the link alive."""
        clock, hb, beats, silences = start(interval=1.0, timeout=3.0)
        clock.advance(4.0)
        hb.heard()
        clock.pump([1.0] * 3)
        self.assertEqual((silences, beats), ([], [4.0, 5.0, 6.0, 7.0]))

    def test_a_peer_still_silent_is_caught_by_the_ticks_on_time(self):
        """Silence counts again from the late tick on: caught timeout s of it later."""
        clock, hb, beats, silences = start(interval=1.0, timeout=3.0)
        clock.advance(4.0)
        clock.pump([1.0, 1.0])
        self.assertEqual(silences, [])
        clock.advance(1.0)
        self.assertEqual(silences, [4.0])

    def test_a_tick_late_by_less_than_an_interval_is_not_excused(self):
        """A little lateness (a busy moment) still counts as the peer's silence."""
        clock, hb, beats, silences = start(interval=1.0, timeout=3.0)
        clock.pump([1.5, 1.0, 1.0])
        self.assertEqual(silences, [3.5])

    def test_what_is_excused_never_exceeds_the_silence(self):
        """
        The peer heard in the wake-up just before a late tick: nothing of the
        time before is excused, so a silence after it is caught in time.
        """
        clock, hb, beats, silences = start(interval=1.0, timeout=3.0)
        clock.callLater(0.5, hb.heard)  # read in the same wake-up as the tick
        clock.advance(4.0)
        clock.pump([1.0, 1.0, 1.0])
        self.assertEqual(silences, [])
        clock.advance(1.0)
        self.assertEqual(silences, [4.0])
