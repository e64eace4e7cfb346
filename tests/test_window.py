"""
The hot window bounded in bytes (snstwist.core.window): filled with posts of
the largest size, memory stays within its budget, per author and in total;
what it lets go is read from disk (a real SQLite store) and reads still
return the right posts; whatever the order of arrival, a window is every
post of its author after its floor.
"""

import os
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.core.limits import HISTORY, MAX_POST_CHARS
from snstwist.core.node import Node
from snstwist.core.state import Replica
from snstwist.core.window import LATE_KEYS, POST_OVERHEAD, Windows, postBytes
from snstwist.storage.store import SQLiteStore
from tests.strategies import followUpdate, postUpdate, userUpdate

# The largest post in memory: its most characters, each of 4 bytes.
BIGGEST = "\U0001f600" * MAX_POST_CHARS


def bigPost(author, n, time_us=None):
    """Post number C{n} of C{author}: the largest text, its number in front."""
    text = ("%s %d " % (author, n) + BIGGEST)[:MAX_POST_CHARS]
    return postUpdate("vm2.a", n, time_us if time_us is not None else 1000 + n, author, text)


class ByteBoundTests(SynchronousTestCase):
    def test_windows_of_the_largest_posts_stay_within_their_bytes(self):
        """
        200 authors of 20 posts of 1,000 4-byte characters (16 MB): memory
        holds at most the total budget, each author at most its own, and
        the estimate of what it holds is not below what Python allocated.
        """
        budget, perAuthor = 1024 * 1024, 40 * 1024
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            replica = Replica(authorBytes=perAuthor, windowBytes=budget)
            n = 0
            for _ in range(20):
                for a in range(200):
                    n += 1
                    replica.apply(bigPost("user%03d" % (a,), n))
            allocated = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        windows = replica.windows
        perWindow = {a: sum(postBytes(p) for p in posts) for a, posts in windows.posts.items()}
        self.assertEqual(
            (windows.heldBytes <= budget, max(perWindow.values()) <= perAuthor,
             sum(perWindow.values()) == windows.heldBytes,
             max(len(posts) for posts in windows.posts.values()) < HISTORY,
             replica.seen.count()),
            (True, True, True, True, 4000))
        # What Python allocated for it all (windows, dicts, the version
        # vector): within the budget, and a small margin for the rest.
        self.assertLess(allocated, budget + 256 * 1024)

    def test_an_author_keeps_its_newest_posts_within_its_bytes(self):
        """Posts of 4 KB each and 10 KB for an author: the two newest, whatever the order."""
        windows = Windows(hotPosts=20, authorBytes=10 * 1024, windowBytes=10**9)
        posts = [bigPost("alice", n).post for n in (3, 1, 5, 2, 4)]
        for post in posts:
            windows.hold(post, hidden=False)
        self.assertEqual(([p.id for p in windows.shown("alice")], windows.floor("alice")),
                         (["vm2.a/4", "vm2.a/5"], posts[0].key))

    def test_the_least_recently_used_window_goes_first(self):
        """Over the total, the author written to or read longest ago is let go whole."""
        size = postBytes(bigPost("a", 1).post)
        windows = Windows(hotPosts=20, authorBytes=10**9, windowBytes=3 * size)
        for n, author in enumerate(["alice", "bob", "carol"], 1):
            windows.hold(bigPost(author, n).post, hidden=False)
        windows.touch("alice")  # read: bob is now the coldest
        windows.hold(bigPost("dave", 4).post, hidden=False)
        self.assertEqual(
            (sorted(windows.posts), windows.floor("bob"), windows.floor("alice"),
             windows.heldBytes),
            (["alice", "carol", "dave"], bigPost("bob", 2).post.key, None, 3 * size))

    def test_a_post_at_or_below_the_floor_is_not_held(self):
        """Once an author's window let its older posts go, an older post arriving stays on disk."""
        windows = Windows(hotPosts=2)
        for n in (5, 6, 7):
            windows.hold(bigPost("alice", n).post, hidden=False)
        windows.hold(bigPost("alice", 1).post, hidden=False)
        self.assertEqual([p.id for p in windows.shown("alice")], ["vm2.a/6", "vm2.a/7"])

    def test_windows_let_go_hold_nothing_and_keep_their_newest_as_floor(self):
        """
        Every window let go at once (a promotion): each author's floor is
        the newest post it held, hidden or not, so a later post is held and
        an older one is not.
        """
        windows = Windows(hotPosts=2)
        for n in (5, 6, 7):
            windows.hold(bigPost("alice", n).post, hidden=False)
        windows.hold(bigPost("bob", 8).post, hidden=True)
        windows.releaseAll()
        for n, author in ((4, "alice"), (9, "alice"), (10, "bob")):
            windows.hold(bigPost(author, n).post, hidden=False)
        self.assertEqual(
            (windows.floor("alice"), windows.floor("bob"),
             {a: [p.id for p in posts] for a, posts in windows.posts.items()},
             windows.hidden, windows.heldBytes),
            (bigPost("alice", 7).post.key, bigPost("bob", 8).post.key,
             {"alice": ["vm2.a/9"], "bob": ["vm2.a/10"]}, set(),
             2 * postBytes(bigPost("alice", 9).post)))

    def test_the_overhead_estimate_is_not_below_what_a_post_costs(self):
        """A post held costs its text and at most POST_OVERHEAD besides (measured)."""
        tracemalloc.start()
        try:
            texts = ["%d %s" % (n, "x" * 50) for n in range(2000)]
            before = tracemalloc.get_traced_memory()[0]
            windows = Windows(hotPosts=10**6, authorBytes=10**9, windowBytes=10**9)
            for n, text in enumerate(texts, 1):
                windows.hold(postUpdate("vm2.a", n, n, "alice", text).post, hidden=n % 2 == 0)
            allocated = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertLess(allocated / len(texts), POST_OVERHEAD)

    @given(st.lists(st.tuples(st.sampled_from(["alice", "bob", "carol"]),
                              st.integers(1, 40), st.integers(1, 3)),
                    max_size=60, unique_by=lambda t: t[1]),
           st.integers(1, 5), st.integers(1, 12))
    def test_a_window_is_every_post_after_its_floor(self, arrivals, hotPosts, budgetPosts):
        """Any order, any bounds: each window is exactly its author's posts after its floor."""
        unit = postBytes(bigPost("alice", 1).post)
        windows = Windows(hotPosts=hotPosts, authorBytes=3 * unit,
                          windowBytes=budgetPosts * unit)
        arrived = {}
        for author, n, reads in arrivals:
            post = bigPost(author, n, time_us=n * 10).post
            windows.hold(post, hidden=False)
            arrived.setdefault(author, []).append(post)
            for _ in range(reads - 1):
                windows.touch(author)
            self.assertLessEqual(windows.heldBytes, max(budgetPosts, 1) * unit + unit)
        for author, posts in arrived.items():
            floor = windows.floor(author)
            self.assertEqual(
                [p.id for p in windows.posts.get(author, [])],
                [p.id for p in sorted(posts, key=lambda p: p.key)
                 if floor is None or p.key > floor])


