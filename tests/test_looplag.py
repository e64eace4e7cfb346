"""
L{looplag.LoopLag}: how late a frequent timer fires is how long the reactor
was held.
"""

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core.looplag import LoopLag


class LoopLagTests(SynchronousTestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lagEvents(self):
        return [e for e in self.events if e.get("log_namespace") == "snstwist.core.looplag"]

    def test_a_long_turn_is_logged_with_its_length(self):
        """A timer due in 5 ms firing 105 ms later is 100 ms late, logged with the CPU used."""
        clock = Clock()
        cpu = iter([0.0, 0.001, 0.002, 0.062]).__next__
        lag = LoopLag(clock, 0.020, cpu=cpu, gcCallbacks=[])
        lag.startService()
        clock.advance(0.005)
        clock.advance(0.005)
        clock.advance(0.105)
        lag.stopService()
        self.assertEqual([(round(e["ms"]), round(e["busy"])) for e in self.lagEvents()],
                         [(100, 60)])
        self.assertEqual(round(lag.worst * 1000), 100)

    def test_timers_on_time_log_nothing_and_stop_leaves_no_call(self):
        """Turns under the threshold are not logged; stopping cancels the timer."""
        clock = Clock()
        lag = LoopLag(clock, 0.020, gcCallbacks=[])
        lag.startService()
        for _ in range(10):
            clock.advance(0.005)
        lag.stopService()
        self.assertEqual((self.lagEvents(), clock.getDelayedCalls()), ([], []))

    def test_a_collection_in_a_long_turn_is_told_apart(self):
        """
        The CPU of a garbage collection on the reactor thread is logged with
        the turn it fell in; one on another thread (the disk thread) is not
        the reactor's; the next turn starts from nothing; stopping removes the
        callback.
        """
        clock = Clock()
        cpu = iter([0.0, 0.010, 0.040, 0.045, 0.046, 0.100, 0.200, 0.210]).__next__
        callbacks = []
        thread = ["reactor"]
        lag = LoopLag(clock, 0.020, cpu=cpu, gcCallbacks=callbacks, thread=lambda: thread[0])
        lag.startService()
        [collect] = callbacks
        collect("start", {"generation": 2})   # 0.010
        collect("stop", {"generation": 2})    # 0.040: 30 ms collecting
        thread[0] = "disk"
        collect("start", {"generation": 2})
        collect("stop", {"generation": 2})
        thread[0] = "reactor"
        clock.advance(0.050)                  # 0.045: 45 ms busy, 30 of them collecting
        collect("start", {"generation": 0})   # 0.046
        collect("stop", {"generation": 0})    # 0.100
        clock.advance(0.080)                  # 0.200: 155 ms busy, 54 collecting
        clock.advance(0.030)                  # 0.210: no collection in this one
        lag.stopService()
        self.assertEqual(
            ([(round(e["ms"]), round(e["busy"]), round(e["collecting"]))
              for e in self.lagEvents()], callbacks),
            ([(45, 45, 30), (75, 155, 54), (25, 10, 0)], []))

    def test_only_the_environment_turns_it_on(self):
        """Without $SNS_LOOP_LAG_MS there is no monitor; with it, its threshold."""
        clock = Clock()
        self.assertEqual(
            (LoopLag.fromEnvironment(clock, {}),
             LoopLag.fromEnvironment(clock, {"SNS_LOOP_LAG_MS": "20"}).threshold),
            (None, 0.020))
