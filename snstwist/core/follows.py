"""
The follow relations of a replica, held compactly.

A follow relation is a last-writer-wins register per (follower, followee),
ordered by (hybrid logical time, update id) (L{state}); every server
process holds all of them, so the holding is what sets how many users and
follows a server can have (docs/benchmarks.md, "Memory per user").  Here
a relation costs an entry in its follower's dict (followee -> the
register's key and value packed into one int, L{registers.Keys}) and, while
it is followed, a place in its followee's followers: a sorted tuple while
they are few, a sorted set (found and changed without copying them all)
once they are many.  Names are the replica's one string each.

An unfollowed relation keeps its register (its key decides against a
follow that arrives late), so it is in its follower's dict until the
follower follows that user again.
"""

import bisect
import sys

import attrs
from sortedcontainers import SortedSet

from snstwist.core.registers import Keys

# A user's followers are a sorted tuple until they are this many, then a
# sorted set: a tuple costs a pointer a follower and is copied on each
# change, a sorted set about ten times the memory and changes in place.
SORTED_FOLLOWERS = 1000


@attrs.frozen
class FollowRegister:
    """What L{Follows.items} says of one relation: its key and whether it is followed."""

    key: tuple  # (time_us, update id): the last writer wins
    following: bool


def _added(followers, follower):
    if isinstance(followers, SortedSet):
        followers.add(follower)
        return followers
    i = bisect.bisect_left(followers, follower)
    followers = followers[:i] + (follower,) + followers[i:]
    return SortedSet(followers) if len(followers) >= SORTED_FOLLOWERS else followers


def _removed(followers, follower):
    if isinstance(followers, SortedSet):
        followers.discard(follower)
        return followers
    i = bisect.bisect_left(followers, follower)
    return followers[:i] + followers[i + 1:]


class Follows:
    def __init__(self, keys=None):
        self.keys = keys if keys is not None else Keys()
        self._registers = {}  # follower -> {followee: packed key and following}
        self._counts = {}  # follower -> how many it follows (absent: none)
        self._followers = {}  # followee -> its followers, sorted (absent: none)

    def apply(self, follower, followee, time_us, origin, seq, following):
        """
        Write the register (C{follower}, C{followee}) with the key
        (C{time_us}, C{origin}/C{seq}) if that is newer than its own; True
        if it was.  Names are held interned: one string a name, whatever
        update brought it (docs/benchmarks.md).
        """
        follower, followee = sys.intern(follower), sys.intern(followee)
        registers = self._registers.get(follower)
        if registers is None:
            registers = self._registers[follower] = {}
        held = registers.get(followee)
        keys = self.keys
        if held is not None and not keys.newer(time_us, origin, seq, held):
            return False
        registers[followee] = keys.pack(time_us, origin, seq, following)
        was = held is not None and keys.value(held)
        if following and not was:
            self._counts[follower] = self._counts.get(follower, 0) + 1
            self._followers[followee] = _added(self._followers.get(followee, ()), follower)
        elif was and not following:
            self._decrement(self._counts, follower)
            left = _removed(self._followers[followee], follower)
            if left:
                self._followers[followee] = left
            else:
                del self._followers[followee]
        return True

    def restore(self, follower, followees, packed, following):
        """
        Hold C{follower}'s registers as a snapshot keeps them: C{packed}[i]
        (packed by this holding's L{Keys}) of C{followees}[i], C{following}
        of them followed.  Into a holding that has none of C{follower}'s yet;
        its followees' followers are restored apart (L{restoreFollowers}).
        """
        self._registers[follower] = dict(zip(followees, packed))
        if following:
            self._counts[follower] = following

    def restoreFollowers(self, followee, followers):
        """Hold C{followers} (a sorted tuple) as C{followee}'s, as a snapshot keeps them."""
        self._followers[followee] = (SortedSet(followers) if len(followers) >= SORTED_FOLLOWERS
                                     else followers)

    def mergeFrom(self, other):
        """Apply every register of C{other} (a holding with keys of its own) here."""
        unpack = other.keys.unpack
        for follower, registers in other._registers.items():
            for followee, held in registers.items():
                self.apply(follower, followee, *unpack(held))

    @staticmethod
    def _decrement(counts, name):
        if counts[name] == 1:
            del counts[name]
        else:
            counts[name] -= 1

    # -- reading

    def isFollowing(self, follower, followee):
        registers = self._registers.get(follower)
        held = registers.get(followee) if registers is not None else None
        return held is not None and self.keys.value(held)

    def count(self, follower):
        """How many users C{follower} follows."""
        return self._counts.get(follower, 0)

    def following(self, follower):
        """Whom C{follower} follows, unsorted."""
        value = self.keys.value
        registers = self._registers.get(follower)
        return [f for f, held in registers.items() if value(held)] if registers else []

    def followers(self, followee):
        """The followers of C{followee}, sorted: a tuple or a SortedSet (do not change it)."""
        return self._followers.get(followee, ())

    def __iter__(self):
        """Every relation with a register, (follower, followee): unfollowed ones too."""
        for follower, registers in self._registers.items():
            for followee in registers:
                yield (follower, followee)

    def items(self):
        """((follower, followee), L{FollowRegister}) of every relation with a register."""
        keys = self.keys
        for follower, registers in self._registers.items():
            for followee, held in registers.items():
                yield (follower, followee), FollowRegister(keys.key(held), keys.value(held))
