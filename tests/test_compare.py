"""
C{sns-compare}: it notices every way two VMs can disagree on disk (post
files, users, follows, read marks), and only those; the digests come from
real stores.
"""

import os

from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.commands import compare, status
from snstwist.core.model import ReadMark, Update
from snstwist.rpc import sns_pb2 as pb
from snstwist.storage.store import SQLiteStore
from tests.strategies import followUpdate, postUpdate, userUpdate


def reply(vm, files=None, users="u", follows="f", marks="m"):
    return pb.DigestReply(vm=vm, post_files=files or {"alice.txt": "1"}, users=users,
                          follows=follows, marks=marks)


def markUpdate(origin, seq, user, postTime, postId):
    return Update(origin=origin, seq=seq, time_us=seq, read=ReadMark(user, postTime, postId))


class DifferencesTests(SynchronousTestCase):
    def test_equal_digests_agree(self):
        self.assertEqual(compare.differences({"vm1": reply("vm1"), "vm2": reply("vm2"),
                                              "vm3": reply("vm3")}), [])

    def test_differing_follows_are_noticed(self):
        problems = compare.differences({"vm1": reply("vm1"), "vm2": reply("vm2", follows="g")})
        self.assertEqual(problems, ["follows differ between vm1 and vm2"])

    def test_differing_users_are_noticed(self):
        problems = compare.differences({"vm1": reply("vm1"), "vm2": reply("vm2", users="v")})
        self.assertEqual(problems, ["users differ between vm1 and vm2"])

    def test_a_differing_post_file_is_noticed(self):
        problems = compare.differences({"vm1": reply("vm1"),
                                        "vm2": reply("vm2", {"alice.txt": "2"})})
        self.assertEqual(problems, ["posts/alice.txt differs between vm1 and vm2"])

    def test_differing_read_marks_are_noticed(self):
        problems = compare.differences({"vm1": reply("vm1"), "vm2": reply("vm2", marks="n")})
        self.assertEqual(problems, ["read marks differ between vm1 and vm2"])

    def test_a_vm_of_before_the_marks_hash_is_not_compared_on_them(self):
        """An older VM's digest has no marks field (empty): no difference is made up."""
        for older in ((reply("vm1", marks=""), reply("vm2")),
                      (reply("vm1"), reply("vm2", marks=""))):
            self.assertEqual(compare.differences(dict(zip(("vm1", "vm2"), older))), [])

    def test_a_post_file_missing_on_either_side_is_noticed(self):
        two = {"alice.txt": "1", "bob.txt": "3"}
        for a, b in ((reply("vm1"), reply("vm2", two)), (reply("vm1", two), reply("vm2"))):
            self.assertEqual(compare.differences({"vm1": a, "vm2": b}),
                             ["posts/bob.txt differs between vm1 and vm2"])

    def test_the_vm_that_differs_is_named_whichever_it_is(self):
        replies = {"vm1": reply("vm1"), "vm2": reply("vm2"), "vm3": reply("vm3", follows="x")}
        self.assertEqual(compare.differences(replies), ["follows differ between vm1 and vm3"])
        replies = {"vm1": reply("vm1", users="x"), "vm2": reply("vm2"), "vm3": reply("vm3")}
        self.assertEqual(compare.differences(replies), ["users differ between vm1 and vm2",
                                                        "users differ between vm1 and vm3"])

    def test_every_difference_is_listed(self):
        problems = compare.differences({
            "vm1": reply("vm1"), "vm2": reply("vm2", {"alice.txt": "2"}, "v", "g")})
        self.assertEqual(len(problems), 3)

    def test_a_different_number_of_updates_is_noticed(self):
        """Read marks are in no file: VMs that hold different counts disagree."""
        problems = compare.differences({"vm1": pb.DigestReply(vm="vm1", updates=13),
                                        "vm2": pb.DigestReply(vm="vm2", updates=12)})
        self.assertEqual(problems, ["vm1 holds 13 updates, vm2 12"])

    def test_no_master_is_a_problem(self):
        self.assertEqual(compare.differences({}), ["no live master"])

    def test_one_vm_alone_agrees_with_itself(self):
        self.assertEqual(compare.differences({"vm1": reply("vm1")}), [])


