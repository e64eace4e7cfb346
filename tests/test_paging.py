"""
LIST and the digest a page at a time: the page tokens, the pages of the
replica's sorted names, the servicer's pages, the client library putting
them together, and sns-compare walking the digests' pages of several VMs.
A page begins after a name, never at an offset, so signing up between two
pages never shows a name twice.
"""


from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.client import client as clientModule
from snstwist.commands import compare
from snstwist.core import errors, follows, limits, pages, state
from snstwist.core.errors import Status
from snstwist.core.pages import ListPosition, Listing, nextListToken, parseListToken
from snstwist.core.state import Replica, pageOf
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc.grpcbridge import SESSION_METADATA
from snstwist.storage.store import MemoryStore
from tests.fakes import FakeCallContext
from tests.test_compare import storeHolding
from tests.servers import serverParts
from tests.strategies import followUpdate, postUpdate, userUpdate

NAME = st.text("abcdefghij._-0", min_size=1, max_size=4)


def statusOf(error):
    return errors.statusFor(error)[0]


class TokenTests(SynchronousTestCase):
    def test_the_first_page_has_no_token(self):
        self.assertEqual(parseListToken(""), ListPosition("", ""))

    def test_a_token_says_where_each_list_goes_on(self):
        self.assertEqual(parseListToken(">bob/*"), ListPosition("bob", None))
        self.assertEqual(parseListToken("*/>a.b-c_9"), ListPosition(None, "a.b-c_9"))
        self.assertEqual(parseListToken("/>x"), ListPosition("", "x"))

    def test_the_next_token_reads_back_as_where_the_page_ended(self):
        token = nextListToken(["a", "b"], True, ["x"], False)
        self.assertEqual((token, parseListToken(token)), (">b/*", ListPosition("b", None)))

    def test_after_the_last_page_there_is_no_token(self):
        self.assertEqual(nextListToken(["a"], False, [], False), "")
        self.assertEqual(nextListToken([], False, [], False), "")

    def test_bad_tokens_are_invalid_argument_without_echoing_them(self):
        for token in ("x", ">", ">bob", "a/b", ">bob/>", ">b b/*", "*/*/*",
                      ">" + "a" * 33 + "/*", "\x00/*", ">bób/*", "x" * 10000):
            e = self.assertRaises(errors.InvalidRequest, parseListToken, token)
            self.assertEqual(statusOf(e), Status.INVALID_ARGUMENT, token)
            self.assertLess(len(e.message), 120, token)

    def test_a_digest_page_begins_at_nothing_or_a_post_file(self):
        self.assertEqual(pages.checkDigestAfter(""), "")
        self.assertEqual(pages.checkDigestAfter("bob.txt"), "bob.txt")
        for bad in ("bob", ".txt", "../x.txt", "a b.txt", "a" * 40 + ".txt"):
            e = self.assertRaises(errors.InvalidRequest, pages.checkDigestAfter, bad)
            self.assertEqual(statusOf(e), Status.INVALID_ARGUMENT, bad)


