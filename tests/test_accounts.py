"""
Password registers held compactly (snstwist.core.accounts): what a start
restores stays frozen in the snapshot's form, answers as a dict would, and
gives way to any register written after it.
"""

import tracemalloc

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core.accounts import Passwords
from snstwist.core.state import Replica
from tests.strategies import names


def hashOf(i):
    return "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ%06d$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNo" % (i,)


class PasswordsTests(SynchronousTestCase):
    @given(st.dictionaries(names(), st.tuples(st.integers(1, 2**150), st.text(max_size=8)),
                           max_size=12),
           st.dictionaries(names(), st.tuples(st.integers(1, 2**150), st.text(max_size=8)),
                           max_size=4),
           st.integers(1, 4))
    def test_frozen_registers_answer_as_a_dict_and_give_way_to_later_ones(
            self, restored, written, partSize):
        """
        Registers restored in sorted parts of any size, then some written:
        every lookup, the users iterated and their items are what a dict
        given the same writes holds.
        """
        passwords, expected = Passwords(), dict(restored)
        users = sorted(restored)
        for i in range(0, len(users), partSize):
            part = users[i:i + partSize]
            passwords.restore(part, [restored[u][0] for u in part], [restored[u][1] for u in part])
        for user, register in written.items():
            passwords[user] = expected[user] = register
        self.assertEqual((sorted(passwords), dict(passwords.items()),
                          [passwords.get(u) for u in sorted(expected) + ["nobody"]]),
                         (sorted(expected), expected,
                          [expected.get(u) for u in sorted(expected) + ["nobody"]]))

    def test_registers_not_sorted_are_held_as_any(self):
        passwords = Passwords()
        passwords.restore(["bob", "alice", "bob"], [1, 2, 3], ["b", "a", "b2"])
        self.assertEqual(dict(passwords.items()), {"alice": (2, "a"), "bob": (3, "b2")})

    def test_a_frozen_part_holds_far_less_than_a_dict_of_tuples(self):
        """
        1,000 users' hashes as a start restores them (the part's strings let
        go) hold under 60% of the memory a dict of (key, hash) tuples holds
        with each hash a string of its own (the keys aside: both keep them).
        """
        keys = [2**140 + i for i in range(1000)]

        def held(users):
            passwords = Passwords()
            tracemalloc.start()
            try:
                passwords.restore(users, keys, [hashOf(i) for i in range(1000)])
                return tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()

        users = ["u%04d" % (i,) for i in range(1000)]
        frozen, asDict = held(users), held(users[::-1])
        self.assertLess(frozen, 0.6 * asDict, (frozen, asDict))

    def test_a_replicas_password_after_a_frozen_one(self):
        """A newer register replaces a frozen one; an older one does not."""
        replica = Replica()
        old = replica.keys.pack(10, "vm1.a", 1, True)
        replica.passwords.restore(["alice", "bob"], [old, old], ["h1", "h2"])
        replica.setPassword("alice", 20, "vm1.a", 2, "h3")
        replica.setPassword("bob", 5, "vm1.a", 3, "h4")
        self.assertEqual([(r.key, r.hash) for r in map(replica.password, ["alice", "bob"])],
                         [((20, "vm1.a/2"), "h3"), ((10, "vm1.a/1"), "h2")])