class ColdWindowReadTests(TestCase):
    """What the windows let go is read from disk: a real SQLite store, the node's History."""

    async def node(self, authors, posts, budget):
        path = self.mktemp()
        os.makedirs(path)
        node = Node("vm1", "vm1.n", SQLiteStore(path), Clock())
        self.addCleanup(node.store.close)
        await node.load()
        node.replica = Replica(authorBytes=32 * 1024, windowBytes=budget)
        updates = [userUpdate("vm2.a", 10**6 + i, 1, a) for i, a in enumerate(authors)]
        updates += [followUpdate("vm2.a", 2 * 10**6 + i, 2, "reader", a)
                    for i, a in enumerate(authors[1:])]
        updates += posts
        await node.receive(updates)
        await node.store.persist([])  # everything durable (batches go in order)
        return node

    async def test_recent_history_and_pages_are_right_after_windows_were_let_go(self):
        """
        A reader follows 30 authors of 12 of the largest posts each; memory
        holds 48 of the 360 posts.  The reader's history is still the 20
        newest posts of all, and a catch-up from the start pages through all
        360 in order.
        """
        authors = ["reader"] + ["author%02d" % (a,) for a in range(30)]
        posts = [bigPost(authors[1 + (n % 30)], n) for n in range(1, 361)]
        node = await self.node(authors, posts, budget=4 * 12 * postBytes(posts[0].post))
        windows = node.replica.windows
        held = sum(len(posts) for posts in windows.posts.values())
        recent = await node.history.recent("reader", HISTORY)
        pages, cursor = [], (0, "")
        while True:
            page = await node.history.timelinePage("reader", cursor, 50)
            if not page:
                break
            pages += page
            cursor = page[-1].key
        every = sorted((u.post for u in posts), key=lambda p: p.key)
        self.assertEqual(
            (held <= 48, [p.id for p in recent], [p.id for p in pages],
             windows.heldBytes <= windows.windowBytes),
            (True, [p.id for p in every[-HISTORY:]], [p.id for p in every], True))

    async def test_a_cold_window_read_again_answers_from_memory(self):
        """The author read is hot again: its newest posts are back in memory."""
        authors = ["reader"] + ["author%02d" % (a,) for a in range(10)]
        posts = [bigPost(authors[1 + (n % 10)], n) for n in range(1, 101)]
        node = await self.node(authors, posts, budget=5 * postBytes(posts[0].post))
        self.assertNotIn("author01", node.replica.windows.posts)
        await node.history.recent("author01", 5)
        newest = [u.post.id for u in posts if u.post.author == "author01"][-5:]
        self.assertEqual(([p.id for p in node.replica.postsBy("author01")][-5:],
                          node.replica.coldSources("author01", 5)), (newest, []))


