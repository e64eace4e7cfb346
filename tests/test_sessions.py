"""
Live client sessions on a master, on a Clock: timeline history, live push,
heartbeats, cursors.  A real replication Node on a MemoryStore, a fake stream.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core.limits import CATCH_UP_PAGE, HISTORY
from snstwist.rpc import sns_pb2 as pb
from snstwist.core.node import Node
from snstwist.server.sessions import HEARTBEAT, TIMEOUT, SessionHub
from snstwist.storage.store import MemoryStore
from tests.fakes import FakeStream
from tests.strategies import postUpdate


def sentPosts(stream):
    """(author, text) of every post sent on C{stream}, in order."""
    return [(m.post.author, m.post.text) for m in stream.sent if m.WhichOneof("kind") == "post"]


def kinds(stream):
    return [m.WhichOneof("kind") for m in stream.sent]


def makeHub(test, users=("alice", "bob", "carol"), manual=False):
    """
    A SessionHub over a loaded Node whose durable updates are published to
    it, as the server wires them; C{users} exist.
    """
    clock = Clock()
    node = Node("vm1", "vm1.test", MemoryStore(manual=manual), clock)
    hub = SessionHub(node, clock)
    node.addDurableObserver(hub.publish)
    test.successResultOf(node.load())
    for user in users:
        node.login(user)
    return clock, node, hub


def connect(hub, user):
    """A session of C{user} on a fake stream, not yet showing the timeline."""
    stream = FakeStream()
    session = hub.session(user)
    session.makeConnection(stream)
    return session, stream


def openTimeline(hub, user, **options):
    """A session of C{user} that has asked for its timeline."""
    session, stream = connect(hub, user)
    session.messageReceived(pb.ClientMessage(open=pb.SessionOpen(timeline=True, **options)))
    return session, stream


def cursorOf(update):
    return pb.Cursor(time_us=update.post.time_us, id=update.post.id)


class TimelineHistoryTests(SynchronousTestCase):
    def test_opening_timeline_sends_last_twenty_posts_oldest_first(self):
        """Of 25 posts, the 20 newest come, oldest first."""
        clock, node, hub = makeHub(self)
        for n in range(25):
            node.post("alice", "post %d" % (n,), "r%d" % (n,))
        session, stream = openTimeline(hub, "alice")
        self.assertEqual(sentPosts(stream),
                         [("alice", "post %d" % (n,)) for n in range(5, 25)])

    def test_history_is_followed_by_ready_marker_with_its_count(self):
        """After the history comes one SessionReady saying how many posts it held."""
        clock, node, hub = makeHub(self)
        for n in range(3):
            node.post("alice", "post %d" % (n,), "r%d" % (n,))
        session, stream = openTimeline(hub, "alice")
        self.assertEqual(kinds(stream), ["post", "post", "post", "ready"])
        self.assertEqual(stream.sent[-1].ready.history, 3)

    def test_history_holds_own_and_followed_posts_only(self):
        """alice follows bob: her history interleaves hers and bob's, not carol's."""
        clock, node, hub = makeHub(self)
        node.follow("alice", "bob", "f1")
        node.post("alice", "a1", "r1")
        node.post("carol", "c1", "r2")
        node.post("bob", "b1", "r3")
        node.post("alice", "a2", "r4")
        session, stream = openTimeline(hub, "alice")
        self.assertEqual(sentPosts(stream), [("alice", "a1"), ("bob", "b1"), ("alice", "a2")])

    def test_history_of_twenty_spans_followed_users(self):
        """The newest 20 are chosen across alice and bob together, not 20 each."""
        clock, node, hub = makeHub(self)
        node.follow("alice", "bob", "f1")
        for n in range(15):
            node.post("alice", "a%d" % (n,), "ra%d" % (n,))
            node.post("bob", "b%d" % (n,), "rb%d" % (n,))
        session, stream = openTimeline(hub, "alice")
        expected = [p for n in range(15) for p in (("alice", "a%d" % n), ("bob", "b%d" % n))]
        self.assertEqual(sentPosts(stream), expected[-HISTORY:])

    def test_smaller_history_request_is_honoured(self):
        """A client asking for 2 posts of history gets the 2 newest."""
        clock, node, hub = makeHub(self)
        for n in range(5):
            node.post("alice", "post %d" % (n,), "r%d" % (n,))
        session, stream = openTimeline(hub, "alice", history=2)
        self.assertEqual(sentPosts(stream), [("alice", "post 3"), ("alice", "post 4")])

    def test_empty_timeline_sends_only_ready_marker(self):
        """A user with nothing to show gets SessionReady(history=0) at once."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        self.assertEqual(stream.sent, [pb.ServerPush(ready=pb.SessionReady(history=0))])

    def test_resume_with_cursor_sends_only_later_posts(self):
        """A client returning with a cursor gets what came after it, and no more."""
        clock, node, hub = makeHub(self)
        updates = [node.post("alice", "post %d" % (n,), "r%d" % (n,)) for n in range(30)]
        session, stream = openTimeline(hub, "alice", cursor=cursorOf(updates[3]))
        self.assertEqual(sentPosts(stream),
                         [("alice", "post %d" % (n,)) for n in range(4, 30)])
        self.assertEqual(stream.sent[-1].ready.history, 26)

    def test_resume_at_newest_post_sends_no_history(self):
        """A client that has read everything gets only the ready marker."""
        clock, node, hub = makeHub(self)
        last = node.post("alice", "only", "r1")
        session, stream = openTimeline(hub, "alice", cursor=cursorOf(last))
        self.assertEqual(kinds(stream), ["ready"])

    def test_opening_timeline_twice_does_not_resend_history(self):
        """A second open on a live session is ignored."""
        clock, node, hub = makeHub(self)
        node.post("alice", "a1", "r1")
        session, stream = openTimeline(hub, "alice")
        session.messageReceived(pb.ClientMessage(open=pb.SessionOpen(timeline=True)))
        self.assertEqual(kinds(stream), ["post", "ready"])

    def test_open_without_timeline_sends_nothing(self):
        """SessionOpen(timeline=False) neither sends history nor makes the session live."""
        clock, node, hub = makeHub(self)
        node.post("alice", "a1", "r1")
        session, stream = connect(hub, "alice")
        session.messageReceived(pb.ClientMessage(open=pb.SessionOpen(timeline=False)))
        self.assertEqual(stream.sent, [])
        self.assertFalse(session.live)


