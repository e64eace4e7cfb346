"""
A timeline resumed on another master after a failover shows every post once:
the master reports what its pushes cover (a version vector), a resumed
session is sent every post that vector lacks however late the post arrived,
and the client shows each (author, request id) once, whichever copy of a
retried post a master sends.  On a Clock: real Nodes on MemoryStores, the
server's sessions and the client's timeline; a Hypothesis model of the
screen over failovers at the end.
"""

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.client import timeline as timelineModule
from snstwist.client.timeline import RESUME_WINDOW_US, Session, Timeline
from snstwist.core import errors
from snstwist.core.limits import CATCH_UP_PAGE, MAX_EXTRA
from snstwist.core.model import Post
from snstwist.core.node import Node, durableVector
from snstwist.core.state import VersionVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.server import clientsession
from snstwist.server.sessions import HEARTBEAT, SessionHub
from snstwist.storage.store import MemoryStore, SQLiteStore
from tests.fakes import FakeStream
from tests.strategies import followUpdate, postUpdate, userUpdate
from tests.test_sessions import cursorOf, kinds, makeHub, openTimeline, sentPosts

SECOND = 1000000


def vectorOf(message):
    return {o: (s.contiguous, s.extra) for o, s in
            VersionVector.fromProto(message).origins.items()}


def resume(hub, user, cursor, covered):
    """A session of C{user} resuming from C{cursor} with the C{covered} VersionVector."""
    return openTimeline(hub, user, report=True, cursor=cursor, covered=covered.toProto())


