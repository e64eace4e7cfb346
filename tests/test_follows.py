"""
Follows: the bound on the users one user follows (L{limits.MAX_FOLLOWS}),
checked where a FOLLOW is accepted, and never where a replicated one is
applied; and the compact holding of the registers (L{follows.Follows},
L{registers.Keys}) against a plain model.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors, follows, state
from snstwist.core.errors import Status, statusFor
from snstwist.core.follows import FollowRegister, Follows
from snstwist.core.limits import MAX_SEQ, MAX_TIME_US
from snstwist.core.model import FollowChange, Update, updateId
from snstwist.core.registers import Keys
from snstwist.core.state import pageOf
from tests.test_replication import withUsers

BOUND = 3
USERS = ("alice", "bob", "carol", "dave", "erin")


def followUpdate(origin, seq, time_us, follower, followee, following=True):
    return Update(origin=origin, seq=seq, time_us=time_us,
                  follow=FollowChange(follower, followee, following))


class FollowBoundTests(SynchronousTestCase):
    def setUp(self):
        self.patch(state, "MAX_FOLLOWS", BOUND)
        self.node = withUsers(*USERS)
        for i, target in enumerate(USERS[1:1 + BOUND]):
            self.node.follow("alice", target, "r-%d" % (i,))

    def test_a_follow_at_the_bound_is_refused_and_writes_nothing(self):
        """
        A user who follows as many as one may is refused one more:
        FAILED_PRECONDITION (a retry alone never helps) with a message that
        names the bound; memory, store and sequence stay as they were.
        """
        node = self.node
        before = (node.replica.snapshot(), dict(node.store.durable), node.seq)
        error = self.assertRaises(errors.TooManyFollows, node.follow, "alice", "erin", "r-x")
        self.assertEqual((statusFor(error)[0], "at most %d" % (BOUND,) in error.message,
                          (node.replica.snapshot(), node.store.durable, node.seq)),
                         (Status.FAILED_PRECONDITION, True, before))

    def test_an_unfollow_makes_room_for_a_follow(self):
        """UNFOLLOW one at the bound, and FOLLOW another is accepted."""
        node = self.node
        node.unfollow("alice", "bob", "r-u")
        node.follow("alice", "erin", "r-e")
        self.assertEqual(node.replica.following("alice"), ["carol", "dave", "erin"])

    def test_the_bound_is_per_follower(self):
        """One user at the bound does not stop another from following."""
        self.node.follow("bob", "alice", "r-b")
        self.assertEqual(self.node.replica.followers("alice"), ["bob"])

    def test_following_again_one_already_followed_is_still_already_exists(self):
        """At the bound, a FOLLOW of one already followed says so, as below it."""
        self.assertRaises(errors.AlreadyFollowing, self.node.follow, "alice", "bob", "r-y")

    def test_a_replicated_follow_over_the_bound_is_applied(self):
        """
        A follow another VM accepted is applied whatever the count here: a
        peer can not refuse it and still converge.
        """
        node = self.node
        d = node.receive([followUpdate("vm2.a", 1, node.hlc.now() + 1, "alice", "erin")])
        self.assertEqual(self.successResultOf(d), ["vm2.a/1"])
        self.assertEqual((node.replica.isFollowing("alice", "erin"),
                          len(node.replica.following("alice"))), (True, BOUND + 1))
        # Over it, this VM still refuses a follow of its own.
        node.unfollow("alice", "bob", "r-u")
        self.assertRaises(errors.TooManyFollows, node.follow, "alice", "bob", "r-again")


# Origins whose update ids sort otherwise than (origin, seq) would: "a/5"
# against "a.1/3", "a/10" against "a/9".
KEY_ORIGINS = ("a", "a.1", "vm1.a", "vm2.a")
FAN = ("alice", "bob", "carol", "dave", "erin")


class PackedKeyTests(SynchronousTestCase):
    @given(st.integers(0, MAX_TIME_US), st.sampled_from(KEY_ORIGINS), st.integers(1, MAX_SEQ),
           st.booleans())
    def test_a_packed_key_gives_back_its_key_and_value(self, time_us, origin, seq, value):
        keys = Keys()
        packed = keys.pack(time_us, origin, seq, value)
        self.assertEqual((keys.key(packed), keys.value(packed)),
                         ((time_us, updateId(origin, seq)), value))

    @given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(KEY_ORIGINS),
                              st.sampled_from([1, 3, 5, 9, 10, 11, MAX_SEQ])),
                    min_size=2, max_size=2))
    def test_packed_keys_compare_as_the_keys_do(self, pair):
        (t1, o1, s1), (t2, o2, s2) = pair
        keys = Keys()
        packed = keys.pack(t2, o2, s2, True)
        self.assertEqual(keys.newer(t1, o1, s1, packed),
                         (t1, updateId(o1, s1)) > (t2, updateId(o2, s2)))


writes = st.tuples(st.sampled_from(FAN), st.sampled_from(FAN), st.integers(0, 4),
                   st.sampled_from(KEY_ORIGINS), st.integers(1, 12), st.booleans())


class CompactFollowsTests(SynchronousTestCase):
    """L{Follows} answers as a plain dict of registers and sets of names would."""

    def setUp(self):
        # A followee's followers go from a tuple to a sorted set and back.
        self.patch(follows, "SORTED_FOLLOWERS", 3)

    @given(st.lists(writes, max_size=60))
    def test_the_compact_follows_answer_as_a_plain_model(self, changes):
        compact, model, seen = Follows(), {}, set()
        for follower, followee, time_us, origin, seq, following in changes:
            if follower == followee or (origin, seq) in seen:
                continue  # a replica applies an update once (its version vector)
            seen.add((origin, seq))
            key = (time_us, updateId(origin, seq))
            newer = (follower, followee) not in model or key > model[(follower, followee)][0]
            if newer:
                model[(follower, followee)] = (key, following)
            self.assertEqual(
                compact.apply(follower, followee, time_us, origin, seq, following), newer)
        live = {pair for pair, (_, following) in model.items() if following}
        self.assertEqual(dict(compact.items()),
                         {pair: FollowRegister(*register) for pair, register in model.items()})
        self.assertEqual(sorted(compact), sorted(model))
        for name in FAN:
            followers = sorted(a for a, b in live if b == name)
            following = sorted(b for a, b in live if a == name)
            self.assertEqual(
                (list(compact.followers(name)), sorted(compact.following(name)),
                 compact.count(name), pageOf(compact.followers(name), "b", 2)),
                (followers, following, len(following),
                 ([n for n in followers if n > "b"][:2],
                  len([n for n in followers if n > "b"]) > 2)))
            for other in FAN:
                self.assertEqual(compact.isFollowing(name, other), (name, other) in live)

    def test_followers_grow_past_the_sorted_set_and_shrink_back(self):
        """
        One followee's followers, up from none past the switch to a sorted set
        (3 here) and back down to none, one at a time, in an order that is
        not theirs: each step is seen in followers, counts and isFollowing.
        """
        compact, names = Follows(), ["erin", "bob", "dave", "alice", "carol"]
        for seq, name in enumerate(names, 1):
            compact.apply(name, "zed", 10, "vm1.a", seq, True)
            self.assertEqual(list(compact.followers("zed")), sorted(names[:seq]))
            self.assertEqual(compact.count(name), 1)
        compact.apply("bob", "yan", 11, "vm1.a", 6, True)
        self.assertEqual(compact.count("bob"), 2)
        for seq, name in enumerate(names, 7):
            compact.apply(name, "zed", 20, "vm1.a", seq, False)
            self.assertEqual(list(compact.followers("zed")), sorted(names[names.index(name) + 1:]))
            self.assertFalse(compact.isFollowing(name, "zed"))
            self.assertEqual(compact.count(name), 1 if name == "bob" else 0)
        self.assertEqual(compact.followers("zed"), ())
        # Out of a sorted tuple (a few followers): the others stay.
        compact.apply("alice", "yan", 30, "vm1.a", 12, True)
        compact.apply("alice", "yan", 31, "vm1.a", 13, False)
        self.assertEqual(compact.followers("yan"), ("bob",))
