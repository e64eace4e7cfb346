"""
The password registers of a replica's users, held compactly.

Every server process holds every user's password register: the key of its
last write (packed into one int, L{registers.Keys}) and the argon2id hash.
Held as a dict of tuples that is about 280 bytes a user (the hash a string
of its own, the tuple, the dict's entry), more than half of what a user
costs a process (docs/benchmarks.md, "Memory per user").  What a start
restores from a snapshot (L{snstwist.core.stateload}) stays *frozen* in
the form of the snapshot's part: its users (the replica's own name
strings, sorted), their keys, and their hashes joined into one string with
the offsets of each, about 160 bytes a user, found by bisection.  A
register written after the start is held in the dict, which is looked at
first: it is always newer than the frozen one it replaces
(L{state.Replica.setPassword} writes only a newer key).
"""

import bisect
import operator
from array import array
from itertools import accumulate


class Passwords:
    """user -> (packed key, hash): the part of a dict's interface the replica uses."""

    def __init__(self):
        self._held = {}
        self._parts = []  # frozen: (users sorted, their keys, hashes joined, their ends)

    def get(self, user, default=None):
        held = self._held.get(user)
        if held is not None:
            return held
        for users, keys, hashes, ends in self._parts:
            i = bisect.bisect_left(users, user)
            if i < len(users) and users[i] == user:
                return keys[i], hashes[ends[i]:ends[i + 1]]
        return default

    def __setitem__(self, user, register):
        self._held[user] = register

    def restore(self, users, keys, hashes):
        """
        Hold the registers of C{users} (a list; none held yet): user i's
        key C{keys}[i] and hash C{hashes}[i].  Frozen if C{users} are sorted
        and distinct, as a snapshot's part holds them; else held as any.
        """
        if not all(map(operator.lt, users, users[1:])):
            self._held.update(zip(users, zip(keys, hashes)))
            return
        self._parts.append((users, keys, "".join(hashes),
                            array("I", accumulate(map(len, hashes), initial=0))))

    def __iter__(self):
        """Every user with a register (in no particular order)."""
        held = self._held
        yield from held
        for users, _, _, _ in self._parts:
            for user in users:
                if user not in held:
                    yield user

    def items(self):
        for user in self:
            yield user, self.get(user)
