"""
Live posts gathered while a session's stream is busy (snstwist.server.outbox),
on a Clock: alone on an idle stream, together otherwise, in order, bounded
in posts; a batch's encoding; and the client's end showing a batch.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.client.timeline import Session, Timeline
from snstwist.core.limits import MAX_SESSION_QUEUE, PUSH_BATCH
from snstwist.core.model import Post
from snstwist.rpc import sns_pb2 as pb
from snstwist.server.outbox import batchOf
from snstwist.server.sessions import HEARTBEAT
from tests.test_sessions import kinds, makeHub, openTimeline


def texts(message):
    """The texts of the posts one ServerPush carries, alone or batched."""
    kind = message.WhichOneof("kind")
    if kind == "post":
        return [message.post.text]
    if kind == "posts":
        return [p.text for p in message.posts.posts]
    return []


def liveTimeline(test, **options):
    """alice's live timeline, what its opening sent already taken and read."""
    clock, node, hub = makeHub(test)
    session, stream = openTimeline(hub, "alice", **options)
    stream.read()
    del stream.sent[:]
    return clock, node, hub, session, stream


def post(node, n, text=None):
    node.post("alice", text or "p%d" % (n,), "r%d" % (n,))


class GatheringTests(SynchronousTestCase):
    """
    On a L{FakeStream}, the writer takes what was gathered when the test
    looks at what was sent: posts made between two looks are posts made
    while the stream was busy.
    """

    def test_a_post_on_an_idle_stream_goes_alone(self):
        """At a low rate each post is its own message, as it was."""
        clock, node, hub, session, stream = liveTimeline(self)
        post(node, 0)
        self.assertEqual(kinds(stream), ["post"])
        post(node, 1)
        self.assertEqual([texts(m) for m in stream.sent], [["p0"], ["p1"]])

    def test_posts_made_while_the_stream_is_busy_go_as_one_message(self):
        """What comes before the writer takes the message queued joins it, in order."""
        clock, node, hub, session, stream = liveTimeline(self)
        for n in range(4):
            post(node, n)
        self.assertEqual(kinds(stream), ["posts"])
        self.assertEqual(texts(stream.sent[0]), ["p0", "p1", "p2", "p3"])

    def test_a_batch_holds_at_most_push_batch_posts(self):
        """More than a batch's worth goes as several messages, none over the bound."""
        clock, node, hub, session, stream = liveTimeline(self)
        for n in range(2 * PUSH_BATCH + 2):
            post(node, n)
        self.assertEqual([len(texts(m)) for m in stream.sent], [PUSH_BATCH, PUSH_BATCH, 2])
        self.assertEqual([t for m in stream.sent for t in texts(m)],
                         ["p%d" % (n,) for n in range(2 * PUSH_BATCH + 2)])

    def test_other_messages_come_after_the_posts_gathered_before_them(self):
        """A report of what the pushes cover never overtakes a post it covers."""
        clock, node, hub, session, stream = liveTimeline(self, report=True)
        post(node, 0)
        post(node, 1)
        clock.advance(HEARTBEAT)
        post(node, 2)
        self.assertEqual(kinds(stream), ["posts", "covered", "post"])

    def test_a_reader_that_takes_nothing_is_cut_off_at_the_bound(self):
        """Posts not yet taken by the stream's writer are bounded, in posts."""
        clock, node, hub, session, stream = liveTimeline(self)
        for n in range(MAX_SESSION_QUEUE):
            post(node, n)
        self.assertFalse(stream.aborted)
        post(node, MAX_SESSION_QUEUE, "one too many")
        self.assertTrue(stream.aborted)
        self.assertEqual(hub.count(), 0)

    def test_posts_taken_by_the_writer_no_longer_count(self):
        """The bound counts what waits: a reader that keeps up is never cut off."""
        clock, node, hub, session, stream = liveTimeline(self)
        session.pushes.most = 10
        for n in range(30):
            post(node, n)
            if n % 10 == 9:
                stream.take()
        self.assertFalse(stream.aborted)
        self.assertEqual(len([t for m in stream.sent for t in texts(m)]), 30)


class EncodingTests(SynchronousTestCase):
    def test_a_batch_is_what_protobuf_encodes(self):
        """The pushes' bytes put together are the PostBatch protobuf would build."""
        posts = [pb.Post(id="vm1.a/%d" % (n,), author="alice", time_us=n, text="x" * size)
                 for n, size in enumerate((1, 200, 20000))]
        pushes = [pb.ServerPush(post=p).SerializeToString() for p in posts]
        built = pb.ServerPush(posts=pb.PostBatch(posts=posts))
        self.assertEqual(pb.ServerPush.FromString(batchOf(pushes)), built)
        self.assertEqual(batchOf(pushes), built.SerializeToString())


class ClientBatchTests(SynchronousTestCase):
    def test_the_client_shows_each_post_of_a_batch_once_in_order(self):
        """A batch is shown post by post, a copy already shown skipped."""
        shown = []
        clock = Clock()
        timeline = Timeline(clock, shown.append, lambda message: None)
        session = Session(clock, timeline, lambda: None, lambda s, r: None)
        session.makeConnection(_Sink())
        posts = [pb.Post(id="vm1.a/%d" % (n,), author="bob", time_us=10 + n, text="p%d" % (n,),
                         request="r%d" % (n,)) for n in range(3)]
        session.messageReceived(pb.ServerPush(post=posts[0]))
        session.messageReceived(pb.ServerPush(posts=pb.PostBatch(posts=posts)))
        self.assertEqual([p.text for p in shown], ["p0", "p1", "p2"])
        self.assertEqual(timeline.cursor, Post.fromProto(posts[2]).key)
        session.beats.stop()


class _Sink:
    def send(self, message):
        pass