class PageOfTests(SynchronousTestCase):
    def test_pages_of_an_empty_set(self):
        self.assertEqual(pageOf(set(), "", 3), ([], False))
        self.assertEqual(Replica().usersPage("", 3), ([], False))

    def test_a_page_of_exactly_the_limit_has_no_more(self):
        replica = replicaOf("a", "b", "c")
        self.assertEqual(replica.usersPage("", 3), (["a", "b", "c"], False))
        self.assertEqual(replica.usersPage("", 2), (["a", "b"], True))
        self.assertEqual(replica.usersPage("b", 2), (["c"], False))
        self.assertEqual(replica.usersPage("c", 2), ([], False))

    def test_a_page_begins_after_a_name_that_is_not_there(self):
        self.assertEqual(replicaOf("a", "c", "e").usersPage("b", 5), (["c", "e"], False))

    @given(names=st.sets(NAME), after=st.one_of(st.just(""), NAME),
           limit=st.integers(1, 6))
    def test_sorted_and_plain_sets_give_the_same_page(self, names, after, limit):
        expected = sorted(n for n in names if n > after)
        page = (expected[:limit], len(expected) > limit)
        self.assertEqual((pageOf(names, after, limit),
                          pageOf(state.SortedSet(names), after, limit),
                          pageOf(tuple(sorted(names)), after, limit)), (page, page, page))

    def test_a_popular_users_followers_become_sorted_and_page_the_same(self):
        self.patch(follows, "SORTED_FOLLOWERS", 3)
        replica = replicaOf("star", "d", "b", "a", "c")
        for i, fan in enumerate(["d", "b", "a", "c"]):
            replica.apply(followUpdate("o", 10 + i, 10 + i, fan, "star"))
        self.assertIsInstance(replica.followerSet("star"), state.SortedSet)
        self.assertEqual((replica.followersPage("star", "a", 2), replica.followers("star")),
                         ((["b", "c"], True), ["a", "b", "c", "d"]))
        replica.apply(followUpdate("o", 20, 20, "b", "star", following=False))
        self.assertEqual(replica.followersPage("star", "", 5), (["a", "c", "d"], False))


def replicaOf(*names):
    replica = Replica()
    for i, name in enumerate(names, 1):
        replica.apply(userUpdate("o", i, i, name))
    return replica


class World:
    """The real servicer of a master, on a MemoryStore, where LIST is asked a page at a time."""

    def __init__(self, test, *names):
        self.clock = Clock()
        self.store = MemoryStore()
        self.service = serverParts(test, "master", "s" * 16, store=self.store,
                                   clock=self.clock)
        self.node = self.service.node
        for name in names:
            self.node.login(name)
        self.store.flush()

    def page(self, user, token=""):
        ctx = FakeCallContext({SESSION_METADATA: self.service.admission.loginReply(user).token})
        return self.service.api.list(pb.ListRequest(page_token=token), ctx)


class ServicerTests(SynchronousTestCase):
    def test_a_small_list_is_one_page(self):
        world = World(self, "bob", "alice", "carol")
        world.node.follow("bob", "alice", "r1")
        reply = world.page("alice")
        self.assertEqual((list(reply.all_users), list(reply.followers), reply.next_page_token),
                         (["alice", "bob", "carol"], ["bob"], ""))

    def test_the_lists_go_on_in_pages_each_at_most_list_page(self):
        self.patch(limits, "LIST_PAGE", 2)
        world = World(self, "e", "d", "c", "b", "a")
        for fan in "bcd":
            world.node.follow(fan, "a", "r-" + fan)
        first = world.page("a")
        second = world.page("a", first.next_page_token)
        third = world.page("a", second.next_page_token)
        self.assertEqual([(list(r.all_users), list(r.followers), r.next_page_token)
                          for r in (first, second, third)],
                         [(["a", "b"], ["b", "c"], ">b/>c"),
                          (["c", "d"], ["d"], ">d/*"),
                          (["e"], [], "")])

    def test_a_bad_token_is_invalid_argument(self):
        world = World(self, "alice")
        e = self.assertRaises(errors.InvalidRequest, world.page, "alice", "nonsense")
        self.assertEqual(statusOf(e), Status.INVALID_ARGUMENT)

    def test_a_user_signing_up_between_pages_is_never_listed_twice(self):
        """A name before the boundary waits for the next LIST; one after it comes in order."""
        self.patch(limits, "LIST_PAGE", 2)
        world = World(self, "b", "d", "f")
        first = world.page("b")
        world.node.login("a")   # before the boundary
        world.node.login("e")   # after it
        second = world.page("b", first.next_page_token)
        self.assertEqual((list(first.all_users), list(second.all_users)),
                         (["b", "d"], ["e", "f"]))