class ReportTests(SynchronousTestCase):
    def test_ready_reports_what_the_pushes_cover_when_asked(self):
        """The ready marker carries the VM's durable version vector."""
        clock, node, hub = makeHub(self)
        node.post("alice", "a1", "r1")
        session, stream = openTimeline(hub, "alice", report=True)
        self.assertEqual(vectorOf(stream.last("ready").covered),
                         {"vm1.test": (node.seq, set())})

    def test_what_is_still_being_written_is_not_reported(self):
        """A post accepted but not on disk yet has not been pushed: not covered."""
        clock, node, hub = makeHub(self, manual=True)
        node.store.flush()
        node.post("alice", "a1", "r1")
        session, stream = openTimeline(hub, "alice", report=True)
        self.assertEqual(vectorOf(stream.last("ready").covered),
                         {"vm1.test": (node.seq - 1, set())})

    def test_no_report_unless_asked(self):
        """An older client asks for nothing and gets plain heartbeats."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        self.assertFalse(stream.last("ready").HasField("covered"))
        node.receive([postUpdate("vm2.x", 1, 5, "bob", "elsewhere")])
        clock.advance(HEARTBEAT)
        self.assertEqual(kinds(stream), ["ready", "heartbeat"])

    def test_each_heartbeat_reports_the_origins_that_changed(self):
        """What became durable since the last heartbeat is reported, and only that origin."""
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice", report=True)
        clock.advance(HEARTBEAT)
        node.receive([postUpdate("vm2.x", 1, 5, "bob", "elsewhere")])
        clock.advance(HEARTBEAT)
        self.assertEqual(vectorOf(stream.last("covered")), {"vm2.x": (1, set())})
        clock.advance(HEARTBEAT)
        self.assertEqual(kinds(stream)[-1], "heartbeat")


class LatePostTests(SynchronousTestCase):
    """
    bob's post was accepted with one copy on vm2 while it was cut off, and
    reached this master long after its own time; alice, who follows bob,
    had meanwhile been shown newer posts on another master.
    """

    def setUp(self):
        self.clock, self.node, self.hub = makeHub(self)
        self.node.follow("alice", "bob", "f1")
        self.clock.advance(10000)
        self.shown = self.node.post("bob", "shown", "r-shown")
        # What alice's old master reported: everything made here.
        self.covered = durableVector(self.node)
        self.cursor = cursorOf(self.shown)
        self.cursor.time_us -= RESUME_WINDOW_US

    def late(self, seq=1, seconds=60, text="late"):
        return postUpdate("vm2.x", seq, self.shown.time_us - seconds * SECOND, "bob", text,
                          requestId="rl%d" % (seq,))

    def test_a_resumed_timeline_gets_a_late_post_its_vector_lacks(self):
        """
        The late post is older than the resume window, and is sent; what
        the vector covers is not sent again.
        """
        self.node.receive([self.late()])
        session, stream = resume(self.hub, "alice", self.cursor, self.covered)
        self.assertEqual(sentPosts(stream), [("bob", "late")])
        self.assertEqual(stream.last("ready").history, 1)

    def test_without_a_vector_the_late_post_is_missed(self):
        """What an older client gets: only the window before its cursor."""
        self.node.receive([self.late()])
        session, stream = openTimeline(self.hub, "alice", cursor=self.cursor)
        self.assertEqual(sentPosts(stream), [("bob", "shown")])

    def test_a_vector_lacking_more_than_the_bound_resumes_by_the_cursor(self):
        """
        Reading what a vector lacks costs what it lacks: past
        RESUME_GAP_MAX (a vector from long ago, or a hostile empty one)
        the timeline resumes by its cursor alone, as without a vector.
        """
        self.node.receive([self.late()])
        self.assertEqual(clientsession.gapOf(self.node.store.held(), self.covered), 1)
        self.assertEqual(clientsession.gapOf(self.node.store.held(), VersionVector()),
                         self.node.store.held().count())
        self.patch(clientsession, "RESUME_GAP_MAX", 0)
        session, stream = resume(self.hub, "alice", self.cursor, self.covered)
        self.assertEqual(sentPosts(stream), [("bob", "shown")])
        session, stream = resume(self.hub, "alice", self.cursor, VersionVector())
        self.assertEqual(sentPosts(stream), [("bob", "shown")])

    def test_late_posts_come_in_time_order_a_page_at_a_time(self):
        """More late posts than a page: in order, one page before the client reads."""
        self.node.receive([self.late(seq, seconds=1000 - seq, text="late %d" % (seq,))
                           for seq in range(CATCH_UP_PAGE + 50, 0, -1)])
        session, stream = resume(self.hub, "alice", self.cursor, self.covered)
        self.assertEqual(len(sentPosts(stream)), CATCH_UP_PAGE)
        stream.readAll()
        self.assertEqual(sentPosts(stream), [("bob", "late %d" % (seq,))
                                             for seq in range(1, CATCH_UP_PAGE + 51)])
        self.assertEqual(kinds(stream)[-1], "ready")

    def test_a_late_post_arriving_during_the_late_part_is_sent_once(self):
        """Pushed while the pages are going: sent once, in the page or at once."""
        self.node.receive([self.late(seq, seconds=1000 - seq, text="late %d" % (seq,))
                           for seq in range(1, CATCH_UP_PAGE + 51)])
        session, stream = resume(self.hub, "alice", self.cursor, self.covered)
        early = postUpdate("vm3.y", 1, self.shown.time_us - 2000 * SECOND, "bob", "earliest")
        between = postUpdate("vm3.y", 2, self.shown.time_us - 800 * SECOND, "bob", "between")
        self.node.receive([early, between])
        stream.readAll()
        posts = [text for _, text in sentPosts(stream)]
        self.assertEqual(posts.count("earliest"), 1)
        self.assertEqual(posts.count("between"), 1)
        self.assertEqual(len(posts), CATCH_UP_PAGE + 52)
        self.assertLess(posts.index("between"), posts.index("late 250"))

    def test_a_post_the_vector_covers_is_not_pushed_again(self):
        """A post alice's old master showed her reaches this one later: not pushed."""
        elsewhere = postUpdate("vm2.x", 1, self.shown.time_us + 10, "bob", "seen elsewhere")
        self.covered.add("vm2.x", 1)
        session, stream = resume(self.hub, "alice", self.cursor, self.covered)
        self.node.receive([elsewhere])
        self.node.post("bob", "new", "r-new")
        self.assertEqual(sentPosts(stream), [("bob", "new")])


def post(seq, time_us, request="", origin="vm1.a"):
    return Post(id="%s/%d" % (origin, seq), author="bob", time_us=time_us,
                text="p%d" % (seq,), request=request)


def makeTimeline():
    shown, sent = [], []
    timeline = Timeline(Clock(), shown.append, sent.append)
    timeline.active = True
    return timeline, shown


