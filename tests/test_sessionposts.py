"""
Posts on a client's session stream (snstwist.server.sessionposts), on a
server built from its parts (a Clock, a manual MemoryStore): answered by
request id once durable, in the order they complete; applied once per
request, whichever way it came; bounded; refused with the Post call's
status; the session's own post sent with its answer rather than pushed.
"""

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors
from snstwist.core.errors import Status
from snstwist.core.model import Post
from snstwist.rpc import sns_pb2 as pb
from snstwist.server.clientsession import Push
from snstwist.server.sessionposts import SessionPosts
from tests.fakes import FakeStream, session
from tests.servers import serverParts


def makeServer(test, postRate=None):
    """A master on a manual MemoryStore; alice and bob exist."""
    parts = serverParts(test, postRate=postRate)
    for user in ("alice", "bob"):
        parts.node.login(user)
    parts.node.store.flush()
    return parts, parts.node.store


def as_(parts, user):
    return session(parts.admission.loginReply(user).token)


def connect(parts, user, timeline=False):
    """A session of C{user}'s on a fake stream (its timeline open if asked)."""
    s = parts.api.session(as_(parts, user))
    stream = FakeStream()
    s.makeConnection(stream)
    if timeline:
        s.messageReceived(pb.ClientMessage(open=pb.SessionOpen(timeline=True)))
    return s, stream


def postOn(s, text, requestId):
    s.messageReceived(pb.ClientMessage(post=pb.PostRequest(text=text, request_id=requestId)))


def answers(stream):
    """(request id, reply or (status, message)) of every answer sent, in order."""
    out = []
    for m in stream.sent:
        if m.WhichOneof("kind") == "answer":
            a = m.answer
            out.append((a.request_id, a.reply if a.HasField("reply")
                        else (Status(a.refused.code), a.refused.message)))
    return out


def pushedTexts(stream):
    """The texts of the live posts pushed (alone or gathered), in order."""
    out = []
    for m in stream.sent:
        if m.WhichOneof("kind") == "post":
            out.append(m.post.text)
        elif m.WhichOneof("kind") == "posts":
            out.extend(p.text for p in m.posts.posts)
    return out


class AnswerTests(SynchronousTestCase):
    def test_a_post_is_answered_on_the_stream_once_durable(self):
        """
        A post on the session is alice's, stored once, and answered by its
        request id with the reply the Post call gives, only once durable.
        """
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice")
        postOn(s, "hello", "r1")
        self.assertEqual(answers(stream), [])
        store.flush()
        [(requestId, reply)] = answers(stream)
        self.assertEqual((requestId, reply.copies, reply.post.author, reply.post.text),
                         ("r1", 1, "alice", "hello"))
        self.assertEqual([p.text for p in parts.node.replica.postsBy("alice")], ["hello"])
        self.assertEqual(parts.writes.acknowledgedPosts, 1)

    def test_answers_come_in_the_order_the_posts_complete(self):
        """
        A retry of a durable post is answered at once, ahead of a new post
        sent before it that still waits for the disk: each by its own id.
        """
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice")
        postOn(s, "first", "r1")
        store.flush()
        postOn(s, "second", "r2")
        postOn(s, "first", "r1")
        self.assertEqual([a[0] for a in answers(stream)], ["r1", "r1"])
        store.flush()
        self.assertEqual([a[0] for a in answers(stream)], ["r1", "r1", "r2"])
        replies = [a[1] for a in answers(stream)]
        self.assertEqual(replies[0].id, replies[1].id)
        self.assertEqual(replies[2].post.text, "second")

    def test_a_request_sent_by_call_and_again_on_a_session_is_applied_once(self):
        """
        A post made by a Post call on one master connection and resent on a
        session (the client failed over with it unanswered) is one post,
        and both answers are the same reply, field for field (the session's
        built in place, answerOf; the call's, writeReply), post included.
        """
        parts, store = makeServer(self)
        called = parts.api.post(pb.PostRequest(text="once", request_id="r1"),
                                as_(parts, "alice"))
        s, stream = connect(parts, "alice")
        postOn(s, "once", "r1")
        store.flush()
        [(_, reply)] = answers(stream)
        self.assertEqual(reply, self.successResultOf(called))
        self.assertEqual((reply.copies, reply.post.text), (1, "once"))
        self.assertEqual([p.text for p in parts.node.replica.postsBy("alice")], ["once"])

    def test_the_same_request_twice_in_flight_on_a_session_is_applied_once(self):
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice")
        postOn(s, "once", "r1")
        postOn(s, "once", "r1")
        store.flush()
        self.assertEqual([a[0] for a in answers(stream)], ["r1", "r1"])
        self.assertEqual(len(parts.node.replica.postsBy("alice")), 1)

    def test_request_ids_are_scoped_to_the_session_user(self):
        """bob's r1 on his session is not alice's r1 on hers."""
        parts, store = makeServer(self)
        a, aliceStream = connect(parts, "alice")
        b, bobStream = connect(parts, "bob")
        postOn(a, "alice's", "r1")
        postOn(b, "bob's", "r1")
        store.flush()
        self.assertEqual(answers(aliceStream)[0][1].post.text, "alice's")
        self.assertEqual(answers(bobStream)[0][1].post.text, "bob's")