class FakeCalls:
    """A client's master: answers List from a live replica, which may change between pages."""

    def __init__(self, replica, user, between=()):
        self.replica, self.user = replica, user
        self.between = list(between)
        self.tokens = []

    def __call__(self, name, request, write=False):
        self.tokens.append(request.page_token)
        at = parseListToken(request.page_token)
        users, moreUsers = (self.replica.usersPage(at.users, 2) if at.users is not None
                            else ([], False))
        fans, moreFans = (self.replica.followersPage(self.user, at.followers, 2)
                          if at.followers is not None else ([], False))
        if self.between:
            self.between.pop(0)(self.replica)
        return defer.succeed(pb.ListReply(all_users=users, followers=fans,
                                          next_page_token=nextListToken(
                                              users, moreUsers, fans, moreFans)))


class ClientListTests(SynchronousTestCase):
    def listed(self, calls):
        client = clientModule.Client.__new__(clientModule.Client)
        client._command = calls
        return self.successResultOf(client.list())

    @given(names=st.lists(NAME, unique=True, max_size=12),
           later=st.lists(st.lists(NAME, max_size=3), max_size=6))
    def test_pages_put_together_are_sorted_and_never_repeat_a_name(self, names, later):
        """Whatever signs up between pages: sorted, no name twice, every name of before."""
        replica = replicaOf(*names)
        seq = [len(names)]

        def signUp(batch):
            def apply(r):
                for name in batch:
                    seq[0] += 1
                    r.apply(userUpdate("p", seq[0], seq[0], name))
            return apply

        listed = list(self.listed(FakeCalls(replica, "x", map(signUp, later))).all_users)
        self.assertEqual(listed, sorted(set(listed)))
        self.assertLessEqual(set(names), set(listed))
        self.assertLessEqual(set(listed), set(replica.users))

    def test_both_lists_are_walked_to_their_ends(self):
        replica = replicaOf("a", "b", "c", "d", "e")
        for i, fan in enumerate("bcde"):
            replica.apply(followUpdate("o", 10 + i, 10 + i, fan, "a"))
        calls = FakeCalls(replica, "a")
        reply = self.listed(calls)
        self.assertEqual((list(reply.all_users), list(reply.followers), calls.tokens),
                         (list("abcde"), list("bcde"), ["", ">b/>c", ">d/*"]))

    def test_a_server_sending_a_name_again_or_the_same_token_ends_the_walk(self):
        """The library never shows a name twice, and never asks for a page twice."""
        listing = Listing(pb.ListReply())
        token = listing.add(pb.ListReply(all_users=["a", "b"], next_page_token=">b/*"))
        again = listing.add(pb.ListReply(all_users=["a", "b", "c"], next_page_token=">b/*"))
        self.assertEqual((token, again, list(listing.reply.all_users)),
                         (">b/*", None, ["a", "b", "c"]))