class LivePushTests(SynchronousTestCase):
    def test_new_post_is_pushed_to_followers_live_session(self):
        """bob follows alice: her new post reaches his live timeline."""
        clock, node, hub = makeHub(self)
        node.follow("bob", "alice", "f1")
        session, stream = openTimeline(hub, "bob")
        node.post("alice", "hello", "r1")
        self.assertEqual(kinds(stream), ["ready", "post"])
        self.assertEqual(sentPosts(stream), [("alice", "hello")])

    def test_new_post_is_pushed_to_authors_own_live_session(self):
        """alice sees her own post on her live timeline."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        node.post("alice", "mine", "r1")
        self.assertEqual(sentPosts(stream), [("alice", "mine")])

    def test_pushed_post_is_the_stored_post(self):
        """The pushed message carries the post's id, author, time, text and request id."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        update = node.post("alice", "mine", "r1")
        self.assertEqual(stream.sent[-1], pb.ServerPush(post=update.post.toPush()))
        self.assertEqual(stream.sent[-1].post.request, "r1")

    def test_new_post_is_not_pushed_to_non_followers(self):
        """carol does not follow alice, so alice's post does not reach her."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "carol")
        node.post("alice", "hello", "r1")
        self.assertEqual(kinds(stream), ["ready"])

    def test_new_post_is_not_pushed_after_unfollow(self):
        """Once bob unfollows alice, her next post does not reach him."""
        clock, node, hub = makeHub(self)
        node.follow("bob", "alice", "f1")
        session, stream = openTimeline(hub, "bob")
        node.unfollow("bob", "alice", "f2")
        node.post("alice", "hello", "r1")
        self.assertEqual(sentPosts(stream), [])

    def test_new_post_is_not_pushed_before_timeline_opens(self):
        """A follower's session that has not opened its timeline gets no post."""
        clock, node, hub = makeHub(self)
        node.follow("bob", "alice", "f1")
        session, stream = connect(hub, "bob")
        node.post("alice", "hello", "r1")
        self.assertEqual(stream.sent, [])

    def test_post_published_before_open_arrives_with_history(self):
        """A post made before the timeline opens is in the history, once."""
        clock, node, hub = makeHub(self)
        node.follow("bob", "alice", "f1")
        session, stream = connect(hub, "bob")
        node.post("alice", "early", "r1")
        session.messageReceived(pb.ClientMessage(open=pb.SessionOpen(timeline=True)))
        self.assertEqual(sentPosts(stream), [("alice", "early")])

    def test_post_sent_with_history_is_not_pushed_again(self):
        """
        A post accepted but not yet durable when the timeline opens is sent
        with the history; when it becomes durable it is not pushed twice.
        """
        clock, node, hub = makeHub(self, manual=True)
        node.store.flush()
        node.post("alice", "in flight", "r1")
        session, stream = openTimeline(hub, "alice")
        node.store.flush()
        self.assertEqual(sentPosts(stream), [("alice", "in flight")])

    def test_post_durable_after_open_but_not_in_history_is_pushed(self):
        """The history de-duplication does not swallow a post made after the open."""
        clock, node, hub = makeHub(self, manual=True)
        node.post("alice", "before", "r1")
        session, stream = openTimeline(hub, "alice")
        node.post("alice", "after", "r2")
        node.store.flush()
        self.assertEqual(sentPosts(stream), [("alice", "before"), ("alice", "after")])

    def test_every_live_session_of_a_follower_gets_the_post(self):
        """bob with two live sessions gets the post on both."""
        clock, node, hub = makeHub(self)
        node.follow("bob", "alice", "f1")
        streams = [openTimeline(hub, "bob")[1] for _ in range(2)]
        node.post("alice", "hello", "r1")
        for stream in streams:
            self.assertEqual(sentPosts(stream), [("alice", "hello")])

    def test_a_post_is_encoded_once_for_all_the_sessions_that_show_it(self):
        """
        alice's post goes to her followers' three live sessions as one
        encoding: the same bytes object on every stream, which is the post.
        """
        clock, node, hub = makeHub(self)
        node.follow("bob", "alice", "f1")
        node.follow("carol", "alice", "f2")
        streams = [openTimeline(hub, user)[1] for user in ("bob", "bob", "carol")]
        for stream in streams:
            del stream.encoded[:]
        update = node.post("alice", "hello", "r1")
        sent = [stream.encoded for stream in streams]
        self.assertEqual([len(s) for s in sent], [1, 1, 1])
        self.assertIs(sent[1][0], sent[0][0])
        self.assertIs(sent[2][0], sent[0][0])
        self.assertEqual(pb.ServerPush.FromString(sent[0][0]),
                         pb.ServerPush(post=update.post.toPush()))

    def test_heartbeats_go_encoded_once(self):
        """Every idle session is sent the same encoded heartbeat."""
        clock, node, hub = makeHub(self)
        streams = [openTimeline(hub, user)[1] for user in ("alice", "bob")]
        for stream in streams:
            del stream.encoded[:]
        clock.advance(HEARTBEAT)
        self.assertEqual([len(s.encoded) for s in streams], [1, 1])
        self.assertIs(streams[0].encoded[0], streams[1].encoded[0])
        self.assertEqual(streams[0].sent[-1], pb.ServerPush(heartbeat=pb.Heartbeat()))

    def test_publish_ignores_updates_that_are_not_posts(self):
        """New users and follows are published but push nothing."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        node.login("dave")
        node.follow("alice", "bob", "f1")
        self.assertEqual(kinds(stream), ["ready"])

    def test_closed_session_gets_no_more_posts(self):
        """After connectionLost, a post is not sent on the dead stream."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        session.connectionLost(None)
        node.post("alice", "hello", "r1")
        self.assertEqual(kinds(stream), ["ready"])


