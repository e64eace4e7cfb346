"""
Replication between VMs: the hybrid clock, a VM's L{Node} and its write
rules, and both ends of C{BroadcastPosts} (L{ReplicaReceiver}, L{Replicator}
with its L{PeerLink}s), on a L{Clock}, a L{MemoryStore} and fake streams.
"""

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors
from snstwist.core.limits import CLOCK_WINDOW_US, MAX_ERROR_TEXT
from snstwist.core.model import FollowChange, ReadMark, Update
from snstwist.rpc import sns_pb2 as pb
from snstwist.core.node import HybridClock, Node
from snstwist.server.peers import ACK_TIMEOUT, ANTI_ENTROPY, LINK_TIMEOUT, PeerLink, ReplicaReceiver
from snstwist.server.replication import Replicator
from snstwist.storage.store import MemoryStore
from tests.fakes import FakeStream
from tests.servers import readWindows
from tests.strategies import LAST_US, postUpdate, userUpdate


class RecordingStore(MemoryStore):
    """A MemoryStore that also lists every update it is asked to persist."""

    def __init__(self, manual=False):
        super().__init__(manual)
        self.persisted = []

    def persist(self, updates, hidden=frozenset(), displaced=()):
        self.persisted.extend(updates)
        return super().persist(updates, hidden, displaced)


def makeNode(store=None, clock=None, onDurable=None):
    node = Node("vm1", "vm1.a", store or MemoryStore(), clock or Clock())
    if onDurable is not None:
        node.addDurableObserver(onDurable)
    return node


def withUsers(*names, **kwargs):
    """A node on which C{names} have logged in."""
    node = makeNode(**kwargs)
    for name in names:
        node.login(name)
    return node


def updatesMessage(*updates):
    return pb.ReplicationMessage(updates=pb.UpdateBatch(updates=[u.toProto() for u in updates]))


def ackMessage(*ids):
    return pb.ReplicationMessage(ack=pb.ReplicaAck(ids=ids))


class HybridClockTests(SynchronousTestCase):
    def test_now_follows_the_clock(self):
        """On a clock ahead of everything seen, now() is its time in microseconds."""
        clock = Clock()
        clock.advance(2.5)
        self.assertEqual(HybridClock(clock).now(), 2_500_000)

    def test_now_increases_while_the_clock_stands_still(self):
        """Successive now() are strictly increasing even in one microsecond."""
        hlc = HybridClock(Clock())
        stamps = [hlc.now() for _ in range(5)]
        self.assertEqual(stamps, sorted(set(stamps)))

    def test_now_exceeds_an_observed_time(self):
        """After observing a peer's time ahead of our clock, now() is later still."""
        hlc = HybridClock(Clock())
        hlc.observe(10_000_000)
        self.assertGreater(hlc.now(), 10_000_000)

    def test_observing_an_older_time_changes_nothing(self):
        """An observed time behind ours does not pull the clock back."""
        clock = Clock()
        clock.advance(5)
        hlc = HybridClock(clock)
        first = hlc.now()
        hlc.observe(1)
        self.assertEqual(hlc.now(), first + 1)


