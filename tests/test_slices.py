"""
L{slices.inSlices}: long work on the reactor thread, a slice at a time.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import slices


class FakeTime:
    """A monotonic clock that moves by C{step} every time it is read."""

    def __init__(self, step):
        self.step = step
        self.t = 0.0

    def __call__(self):
        self.t += self.step
        return self.t


class InSlicesTests(SynchronousTestCase):
    def test_work_within_one_slice_is_done_on_return(self):
        """Little work runs at once: nothing is scheduled, the Deferred has fired."""
        clock, seen = Clock(), []
        d = slices.inSlices(clock, range(10), seen.append, budget=1.0, now=FakeTime(0.0))
        self.assertEqual((self.successResultOf(d), seen, clock.getDelayedCalls()),
                         (None, list(range(10)), []))

    def test_long_work_yields_to_the_reactor_between_slices(self):
        """Past the budget the rest waits for the next reactor turn, in order."""
        seen, yields = [], []

        class RecordingClock(Clock):
            def callLater(self, delay, f, *a, **kw):
                yields.append((delay, len(seen)))
                return Clock.callLater(self, delay, f, *a, **kw)

        clock = RecordingClock()
        # Every read of the time moves it 6 ms; the budget is 10 ms and the
        # time is read every 64 items: a slice is 128 items.
        d = slices.inSlices(clock, range(1000), seen.append, budget=0.010,
                            now=FakeTime(0.006))
        self.assertNoResult(d)
        clock.advance(0)
        self.successResultOf(d)
        self.assertEqual((yields, seen), ([(0, 128 * n) for n in range(1, 8)], list(range(1000))))

    def test_an_error_stops_the_work_and_fails_the_deferred(self):
        """The first error of apply fails the Deferred; later items are not applied."""
        seen = []

        def apply(item):
            if item == 3:
                raise ValueError("bad item")
            seen.append(item)

        d = slices.inSlices(Clock(), range(10), apply, now=FakeTime(0.0))
        self.failureResultOf(d, ValueError)
        self.assertEqual(seen, [0, 1, 2])
