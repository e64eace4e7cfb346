"""
The client's posts on its session stream in timeline mode
(snstwist.client.timeline.Session.post), on a Clock and fake streams: a post
goes up the stream and its answer comes back by request id; refusals become
the same errors a call's status gives; a post unanswered when its session
ends, or for a call's timeout, is sent again with the same request id.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.client import client as clientModule
from snstwist.client import timeline as timelineModule
from snstwist.client.client import Client, CommandFailed
from snstwist.client.masters import CALL_TIMEOUT, Master
from snstwist.core.errors import Status
from snstwist.core.limits import MAX_SESSION_POSTS
from snstwist.core.limits import SESSION_HEARTBEAT as HEARTBEAT
from snstwist.core.model import Post
from snstwist.rpc import sns_pb2 as pb
from tests.fakes import FakeStream
from tests.test_client import ScriptedCalls


def posted(stream):
    """The posts the client sent on C{stream}: (request id, text, preferred VM)."""
    return [(m.post.request_id, m.post.text, m.post.prefer_vm) for m in stream.sent
            if m.WhichOneof("kind") == "post"]


def answer(requestId, text="hi", copies=2, seq=1):
    post = Post(id="vm1.a/%d" % (seq,), author="alice", time_us=seq, text=text)
    return pb.ServerPush(answer=pb.PostAnswer(
        request_id=requestId, reply=pb.WriteReply(id=post.id, copies=copies,
                                                  post=post.toProto())))


def refusal(requestId, status, message):
    return pb.ServerPush(answer=pb.PostAnswer(
        request_id=requestId, refused=pb.SessionEnd(code=status.value, message=message)))


class StreamPostTests(SynchronousTestCase):
    def client(self, *answers):
        """
        alice's client on masters vm1 and vm2, in timeline mode on a session
        that has had its history; calls (without a session) answered as
        scripted; a failover opens a new session and counts itself.
        """
        shown = []
        c = Client(["127.0.0.1:1"], "alice", "pw", clock=Clock(), onPost=shown.append)
        c.login.stub = type("Stub", (), {"Post": "Post"})()
        c.masters.master1 = Master("vm1", "127.0.0.1:1")
        c.masters.master2 = Master("vm2", "127.0.0.1:2")
        c.reader.active = True
        self.calls = ScriptedCalls(*answers)
        self.patch(clientModule, "grpcbridge", self.calls)
        self.failovers = []
        self.streams = []

        def failOver():
            self.failovers.append(c.epoch)
            c.epoch += 1
            self.openSession(c)
            return defer.succeed(None)

        c.masters.failOver = failOver
        self.openSession(c)
        return c, shown

    def openSession(self, c, ready=True):
        stream = FakeStream()
        c.session = c._newSession()
        c.session.makeConnection(stream)
        self.addCleanup(c.session.beats.stop)
        if ready:
            c.session.messageReceived(pb.ServerPush(ready=pb.SessionReady()))
        self.streams.append(stream)
        return stream

    def test_a_post_in_timeline_mode_goes_on_the_session_not_in_a_call(self):
        """
        Up the stream with a request id and the preferred VM; the answer by
        that id is the reply, and its post is shown on the timeline.
        """
        c, shown = self.client()
        d = c.post("hi")
        [(requestId, text, prefer)] = posted(self.streams[0])
        self.assertEqual((text, prefer, self.calls.calls), ("hi", "vm2", []))
        self.assertNoResult(d)
        c.session.messageReceived(answer(requestId))
        self.assertEqual(self.successResultOf(d).copies, 2)
        self.assertEqual([(p.text, p.request) for p in shown], [("hi", requestId)])

    def test_a_post_is_answered_even_when_showing_it_fails(self):
        """A failing onPost breaks the session (as for a push), not the post's answer."""
        c, shown = self.client()
        d = c.post("hi")
        [(requestId, _, _)] = posted(self.streams[0])

        def broken(post):
            raise ZeroDivisionError()

        c.onPost = broken
        self.assertRaises(ZeroDivisionError, c.session.messageReceived, answer(requestId))
        self.assertEqual(self.successResultOf(d).copies, 2)

    def test_answers_in_any_order_reach_their_own_posts(self):
        c, shown = self.client()
        first, second = c.post("one"), c.post("two")
        (r1, _, _), (r2, _, _) = posted(self.streams[0])
        c.session.messageReceived(answer(r2, "two", seq=2))
        self.assertNoResult(first)
        c.session.messageReceived(answer(r1, "one", seq=1))
        self.assertEqual([self.successResultOf(d).post.text for d in (first, second)],
                         ["one", "two"])

    def test_without_a_timeline_a_post_is_a_call(self):
        """A session whose timeline has not delivered its history: the Post call."""
        c, shown = self.client(pb.WriteReply(id="vm1.a/1", copies=2))
        self.openSession(c, ready=False)
        self.assertEqual(self.successResultOf(c.post("hi")).id, "vm1.a/1")
        self.assertEqual((len(self.calls.calls), posted(self.streams[-1])), (1, []))

    def test_past_the_bound_in_flight_a_post_is_a_call(self):
        c, shown = self.client(pb.WriteReply(id="vm1.a/1", copies=2))
        for n in range(MAX_SESSION_POSTS):
            c.post("p%d" % (n,))
        self.successResultOf(c.post("one more"))
        self.assertEqual((len(posted(self.streams[0])), len(self.calls.calls)),
                         (MAX_SESSION_POSTS, 1))

    def test_a_refusal_is_the_error_of_the_calls_status(self):
        c, shown = self.client()
        d = c.post("")
        [(requestId, _, _)] = posted(self.streams[0])
        c.session.messageReceived(refusal(requestId, Status.INVALID_ARGUMENT, "too short"))
        failure = self.failureResultOf(d, CommandFailed)
        self.assertEqual((failure.value.code, failure.value.message, self.failovers),
                         (Status.INVALID_ARGUMENT, "too short", []))
        self.assertEqual(shown, [])

    def test_a_master_shedding_load_is_sent_the_same_post_again_after_a_pause(self):
        c, shown = self.client()
        d = c.post("hi")
        [(requestId, _, _)] = posted(self.streams[0])
        c.session.messageReceived(refusal(requestId, Status.RESOURCE_EXHAUSTED, "busy"))
        self.assertEqual(len(posted(self.streams[0])), 1)
        c.clock.advance(10)
        self.assertEqual([p[0] for p in posted(self.streams[0])], [requestId, requestId])
        c.session.messageReceived(answer(requestId))
        self.successResultOf(d)

    def test_posts_unanswered_when_the_session_breaks_go_again_on_the_next(self):
        """
        The master died with two posts in flight: after the failover both go
        on the new session, with their request ids, and are answered there.
        """
        c, shown = self.client()
        pending = [c.post("one"), c.post("two")]
        sent = posted(self.streams[0])
        c.session.connectionLost(None)
        self.assertEqual(self.failovers, [0])
        self.assertEqual(posted(self.streams[1]), sent)
        for n, (requestId, text, _) in enumerate(sent, 1):
            c.session.messageReceived(answer(requestId, text, seq=n))
        self.assertEqual([self.successResultOf(d).post.text for d in pending], ["one", "two"])
        self.assertEqual([p.text for p in shown], ["one", "two"])

    def test_posts_unanswered_while_there_is_no_session_go_as_calls(self):
        """
        And the post is shown from the call's reply: the new master may hold
        it already (replicated before the old one died), so that no push of
        it comes, and the new session's catch-up skips it when the old
        master's report of what the screen covers counted it before its
        answer was sent.
        """
        c, shown = self.client(pb.WriteReply(id="vm2.b/1", copies=2, post=Post(
            id="vm2.b/1", author="alice", time_us=1, text="hi").toProto()))
        d = c.post("hi")
        [(requestId, _, _)] = posted(self.streams[0])

        def failOver():
            self.failovers.append(c.epoch)
            c.epoch += 1
            return defer.succeed(None)  # logged in again; the session not open yet

        c.masters.failOver = failOver
        c.session.connectionLost(None)
        self.assertEqual(self.successResultOf(d).id, "vm2.b/1")
        self.assertEqual([r for _, r, _ in self.calls.calls], [requestId])
        self.assertEqual([(p.text, p.request) for p in shown], [("hi", requestId)])

    def test_a_post_answered_by_a_call_without_a_timeline_shows_nothing(self):
        c, shown = self.client(pb.WriteReply(id="vm1.a/1", copies=2, post=Post(
            id="vm1.a/1", author="alice", time_us=1, text="hi").toProto()))
        c.reader.active = False
        self.openSession(c, ready=False)
        self.successResultOf(c.post("hi"))
        self.assertEqual(shown, [])

    def test_a_post_unanswered_for_a_calls_timeout_fails_over_and_goes_again(self):
        c, shown = self.client()
        d = c.post("hi")
        [(requestId, _, _)] = posted(self.streams[0])
        # The master answers heartbeats, never the post.
        while not self.failovers:
            c.clock.advance(1)
            c.session.messageReceived(pb.ServerPush(heartbeat=pb.Heartbeat()))
        self.assertGreaterEqual(c.clock.seconds(), CALL_TIMEOUT)
        self.assertEqual([p[0] for p in posted(self.streams[1])], [requestId])
        c.session.messageReceived(answer(requestId))
        self.successResultOf(d)

    def test_a_late_answer_after_the_timeout_is_ignored(self):
        c, shown = self.client()
        c.post("hi")
        [(requestId, _, _)] = posted(self.streams[0])
        old = c.session
        while not self.failovers:
            c.clock.advance(1)
            old.messageReceived(pb.ServerPush(heartbeat=pb.Heartbeat()))
        old.messageReceived(answer(requestId))
        self.assertEqual(shown, [])