class NodeWriteTests(SynchronousTestCase):
    def assertWritesNothing(self, node, error, write, *args):
        """C{write(*args)} raises C{error} and leaves memory, store and seq as they were."""
        before = (node.replica.snapshot(), dict(node.store.durable), node.seq)
        self.assertRaises(error, write, *args)
        self.assertEqual((node.replica.snapshot(), node.store.durable, node.seq), before)

    def test_login_creates_a_new_user(self):
        """The first login of a name creates that user, durably."""
        node = makeNode()
        update = node.login("alice")
        self.assertEqual((update.user, node.replica.users, list(node.store.durable.values())),
                         ("alice", {"alice"}, [update]))

    def test_login_of_an_existing_user_writes_nothing(self):
        """A second login of the same name returns None and stores nothing more."""
        node = withUsers("alice")
        self.assertEqual((node.login("alice"), len(node.store.durable)), (None, 1))

    def test_follow_starts_following(self):
        """follow() makes the user a follower of the target."""
        node = withUsers("alice", "bob")
        update = node.follow("alice", "bob", "r-1")
        self.assertEqual((update.follow, node.replica.followers("bob")),
                         (FollowChange("alice", "bob", True), ["alice"]))

    def test_unfollow_stops_following(self):
        """unfollow() of a followed user ends the relation."""
        node = withUsers("alice", "bob")
        node.follow("alice", "bob", "r-1")
        node.unfollow("alice", "bob", "r-2")
        self.assertFalse(node.replica.isFollowing("alice", "bob"))

    def test_following_yourself_is_refused(self):
        """follow() of oneself raises FollowSelf and writes nothing."""
        node = withUsers("alice")
        self.assertWritesNothing(node, errors.FollowSelf, node.follow, "alice", "alice", "r")

    def test_unfollowing_yourself_is_refused(self):
        """unfollow() of oneself raises FollowSelf and writes nothing."""
        node = withUsers("alice")
        self.assertWritesNothing(node, errors.FollowSelf, node.unfollow, "alice", "alice", "r")

    def test_following_an_unknown_user_is_refused(self):
        """follow() of a user who never logged in raises UnknownUser, writes nothing."""
        node = withUsers("alice")
        self.assertWritesNothing(node, errors.UnknownUser, node.follow, "alice", "bob", "r")

    def test_unfollowing_an_unknown_user_is_refused(self):
        """unfollow() of a user who never logged in raises UnknownUser, writes nothing."""
        node = withUsers("alice")
        self.assertWritesNothing(node, errors.UnknownUser, node.unfollow, "alice", "bob", "r")

    def test_following_twice_is_refused(self):
        """follow() of a user already followed raises AlreadyFollowing, writes nothing."""
        node = withUsers("alice", "bob")
        node.follow("alice", "bob", "r-1")
        self.assertWritesNothing(node, errors.AlreadyFollowing,
                                 node.follow, "alice", "bob", "r-2")

    def test_unfollowing_a_user_not_followed_is_refused(self):
        """unfollow() of a user not followed raises NotFollowing, writes nothing."""
        node = withUsers("alice", "bob")
        self.assertWritesNothing(node, errors.NotFollowing, node.unfollow, "alice", "bob", "r")

    def test_a_rejected_post_is_not_written(self):
        """A post with invalid text raises InvalidPost and uses no sequence number."""
        node = withUsers("alice")
        self.assertWritesNothing(node, errors.InvalidPost, node.post, "alice", "", "r")

    def test_post_ids_are_origin_and_increasing_seq(self):
        """Each post's id is "<origin>/<seq>", seqs counting up from the last write."""
        node = withUsers("alice")
        ids = [node.post("alice", "post %d" % i, "r-%d" % i).post.id for i in range(3)]
        self.assertEqual(ids, ["vm1.a/2", "vm1.a/3", "vm1.a/4"])

    def test_posts_are_timestamped_by_the_hybrid_clock(self):
        """A post's time is the node's clock time, in microseconds."""
        clock = Clock()
        clock.advance(7)
        node = withUsers("alice", clock=clock)
        self.assertGreater(node.post("alice", "hi", "r").post.time_us, 7_000_000)


class NodeReloadTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryStore()
        node = withUsers("alice", "bob", store=self.store)
        node.follow("alice", "bob", "r-1")
        node.post("bob", "hello", "r-2")
        node.receive([userUpdate("vm2.a", 9, 1, "carol")])
        self.before = node.replica.snapshot()

    def reload(self):
        node = makeNode(store=self.store)
        self.successResultOf(node.load())
        return node

    def test_reload_restores_the_state(self):
        """
        A node loaded from the same store has the same users and follows,
        and, read from disk when they are asked for, the same posts.
        """
        node = self.reload()
        self.assertEqual(node.replica.postsBy("bob"), [])
        readWindows(self, node)
        self.assertEqual(node.replica.snapshot(), self.before)

    def test_reload_continues_after_the_highest_own_seq(self):
        """After a reload, the next write's seq follows our origin's highest seq."""
        node = self.reload()
        self.assertEqual(node.post("alice", "again", "r-3").id, "vm1.a/5")

    def test_reload_puts_the_clock_past_every_stored_time(self):
        """After a reload, new writes are timestamped after every stored one."""
        node = self.reload()
        newest = max(u.time_us for u in self.store.durable.values())
        self.assertGreater(node.post("alice", "again", "r-3").time_us, newest)