class HeartbeatTests(SynchronousTestCase):
    def test_heartbeat_is_sent_every_heartbeat_interval(self):
        """One heartbeat per HEARTBEAT seconds while the client is heard from."""
        clock, node, hub = makeHub(self)
        session, stream = connect(hub, "alice")
        clock.advance(HEARTBEAT - 0.01)
        self.assertEqual(stream.sent, [])
        for beats in range(1, 6):
            clock.advance(0.01)
            session.messageReceived(pb.ClientMessage(heartbeat=pb.Heartbeat()))
            clock.advance(HEARTBEAT - 0.01)
            self.assertEqual(kinds(stream), ["heartbeat"] * beats)

    def test_silent_client_is_deactivated_after_timeout(self):
        """
        A client heard from for the last time at 0 is still served at TIMEOUT
        and aborted by the next beat, which leaves no timer behind.
        """
        clock, node, hub = makeHub(self)
        session, stream = connect(hub, "alice")
        clock.pump([HEARTBEAT] * int(TIMEOUT / HEARTBEAT))
        self.assertFalse(stream.aborted)
        clock.advance(HEARTBEAT)
        self.assertTrue(stream.aborted)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_starved_master_cuts_off_no_client_for_the_time_it_did_not_run(self):
        """
        The hub's timer late by more than the timeout: the master did not
        run, and read nothing, meanwhile; the client is still served, and is
        cut off only after TIMEOUT of the master's running time.
        """
        clock, node, hub = makeHub(self)
        session, stream = connect(hub, "alice")
        clock.advance(TIMEOUT + 3 * HEARTBEAT)
        self.assertFalse(stream.aborted)
        clock.pump([HEARTBEAT] * int(TIMEOUT / HEARTBEAT - 1))
        self.assertFalse(stream.aborted)
        clock.advance(HEARTBEAT)
        self.assertTrue(stream.aborted)

    def test_any_client_message_keeps_session_alive(self):
        """Heartbeats, acks and opens all count as hearing from the client."""
        clock, node, hub = makeHub(self)
        session, stream = connect(hub, "alice")
        messages = [pb.ClientMessage(heartbeat=pb.Heartbeat()),
                    pb.ClientMessage(ack=pb.Cursor(time_us=1, id="x/1")),
                    pb.ClientMessage(open=pb.SessionOpen(timeline=True))]
        for message in messages * 3:
            clock.advance(TIMEOUT)
            session.messageReceived(message)
        clock.advance(TIMEOUT)
        self.assertFalse(stream.aborted)

    def test_connection_lost_stops_the_heartbeat(self):
        """A closed session leaves no timer on the clock and sends nothing more."""
        clock, node, hub = makeHub(self)
        session, stream = connect(hub, "alice")
        clock.advance(HEARTBEAT)
        session.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10 * HEARTBEAT)
        self.assertEqual(kinds(stream), ["heartbeat"])
        self.assertFalse(stream.aborted)