class StreamTroubleTests(SynchronousTestCase):
    """sns-compare and sns-status say which VM is behind, by how much, and why."""

    def test_a_stream_that_keeps_breaking_is_named_with_its_reason(self):
        broken = pb.PeerStream(vm="vm2", lacking=1, failures=37,
                               last_error="INTERNAL: Internal error from Core")
        lines = compare.summary({"vm1": pb.DigestReply(vm="vm1", unreplicated=1,
                                                       peers=[broken])})
        self.assertEqual(lines, [
            "vm1: 0 post files, 0 posts, 0 updates, 1 not yet replicated",
            "vm1 -> vm2: 1 update not confirmed; the stream broke 37 times in a row,"
            " last: INTERNAL: Internal error from Core"])

    def test_a_healthy_stream_says_nothing(self):
        healthy = pb.PeerStream(vm="vm2", lacking=3, connected=True)
        self.assertEqual(status.streamTrouble("vm1", [healthy], 0), [])

    def test_a_disconnected_peer_is_named(self):
        away = pb.PeerStream(vm="vm3", lacking=4)
        self.assertEqual(status.streamTrouble("vm1", [away], 0),
                         ["vm1 -> vm3: 4 updates not confirmed; not connected"])

    def test_refused_updates_are_said(self):
        self.assertEqual(status.streamTrouble("vm2", [], 2),
                         ["vm2 refused 2 updates from peers, dated beyond its clock window"])

    def test_the_status_table_ends_with_the_trouble(self):
        broken = pb.PeerStream(vm="vm2", lacking=5, failures=1, last_error="UNAVAILABLE: gone")
        reply = pb.StatusReply(servers=[pb.ServerInfo(
            vm="vm1", role=pb.MASTER, address="127.0.0.2:1", pid=7, pending=5,
            peers=[broken])], uptime=3)
        lines = status.table(reply).splitlines()
        self.assertEqual(lines[1].split()[6], "5", "LAG")
        self.assertEqual(lines[-1], "vm1 -> vm2: 5 updates not confirmed; the stream broke"
                                    " 1 time in a row, last: UNAVAILABLE: gone")


async def storeHolding(case, updates):
    """An opened L{SQLiteStore} in a fresh directory of C{case}'s, with C{updates}."""
    path = case.mktemp()
    os.makedirs(path)
    store = SQLiteStore(path)
    case.addCleanup(store.close)
    await store.open()
    await store.persist(updates)
    return store


class StoreDigestTests(TestCase):
    """Digests of real data directories differ exactly when their contents do."""

    async def digest(self, updates):
        store = await storeHolding(self, updates)
        return pb.DigestReply(**await store.digest())

    def base(self):
        return [userUpdate("vm1.a", 1, 1, "alice"), userUpdate("vm1.a", 2, 2, "bob"),
                postUpdate("vm1.a", 3, 3, "alice", "hello")]

    async def test_the_same_data_in_another_order_agrees(self):
        a = await self.digest(self.base())
        b = await self.digest(list(reversed(self.base())))
        self.assertEqual(compare.differences({"vm1": a, "vm2": b}), [])

    async def test_a_follow_held_by_one_vm_only_is_noticed(self):
        a = await self.digest(self.base())
        b = await self.digest(self.base() + [followUpdate("vm1.a", 4, 4, "alice", "bob")])
        self.assertEqual(compare.differences({"vm1": a, "vm2": b}),
                         ["follows differ between vm1 and vm2"])

    async def test_an_undone_follow_agrees_with_none(self):
        a = await self.digest(self.base())
        b = await self.digest(self.base() + [
            followUpdate("vm1.a", 4, 4, "alice", "bob"),
            followUpdate("vm1.a", 5, 5, "alice", "bob", following=False)])
        self.assertEqual(compare.differences({"vm1": a, "vm2": b}), [])

    async def test_a_user_held_by_one_vm_only_is_noticed(self):
        a = await self.digest(self.base())
        b = await self.digest(self.base() + [userUpdate("vm1.a", 4, 4, "carol")])
        self.assertEqual(compare.differences({"vm1": a, "vm2": b}),
                         ["users differ between vm1 and vm2"])

    async def test_a_post_held_by_one_vm_only_is_noticed(self):
        a = await self.digest(self.base())
        b = await self.digest(self.base() + [postUpdate("vm1.a", 4, 4, "alice", "again")])
        self.assertEqual(compare.differences({"vm1": a, "vm2": b}),
                         ["posts/alice.txt differs between vm1 and vm2"])
        self.assertEqual((a.posts, b.posts), (1, 2))

    async def test_a_read_mark_held_by_one_vm_only_is_noticed(self):
        a = await self.digest(self.base())
        b = await self.digest(self.base() + [markUpdate("vm1.a", 4, "bob", 3, "vm1.a/3")])
        self.assertEqual(compare.differences({"vm1": a, "vm2": b}),
                         ["read marks differ between vm1 and vm2"])

    async def test_the_same_winning_marks_agree_whatever_the_copies(self):
        """bob's mark set on two VMs (two updates) and a superseded one: the winner counts."""
        first = self.base() + [markUpdate("vm1.a", 4, "bob", 3, "vm1.a/3")]
        again = self.base() + [markUpdate("vm2.b", 1, "bob", 3, "vm1.a/3"),
                               markUpdate("vm1.a", 5, "bob", 1, "vm1.a/1")]
        a = await self.digest(first)
        b = await self.digest(again)
        self.assertEqual(compare.differences({"vm1": a, "vm2": b}), [])