class NodeDurabilityTests(SynchronousTestCase):
    def setUp(self):
        self.store = RecordingStore(manual=True)
        self.durableBatches = []
        self.node = makeNode(store=self.store, onDurable=self.durableBatches.append)

    def test_durable_fires_after_the_flush(self):
        """durable(update) waits for the store to flush the update."""
        d = self.node.durable(self.node.login("alice"))
        self.assertNoResult(d)
        self.store.flush()
        self.successResultOf(d)

    def test_durable_of_a_stored_update_fires_at_once(self):
        """durable() of an update already flushed has its result already."""
        update = self.node.login("alice")
        self.store.flush()
        self.successResultOf(self.node.durable(update))

    def test_receive_applies_peer_updates(self):
        """Updates from a peer become part of the replica."""
        self.node.receive([userUpdate("vm2.a", 1, 10, "bob")])
        self.assertEqual(self.node.replica.users, {"bob"})

    def test_receive_fires_when_the_updates_are_durable(self):
        """receive() fires only once the store has flushed what it applied."""
        d = self.node.receive([userUpdate("vm2.a", 1, 10, "bob")])
        self.assertNoResult(d)
        self.store.flush()
        self.successResultOf(d)

    def test_receive_stores_an_update_once(self):
        """An update received twice is written to the store once."""
        update = userUpdate("vm2.a", 1, 10, "bob")
        self.node.receive([update])
        self.store.flush()
        self.successResultOf(self.node.receive([update]))
        self.assertEqual(self.store.persisted, [update])

    def test_a_repeat_received_before_the_flush_waits_for_it(self):
        """A repeat of an update still being written fires with its flush."""
        update = userUpdate("vm2.a", 1, 10, "bob")
        self.node.receive([update])
        d = self.node.receive([update])
        self.assertNoResult(d)
        self.store.flush()
        self.successResultOf(d)

    def test_all_durable_waits_for_the_last_of_its_updates(self):
        """
        allDurable(updates) fires once, when the last of them is flushed,
        whichever batch each is in (an update named twice counts once).
        """
        alice, bob = self.node.login("alice"), self.node.login("bob")
        d = self.node.allDurable([alice, bob, alice])
        bobsBatch = self.store._pending.pop()
        self.store.flush()
        self.assertNoResult(d)
        self.store._pending.append(bobsBatch)
        self.store.flush()
        self.assertIsNone(self.successResultOf(d))

    def test_all_durable_of_stored_updates_fires_at_once(self):
        alice = self.node.login("alice")
        self.store.flush()
        self.successResultOf(self.node.allDurable([alice]))
        self.successResultOf(self.node.allDurable([]))

    def test_all_durable_fails_once_with_the_first_failure(self):
        """A batch that fails fails it at once; the other batch's flush changes nothing."""
        alice, bob = self.node.login("alice"), self.node.login("bob")
        d = self.node.allDurable([alice, bob])
        _, _, alicesFlush = self.store._pending.pop(0)
        alicesFlush.errback(errors.StorageFailed("disk full on vm1"))
        self.assertEqual(self.failureResultOf(d, errors.StorageFailed).value.message,
                         "disk full on vm1")
        self.store.flush()
        self.assertEqual(len(self.flushLoggedErrors(errors.StorageFailed)), 1)

    def test_on_durable_gets_new_updates_only(self):
        """Durable observers are called once per flushed batch, with only the new updates."""
        first, second = userUpdate("vm2.a", 1, 10, "bob"), userUpdate("vm2.a", 2, 11, "carol")
        self.node.receive([first])
        self.store.flush()
        self.node.receive([first, second])
        self.store.flush()
        self.assertEqual(self.durableBatches, [[first], [second]])

    def test_a_batch_is_shown_before_its_writers_are_answered(self):
        """
        A batch made durable goes to the durable observers (the live
        timelines' pushes) before its writers' Deferreds fire (their
        answers), and is durable while they have it.
        """
        events = []
        update = self.node.login("alice")
        self.node.addDurableObserver(
            lambda updates: events.append(("shown", self.node.isDurable(update.id))))
        self.node.durable(update).addCallback(lambda _: events.append(("answered", True)))
        self.store.flush()
        self.assertEqual(events, [("shown", True), ("answered", True)])

    def test_on_durable_waits_for_the_flush(self):
        """Nothing is reported durable before the store flushed it."""
        self.node.login("alice")
        self.assertEqual(self.durableBatches, [])


