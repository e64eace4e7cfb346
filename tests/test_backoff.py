"""
The one retry policy (L{backoffPolicy}): exponential, capped, and stretched
by jitter within documented bounds.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core.backoff import JITTER, backoffPolicy


class BackoffPolicyTests(SynchronousTestCase):
    def test_each_attempt_waits_factor_times_longer_up_to_the_maximum(self):
        """With no jitter: 0.1, 0.2, 0.4, 0.8, then the maximum of 1.0 for ever."""
        policy = backoffPolicy(0.1, 1.0, jitter=lambda: 0.0)
        self.assertEqual([round(policy(n), 9) for n in range(7)],
                         [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])

    def test_the_jitter_stretches_the_delay_by_a_fraction_of_itself(self):
        """jitter() = 0.5 stretches each delay by half the spread (12.5% by default)."""
        policy = backoffPolicy(0.1, 1.0, jitter=lambda: 0.5)
        self.assertEqual([round(policy(n), 9) for n in range(3)], [0.1125, 0.225, 0.45])

    def test_a_huge_attempt_number_waits_the_maximum(self):
        """No overflow, however long the run of failures."""
        policy = backoffPolicy(0.02, 1.0, factor=10.0, jitter=lambda: 0.0)
        self.assertEqual(policy(10 ** 9), 1.0)

    def test_the_default_jitter_spreads_equal_attempts_apart(self):
        """Clients that failed together do not all retry at the same instant."""
        policy = backoffPolicy(0.02, 1.0)
        self.assertGreater(len({policy(3) for _ in range(20)}), 1)

    @given(initial=st.floats(0.001, 10.0), cap=st.floats(1.0, 100.0),
           factor=st.floats(1.0, 4.0), attempt=st.integers(0, 200),
           jitter=st.floats(0.0, 1.0, exclude_max=True))
    def test_every_delay_is_within_its_bounds(self, initial, cap, factor, attempt, jitter):
        """
        Every delay is at least the initial delay and the un-jittered base,
        and less than the maximum stretched by the spread.
        """
        cap = max(cap, initial)
        delay = backoffPolicy(initial, cap, factor, jitter=lambda: jitter)(attempt)
        self.assertGreaterEqual(delay, initial)
        self.assertLessEqual(delay, cap * (1 + JITTER))
        self.assertGreaterEqual(delay, min(initial * factor ** min(attempt, 100), cap))

    def test_a_policy_that_would_not_back_off_is_refused(self):
        """A zero first delay or a shrinking factor is a programming error, said at once."""
        for args in [(0, 1.0), (0.5, 0.1), (0.1, 1.0, 0.5)]:
            self.assertRaises(ValueError, backoffPolicy, *args)
        self.assertRaises(ValueError, backoffPolicy, 0.1, 1.0, spread=2.0)
