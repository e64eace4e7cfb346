"""
The replicated state: L{Seen}, L{VersionVector} and L{Replica}, as a CRDT
whose outcome does not depend on delivery order, duplication or delay.
"""

import tracemalloc
import uuid

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core.requests import rememberedBytes
from snstwist.core.state import Replica, Seen, VersionVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.storage.store import MemoryStore
from tests.strategies import followUpdate, postUpdate, updateLists, userUpdate


def replicaOf(updates):
    replica = Replica()
    for u in updates:
        replica.apply(u)
    return replica


def keys(posts):
    return [p.key for p in posts]


def vectorOf(pairs):
    vv = VersionVector()
    for origin, seq in pairs:
        vv.add(origin, seq)
    return vv


class SeenTests(SynchronousTestCase):
    def test_in_order_seqs_extend_the_contiguous_prefix(self):
        """Seqs 1, 2, 3 in order leave contiguous at 3 and nothing extra."""
        seen = Seen()
        for seq in (1, 2, 3):
            seen.add(seq)
        self.assertEqual((seen.contiguous, seen.extra), (3, set()))

    def test_a_seq_after_a_gap_is_kept_as_extra(self):
        """Without seq 2, seq 3 is remembered apart from the prefix."""
        seen = Seen()
        seen.add(1)
        seen.add(3)
        self.assertEqual((seen.contiguous, seen.extra), (1, {3}))

    def test_filling_the_gap_absorbs_the_extras(self):
        """Once the gap is filled, the extras join the contiguous prefix."""
        seen = Seen()
        for seq in (4, 2, 3, 1):
            seen.add(seq)
        self.assertEqual((seen.contiguous, seen.extra), (4, set()))

    def test_add_tells_whether_the_seq_was_new(self):
        """add() is True the first time a seq is seen, False after."""
        seen = Seen()
        self.assertEqual([seen.add(2), seen.add(2), seen.add(1), seen.add(1)],
                         [True, False, True, False])

    def test_top_is_the_highest_seq_seen(self):
        """top follows add() and is rebuilt by a copy from the wire."""
        seen = Seen()
        for seq in (1, 5, 3):
            seen.add(seq)
        self.assertEqual((seen.top, Seen(seen.contiguous, set(seen.extra)).top, Seen(4).top),
                         (5, 5, 4))

    def test_discard_forgets_one_seq_of_the_prefix_or_the_extras(self):
        """A failed write is forgotten; everything else is still held."""
        seen = Seen()
        for seq in (1, 2, 3, 4, 7):
            seen.add(seq)
        seen.discard(2)
        seen.discard(7)
        self.assertEqual([seq for seq in range(1, 9) if seen.has(seq)], [1, 3, 4])
        self.assertEqual((seen.add(2), seen.contiguous, seen.extra), (True, 4, set()))

    def test_has_covers_prefix_and_extras_only(self):
        """has() is true for the prefix and the extras, false for the gaps."""
        seen = Seen(contiguous=2, extra={5})
        self.assertEqual([seen.has(s) for s in (1, 2, 3, 4, 5, 6)],
                         [True, True, False, False, True, False])


    @given(st.lists(st.tuples(st.booleans(), st.integers(1, 12)), max_size=40))
    def test_adds_and_discards_in_any_order_hold_exactly_the_seqs_kept(self, steps):
        """
        Against a plain set: add() says whether the seq was new, and
        afterwards the prefix, the extras and has() say exactly what is
        held, top at least its highest (adds in order take a short cut).
        """
        seen, model = Seen(), set()
        for keep, seq in steps:
            if keep:
                self.assertEqual(seen.add(seq), seq not in model)
                model.add(seq)
            else:
                seen.discard(seq)
                model.discard(seq)
            prefix = 0
            while prefix + 1 in model:
                prefix += 1
            self.assertEqual((seen.contiguous, seen.extra),
                             (prefix, {n for n in model if n > prefix}))
            self.assertEqual({n for n in range(1, 14) if seen.has(n)}, model)
            self.assertGreaterEqual(seen.top, max(model, default=0))