class ClockWindowTests(SynchronousTestCase):
    """Peer times more than CLOCK_WINDOW_US ahead of ours are refused, never adopted."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.now = int(self.clock.seconds() * 1e6)
        self.store = MemoryStore()
        self.node = withUsers("alice", store=self.store, clock=self.clock)

    def test_an_update_within_the_window_is_accepted(self):
        """An update dated CLOCK_WINDOW_US ahead is accepted and acknowledged."""
        ahead = userUpdate("vm2.a", 1, self.now + CLOCK_WINDOW_US, "bob")
        self.assertEqual(self.successResultOf(self.node.receive([ahead])), [ahead.id])
        self.assertIn("bob", self.node.replica.users)

    def test_a_far_future_update_is_refused_and_posts_go_on(self):
        """
        An update dated in the year 9999 beside a sound one: only the sound
        one is applied and acknowledged, the hybrid clock is untouched, and
        the next post is dated now.
        """
        before = self.node.hlc.last
        future = userUpdate("vm2.a", 1, LAST_US, "mallory")
        sound = userUpdate("vm2.a", 2, self.now, "bob")
        self.assertEqual(self.successResultOf(self.node.receive([future, sound])), [sound.id])
        self.assertNotIn("mallory", self.node.replica.users)
        self.assertFalse(self.node.replica.has(future))
        self.assertEqual(self.node.hlc.last, before)
        self.assertEqual(self.node.window.refused, 1)
        post = self.node.post("alice", "hi", "r")
        self.assertLess(post.time_us, self.now + CLOCK_WINDOW_US)

    def test_just_past_the_window_is_refused(self):
        """One microsecond past the window is refused."""
        late = userUpdate("vm2.a", 1, self.now + CLOCK_WINDOW_US + 1, "bob")
        self.assertEqual(self.successResultOf(self.node.receive([late])), [])

    def test_a_far_future_read_mark_is_refused(self):
        """A read mark's own time is checked too, not only its update's."""
        mark = Update(origin="vm2.a", seq=1, time_us=self.now,
                      read=ReadMark("alice", LAST_US, "vm2.a/9"))
        self.assertEqual(self.successResultOf(self.node.receive([mark])), [])
        self.assertIsNone(self.node.replica.readUpTo("alice"))

    def test_a_restarted_node_posts_after_a_refused_update(self):
        """Nothing refused was stored: a node loaded from the same store posts now."""
        self.node.receive([userUpdate("vm2.a", 1, LAST_US, "mallory")])
        again = makeNode(store=self.store, clock=self.clock)
        self.successResultOf(again.load())
        self.assertLess(again.post("alice", "hi", "r").time_us, self.now + CLOCK_WINDOW_US)

    def test_the_sender_offers_it_again_once_our_clock_catches_up(self):
        """A peer whose clock is ahead is delayed, not lost: later it is accepted."""
        ahead = userUpdate("vm2.a", 1, self.now + 2 * CLOCK_WINDOW_US, "bob")
        self.assertEqual(self.successResultOf(self.node.receive([ahead])), [])
        self.clock.advance(CLOCK_WINDOW_US / 1e6)
        self.assertEqual(self.successResultOf(self.node.receive([ahead])), [ahead.id])


class ReplicaReceiverTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore(manual=True)
        self.node = makeNode(store=self.store, clock=self.clock)
        self.receiver = ReplicaReceiver(self.node, self.clock)
        self.stream = FakeStream()
        self.addCleanup(self.receiver.connectionLost, None)

    def connect(self):
        self.receiver.makeConnection(self.stream)

    def test_says_hello_with_its_version_vector_on_connect(self):
        """On connect the receiver sends its VM, origin and version vector."""
        self.node.receive([userUpdate("vm2.a", 1, 10, "bob")])
        self.connect()
        self.assertEqual(self.stream.sent, [pb.ReplicationMessage(hello=pb.ReplicaHello(
            vm="vm1", origin="vm1.a", have=self.node.replica.seen.toProto()))])

    def test_repeats_its_hello_every_anti_entropy_interval(self):
        """Every ANTI_ENTROPY seconds the receiver sends its version vector again."""
        self.connect()
        for _ in range(3):
            self.receiver.messageReceived(pb.ReplicationMessage(heartbeat=pb.Heartbeat()))
            self.clock.advance(ANTI_ENTROPY)
        self.assertEqual(self.stream.kinds(), ["hello"] * 4)

    def test_a_repeated_hello_shows_what_arrived_since(self):
        """The next hello's version vector includes updates received meanwhile."""
        self.connect()
        self.receiver.messageReceived(updatesMessage(userUpdate("vm2.a", 1, 10, "bob")))
        self.clock.advance(ANTI_ENTROPY)
        self.assertEqual(self.stream.last("hello").have.origins,
                         [pb.OriginRange(origin="vm2.a", contiguous=1)])

    def test_applies_updates_it_receives(self):
        """An updates message is applied to the node's replica."""
        self.connect()
        self.receiver.messageReceived(updatesMessage(userUpdate("vm2.a", 1, 10, "bob")))
        self.assertEqual(self.node.replica.users, {"bob"})

    def test_acks_updates_once_they_are_durable(self):
        """The ids of received updates are acked after the store's flush, not before."""
        self.connect()
        updates = [userUpdate("vm2.a", 1, 10, "bob"), postUpdate("vm2.a", 2, 11, "bob")]
        self.receiver.messageReceived(updatesMessage(*updates))
        acksBefore = self.stream.kinds().count("ack")
        self.store.flush()
        self.clock.advance(0)
        self.assertEqual((acksBefore, list(self.stream.last("ack").ids)),
                         (0, ["vm2.a/1", "vm2.a/2"]))

    def test_messages_durable_while_an_ack_waits_join_it(self):
        """
        Updates of several messages made durable before the stream's writer
        takes the ack waiting for it are acked in that one message; once it
        is taken, the next ids go in another.
        """
        self.connect()
        self.receiver.messageReceived(updatesMessage(userUpdate("vm2.a", 1, 10, "bob")))
        self.receiver.messageReceived(updatesMessage(postUpdate("vm2.a", 2, 11, "bob")))
        self.store.flush()
        self.assertEqual(self.stream.kinds().count("ack"), 1)
        self.assertEqual(list(self.stream.last("ack").ids), ["vm2.a/1", "vm2.a/2"])
        self.receiver.messageReceived(updatesMessage(postUpdate("vm2.a", 3, 12, "bob")))
        self.store.flush()
        self.assertEqual(self.stream.kinds().count("ack"), 2)
        self.assertEqual(list(self.stream.last("ack").ids), ["vm2.a/3"])

    def test_a_malformed_update_aborts_the_stream(self):
        """An update that fails validation aborts the stream, applying nothing."""
        self.connect()
        bad = postUpdate("vm2.a", 1, 10, "bob").toProto()
        bad.post.id = "vm2.a/2"  # not the id of its update
        self.receiver.messageReceived(pb.ReplicationMessage(
            updates=pb.UpdateBatch(updates=[userUpdate("vm2.a", 2, 9, "carol").toProto(), bad])))
        self.assertEqual((self.stream.aborted, self.node.replica.users), (True, set()))

    def test_a_silent_peer_is_aborted_after_the_link_timeout(self):
        """A peer heard from nothing for LINK_TIMEOUT is cut off at the next hello."""
        self.connect()
        self.clock.pump([ANTI_ENTROPY] * int(LINK_TIMEOUT / ANTI_ENTROPY))
        abortedInTime = self.stream.aborted
        self.clock.advance(ANTI_ENTROPY)
        self.assertEqual((abortedInTime, self.stream.aborted), (False, True))

    def test_a_silent_peer_leaves_no_timer_behind(self):
        """Once a silent peer is aborted, the receiver schedules nothing more."""
        self.connect()
        self.clock.pump([ANTI_ENTROPY] * (int(LINK_TIMEOUT / ANTI_ENTROPY) + 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_peer_that_keeps_talking_is_kept(self):
        """Heartbeats from the peer keep the stream open well past LINK_TIMEOUT."""
        self.connect()
        for _ in range(int(3 * LINK_TIMEOUT / ANTI_ENTROPY)):
            self.receiver.messageReceived(pb.ReplicationMessage(heartbeat=pb.Heartbeat()))
            self.clock.advance(ANTI_ENTROPY)
        self.assertFalse(self.stream.aborted)

    def test_connection_lost_stops_the_hellos(self):
        """After the stream is lost, no hello is scheduled."""
        self.connect()
        self.receiver.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ReplicatorTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.node = withUsers("alice", clock=self.clock)
        self.replicator = Replicator(self.node, b"secret", self.clock)
        self.update = self.node.post("alice", "hello", "r-1")

    def link(self, vm, synced=True):
        """A link to C{vm}'s master on a fake stream, as if start() had connected it."""
        link = PeerLink(self.replicator, vm, "%s:3500" % (vm,))
        link.synced = synced
        link.stream = FakeStream()
        self.replicator.links[vm] = link
        return link

    def broadcast(self, prefer=None):
        """Broadcast our post and let the outbox go out."""
        d = self.replicator.broadcast(self.update, prefer)
        self.clock.advance(0)
        return d

    def test_without_links_broadcast_gives_zero_at_once(self):
        """With no peer connected, nobody else holds the update: 0, at once."""
        self.assertEqual(self.successResultOf(self.replicator.broadcast(self.update)), 0)

    def test_unsynced_links_count_as_no_peer(self):
        """A link that has not heard its peer's hello is not waited for."""
        link = self.link("vm2", synced=False)
        self.assertEqual((self.successResultOf(self.broadcast()), link.stream.sent), (0, []))

    def test_broadcast_sends_the_update_to_every_synced_link(self):
        """The update goes to each synced peer in an updates message."""
        links = [self.link("vm2"), self.link("vm3")]
        self.broadcast()
        self.assertEqual([link.stream.sent for link in links],
                         [[updatesMessage(self.update)]] * 2)

    def test_an_ack_resolves_the_broadcast_with_the_count(self):
        """Without a preference, the first peer's ack fires with 1."""
        self.link("vm2")
        self.link("vm3")
        d = self.broadcast()
        self.replicator.links["vm3"].messageReceived(ackMessage(self.update.id))
        self.assertEqual(self.successResultOf(d), 1)

    def test_an_ack_cancels_the_ack_timeout(self):
        """Once acked, the broadcast leaves no timer behind."""
        link = self.link("vm2")
        self.broadcast()
        link.messageReceived(ackMessage(self.update.id))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_ack_clears_the_update_from_the_link_inflight(self):
        """An acked update is no longer counted as replication lag."""
        link = self.link("vm2")
        link.received(pb.ReplicationMessage(hello=pb.ReplicaHello(
            vm="vm2", origin="vm2.a", have=pb.VersionVector(
                origins=[pb.OriginRange(origin="vm1.a", contiguous=1)]))))
        self.broadcast()
        lagBefore = self.replicator.lag()
        link.messageReceived(ackMessage(self.update.id))
        self.assertEqual((lagBefore, self.replicator.lag()), (1, 0))

    def test_the_preferred_vm_is_waited_for(self):
        """With prefer, another peer's ack is not enough; the preferred one's is."""
        other, preferred = self.link("vm2"), self.link("vm3")
        d = self.broadcast(prefer="vm3")
        other.messageReceived(ackMessage(self.update.id))
        self.assertNoResult(d)
        preferred.messageReceived(ackMessage(self.update.id))
        self.assertEqual(self.successResultOf(d), 2)

    def test_a_preferred_vm_not_connected_is_not_waited_for(self):
        """A preference for a VM without a synced link falls back to any peer."""
        link = self.link("vm2")
        d = self.broadcast(prefer="vm3")
        link.messageReceived(ackMessage(self.update.id))
        self.assertEqual(self.successResultOf(d), 1)

    def test_losing_the_preferred_vm_settles_for_another_copy(self):
        """The preferred peer's stream breaks: a copy on another peer is enough."""
        other = self.link("vm2")
        preferred = self.link("vm3")
        d = self.broadcast(prefer="vm3")
        other.messageReceived(ackMessage(self.update.id))
        self.assertNoResult(d)
        preferred.connectionLost(None)
        self.assertEqual(self.successResultOf(d), 1)

    def test_losing_every_peer_answers_at_once_not_after_the_timeout(self):
        """A dead peer is not waited on: with every peer gone the writer hears 0 now."""
        link = self.link("vm2")
        d = self.broadcast()
        link.connectionLost(None)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual([c for c in self.clock.getDelayedCalls()
                          if "_expire" in repr(c)], [])

    def test_ack_timeout_fires_with_what_was_acked(self):
        """After ACK_TIMEOUT the broadcast fires with the peers that did ack."""
        other = self.link("vm2")
        self.link("vm3")
        d = self.broadcast(prefer="vm3")
        other.messageReceived(ackMessage(self.update.id))
        self.clock.advance(ACK_TIMEOUT)
        self.assertEqual(self.successResultOf(d), 1)

    def test_ack_timeout_without_acks_fires_with_zero(self):
        """A broadcast nobody acks fires with 0 after ACK_TIMEOUT, not before."""
        self.link("vm2")
        d = self.broadcast()
        self.clock.advance(ACK_TIMEOUT / 2)
        self.assertNoResult(d)
        self.clock.advance(ACK_TIMEOUT / 2)
        self.assertEqual(self.successResultOf(d), 0)


class StreamTroubleTests(SynchronousTestCase):
    """A stream that fails again and again is visible: lag, failures, last error."""

    def setUp(self):
        self.clock = Clock()
        self.node = withUsers("alice", clock=self.clock)
        self.replicator = Replicator(self.node, b"secret", self.clock)
        self.link = PeerLink(self.replicator, "vm2", "vm2:3500")
        self.replicator.links["vm2"] = self.link
        self.addCleanup(self.link.stop)

    def connect(self, have=None):
        """The stream opens and the peer says what it holds."""
        self.link.makeConnection(FakeStream())
        self.link.messageReceived(pb.ReplicationMessage(hello=pb.ReplicaHello(
            vm="vm2", origin="vm2.a", have=have or pb.VersionVector())))

    def breaks(self, why="RESOURCE_EXHAUSTED: Sent message larger than max"):
        self.link.connectionLost(Failure(errors.RemoteError(
            errors.Status[why.split(":")[0]], why.split(": ", 1)[1])))

    def test_lag_stays_while_the_stream_keeps_breaking(self):
        """
        Updates pushed on a stream that then breaks, again and again, stay
        in the lag (what the peer has not confirmed), although nothing is in
        flight any more; the failures are counted with their last reason.
        """
        self.node.post("alice", "hi", "r-1")
        for _ in range(3):
            self.connect()
            self.breaks()
        self.assertEqual(self.link.inflight, {})
        self.assertEqual(self.replicator.lag(), 2)
        state = self.replicator.peerStates()[0]
        self.assertEqual((state.vm, state.lacking, state.failures, state.connected),
                         ("vm2", 2, 3, False))
        self.assertEqual(state.last_error, "RESOURCE_EXHAUSTED: Sent message larger than max")

    def test_an_ack_clears_the_failures_and_the_lag(self):
        """Once the peer acknowledges what it lacked, nothing is behind."""
        update = self.node.post("alice", "hi", "r-1")
        self.connect()
        self.breaks()
        self.connect()
        self.link.messageReceived(ackMessage("vm1.a/1", update.id))
        self.assertEqual((self.replicator.lag(), self.link.failures), (0, 0))

    def test_lag_counts_what_the_peers_hello_lacks(self):
        """A peer that says it holds the first update lacks only the second."""
        self.node.post("alice", "hi", "r-1")
        self.connect(pb.VersionVector(origins=[pb.OriginRange(origin="vm1.a", contiguous=1)]))
        self.assertEqual(self.replicator.lag(), 1)

    def test_an_orderly_stop_is_no_failure(self):
        """A stream we close ourselves does not count as broken."""
        self.connect()
        self.link.stop()
        self.link.connectionLost(None)
        self.assertEqual(self.link.failures, 0)

    def test_the_reason_is_one_short_line(self):
        """Multi-line gRPC errors are folded into one line of bounded length."""
        self.connect()
        self.breaks("INTERNAL: Internal error\n\tdebug_error_string = " + "x" * 500)
        self.assertNotIn("\n", self.link.lastError)
        self.assertLessEqual(len(self.link.lastError), MAX_ERROR_TEXT)
