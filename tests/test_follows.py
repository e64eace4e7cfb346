"""
Follows: the bound on the users one user follows (L{limits.MAX_FOLLOWS}),
checked where a FOLLOW is accepted, and never where a replicated one is
applied.
"""

from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors, state
from snstwist.core.errors import Status, statusFor
from snstwist.core.model import FollowChange, Update
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
