"""
When the store's background rounds (checkpoints, post file flushes) start
(storage/rounds.py): a delay after the first batch that asks for one, at
the end of the batch that finds it due, or a grace later when none comes.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.storage.rounds import AfterBatches

DELAY = 1.0


class AfterBatchesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.starts = []
        self.rounds = AfterBatches(self.clock, self.start)

    def start(self):
        self.starts.append(self.clock.seconds())
        self.rounds.started()

    def test_a_round_is_not_due_before_its_delay(self):
        self.rounds.batch(DELAY)
        self.clock.advance(DELAY / 2)
        self.rounds.batch(DELAY)
        self.assertEqual(self.starts, [])

    def test_the_first_batch_once_due_starts_the_round(self):
        self.rounds.batch(DELAY)
        self.clock.advance(DELAY)
        self.assertEqual(self.starts, [], "the timer waits a grace for a batch")
        self.rounds.batch(DELAY)
        self.assertEqual(self.starts, [DELAY])
        self.assertEqual(self.clock.getDelayedCalls(), [], "the timer went with it")

    def test_with_no_batch_the_timer_starts_it_a_grace_after_it_is_due(self):
        self.rounds.batch(DELAY)
        self.clock.advance(DELAY + AfterBatches.grace)
        self.assertEqual(self.starts, [DELAY + AfterBatches.grace])

    def test_the_delay_runs_from_the_first_batch_after_a_round(self):
        self.rounds.batch(DELAY)
        self.clock.advance(DELAY)
        self.rounds.batch(DELAY)
        self.clock.advance(5 * DELAY)
        self.assertEqual(len(self.starts), 1, "no batch, no round")
        self.rounds.batch(DELAY)
        self.clock.advance(DELAY - 0.01)
        self.rounds.batch(DELAY)
        self.assertEqual(len(self.starts), 1)
        self.clock.advance(0.01)
        self.rounds.batch(DELAY)
        self.assertEqual(self.starts, [DELAY, 7 * DELAY])

    def test_a_round_begun_elsewhere_resets_the_due_time(self):
        self.rounds.batch(DELAY)
        self.rounds.started()  # (a round begun by someone else: settled(), most files)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(DELAY)
        self.rounds.batch(DELAY)
        self.assertEqual(self.starts, [], "due a delay after this batch, not the first")

    def test_cancel_leaves_no_timer(self):
        self.rounds.batch(DELAY)
        self.rounds.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10 * DELAY)
        self.assertEqual(self.starts, [])