class RefusalTests(SynchronousTestCase):
    def test_bad_text_is_refused_invalid_argument_and_the_session_goes_on(self):
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice")
        postOn(s, "", "r1")
        postOn(s, "x" * 1001, "r2")
        postOn(s, "fine", "r3")
        store.flush()
        got = answers(stream)
        self.assertEqual([(i, a[0]) for i, a in got[:2]],
                         [("r1", Status.INVALID_ARGUMENT), ("r2", Status.INVALID_ARGUMENT)])
        self.assertIn("1-1000 characters", got[0][1][1])
        self.assertEqual((got[2][0], got[2][1].post.text), ("r3", "fine"))
        self.assertFalse(stream.aborted)
        self.assertEqual([p.text for p in parts.node.replica.postsBy("alice")], ["fine"])

    def test_a_post_without_a_request_id_ends_the_session_invalid_argument(self):
        """It could not be answered: the session ends saying why, nothing stored."""
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice")
        postOn(s, "hi", "")
        self.assertTrue(stream.aborted)
        self.assertIsInstance(stream.reason, errors.InvalidRequest)
        self.assertEqual(stream.last("end").code, Status.INVALID_ARGUMENT.value)
        self.assertEqual(parts.node.replica.postsBy("alice"), [])

    def test_a_malformed_request_id_ends_the_session_invalid_argument(self):
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice")
        postOn(s, "hi", "x" * 65)
        self.assertIsInstance(stream.reason, errors.InvalidRequest)
        self.assertEqual(parts.node.replica.postsBy("alice"), [])

    def test_posts_past_the_bound_in_flight_are_refused_resource_exhausted(self):
        """
        With two posts in flight (the bound, here), a third is refused at
        once and not applied; once the two are answered, posts go again.
        """
        self.patch(SessionPosts, "most", 2)
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice")
        for n in range(3):
            postOn(s, "p%d" % (n,), "r%d" % (n,))
        [(requestId, (status, message))] = answers(stream)
        self.assertEqual((requestId, status), ("r2", Status.RESOURCE_EXHAUSTED))
        self.assertIn("2 posts in flight", message)
        store.flush()
        postOn(s, "p3", "r3")
        store.flush()
        self.assertEqual([a[0] for a in answers(stream)], ["r2", "r0", "r1", "r3"])
        self.assertEqual([p.text for p in parts.node.replica.postsBy("alice")],
                         ["p0", "p1", "p3"])

    def test_a_flood_is_refused_by_the_users_rate(self):
        """The rate tokens of the Post call: past the burst, RESOURCE_EXHAUSTED."""
        parts, store = makeServer(self, postRate=1.0)
        s, stream = connect(parts, "alice")
        burst = int(parts.api.posts.burst)
        for n in range(burst + 1):
            postOn(s, "p%d" % (n,), "r%d" % (n,))
        store.flush()
        refused = [a for a in answers(stream) if isinstance(a[1], tuple)]
        self.assertEqual([(i, a[0]) for i, a in refused],
                         [("r%d" % (burst,), Status.RESOURCE_EXHAUSTED)])
        self.assertEqual(len(parts.node.replica.postsBy("alice")), burst)

    def test_a_post_once_the_sessions_token_expired_is_refused_unauthenticated(self):
        """Between the token's expiry and the heartbeat that ends the session."""
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice")
        s.expires = parts.api.clock.seconds()
        postOn(s, "hi", "r1")
        [(requestId, (status, message))] = answers(stream)
        self.assertEqual((requestId, status), ("r1", Status.UNAUTHENTICATED))
        self.assertIn("expired", message)
        self.assertEqual(parts.node.replica.postsBy("alice"), [])

    def test_a_post_once_the_password_changed_is_refused_unauthenticated(self):
        """The new password is known here, not yet durable (the session not yet ended)."""
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice")
        parts.node.setPassword("alice", "fake$new")
        postOn(s, "hi", "r1")
        [(requestId, (status, message))] = answers(stream)
        self.assertEqual((requestId, status), ("r1", Status.UNAUTHENTICATED))
        self.assertIn("password was changed", message)
        self.assertEqual(parts.node.replica.postsBy("alice"), [])

    def test_a_disk_that_refuses_writes_is_answered_unavailable(self):
        """The store's refusal reaches the client as the call's would: UNAVAILABLE."""
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice")
        store.problem = errors.StorageFailed("the disk is full")
        postOn(s, "hi", "r1")
        [(requestId, (status, message))] = answers(stream)
        self.assertEqual((requestId, status, message), ("r1", Status.UNAVAILABLE,
                                                        "the disk is full"))
        self.assertEqual(parts.node.replica.postsBy("alice"), [])