class VersionVectorTests(SynchronousTestCase):
    def test_has_only_what_was_added(self):
        """A vector holds exactly the (origin, seq) pairs added to it."""
        vv = vectorOf([("vm1.a", 1), ("vm2.a", 2)])
        self.assertEqual(
            [vv.has("vm1.a", 1), vv.has("vm2.a", 2), vv.has("vm2.a", 1), vv.has("vm3.a", 1)],
            [True, True, False, False])

    def test_count_is_the_number_of_updates_held(self):
        """count() adds up prefixes and extras of every origin."""
        vv = vectorOf([("vm1.a", 1), ("vm1.a", 2), ("vm1.a", 5), ("vm2.a", 3)])
        self.assertEqual(vv.count(), 4)

    def test_proto_round_trip_keeps_every_origin(self):
        """A vector read back from its proto holds the same prefixes and extras."""
        vv = vectorOf([("vm1.a", 1), ("vm1.a", 2), ("vm1.a", 7), ("vm2.b", 4)])
        wire = pb.VersionVector.FromString(vv.toProto().SerializeToString())
        back = VersionVector.fromProto(wire)
        self.assertEqual(back.origins, vv.origins)


class ApplyTests(SynchronousTestCase):
    def test_apply_is_true_only_the_first_time(self):
        """apply() reports an update as new once, and never again."""
        replica = Replica()
        u = postUpdate("vm1.a", 1, 10, "alice")
        self.assertEqual([replica.apply(u), replica.apply(u)], [True, False])

    def test_applying_an_update_twice_changes_nothing(self):
        """A repeated update leaves the state as the first application left it."""
        u = postUpdate("vm1.a", 1, 10, "alice")
        replica = replicaOf([u])
        before = replica.snapshot()
        replica.apply(u)
        self.assertEqual(replica.snapshot(), before)

    def test_a_user_created_on_two_vms_is_one_user(self):
        """Users are a set: the same name from two origins is one user."""
        replica = replicaOf([userUpdate("vm1.a", 1, 10, "alice"),
                             userUpdate("vm2.a", 1, 11, "alice")])
        self.assertEqual(replica.users, {"alice"})

    def test_users_are_never_removed(self):
        """Users only grow: later updates of any kind keep every user."""
        replica = replicaOf([userUpdate("vm1.a", 1, 10, "alice"),
                             userUpdate("vm1.a", 2, 11, "bob"),
                             followUpdate("vm1.a", 3, 12, "alice", "bob"),
                             followUpdate("vm1.a", 4, 13, "alice", "bob", False),
                             postUpdate("vm1.a", 5, 14, "bob")])
        self.assertEqual(replica.users, {"alice", "bob"})

    def test_the_later_follow_change_wins_whatever_the_order(self):
        """An unfollow newer than the follow wins even when it arrives first."""
        replica = replicaOf([followUpdate("vm2.a", 1, 20, "alice", "bob", False),
                             followUpdate("vm1.a", 1, 10, "alice", "bob", True)])
        self.assertFalse(replica.isFollowing("alice", "bob"))

    def test_equal_follow_times_are_decided_by_update_id(self):
        """At equal times the change with the greater update id wins."""
        replica = replicaOf([followUpdate("vm2.a", 1, 10, "alice", "bob", True),
                             followUpdate("vm1.a", 1, 10, "alice", "bob", False)])
        self.assertTrue(replica.isFollowing("alice", "bob"))

    def test_following_and_followers_list_live_relations_sorted(self):
        """following() and followers() list current relations only, sorted."""
        replica = replicaOf([followUpdate("vm1.a", 1, 10, "carol", "alice"),
                             followUpdate("vm1.a", 2, 11, "bob", "alice"),
                             followUpdate("vm1.a", 3, 12, "dave", "alice"),
                             followUpdate("vm1.a", 4, 13, "dave", "alice", False),
                             followUpdate("vm1.a", 5, 14, "bob", "carol")])
        self.assertEqual((replica.followers("alice"), replica.following("bob")),
                         (["bob", "carol"], ["alice", "carol"]))

    def test_posts_by_an_author_are_kept_in_time_order(self):
        """Posts arriving out of order are held ordered by (time, id)."""
        replica = replicaOf([postUpdate("vm1.a", 2, 30, "alice"),
                             postUpdate("vm2.a", 1, 10, "alice"),
                             postUpdate("vm1.a", 1, 20, "alice")])
        self.assertEqual(keys(replica.postsBy("alice")),
                         [(10, "vm2.a/1"), (20, "vm1.a/1"), (30, "vm1.a/2")])

    def test_an_update_is_found_by_its_request_id(self):
        """byRequest() finds the update a client's request produced."""
        u = postUpdate("vm1.a", 1, 10, "alice", requestId="r-1")
        replica = replicaOf([u])
        self.assertEqual((replica.byRequest("alice", "r-1"), replica.byRequest("alice", "r-2")),
                         (u, None))

    def test_request_ids_are_scoped_to_their_user(self):
        """
        Two users who pick the same request id made two requests: both
        posts are shown, each found under its own user, and neither is
        displaced, in either order of arrival.
        """
        mine = postUpdate("vm1.a", 1, 10, "alice", "mine", requestId="r-1")
        theirs = postUpdate("vm2.a", 1, 5, "bob", "theirs", requestId="r-1")
        for order in ([mine, theirs], [theirs, mine]):
            replica, displaced = Replica(), []
            for u in order:
                replica.apply(u, displaced)
            self.assertEqual(displaced, [])
            self.assertEqual((replica.byRequest("alice", "r-1"), replica.byRequest("bob", "r-1")),
                             (mine, theirs))
            self.assertTrue(replica.shows(mine) and replica.shows(theirs))
            self.assertEqual(keys(replica.postsBy("alice")), [mine.post.key])
            self.assertEqual(keys(replica.postsBy("bob")), [theirs.post.key])

    def test_last_seq_is_the_highest_held_from_an_origin(self):
        """lastSeq() is the greatest seq held from an origin, 0 for none."""
        replica = replicaOf([userUpdate("vm1.a", 3, 10, "alice"),
                             userUpdate("vm1.a", 1, 11, "bob")])
        self.assertEqual((replica.lastSeq("vm1.a"), replica.lastSeq("vm2.a")), (3, 0))