class ScreenTests(SynchronousTestCase):
    def test_the_other_copy_of_a_shown_request_is_not_shown(self):
        """Two ids, one (author, request): the screen shows the first to come."""
        timeline, shown = makeTimeline()
        timeline.received(post(1, 10, request="req"))
        timeline.received(post(1, 5, request="req", origin="vm2.b"))
        self.assertEqual([p.id for p in shown], ["vm1.a/1"])

    def test_posts_without_request_ids_are_told_apart_by_id(self):
        timeline, shown = makeTimeline()
        timeline.received(post(1, 10))
        timeline.received(post(2, 10))
        self.assertEqual(len(shown), 2)

    def test_the_memory_of_shown_requests_is_bounded(self):
        timeline, shown = makeTimeline()
        self.patch(timelineModule, "SHOWN_MEMORY", 3)
        for seq in range(1, 6):
            timeline.received(post(seq, seq, request="r%d" % (seq,)))
        self.assertEqual(list(timeline.requests), [("bob", "r3"), ("bob", "r4"), ("bob", "r5")])

    def test_a_resume_sends_what_was_reported_and_shown_since(self):
        """The vector of the last reports, plus the posts shown after them."""
        timeline, shown = makeTimeline()
        self.assertFalse(timeline.openRequest().HasField("covered"))
        reported = VersionVector()
        reported.add("vm1.a", 1)
        timeline.coveredAlso(reported.toProto())
        timeline.received(post(3, 10 * SECOND))
        request = timeline.openRequest()
        self.assertTrue(request.report)
        self.assertEqual(vectorOf(request.covered), {"vm1.a": (1, {3})})
        self.assertEqual(request.cursor.time_us, 0)

    def test_a_resume_before_any_report_sends_no_vector(self):
        """Without a report there is nothing to believe: the window alone."""
        timeline, shown = makeTimeline()
        timeline.received(post(3, 20 * SECOND))
        request = timeline.openRequest()
        self.assertFalse(request.HasField("covered"))
        self.assertEqual(request.cursor.time_us, 10 * SECOND)

    def test_a_vector_no_master_compacts_is_forgotten(self):
        """More shown posts past the reported vector than a master accepts: dropped."""
        timeline, shown = makeTimeline()
        timeline.coveredAlso(pb.VersionVector())
        for seq in range(2, MAX_EXTRA + 3):
            timeline.received(post(seq, seq))
        self.assertIsNone(timeline.covered)
        self.assertFalse(timeline.openRequest().HasField("covered"))


def twoMasters(test):
    """Two VMs' nodes and hubs on one Clock; alice follows bob on both."""
    clock = Clock()
    masters = []
    for vm in ("vm1", "vm2"):
        node = Node(vm, vm + ".t", MemoryStore(), clock)
        hub = SessionHub(node, clock)
        node.addDurableObserver(hub.publish)
        test.successResultOf(node.load())
        masters.append((node, hub))
    return clock, masters


class Gathered:
    """On a L{Wire}: one message of C{kind}, built from C{items} when it is delivered."""

    def __init__(self, kind, build):
        self.kind = kind
        self.build = build
        self.items = []


class Wire:
    """
    One session's stream between a client L{Session} and a server
    L{ClientSession}: what each end sends is queued, and delivered by L{pump}.
    """

    peer = "ipv4:127.0.0.1:5555"

    def __init__(self, client, server):
        self.client, self.server = client, server
        self.toClient, self.toServer = [], []
        self.open = True
        self.clientEnd = ClientEnd(self)

    def send(self, message):  # the server's end
        if self.open:
            self.toClient.append(message)
        return self.open

    def gather(self, kind, items, build, limit):
        """As a real stream's: items join the last message queued while it is of C{kind}."""
        for item in items:
            tail = self.toClient[-1] if self.open and self.toClient else None
            if not (isinstance(tail, Gathered) and tail.kind == kind and len(tail.items) < limit):
                tail = Gathered(kind, build)
                if not self.send(tail):
                    return False
            tail.items.append(item)
        return True

    def drained(self, below):
        return defer.succeed(None)

    def close(self, reason=None):
        if self.open:
            self.open = False
            self.server.connectionLost(reason)
            self.client.connectionLost(reason)

    abort = close

    def pump(self):
        while self.open and (self.toClient or self.toServer):
            if self.toServer:
                self.server.messageReceived(self.toServer.pop(0))
            else:
                message = self.toClient.pop(0)
                if isinstance(message, Gathered):
                    message = message.build(message.items)
                if isinstance(message, bytes):
                    # Sent encoded (a post encoded once for its sessions).
                    message = pb.ServerPush.FromString(message)
                self.client.messageReceived(message)


