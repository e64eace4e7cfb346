"""
How far each user has read (the read marks a returning client resumes
from) is a register that only moves forward, whatever the order in which
the marks arrive, on every replica and on disk.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core.model import ReadMark, Update
from snstwist.core.state import Replica
from snstwist.rpc import sns_pb2 as pb
from snstwist.core.node import Node
from snstwist.storage.store import MemoryStore
from tests.test_sessions import connect, makeHub


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


class ReplicatedReadMarkTests(SynchronousTestCase):
    """A master writes how far its users read once a second, and replicates it."""

    def hub(self):
        recorded = []
        clock, node, hub = makeHub(self)
        hub.record = recorded.append
        return clock, node, hub, recorded

    def test_an_ack_is_recorded_and_replicated_within_a_second(self):
        clock, node, hub, recorded = self.hub()
        session, stream = connect(hub, "alice")
        session.messageReceived(pb.ClientMessage(ack=pb.Cursor(time_us=10, id="vm2.a/3")))
        clock.advance(0.5)
        self.assertEqual(recorded, [])
        clock.advance(0.5)
        (update,) = recorded
        self.assertEqual((update.read.user, update.read.time_us, update.read.post_id),
                         ("alice", 10, "vm2.a/3"))
        self.assertEqual(node.replica.readUpTo("alice"), (10, "vm2.a/3"))

    def test_acks_within_the_second_make_one_mark_the_newest(self):
        clock, node, hub, recorded = self.hub()
        session, stream = connect(hub, "alice")
        for t in (10, 30, 20):
            session.messageReceived(pb.ClientMessage(ack=pb.Cursor(time_us=t, id="x/%d" % t)))
        clock.advance(1)
        self.assertEqual([u.read.time_us for u in recorded], [30])

    def test_an_ack_that_does_not_move_forward_records_nothing(self):
        clock, node, hub, recorded = self.hub()
        session, stream = connect(hub, "alice")
        session.messageReceived(pb.ClientMessage(ack=pb.Cursor(time_us=30, id="x/3")))
        clock.advance(1)
        session.messageReceived(pb.ClientMessage(ack=pb.Cursor(time_us=20, id="x/2")))
        clock.advance(1)
        self.assertEqual(len(recorded), 1)

    def test_closing_the_sessions_saves_what_was_read(self):
        clock, node, hub, recorded = self.hub()
        session, stream = connect(hub, "alice")
        session.messageReceived(pb.ClientMessage(ack=pb.Cursor(time_us=10, id="x/1")))
        hub.closeAll()
        self.assertEqual([u.read.time_us for u in recorded], [10])