def kinds(stream):
    return [m.WhichOneof("kind") for m in stream.sent]


class RidingAckTests(SynchronousTestCase):
    """The ack of what was shown rides on the next post rather than going alone."""

    client = StreamPostTests.client
    openSession = StreamPostTests.openSession

    def test_a_post_carries_the_ack_due_and_no_ack_goes_alone(self):
        c, shown = self.client()
        d = c.post("hi")
        [(requestId, _, _)] = posted(self.streams[0])
        c.session.messageReceived(answer(requestId, seq=3))
        self.successResultOf(d)
        c.post("again")
        message = self.streams[0].sent[-1]
        self.assertEqual((message.read.time_us, message.read.id), (3, "vm1.a/3"))
        c.clock.advance(timelineModule.ACK_DELAY)
        self.assertNotIn("ack", kinds(self.streams[0]))

    def test_a_post_with_nothing_new_to_ack_carries_none(self):
        c, shown = self.client()
        c.post("hi")
        self.assertFalse(self.streams[0].sent[-1].HasField("read"))

    def test_an_ack_goes_alone_when_no_post_goes_within_its_delay(self):
        """And only once: a later post has nothing new to carry."""
        c, shown = self.client()
        d = c.post("hi")
        [(requestId, _, _)] = posted(self.streams[0])
        c.session.messageReceived(answer(requestId, seq=3))
        self.successResultOf(d)
        c.clock.advance(timelineModule.ACK_DELAY)
        acks = [m.ack for m in self.streams[0].sent if m.WhichOneof("kind") == "ack"]
        self.assertEqual([(a.time_us, a.id) for a in acks], [(3, "vm1.a/3")])
        c.post("again")
        self.assertFalse(self.streams[0].sent[-1].HasField("read"))


class BusyHeartbeatTests(SynchronousTestCase):
    client = StreamPostTests.client
    openSession = StreamPostTests.openSession

    def test_a_session_that_posted_since_its_last_beat_sends_no_heartbeat(self):
        """A post says the client is alive; a beat goes once a quiet interval passed."""
        c, shown = self.client()
        c.clock.advance(HEARTBEAT - 0.01)
        c.post("hi")
        c.clock.advance(0.01)
        self.assertNotIn("heartbeat", kinds(self.streams[0]))
        c.clock.advance(HEARTBEAT)
        self.assertEqual(kinds(self.streams[0]).count("heartbeat"), 1)