class ClientEnd:
    def __init__(self, wire):
        self.wire = wire

    def send(self, message):
        if self.wire.open:
            self.wire.toServer.append(message)

    def close(self):
        self.wire.close()

    abort = close


class Screen:
    """alice's client: a Timeline and its session on one of two masters at a time."""

    def __init__(self, clock, masters):
        self.clock = clock
        self.masters = masters
        self.shown = []
        self.timeline = Timeline(clock, self.shown.append, self.send)
        self.timeline.active = True
        self.wire = None

    def send(self, message):
        if self.wire is not None:
            self.wire.clientEnd.send(message)

    def connect(self, index):
        node, hub = self.masters[index]
        client = Session(self.clock, self.timeline, lambda: None, lambda s, r: None)
        server = hub.session("alice", Wire.peer)
        self.wire = Wire(client, server)
        server.makeConnection(self.wire)
        client.makeConnection(self.wire.clientEnd)
        self.index = index
        self.wire.pump()

    def failover(self):
        """master1 is gone for the client: it resumes on the other master."""
        self.wire.client.closing = True
        self.wire.close()
        self.connect(1 - self.index)

    def tick(self, seconds):
        for _ in range(seconds):
            self.clock.advance(1)
            self.wire.pump()

    def requests(self):
        return [(p.author, p.request) for p in self.shown]


def sync(source, target, most=None):
    """C{target} receives (at most C{most} of) what C{source} holds and it lacks."""
    lacking = sorted((u for u in source.store.durable.values() if not target.replica.has(u)),
                     key=lambda u: (u.origin, u.seq))
    if lacking:
        target.receive(lacking[:most])


operations = st.lists(st.one_of(
    st.tuples(st.just("post"), st.integers(0, 1), st.booleans()),
    # Posts made while the session's stream is still busy (gathered).
    st.tuples(st.just("burst"), st.integers(0, 1), st.integers(2, 5)),
    st.tuples(st.just("sync"), st.integers(0, 1), st.sampled_from([1, 2, None])),
    st.tuples(st.just("tick"), st.integers(1, 15)),
    st.tuples(st.just("failover")),
), max_size=30)


class ScreenModelTests(SynchronousTestCase):
    """
    bob posts on two masters that replicate when the model says, some posts
    retried on the other master (two copies, one request); time passes;
    alice's client fails over from one master to the other.  Her screen
    never shows a request twice, and once the masters have exchanged
    everything it shows every post bob made.
    """

    @settings(max_examples=150, deadline=None)
    @given(operations)
    def test_every_post_shown_exactly_once_over_failovers(self, ops):
        clock, masters = twoMasters(self)
        nodes = [node for node, hub in masters]
        nodes[0].login("alice")
        nodes[0].login("bob")
        nodes[0].follow("alice", "bob", "f")
        sync(nodes[0], nodes[1])
        screen = Screen(clock, masters)
        screen.connect(0)
        requests = set()
        for op in ops:
            if op[0] == "post":
                _, index, retried = op
                request = "r%d" % (len(requests),)
                requests.add(("bob", request))
                nodes[index].post("bob", "text", request)
                if retried:
                    clock.advance(0.001)
                    nodes[1 - index].post("bob", "text", request)
            elif op[0] == "burst":
                for _ in range(op[2]):
                    request = "r%d" % (len(requests),)
                    requests.add(("bob", request))
                    nodes[op[1]].post("bob", "text", request)
            elif op[0] == "sync":
                sync(nodes[op[1]], nodes[1 - op[1]], op[2])
            elif op[0] == "tick":
                screen.tick(op[1])
            else:
                screen.failover()
            screen.wire.pump()
            shown = screen.requests()
            self.assertEqual(len(shown), len(set(shown)), "a request shown twice")
        sync(nodes[0], nodes[1])
        sync(nodes[1], nodes[0])
        screen.tick(3)
        self.assertEqual(sorted(screen.requests()), sorted(requests))
        for _node, hub in masters:
            hub.closeAll()