class NamesHeldOnceTests(SynchronousTestCase):
    def test_a_name_is_one_string_in_the_users_and_every_follow(self):
        """Each update brings its own copy of a name; memory keeps one (a follow's fifth)."""
        def fresh(name):
            return "".join(list(name))  # a string equal to name, not the same object

        replica = Replica()
        replica.apply(userUpdate("o", 1, 1, fresh("alice")))
        replica.apply(userUpdate("o", 2, 2, fresh("bob")))
        replica.apply(followUpdate("o", 3, 3, fresh("bob"), fresh("alice")))
        replica.apply(followUpdate("o", 4, 4, fresh("alice"), fresh("bob")))
        users = {name: name for name in replica.users}
        held = [name for pair in replica.follows for name in pair]
        held += [n for u in users for n in (*replica.followerSet(u), *replica.sources(u))]
        self.assertEqual([n for n in held if n is not users[n]], [])


class TimelineTests(SynchronousTestCase):
    def setUp(self):
        # alice follows bob; nobody follows carol; dave was unfollowed.
        self.replica = replicaOf([
            followUpdate("vm1.a", 1, 1, "alice", "bob"),
            followUpdate("vm1.a", 2, 2, "alice", "dave"),
            followUpdate("vm1.a", 3, 3, "alice", "dave", False),
            postUpdate("vm1.a", 4, 10, "bob"),
            postUpdate("vm1.a", 5, 20, "alice"),
            postUpdate("vm1.a", 6, 25, "carol"),
            postUpdate("vm1.a", 7, 26, "dave"),
            postUpdate("vm2.a", 1, 30, "bob"),
            postUpdate("vm2.a", 2, 40, "alice"),
        ])

    def test_timeline_holds_own_and_followed_posts_oldest_first(self):
        """The timeline merges the user's and followees' posts, oldest first."""
        self.assertEqual(keys(self.replica.timeline("alice", 20)),
                         [(10, "vm1.a/4"), (20, "vm1.a/5"), (30, "vm2.a/1"),
                          (40, "vm2.a/2")])

    def test_timeline_leaves_out_unfollowed_users(self):
        """Posts of users not followed (or no longer) are not in the timeline."""
        authors = {p.author for p in self.replica.timeline("alice", 20)}
        self.assertEqual(authors, {"alice", "bob"})

    def test_timeline_keeps_only_the_newest(self):
        """With a limit, the timeline is the newest posts, still oldest first."""
        self.assertEqual(keys(self.replica.timeline("alice", 2)),
                         [(30, "vm2.a/1"), (40, "vm2.a/2")])

    def test_timeline_of_a_user_without_posts_is_empty(self):
        """A user who posts nothing and follows nobody has an empty timeline."""
        self.assertEqual(self.replica.timeline("erin", 20), [])

    def test_timeline_after_cursor_gives_only_later_posts(self):
        """timelinePage() returns the posts after the cursor key, oldest first."""
        self.assertEqual(keys(self.replica.timelinePage("alice", (20, "vm1.a/5"), 20)),
                         [(30, "vm2.a/1"), (40, "vm2.a/2")])

    def test_timeline_after_cursor_breaks_time_ties_by_id(self):
        """A post at the cursor's time but with a greater id is after it."""
        self.replica.apply(postUpdate("vm3.a", 1, 20, "bob"))
        self.assertEqual(keys(self.replica.timelinePage("alice", (20, "vm1.a/5"), 20)),
                         [(20, "vm3.a/1"), (30, "vm2.a/1"), (40, "vm2.a/2")])


