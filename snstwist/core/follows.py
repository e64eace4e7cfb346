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

What a start restores from a snapshot (L{snstwist.core.stateload}) stays
*frozen* until it is used: a follower's registers as a run of the
snapshot's part (its followees' name numbers, 4 bytes each, and its keys'
bytes, about 19 each), a followee's followers likewise; the first read or
write of a follower's registers (a FOLLOW, a timeline) or of a followee's
followers (a post's fan-out, LIST) thaws them into the dict or the tuple
above.  So a start holds a follow in about 30 bytes, not 90, and builds
them in a few calls a part, not a call a follow.

An unfollowed relation keeps its register (its key decides against a
follow that arrives late), so it is in its follower's dict until the
follower follows that user again.
"""

import bisect
import sys
from array import array
from itertools import accumulate, compress

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


# A frozen run is one int: its part's number in Follows._parts, shifted by
# this, plus its place in the part (an int, not a tuple: 64 bytes less a run).
_PART_SHIFT = 32


def _thawed(part, i):
    """The (followee, packed key) of the registers of follower C{i} of a frozen C{part}."""
    names, numbers, packed, width, starts = part
    start, end = starts[i], starts[i + 1]
    return zip(map(names.__getitem__, numbers[start:end]),
               (int.from_bytes(packed[j * width:(j + 1) * width], "little")
                for j in range(start, end)))


class Follows:
    def __init__(self, keys=None):
        self.keys = keys if keys is not None else Keys()
        self._registers = {}  # follower -> {followee: packed key and following}
        self._counts = {}  # follower -> how many it follows (absent: none)
        self._followers = {}  # followee -> its followers, sorted (absent: none)
        # Restored from a snapshot and not used since (L{restore}): follower
        # -> its run, its registers being a run of a part of the snapshot's
        # (L{_PART_SHIFT}); followee -> its run of followers likewise.  Each
        # becomes a dict (a tuple) when first used.
        self._parts = []
        self._frozen = {}
        self._frozenFollowers = {}

    def _run(self, run):
        """The part and the place in it of the frozen C{run}."""
        return self._parts[run >> _PART_SHIFT], run & ((1 << _PART_SHIFT) - 1)

    def _freeze(self, frozen, names, counts, part):
        """Hold C{names}' runs of C{part} (C{counts} items each) in C{frozen}."""
        first = len(self._parts) << _PART_SHIFT
        self._parts.append(part + (array("I", accumulate(counts, initial=0)),))
        frozen.update(zip(names, range(first, first + len(counts))))

    def _registersOf(self, follower):
        """C{follower}'s dict of registers, or None: made from its frozen run when first used."""
        registers = self._registers.get(follower)
        if registers is None and follower in self._frozen:
            registers = self._registers[follower] = dict(
                _thawed(*self._run(self._frozen.pop(follower))))
        return registers

    def _pairs(self):
        """(follower, followee, packed) of every register, leaving frozen runs frozen."""
        for follower, registers in self._registers.items():
            for followee, held in registers.items():
                yield follower, followee, held
        for follower, run in self._frozen.items():
            for followee, held in _thawed(*self._run(run)):
                yield follower, followee, held

    def apply(self, follower, followee, time_us, origin, seq, following):
        """
        Write the register (C{follower}, C{followee}) with the key
        (C{time_us}, C{origin}/C{seq}) if that is newer than its own; True
        if it was.  Names are held interned: one string a name, whatever
        update brought it (docs/benchmarks.md).
        """
        follower, followee = sys.intern(follower), sys.intern(followee)
        registers = self._registersOf(follower)
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
            self._followers[followee] = _added(self.followers(followee), follower)
        elif was and not following:
            self._decrement(self._counts, follower)
            left = _removed(self.followers(followee), follower)
            if left:
                self._followers[followee] = left
            else:
                del self._followers[followee]
        return True

    def restore(self, followers, counts, following, part):
        """
        Hold the registers of C{followers} (a list of names none of which
        this holding has registers of) as a part of a snapshot keeps them:
        follower i has C{counts}[i] registers, the next run of the C{part}
        (names, numbers, packed, width) (register j: the followee
        C{names[numbers[j]]}, the key C{packed[j * width:(j + 1) * width]}
        as packed by this holding's L{Keys}, little-endian), C{following}[i]
        of them followed.  Frozen: in a few calls whatever their number,
        and in about 30 bytes a register until its follower is used; the
        followers of their followees are restored apart (L{restoreFollowers}).
        """
        self._freeze(self._frozen, followers, counts, part)
        self._counts.update(zip(compress(followers, following), compress(following, following)))

    def restoreFollowers(self, followees, counts, part):
        """
        Hold the followers of C{followees} (none held yet) as a snapshot
        keeps them: followee i's are the next C{counts}[i] of the C{part}
        (names, numbers): C{names[numbers[j]]}, sorted.
        """
        self._freeze(self._frozenFollowers, followees, counts, part)

    def mergeFrom(self, other):
        """Apply every register of C{other} (a holding with keys of its own) here."""
        unpack = other.keys.unpack
        for follower, followee, held in other._pairs():
            self.apply(follower, followee, *unpack(held))

    @staticmethod
    def _decrement(counts, name):
        if counts[name] == 1:
            del counts[name]
        else:
            counts[name] -= 1

    # -- reading

    def isFollowing(self, follower, followee):
        registers = self._registersOf(follower)
        held = registers.get(followee) if registers is not None else None
        return held is not None and self.keys.value(held)

    def count(self, follower):
        """How many users C{follower} follows."""
        return self._counts.get(follower, 0)

    def following(self, follower):
        """Whom C{follower} follows, unsorted."""
        value = self.keys.value
        registers = self._registersOf(follower)
        return [f for f, held in registers.items() if value(held)] if registers else []

    def followers(self, followee):
        """The followers of C{followee}, sorted: a tuple or a SortedSet (do not change it)."""
        held = self._followers.get(followee)
        if held is None:
            run = self._frozenFollowers.pop(followee, None)
            if run is None:
                return ()
            (names, numbers, starts), i = self._run(run)
            held = tuple(map(names.__getitem__, numbers[starts[i]:starts[i + 1]]))
            if len(held) >= SORTED_FOLLOWERS:
                held = SortedSet(held)
            self._followers[followee] = held
        return held

    def __iter__(self):
        """Every relation with a register, (follower, followee): unfollowed ones too."""
        for follower, followee, _ in self._pairs():
            yield (follower, followee)

    def items(self):
        """((follower, followee), L{FollowRegister}) of every relation with a register."""
        keys = self.keys
        for follower, followee, held in self._pairs():
            yield (follower, followee), FollowRegister(keys.key(held), keys.value(held))