class UncoveredQueryTests(TestCase):
    """
    What a resumed session reads first, on a real SQLite file and in
    memory alike: the shown posts of given authors whose updates a vector
    lacks, between two post keys, oldest first.
    """

    async def stores(self):
        path = self.mktemp()
        os.makedirs(path)
        stores = [SQLiteStore(path), MemoryStore()]
        ups = [userUpdate("vm1.a", 1, 100, "alice"),
               postUpdate("vm1.a", 2, 200, "alice", "a1", requestId="r1"),
               postUpdate("vm1.a", 3, 300, "bob", "b1"),
               followUpdate("vm1.a", 4, 400, "bob", "alice"),
               postUpdate("vm2.b", 1, 250, "alice", "a2"),
               postUpdate("vm2.b", 2, 150, "alice", "a1 again", requestId="r1"),
               postUpdate("vm2.b", 3, 600, "bob", "b2"),
               postUpdate("vm2.b", 4, 50, "alice", "a3")]
        for store in stores:
            self.addCleanup(store.close)
            await store.open()
            await store.persist(ups, hidden={"vm1.a/2"})
        return stores

    async def test_what_the_vector_lacks_whatever_its_time(self):
        covered = VersionVector()
        for origin, seq in (("vm1.a", 1), ("vm1.a", 2), ("vm1.a", 3), ("vm2.b", 1)):
            covered.add(origin, seq)
        for store in await self.stores():
            found = await store.uncovered({"alice", "bob"}, covered, (0, ""), (600, "vm2.b/3"), 10)
            self.assertEqual([u.id for u in found], ["vm2.b/4", "vm2.b/2", "vm2.b/3"])
            found = await store.uncovered({"alice"}, covered, (50, "vm2.b/4"), (2 ** 63, ""), 10)
            self.assertEqual([u.id for u in found], ["vm2.b/2"])
            found = await store.uncovered({"alice", "bob"}, VersionVector(), (0, ""), (300, ""),
                                          2)
            self.assertEqual([(u.id, u.post.request) for u in found],
                             [("vm2.b/4", ""), ("vm2.b/2", "r1")])

    async def test_what_the_vector_holds_out_of_order_is_covered(self):
        """A sequence number the vector holds past its contiguous ones is not sent again."""
        covered = VersionVector()
        covered.add("vm2.b", 2)
        for store in await self.stores():
            found = await store.uncovered({"alice"}, covered, (0, ""), (2 ** 63, ""), 10)
            self.assertEqual([u.id for u in found], ["vm2.b/4", "vm2.b/1"])


class FarewellTests(SynchronousTestCase):
    """
    A session the server ends for a reason says why first, so that the
    client knows even when its gRPC reports the end as INTERNAL.
    """

    def test_an_expired_session_says_so_before_it_ends(self):
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        session.expires = clock.seconds() + 1
        clock.advance(HEARTBEAT)
        end = stream.last("end")
        self.assertEqual((end.code, end.message),
                         (errors.Status.UNAUTHENTICATED.value,
                          "your session has expired: log in again"))
        self.assertTrue(stream.aborted)

    def test_a_revoked_session_says_so_before_it_ends(self):
        clock, node, hub = makeHub(self)
        session, stream = openTimeline(hub, "alice")
        session.generation = (1, "old")
        hub.revoke("alice", (2, "new"))
        self.assertIn("password was changed", stream.last("end").message)
        self.assertIsInstance(stream.reason, errors.NotLoggedIn)

    def test_the_client_reports_what_the_farewell_said(self):
        """The stream then ends INTERNAL: the session is lost for the farewell's reason."""
        lost = []
        timeline, shown = makeTimeline()
        client = Session(Clock(), timeline, lambda: None, lambda s, r: lost.append(r))
        client.makeConnection(FakeStream())
        client.messageReceived(pb.ServerPush(end=pb.SessionEnd(
            code=errors.Status.UNAUTHENTICATED.value, message="your session has expired")))
        client.connectionLost(Failure(errors.RemoteError(errors.Status.INTERNAL,
                                                         "Internal error from Core")))
        self.assertEqual((lost[0].value.status, lost[0].value.message),
                         (errors.Status.UNAUTHENTICATED, "your session has expired"))