def bobLetGo():
    """
    Windows that held bob's posts 1, 2, 4 and 5 and let them go for
    carol's post 6 (a budget of nothing for a moment), with room again since.
    """
    windows = Windows(hotPosts=20)
    for n in (1, 2, 4, 5):
        windows.hold(bigPost("bob", n).post, hidden=False)
    windows.windowBytes = 0
    windows.hold(bigPost("carol", 6).post, hidden=False)  # bob's window goes
    windows.windowBytes = 10**9
    return windows


class LatePostTests(SynchronousTestCase):
    def test_a_late_post_not_on_disk_yet_stays_below_the_floor_after_a_restore(self):
        """
        bob's window was let go at post 5; post 3 arrives (not held), and
        the disk, read before post 3 was written, holds 1, 2, 4, 5: memory
        holds 4 and 5 again, and says it does not hold what is after 3.
        """
        windows = bobLetGo()
        windows.hold(bigPost("bob", 3).post, hidden=False)
        stored = [bigPost("bob", n).post for n in (1, 2, 4, 5)]
        windows.restore("bob", stored, None)
        late = bigPost("bob", 3).post
        self.assertEqual(
            ([p.id for p in windows.shown("bob")], windows.floor("bob"),
             windows.covers("bob", late.key), windows.covers("bob", (0, ""))),
            (["vm2.a/4", "vm2.a/5"], late.key, True, False))

    def test_a_hidden_copy_below_the_floor_keeps_nothing_out_of_a_restore(self):
        """
        bob's window was let go at post 5; a later copy of one of his
        requests arrives below the floor, hidden (it is never shown, so a
        read of the shown posts never finds it): the window read back is
        every post stored, and memory holds them all again.
        """
        windows = bobLetGo()
        windows.hold(bigPost("bob", 3).post, hidden=True)
        windows.restore("bob", [bigPost("bob", n).post for n in (1, 2, 4, 5)], None)
        self.assertEqual(([p.id for p in windows.shown("bob")], windows.floor("bob")),
                         (["vm2.a/1", "vm2.a/2", "vm2.a/4", "vm2.a/5"], None))


    def test_a_late_post_hidden_since_keeps_nothing_out_of_a_restore(self):
        """
        bob's window was let go at post 5; post 3 arrives below the floor
        (shown), then an earlier copy of its request (2.5) hides it: the
        disk holds 1, 2, 2.5, 4 and 5 shown, 3 hidden, and the window read
        back is all of them.
        """
        windows = bobLetGo()
        windows.hold(bigPost("bob", 3).post, hidden=False)
        earlier = bigPost("bob", 7, time_us=1002).post  # 2.5: between posts 2 and 3
        windows.hide(bigPost("bob", 3).post)
        windows.hold(earlier, hidden=False)
        stored = [bigPost("bob", n).post for n in (1, 2)] + [earlier] + [
            bigPost("bob", n).post for n in (4, 5)]
        windows.restore("bob", stored, None)
        self.assertEqual(([p.id for p in windows.shown("bob")], windows.floor("bob")),
                         ([p.id for p in stored], None))

    def test_past_its_bound_a_late_post_keeps_the_floor_at_or_above_it(self):
        """More late posts than LATE_KEYS: the floor read back may be higher, never lower."""
        windows = Windows(hotPosts=100)
        top = LATE_KEYS + 3
        windows.hold(bigPost("bob", top).post, hidden=False)
        windows.windowBytes = 0
        windows.hold(bigPost("carol", 1).post, hidden=False)  # bob's window goes
        windows.windowBytes = 10**9
        for n in range(1, top):
            windows.hold(bigPost("bob", n).post, hidden=False)
        # On disk: all but post 1, whose write is not done yet.
        windows.restore("bob", [bigPost("bob", n).post for n in range(2, top + 1)], None)
        self.assertGreaterEqual(windows.floor("bob"), bigPost("bob", 1).post.key)
        self.assertFalse(windows.covers("bob", (0, "")))