class LackingTests(SynchronousTestCase):
    """VersionVector.lacking counts, without listing them, what a peer lacks."""

    @given(mine=st.lists(st.tuples(st.sampled_from(["o1", "o2"]), st.integers(1, 12))),
           theirs=st.lists(st.tuples(st.sampled_from(["o1", "o2", "o3"]), st.integers(1, 12))))
    def test_lacking_counts_the_set_difference(self, mine, theirs):
        here, there = vectorOf(mine), vectorOf(theirs)
        self.assertEqual(here.lacking(there), len(set(mine) - set(theirs)))

    def test_against_nothing_everything_is_lacking(self):
        """A peer that has said nothing yet lacks all we hold."""
        self.assertEqual(vectorOf([("o1", 1), ("o1", 3)]).lacking(None), 2)


class ConvergenceTests(SynchronousTestCase):
    @given(st.data())
    def test_any_order_with_duplicates_gives_the_same_state(self, data):
        """Replicas that apply the same updates agree, whatever order and repeats."""
        updates = data.draw(updateLists())
        repeats = data.draw(st.lists(st.sampled_from(updates))) if updates else []
        shuffled = data.draw(st.permutations(updates + repeats))
        self.assertEqual(replicaOf(shuffled).snapshot(), replicaOf(updates).snapshot())

    @given(st.data())
    def test_applying_what_is_missing_catches_up(self, data):
        """A replica that applies what a's store says it lacks holds all a holds, and its own."""
        updates = data.draw(updateLists())
        ours = data.draw(st.lists(st.sampled_from(updates))) if updates else []
        theirs = data.draw(st.lists(st.sampled_from(updates))) if updates else []
        a, b = MemoryStore(), replicaOf(ours)
        a.persist(theirs)
        for u in self.successResultOf(a.missing(b.seen, limit=len(updates) + 1)):
            b.apply(u)
        self.assertEqual(b.snapshot(), replicaOf(ours + theirs).snapshot())

    @given(st.data())
    def test_follow_indexes_agree_with_the_registers(self, data):
        """followers()/following() always say what a scan of the registers says."""
        updates = data.draw(st.permutations(data.draw(updateLists())))
        replica = replicaOf(updates)
        users = {u for pair in replica.follows for u in pair}
        for user in users:
            live = [pair for pair, r in replica.follows.items() if r.following]
            self.assertEqual(replica.followers(user), sorted(a for a, b in live if b == user))
            self.assertEqual(replica.following(user), sorted(b for a, b in live if a == user))


