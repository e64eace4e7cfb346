"""
The client's failover machine (L{snstwist.client.masters}): at most one
failover at a time, joined by everyone who finds master1 dead, and a new
one possible as soon as it is over.  No network, no clock: the failover's
work is a Deferred the test fires.
"""

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from snstwist.client.errors import ClusterUnreachable
from snstwist.client.masters import _Failover
from snstwist.core.machines import stateOf


class Work:
    """The failover's work: each replaceMaster1() is a Deferred the test fires."""

    def __init__(self, synchronous=False):
        self.runs = []
        self.synchronous = synchronous

    def replaceMaster1(self):
        if self.synchronous:
            self.runs.append(defer.succeed(None))
        else:
            self.runs.append(defer.Deferred())
        return self.runs[-1]


def machine(synchronous=False):
    work = Work(synchronous)
    return _Failover(work), work


def waiter():
    return defer.Deferred()


class FailoverMachineTests(SynchronousTestCase):
    def test_a_new_client_is_steady(self):
        failover, work = machine()
        self.assertEqual((stateOf(failover), work.runs), ("steady", []))

    def test_finding_master1_dead_starts_one_failover(self):
        failover, work = machine()
        first = waiter()
        failover.join(first)
        self.assertEqual((stateOf(failover), len(work.runs)), ("failingOver", 1))
        self.assertNoResult(first)

    def test_whoever_finds_master1_dead_during_a_failover_joins_it(self):
        """A broken session and a failed command at once: one failover, both told."""
        failover, work = machine()
        first, second = waiter(), waiter()
        failover.join(first)
        failover.join(second)
        self.assertEqual(len(work.runs), 1)
        work.runs[0].callback(None)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(stateOf(failover), "steady")

    def test_giving_up_is_told_to_every_waiter(self):
        failover, work = machine()
        first, second = waiter(), waiter()
        failover.join(first)
        failover.whenSettled(second)
        work.runs[0].errback(Failure(ClusterUnreachable("no master for 15 s")))
        self.failureResultOf(first, ClusterUnreachable)
        self.failureResultOf(second, ClusterUnreachable)
        self.assertEqual(stateOf(failover), "steady")

    def test_a_command_waits_for_the_failover_in_progress(self):
        """whenSettled: at once when steady; when the failover is over otherwise."""
        failover, work = machine()
        now = waiter()
        failover.whenSettled(now)
        self.successResultOf(now)
        failover.join(waiter())
        later = waiter()
        failover.whenSettled(later)
        self.assertNoResult(later)
        work.runs[0].callback(None)
        self.successResultOf(later)

    def test_a_waiter_that_finds_the_new_master1_dead_starts_the_next_failover(self):
        """Once a failover is over, the next report of a dead master1 is a new failover."""
        failover, work = machine()
        again = waiter()
        first = waiter()
        first.addCallback(lambda _: failover.join(again))
        failover.join(first)
        work.runs[0].callback(None)
        self.assertEqual((stateOf(failover), len(work.runs)), ("failingOver", 2))
        self.assertNoResult(again)
        work.runs[1].callback(None)
        self.successResultOf(again)

    def test_a_failover_over_at_once_leaves_the_machine_steady(self):
        """The work finishing inside its own start (a fake network) is no special case."""
        failover, work = machine(synchronous=True)
        first = waiter()
        failover.join(first)
        self.successResultOf(first)
        self.assertEqual((stateOf(failover), len(work.runs)), ("steady", 1))