class ComparisonTests(SynchronousTestCase):
    def paged(self, files, size):
        """The pages of C{files} ({name: hash}) of C{size} files each, as a VM sends them."""
        names = sorted(files)
        for i in range(0, max(len(names), 1), size):
            chunk = names[i:i + size]
            more = i + size < len(names)
            yield pb.DigestReply(post_files={n: files[n] for n in chunk},
                                 posts=len(chunk), next=chunk[-1] if more else "")

    def walk(self, vms):
        """Drive a Comparison as sns-compare does; {vm: (files, page size)}."""
        sources = {vm: list(self.paged(files, size)) for vm, (files, size) in vms.items()}
        comparison = compare.Comparison(sorted(vms))
        asked = []
        while wanted := comparison.wanted():
            for vm, after in sorted(wanted.items()):
                asked.append((vm, after))
                page = next(p for p in sources[vm] if not after or min(p.post_files) > after)
                comparison.add(vm, page)
            # At most about a page of each VM is held.
            self.assertLessEqual(max(len(p) for p in comparison._pending.values()), 10)
        return comparison, asked

    def test_vms_paged_differently_agree_when_their_files_agree(self):
        files = {"%s.txt" % (c,): c for c in "abcdefghij"}
        comparison, asked = self.walk({"vm1": (files, 3), "vm2": (files, 4), "vm3": (files, 10)})
        self.assertEqual((compare.differences(comparison), comparison.files, comparison.posts),
                         ([], dict.fromkeys(["vm1", "vm2", "vm3"], 10),
                          dict.fromkeys(["vm1", "vm2", "vm3"], 10)))
        self.assertEqual(sum(1 for vm, _ in asked if vm == "vm1"), 4)

    def test_a_file_that_differs_or_is_missing_on_any_page_is_named_once(self):
        files = {"%s.txt" % (c,): c for c in "abcdefghij"}
        other = dict(files, **{"c.txt": "x"})
        del other["h.txt"]
        other["k.txt"] = "k"
        comparison, _ = self.walk({"vm1": (files, 3), "vm2": (other, 2)})
        self.assertEqual(compare.differences(comparison), [
            "posts/c.txt differs between vm1 and vm2", "posts/h.txt differs between vm1 and vm2",
            "posts/k.txt differs between vm1 and vm2"])

    def test_a_vm_with_no_files_against_one_with_many(self):
        files = {"%s.txt" % (c,): c for c in "abcde"}
        comparison, _ = self.walk({"vm1": ({}, 2), "vm2": (files, 2)})
        self.assertEqual(len(compare.differences(comparison)), 5)

    def test_a_page_that_does_not_move_on_ends_that_vms_walk(self):
        comparison = compare.Comparison(["vm1"])
        comparison.add("vm1", pb.DigestReply(post_files={"b.txt": "1"}, next="b.txt"))
        comparison.add("vm1", pb.DigestReply(post_files={"a.txt": "1"}, next="a.txt"))
        self.assertEqual((comparison.wanted(), comparison.files), ({}, {"vm1": 1}))


class StoreDigestPageTests(TestCase):
    """A real store's digest, a page at a time, bounded in files and in bytes."""

    def store(self, updates):
        return storeHolding(self, updates)

    def updates(self, authors):
        ups = []
        for i, author in enumerate(authors, 1):
            ups.append(userUpdate("vm1.a", 2 * i - 1, 2 * i - 1, author))
            ups.append(postUpdate("vm1.a", 2 * i, 2 * i, author, "hello " + author))
        return ups

    async def test_pages_cover_every_file_once_and_the_tables_come_first(self):
        store = await self.store(self.updates("edcba"))
        one = await store.digest()
        self.assertEqual((len(one["post_files"]), one["next"]), (5, ""))
        self.patch(limits, "DIGEST_PAGE", 2)
        after, seen, firsts = "", {}, []
        while True:
            page = await store.digest(after)
            firsts.append(page.get("users"))
            seen.update(page["post_files"])
            if not page["next"]:
                break
            after = page["next"]
        self.assertEqual((seen, firsts[0], firsts[1:]),
                         (one["post_files"], one["users"], [None, None]))

    async def test_a_page_ends_once_its_bytes_are_read_but_holds_one_file(self):
        store = await self.store(self.updates("abc"))
        page = await store._onDisk(store._disk.digest, "", 10, 1)
        self.assertEqual((list(page["post_files"]), page["next"], page["posts"]),
                         (["a.txt"], "a.txt", 1))

    async def test_sns_compare_agrees_on_paged_stores_and_finds_one_file(self):
        self.patch(limits, "DIGEST_PAGE", 2)
        a = await self.store(self.updates("abcde"))
        b = await self.store(self.updates("abcde") + [postUpdate("vm1.a", 11, 11, "d", "x")])
        comparison = compare.Comparison(["vm1", "vm2"])
        stores = {"vm1": a, "vm2": b}
        while wanted := comparison.wanted():
            for vm, after in sorted(wanted.items()):
                comparison.add(vm, pb.DigestReply(**await stores[vm].digest(after)))
        self.assertEqual(compare.differences(comparison),
                         ["posts/d.txt differs between vm1 and vm2"])
        self.assertEqual(compare.summary(comparison)[1].split(":")[1],
                         " 5 post files, 6 posts, 0 updates, 0 not yet replicated")