class RetriedRequestTests(SynchronousTestCase):
    """Two copies of one request (a retry accepted by a second VM): one post shown."""

    first = postUpdate("vm1.a", 1, 1000, "alice", "hi", requestId="req-1")
    retry = postUpdate("vm2.b", 1, 2000, "alice", "hi", requestId="req-1")

    def test_the_earlier_copy_is_shown_whatever_the_order(self):
        """Either order of arrival shows exactly the earlier (time, id) copy."""
        for order in ([self.first, self.retry], [self.retry, self.first]):
            replica = replicaOf(order)
            self.assertEqual([p.id for p in replica.postsBy("alice")], ["vm1.a/1"])
            self.assertEqual(replica.byRequest("alice", "req-1").id, "vm1.a/1")

    def test_both_copies_are_held(self):
        """The hidden copy still counts as held, so peers do not send it again."""
        replica = replicaOf([self.retry, self.first])
        self.assertTrue(replica.has(self.retry) and replica.has(self.first))
        self.assertEqual(vectorOf([("vm1.a", 1), ("vm2.b", 1)]).lacking(replica.seen), 0)

    def test_a_later_copy_displaces_nothing_and_an_earlier_one_reports_what_it_hid(self):
        """apply() says which shown post an earlier copy took the place of."""
        replica, displaced = Replica(), []
        replica.apply(self.retry, displaced)
        replica.apply(self.first, displaced)
        self.assertEqual(displaced, [self.retry])
        self.assertFalse(replica.shows(self.retry))
        self.assertTrue(replica.shows(self.first))


class MergeTests(SynchronousTestCase):
    @given(mine=st.lists(st.tuples(st.sampled_from(["o1", "o2"]), st.integers(1, 12))),
           theirs=st.lists(st.tuples(st.sampled_from(["o1", "o3"]), st.integers(1, 12))))
    def test_a_merged_vector_holds_the_union(self, mine, theirs):
        """merge() holds exactly what either held, in the same ranges as adding one by one."""
        merged = vectorOf(mine)
        merged.merge(vectorOf(theirs))
        self.assertEqual(merged.toProto(), vectorOf(mine + theirs).toProto())


class WindowTests(SynchronousTestCase):
    """Memory holds the newest posts of each author, whatever the order of arrival."""

    def test_only_the_newest_posts_of_an_author_are_held(self):
        replica = Replica(hotPosts=3)
        for seq in (5, 1, 4, 2, 3):
            replica.apply(postUpdate("vm1.a", seq, seq * 10, "alice"))
        self.assertEqual((keys(replica.postsBy("alice")), replica.windows.floors,
                          replica.seen.count()),
                         ([(30, "vm1.a/3"), (40, "vm1.a/4"), (50, "vm1.a/5")],
                          {"alice": (20, "vm1.a/2")}, 5))

    def test_memory_covers_a_cursor_within_every_window(self):
        """An author with posts older than memory holds needs the disk before its window."""
        replica = Replica(hotPosts=2)
        replica.apply(followUpdate("vm1.a", 1, 1, "alice", "bob"))
        for seq, time in ((2, 10), (3, 20), (4, 30)):
            replica.apply(postUpdate("vm1.a", seq, time, "bob"))
        replica.apply(postUpdate("vm1.a", 5, 5, "alice"))
        # bob's window is 20 and 30: memory holds every post after 10 (its
        # floor), not the one at 10 itself.
        self.assertEqual([replica.covers("alice", c, inclusive) for c, inclusive in (
            ((9, "vm1.a/2"), False), ((10, "vm1.a/2"), True), ((10, "vm1.a/2"), False),
            ((20, "vm1.a/3"), True))], [False, False, True, True])

    @given(st.data())
    def test_the_windows_do_not_depend_on_the_order(self, data):
        """Small windows, retried requests, any order: the same posts shown."""
        updates = data.draw(updateLists())
        shuffled = data.draw(st.permutations(updates))
        small = [Replica(hotPosts=2), Replica(hotPosts=2)]
        for replica, order in zip(small, (updates, shuffled)):
            for u in order:
                replica.apply(u)
        self.assertEqual(small[0].snapshot(), small[1].snapshot())