class _Session:
    """What SessionPosts uses of a ClientSession: its user, stream and live pushes."""

    def __init__(self, user="alice"):
        self.user = user
        self.stream = FakeStream()
        self.live = True
        self.busy = False
        self.pushed = []
        self.pushes = type("Pushes", (), {"post": self.pushed.append})()


def _post(requestId, author="alice", text="hi"):
    return Post(id="vm1.t/1", author=author, time_us=1, text=text, request=requestId)


def _push(requestId):
    return Push(_post(requestId))


class HeldPushTests(SynchronousTestCase):
    """The session's own post in flight goes with its answer, not as a push of its own."""

    def posting(self):
        writes = {}

        def write(user, request, answer):
            writes[request.request_id] = d = defer.Deferred()
            # The write's answer, from the WriteReply a test fires it with.
            return d.addCallback(lambda reply: pb.ServerPush(answer=pb.PostAnswer(reply=reply)))

        s = _Session()
        return s, SessionPosts(s, write), writes

    def test_the_push_of_an_own_post_in_flight_is_held_for_its_answer(self):
        s, posting, writes = self.posting()
        posting.received(pb.PostRequest(text="hi", request_id="r1"))
        self.assertTrue(posting.holds(_post("r1"), _push("r1")))
        writes["r1"].callback(pb.WriteReply(id="vm1.t/1", copies=2, post=_post("r1").toProto()))
        self.assertEqual((s.pushed, s.stream.kinds()), ([], ["answer"]))
        self.assertEqual(s.stream.last("answer").reply.post.text, "hi")

    def test_posts_of_others_or_of_other_requests_are_pushed(self):
        s, posting, writes = self.posting()
        posting.received(pb.PostRequest(text="hi", request_id="r1"))
        self.assertFalse(posting.holds(_post("r1", author="bob"), _push("r1")))
        self.assertFalse(posting.holds(_post("r2"), _push("r2")))

    def test_the_push_of_an_own_post_that_comes_after_its_answer_is_dropped_once(self):
        """
        Answered before it was durable here (another VM's copy came first):
        its push, when it comes, is not sent; a second one is.
        """
        s, posting, writes = self.posting()
        posting.received(pb.PostRequest(text="hi", request_id="r1"))
        writes["r1"].callback(pb.WriteReply(id="vm1.t/1"))
        self.assertTrue(posting.holds(_post("r1"), _push("r1")))
        self.assertFalse(posting.holds(_post("r1"), _push("r1")))

    def test_posts_answered_before_their_push_are_remembered_boundedly(self):
        """Only the newest answered (the bound on posts in flight) wait for their push."""
        self.patch(SessionPosts, "most", 2)
        s, posting, writes = self.posting()
        for n in range(3):
            posting.received(pb.PostRequest(text="hi", request_id="r%d" % (n,)))
            writes["r%d" % (n,)].callback(pb.WriteReply(id="vm1.t/%d" % (n,)))
        self.assertEqual(list(posting.answered), ["r1", "r2"])
        self.assertFalse(posting.holds(_post("r0"), _push("r0")))

    def test_a_session_not_showing_its_timeline_waits_for_no_push(self):
        s, posting, writes = self.posting()
        s.live = False
        posting.received(pb.PostRequest(text="hi", request_id="r1"))
        writes["r1"].callback(pb.WriteReply(id="vm1.t/1"))
        self.assertEqual(posting.answered, {})

    def test_a_refused_post_whose_push_was_held_is_pushed_before_the_refusal(self):
        """
        Stored here, then refused (its copy on another VM failed): others
        are shown it, so the session is too, before the status.
        """
        s, posting, writes = self.posting()
        posting.received(pb.PostRequest(text="hi", request_id="r1"))
        posting.holds(_post("r1"), _push("r1"))
        writes["r1"].errback(errors.StorageFailed("the disk is full"))
        self.assertEqual(s.pushed, [_push("r1").encoded()])
        answer = s.stream.last("answer")
        self.assertEqual((answer.request_id, Status(answer.refused.code)),
                         ("r1", Status.UNAVAILABLE))

    def test_an_unexpected_error_is_refused_internal_and_logged(self):
        s, posting, writes = self.posting()
        posting.received(pb.PostRequest(text="hi", request_id="r1"))
        writes["r1"].errback(ZeroDivisionError())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        answer = s.stream.last("answer")
        self.assertEqual((Status(answer.refused.code), answer.refused.message),
                         (Status.INTERNAL, "internal error"))
        self.assertEqual((posting.waiting, posting.inFlight), (0, {}))

    def test_an_ended_session_sends_nothing_and_forgets_its_posts(self):
        s, posting, writes = self.posting()
        posting.received(pb.PostRequest(text="hi", request_id="r1"))
        s.stream = None
        writes["r1"].callback(pb.WriteReply(id="vm1.t/1"))
        self.assertEqual((posting.waiting, posting.inFlight), (0, {}))