def ack(session, time_us, postId):
    session.messageReceived(pb.ClientMessage(ack=pb.Cursor(time_us=time_us, id=postId)))


class CursorTests(SynchronousTestCase):
    def test_ack_moves_cursor_forward(self):
        """Each later ack becomes the user's cursor."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        ack(session, 10, "vm1.test/4")
        self.assertEqual(hub.cursors["alice"], (10, "vm1.test/4"))
        ack(session, 12, "vm1.test/5")
        self.assertEqual(hub.cursors["alice"], (12, "vm1.test/5"))

    def test_older_ack_does_not_move_cursor_back(self):
        """An ack behind the cursor (say from an older session) is ignored."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        ack(session, 12, "vm1.test/5")
        ack(session, 10, "vm1.test/9")
        self.assertEqual(hub.cursors["alice"], (12, "vm1.test/5"))

    def test_ack_at_same_time_orders_by_post_id(self):
        """Two posts with the same time are ordered by id, like everywhere."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        ack(session, 12, "vm1.test/5")
        ack(session, 12, "vm2.test/1")
        self.assertEqual(hub.cursors["alice"], (12, "vm2.test/1"))

    def test_acks_are_kept_per_user(self):
        """bob's ack does not move alice's cursor."""
        clock, node, hub = makeHub(self)
        alice, _ = openTimeline(hub, "alice")
        bob, _ = openTimeline(hub, "bob")
        ack(alice, 5, "vm1.test/1")
        ack(bob, 9, "vm1.test/2")
        self.assertEqual(hub.cursors, {"alice": (5, "vm1.test/1"), "bob": (9, "vm1.test/2")})

    def test_connection_lost_removes_session_and_keeps_cursor(self):
        """A broken stream deactivates the session; the user's cursor stays."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        ack(session, 10, "vm1.test/4")
        session.connectionLost(None)
        self.assertNotIn("alice", hub.sessions)
        self.assertFalse(session.live)
        self.assertEqual(hub.cursors["alice"], (10, "vm1.test/4"))


