"""
How far each user has read (the read marks a returning client resumes
from) is a register that only moves forward, whatever the order in which
the marks arrive, on every replica and on disk.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.model import ReadMark, Update
from snstwist.replication import Node
from snstwist.state import Replica
from snstwist.store import MemoryStore


def mark(seq, user, time_us, postId="vm9.a/1"):
    return Update(origin="vm2.a", seq=seq, time_us=seq, read=ReadMark(user, time_us, postId))


class ReadMarkTests(SynchronousTestCase):
    def test_a_replica_holds_the_newest_mark_of_each_user(self):
        replica = Replica()
        replica.apply(mark(1, "alice", 10))
        replica.apply(mark(2, "bob", 5))
        replica.apply(mark(3, "alice", 30))
        self.assertEqual(replica.readUpTo("alice"), (30, "vm9.a/1"))
        self.assertEqual(replica.readUpTo("bob"), (5, "vm9.a/1"))
        self.assertIsNone(replica.readUpTo("carol"))

    def test_an_older_mark_arriving_late_does_not_move_back(self):
        replica = Replica()
        replica.apply(mark(2, "alice", 30))
        replica.apply(mark(1, "alice", 10))
        self.assertEqual(replica.readUpTo("alice"), (30, "vm9.a/1"))

    def test_marks_in_any_order_give_the_same_replica(self):
        marks = [mark(1, "alice", 10, "a/1"), mark(2, "alice", 10, "a/2"),
                 mark(3, "alice", 5), mark(4, "bob", 7)]
        one, other = Replica(), Replica()
        for m in marks:
            one.apply(m)
        for m in reversed(marks):
            other.apply(m)
        self.assertEqual(one.snapshot(), other.snapshot())
        self.assertEqual(one.readUpTo("alice"), (10, "a/2"))

    def test_a_node_records_a_mark_only_when_it_moves_forward(self):
        node = Node("vm1", "vm1.a", MemoryStore(), Clock())
        first = node.markRead("alice", (10, "x/1"))
        self.assertIsNotNone(first)
        self.assertIsNone(node.markRead("alice", (10, "x/1")))
        self.assertIsNone(node.markRead("alice", (5, "x/9")))
        self.assertIsNotNone(node.markRead("alice", (11, "x/0")))
        self.assertEqual(node.replica.readUpTo("alice"), (11, "x/0"))