class TimelineTests(SynchronousTestCase):
    def test_another_session_of_the_user_is_pushed_the_post(self):
        """alice's second client (timeline open) is pushed what her first posted."""
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice", timeline=True)
        other, otherStream = connect(parts, "alice", timeline=True)
        postOn(s, "hello", "r1")
        store.flush()
        self.assertEqual(pushedTexts(otherStream), ["hello"])
        self.assertEqual(answers(stream)[0][1].post.text, "hello")

    def test_the_posting_session_is_sent_its_post_in_the_answer_only(self):
        """One VM: the answer goes as the post is durable, and the push is not sent."""
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice", timeline=True)
        postOn(s, "hello", "r1")
        store.flush()
        postOn(s, "again", "r2")
        store.flush()
        self.assertEqual([a[1].post.text for a in answers(stream)], ["hello", "again"])
        self.assertEqual(pushedTexts(stream), [])

    def test_a_post_only_its_posting_session_shows_is_never_encoded_as_a_push(self):
        """Its push would be dropped for its answer: it is not built."""
        encoded = countEncodings(self)
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice", timeline=True)
        postOn(s, "hello", "r1")
        store.flush()
        self.assertEqual((answers(stream)[0][1].post.text, encoded), ("hello", []))

    def test_a_post_others_are_shown_is_encoded_once_for_them_all(self):
        """alice's other session and her follower bob get the one encoding."""
        encoded = countEncodings(self)
        parts, store = makeServer(self)
        parts.node.follow("bob", "alice", "f1")
        s, stream = connect(parts, "alice", timeline=True)
        other, otherStream = connect(parts, "alice", timeline=True)
        bob, bobStream = connect(parts, "bob", timeline=True)
        store.flush()
        postOn(s, "hello", "r1")
        store.flush()
        self.assertEqual((pushedTexts(otherStream), pushedTexts(bobStream), pushedTexts(stream)),
                         (["hello"], ["hello"], []))
        self.assertEqual(otherStream.encoded[-1], bobStream.encoded[-1])
        self.assertEqual(encoded, ["hello"])


def countEncodings(test):
    """The texts of the posts encoded for a live push from now on."""
    encoded = []
    toPush = Post.toPush

    def counting(post):
        encoded.append(post.text)
        return toPush(post)

    test.patch(Post, "toPush", counting)
    return encoded


class RidingAckTests(SynchronousTestCase):
    """An ack may ride on a post (ClientMessage.read): one message fewer a post."""

    def test_an_ack_riding_on_a_post_moves_the_users_cursor_and_the_post_goes_on(self):
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice", timeline=True)
        s.messageReceived(pb.ClientMessage(
            post=pb.PostRequest(text="hello", request_id="r1"),
            read=pb.Cursor(time_us=10, id="vm1.test/4")))
        self.assertEqual(parts.sessions.cursors["alice"], (10, "vm1.test/4"))
        store.flush()
        self.assertEqual([a[1].post.text for a in answers(stream)], ["hello"])

    def test_an_older_riding_ack_does_not_move_the_cursor_back(self):
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice", timeline=True)
        s.messageReceived(pb.ClientMessage(ack=pb.Cursor(time_us=12, id="vm1.test/5")))
        s.messageReceived(pb.ClientMessage(
            post=pb.PostRequest(text="hello", request_id="r1"),
            read=pb.Cursor(time_us=10, id="vm1.test/9")))
        self.assertEqual(parts.sessions.cursors["alice"], (12, "vm1.test/5"))

    def test_a_malformed_riding_ack_ends_the_session_and_stores_nothing(self):
        """Checked as an ack is, before the post is applied: nothing half-done."""
        parts, store = makeServer(self)
        s, stream = connect(parts, "alice", timeline=True)
        s.messageReceived(pb.ClientMessage(
            post=pb.PostRequest(text="hello", request_id="r1"),
            read=pb.Cursor(time_us=10, id="no-slash")))
        self.assertIsInstance(stream.reason, errors.InvalidRequest)
        self.assertEqual(stream.last("end").code, Status.INVALID_ARGUMENT.value)
        store.flush()
        self.assertEqual(parts.node.replica.postsBy("alice"), [])
        self.assertNotIn("alice", parts.sessions.cursors)