class RememberedRequestTests(SynchronousTestCase):
    def test_the_requests_remembered_are_bounded_in_bytes(self):
        """
        Posts of 1,000 four-byte characters: far fewer than the count
        bound are remembered, the newest, within the byte bound.
        """
        replica = Replica(rememberedRequests=10000, rememberedBytes=100 * 1024)
        text = "\U0001F600" * 1000
        for seq in range(1, 101):
            replica.apply(postUpdate("vm1.a", seq, seq, "alice", text, requestId="r%d" % (seq,)))
        remembered = [seq for seq in range(1, 101)
                      if replica.knowsRequest(("alice", "r%d" % (seq,)))]
        self.assertLessEqual(replica.requests.bytes, 100 * 1024)
        self.assertEqual(remembered, list(range(101 - len(remembered), 101)))
        self.assertTrue(5 <= len(remembered) <= 20, len(remembered))

    def test_the_bytes_counted_are_what_is_held(self):
        """A forgotten or replaced copy gives its bytes back."""
        replica = Replica(rememberedRequests=2)
        later = postUpdate("vm2.b", 1, 2000, "alice", "x" * 500, requestId="r1")
        earlier = postUpdate("vm1.a", 1, 1000, "alice", "hi", requestId="r1")
        replica.apply(later)
        replica.apply(earlier)
        self.assertEqual(replica.requests.bytes, rememberedBytes(earlier))
        for seq in (2, 3):
            replica.apply(postUpdate("vm1.a", seq, 1000 + seq, "alice", requestId="r%d" % (seq,)))
        self.assertEqual(replica.requests.bytes,
                         sum(rememberedBytes(replica.requests.get(("alice", r)))
                             for r in ("r2", "r3")))

    def test_a_remembered_post_counts_its_text_and_its_encoding(self):
        """The estimate is at least what tracemalloc sees a post with its encoding hold."""
        texts = ["x" * 100, "\U0001F600" * 1000]
        for text in texts:
            tracemalloc.start()
            try:
                updates = [postUpdate("vm1.abcdef", seq, seq, "user%d" % (seq % 100),
                                      text[:-5] + "%05d" % (seq,), requestId=uuid.uuid4().hex)
                           for seq in range(1, 1001)]
                for u in updates:
                    u.encoding()
                held = tracemalloc.get_traced_memory()[0] / len(updates)
            finally:
                tracemalloc.stop()
            self.assertGreater(rememberedBytes(updates[0]), held, len(text))

    def test_only_the_latest_requests_are_remembered(self):
        replica = Replica(rememberedRequests=2)
        for seq in (1, 2, 3):
            replica.apply(postUpdate("vm1.a", seq, seq, "alice", requestId="r%d" % (seq,)))
        self.assertEqual([replica.knowsRequest(("alice", "r%d" % (seq,))) for seq in (1, 2, 3)],
                         [False, True, True])

    def test_a_copy_found_on_disk_is_remembered_when_it_is_the_earliest(self):
        """rememberRequest keeps the earliest copy, which then hides a later one applied."""
        first = postUpdate("vm1.a", 1, 1000, "alice", "hi", requestId="req-1")
        retry = postUpdate("vm2.b", 1, 2000, "alice", "hi", requestId="req-1")
        replica, displaced = Replica(), []
        replica.rememberRequest(first)
        replica.apply(retry, displaced)
        self.assertEqual((replica.byRequest("alice", "req-1"), replica.shows(retry),
                          replica.postsBy("alice"), displaced), (first, False, [], []))