class HubTests(SynchronousTestCase):
    def test_count_counts_sessions_of_every_user(self):
        """count() is the number of connected sessions, opened or not."""
        clock, node, hub = makeHub(self)
        self.assertEqual(hub.count(), 0)
        alice1, _ = openTimeline(hub, "alice")
        openTimeline(hub, "alice")
        connect(hub, "bob")
        self.assertEqual(hub.count(), 3)
        alice1.connectionLost(None)
        self.assertEqual(hub.count(), 2)

    def test_losing_one_of_two_sessions_keeps_the_other(self):
        """alice's second session stays live, and still gets her posts."""
        clock, node, hub = makeHub(self)
        first, _ = openTimeline(hub, "alice")
        second, stream = openTimeline(hub, "alice")
        first.connectionLost(None)
        node.post("alice", "still here", "r1")
        self.assertEqual(hub.sessions["alice"], {second})
        self.assertEqual(sentPosts(stream), [("alice", "still here")])

    def test_close_all_closes_every_stream(self):
        """On shutdown every session's stream is closed (not aborted)."""
        clock, node, hub = makeHub(self)
        streams = [openTimeline(hub, user)[1] for user in ("alice", "bob")]
        streams.append(connect(hub, "carol")[1])
        hub.closeAll()
        self.assertEqual([(s.closed, s.aborted) for s in streams], [(True, False)] * 3)


class CatchUpTests(SynchronousTestCase):
    """
    A catch-up of thousands of posts goes a page at a time, as fast as the
    client reads, and is never cut off; live push resumes after it.
    """

    def returningReader(self, missed=5000):
        """alice read bob's first post, then bob posted C{missed} more."""
        clock, node, hub = makeHub(self)
        node.follow("alice", "bob", "f1")
        first = node.post("bob", "b0", "r0")
        node.markRead("alice", first.post.key)
        for n in range(1, missed + 1):
            node.post("bob", "b%d" % (n,), "r%d" % (n,))
        return clock, node, hub

    def test_a_returning_reader_gets_every_missed_post_in_order(self):
        """5,000 missed posts all arrive, in order, then the ready marker with their count."""
        clock, node, hub = self.returningReader(5000)
        session, stream = openTimeline(hub, "alice")
        stream.readAll()
        self.assertEqual(sentPosts(stream), [("bob", "b%d" % n) for n in range(1, 5001)])
        self.assertEqual(kinds(stream)[-1], "ready")
        self.assertEqual(stream.sent[-1].ready.history, 5000)
        self.assertFalse(stream.aborted)
        self.assertTrue(session.live)

    def test_a_catch_up_waits_for_the_reader(self):
        """Only a page goes before the client reads: what is queued stays bounded."""
        clock, node, hub = self.returningReader(5000)
        session, stream = openTimeline(hub, "alice")
        self.assertEqual(len(sentPosts(stream)), CATCH_UP_PAGE)
        self.assertNotIn("ready", kinds(stream))
        stream.read()
        self.assertEqual(len(sentPosts(stream)), 2 * CATCH_UP_PAGE)
        stream.readAll()
        self.assertLessEqual(stream.mostUnread, CATCH_UP_PAGE + 1)

    def test_a_resumed_timeline_is_paged_too(self):
        """A client resuming from a cursor 3,000 posts back gets all 3,000."""
        clock, node, hub = makeHub(self)
        updates = [node.post("alice", "a%d" % (n,), "r%d" % (n,)) for n in range(3001)]
        session, stream = openTimeline(hub, "alice", cursor=cursorOf(updates[0]))
        stream.readAll()
        self.assertEqual(sentPosts(stream), [("alice", "a%d" % n) for n in range(1, 3001)])
        self.assertEqual(stream.sent[-1].ready.history, 3000)

    def test_a_post_made_during_the_catch_up_comes_once_in_order(self):
        """A new post while pages are still going comes with the last page, not twice."""
        clock, node, hub = self.returningReader(1000)
        session, stream = openTimeline(hub, "alice")
        node.post("bob", "during", "r-during")
        stream.readAll()
        posts = sentPosts(stream)
        self.assertEqual(posts[-1], ("bob", "during"))
        self.assertEqual(posts.count(("bob", "during")), 1)
        self.assertEqual(len(posts), 1001)

    def test_a_late_post_older_than_the_cursor_is_pushed_during_the_catch_up(self):
        """A replicated post older than the pages already sent is pushed at once."""
        from snstwist.core.model import Post, Update
        clock, node, hub = self.returningReader(1000)
        session, stream = openTimeline(hub, "alice")
        late = Update(origin="vm2.x", seq=1, time_us=2,
                      post=Post(id="vm2.x/1", author="bob", time_us=2, text="late"))
        node.receive([late])
        self.assertIn(("bob", "late"), sentPosts(stream))
        stream.readAll()
        self.assertEqual(sentPosts(stream).count(("bob", "late")), 1)

    def test_live_posts_follow_the_catch_up(self):
        """Once caught up, new posts are pushed live as before."""
        clock, node, hub = self.returningReader(500)
        session, stream = openTimeline(hub, "alice")
        stream.readAll()
        node.post("bob", "live", "r-live")
        self.assertEqual(sentPosts(stream)[-1], ("bob", "live"))

    def test_a_session_lost_during_the_catch_up_sends_no_more(self):
        """The client went away mid catch-up: nothing more is sent, nothing fails."""
        clock, node, hub = self.returningReader(1000)
        session, stream = openTimeline(hub, "alice")
        session.connectionLost(None)
        sent = len(stream.sent)
        stream.read()
        self.assertEqual(len(stream.sent), sent)