class ColdStartTests(TestCase):
    async def test_a_replica_started_cold_reads_every_window_from_disk(self):
        """
        A node that read no posts at start (only each author's newest key,
        Index.floors) answers the history from disk, holds a post written
        since, and needs the disk for nothing it holds.
        """
        path = self.mktemp()
        os.makedirs(path)
        store = SQLiteStore(path)
        await store.open()
        posts = [postUpdate("vm2.a", n, 1000 + n, "bob", "p%d" % (n,)) for n in range(1, 31)]
        await store.persist([userUpdate("vm2.a", 100, 1, "alice"),
                             userUpdate("vm2.a", 101, 1, "bob"),
                             followUpdate("vm2.a", 102, 2, "alice", "bob")] + posts)
        await store.close()
        node = Node("vm1", "vm1.n", SQLiteStore(path), Clock())
        self.addCleanup(node.store.close)
        await node.load()
        node.replica = Replica()
        for u in node.store._disk.index.hot(0):
            if u.post is None:
                node.replica.apply(u)
        node.replica.startCold(node.store._disk.index.floors())
        cold = node.replica.coldSources("alice", HISTORY)
        recent = await node.history.recent("alice", HISTORY)
        node.replica.apply(postUpdate("vm2.a", 31, 2000, "bob", "fresh"))
        self.assertEqual(
            (cold, [p.text for p in recent], node.replica.coldSources("alice", HISTORY),
             [p.text for p in node.replica.timeline("alice", 2)]),
            (["bob"], ["p%d" % (n,) for n in range(11, 31)], [], ["p30", "fresh"]))
