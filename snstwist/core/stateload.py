"""
A replica's state (users, passwords, read marks, follow registers) rebuilt
from a snapshot of it, a part at a time (L{snstwist.storage.snapshot} keeps
and reads the snapshot; this module only builds from its parts).

Reading the state row by row costs some microseconds an update, decoded
and applied one at a time: seconds at 100,000 users with their follows.
A snapshot keeps the state as the replica holds it (each name once, each
register's key packed as L{registers.Keys} packs it), so a part is turned
into dicts and tuples by a few calls each, not a call a register.

The state is built beside the replica's (L{Rebuild}) and then put in its
place in one step (L{Rebuild.install}), with whatever the replica applied
meanwhile merged in as its registers dictate (the last writer wins): no
part of it is ever seen half-built, and nothing applied during the read is
lost.  Pure data: no I/O, no reactor.
"""

import sys
from array import array

from sortedcontainers import SortedSet

from snstwist.core.accounts import Passwords
from snstwist.core.follows import Follows
from snstwist.core.registers import Keys


def _numbers(raw):
    """The name numbers of C{raw}: 4 bytes each, in this machine's order (L{snapshot})."""
    numbers = array("I")
    numbers.frombytes(raw)
    return numbers


def sortedSet(names):
    """
    The SortedSet of C{names} (sorted, distinct), made in about the time
    of a set of them: a SortedSet made from an iterable sorts it in the
    order of a set, tens of milliseconds for 100,000 names, in one turn;
    its list sorts a sorted list in one pass.
    """
    made = SortedSet()
    made._set.update(names)
    made._list.update(names)
    return made


class Rebuild:
    """The state of a snapshot whose keys were packed with the origins C{origins}, built up."""

    def __init__(self, origins):
        self.keys = Keys(origins)
        self.names = []
        self.users = []  # sorted
        self.passwords = Passwords()
        self.reads = {}
        self.follows = Follows(self.keys)

    def apply(self, part):
        """Add one part of the snapshot: a tuple whose first item says what it holds."""
        getattr(self, "_" + part[0])(*part[1:])

    def _named(self, numbers):
        return map(self.names.__getitem__, numbers)

    def _names(self, names):
        # Each name once in memory, as the replica holds them (interned).
        self.names.extend(map(sys.intern, names))

    def _users(self, numbers):
        # Sorted: they become a SortedSet at once when installed (L{sortedSet}).
        self.users.extend(self._named(numbers))

    def _passwords(self, numbers, packed, hashes):
        # Frozen, as the snapshot's part holds them (L{Passwords.restore}).
        self.passwords.restore(list(self._named(numbers)), packed, hashes)

    def _reads(self, numbers, times, postIds):
        self.reads.update(zip(self._named(numbers), zip(times, postIds)))

    def _follows(self, followers, counts, following, followees, packed, width):
        self.follows.restore(list(self._named(followers)), counts, following,
                             (self.names, _numbers(followees), packed, width))

    def _followers(self, followees, counts, followers):
        self.follows.restoreFollowers(self._named(followees), counts,
                                      (self.names, _numbers(followers)))

    def install(self, replica):
        """
        Make this the state of C{replica}, with what C{replica} held merged
        in (what it applied while this was read: few registers, if any).
        """
        oldKeys, oldPasswords = replica.keys, replica.passwords
        oldReads, oldFollows = replica.reads, replica.follows
        users = sortedSet(self.users)
        users.update(replica.users)
        replica.users, replica.keys, replica.passwords = users, self.keys, self.passwords
        replica.reads, replica.follows = self.reads, self.follows
        for user, (packed, hash) in oldPasswords.items():
            time_us, origin, seq, _ = oldKeys.unpack(packed)
            replica.setPassword(user, time_us, origin, seq, hash)
        for user, key in oldReads.items():
            if key > self.reads.get(user, (0, "")):
                self.reads[user] = key
        self.follows.mergeFrom(oldFollows)