class SessionCapTests(SynchronousTestCase):
    """A master holds a bounded number of sessions per user and per address."""

    def test_a_user_past_the_cap_is_refused_with_resource_exhausted(self):
        """The 11th session of alice is refused, saying why; bob still gets one."""
        from snstwist.core import errors
        from snstwist.core.limits import MAX_SESSIONS_PER_USER
        clock, node, hub = makeHub(self)
        for _ in range(MAX_SESSIONS_PER_USER):
            hub.session("alice", "ipv4:10.0.0.1:1").makeConnection(FakeStream())
        e = self.assertRaises(errors.TooManySessions, hub.session, "alice", "ipv4:10.0.0.2:2")
        self.assertEqual(errors.statusFor(e)[0], errors.Status.RESOURCE_EXHAUSTED)
        self.assertIn("alice has %d sessions" % (MAX_SESSIONS_PER_USER,), e.message)
        hub.session("bob", "ipv4:10.0.0.1:3")

    def test_a_closed_session_frees_its_place(self):
        """Once one of alice's sessions ends she may open another."""
        from snstwist.core.limits import MAX_SESSIONS_PER_USER
        clock, node, hub = makeHub(self)
        sessions = []
        for _ in range(MAX_SESSIONS_PER_USER):
            session = hub.session("alice", "ipv4:10.0.0.1:1")
            session.makeConnection(FakeStream())
            sessions.append(session)
        sessions[0].connectionLost(None)
        hub.session("alice", "ipv4:10.0.0.1:1")

    def test_an_address_past_the_cap_is_refused(self):
        """Sessions of many users from one address are bounded too; others are not."""
        from snstwist.core import errors
        clock, node, hub = makeHub(self, users=("u0", "u1", "u2", "u3"))
        hub.maxPerAddress = 3
        for n in range(3):
            hub.session("u%d" % (n,), "ipv4:10.0.0.9:%d" % (n,)).makeConnection(FakeStream())
        e = self.assertRaises(errors.TooManySessions, hub.session, "u3", "ipv4:10.0.0.9:7")
        self.assertIn("from 10.0.0.9", e.message)
        hub.session("u3", "ipv6:[::1]:7")

    def test_sessions_cut_off_for_silence_free_their_places(self):
        """A silent session removed by the heartbeat (then lost) is counted once."""
        clock, node, hub = makeHub(self)
        session = hub.session("alice", "ipv4:10.0.0.1:1")
        session.makeConnection(FakeStream())
        clock.advance(TIMEOUT + HEARTBEAT)
        session.connectionLost(None)
        self.assertEqual((hub.sessions, hub.addresses), ({}, {}))


class RetriedPostShownOnceTests(SynchronousTestCase):
    def test_an_earlier_copy_arriving_after_the_shown_one_is_not_pushed_again(self):
        """
        alice's post was stored on vm2 (its master died before answering)
        and retried on vm3, whose copy reached bob's live timeline first;
        when vm2's earlier copy arrives it replaces the shown one in the
        files, but bob must not be shown the same post a second time.
        """
        clock, node, hub = makeHub(self)
        self.successResultOf(node.durable(node.follow("bob", "alice", "f1")))
        session, stream = openTimeline(hub, "bob")
        now = int(clock.seconds() * 1e6)
        first = postUpdate("vm2.a", 1, now + 1000, "alice", "hi", requestId="req-1")
        retry = postUpdate("vm3.b", 1, now + 2000, "alice", "hi", requestId="req-1")
        self.successResultOf(node.receive([retry]))
        self.successResultOf(node.receive([first]))
        self.assertEqual(sentPosts(stream), [("alice", "hi")])
