"""
What a node holds on disk only (snstwist.core.history): a node whose memory
keeps only the newest posts still answers a returning reader's catch-up,
dedupes a retry whose first copy memory forgot, and starts (or warms up)
reading no more than memory keeps, on a real SQLite store.
"""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.core import history
from snstwist.core.node import Node
from snstwist.core.state import HOT_POSTS, Replica
from snstwist.storage.store import MemoryStore, SQLiteStore
from tests.strategies import followUpdate, postUpdate, userUpdate


def smallNode(store, hotPosts=2, rememberedRequests=2):
    """A node on C{store} whose memory holds very little."""
    clock = Clock()
    clock.advance(10**6)
    node = Node("vm1", "vm1.n", store, clock)
    node.replica = Replica(hotPosts=hotPosts, rememberedRequests=rememberedRequests)
    return node


def countPages(store):
    """The sizes of the pages of the state C{store} is asked for, in a list that grows."""
    pages, statePage = [], store.statePage

    def counted(after, limit):
        return statePage(after, limit).addCallback(lambda page: pages.append(len(page[0])) or page)

    store.statePage = counted
    return pages


class TimelinePageTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryStore()
        self.node = smallNode(self.store)
        self.successResultOf(self.node.load())
        self.successResultOf(self.node.receive(
            [userUpdate("vm2.a", 1, 1, "alice"), userUpdate("vm2.a", 2, 2, "bob"),
             followUpdate("vm2.a", 3, 3, "alice", "bob")]
            + [postUpdate("vm2.a", 3 + n, 10 * n, "bob" if n % 2 else "alice", "p%d" % (n,))
               for n in range(1, 9)]))

    def texts(self, posts):
        return [p.text for p in posts]

    def test_a_page_older_than_memory_comes_from_disk(self):
        """Memory holds two posts of each; the page holds all eight, in order."""
        page = self.successResultOf(self.node.history.timelinePage("alice", (0, ""), 100))
        self.assertEqual((self.texts(self.node.replica.postsBy("alice")), self.texts(page)),
                         (["p6", "p8"], ["p%d" % (n,) for n in range(1, 9)]))

    def test_a_page_is_cut_at_its_limit_and_resumes_after_its_last_post(self):
        first = self.successResultOf(self.node.history.timelinePage("alice", (0, ""), 3))
        second = self.successResultOf(
            self.node.history.timelinePage("alice", first[-1].key, 3))
        self.assertEqual((self.texts(first), self.texts(second)),
                         (["p1", "p2", "p3"], ["p4", "p5", "p6"]))

    def test_a_post_not_on_disk_yet_is_in_the_page(self):
        """A post accepted but not yet durable is in memory: the page merges both."""
        self.store.manual = True
        self.node.post("alice", "fresh", "r-fresh")
        page = self.successResultOf(self.node.history.timelinePage("alice", (70, ""), 100))
        self.assertEqual(self.texts(page), ["p7", "p8", "fresh"])


class ForgottenRequestTests(SynchronousTestCase):
    """A retry whose first copy memory no longer remembers is still applied once."""

    def setUp(self):
        self.store = MemoryStore()
        self.node = smallNode(self.store, hotPosts=HOT_POSTS, rememberedRequests=1)
        self.successResultOf(self.node.load())
        self.node.login("alice")
        self.first = self.node.post("alice", "hi", "r-1")
        self.node.post("alice", "other", "r-2")  # r-1 forgotten

    def test_a_peers_later_copy_is_stored_but_not_shown(self):
        later = postUpdate("vm2.b", 1, self.first.time_us + 5, "alice", "hi", requestId="r-1")
        self.assertFalse(self.node.replica.knowsRequest(("alice", "r-1")))
        self.successResultOf(self.node.receive([later]))
        self.assertEqual(([p.text for p in self.node.replica.postsBy("alice")],
                          later.id in self.store.hidden, self.node.replica.has(later)),
                         (["hi", "other"], True, True))

    def test_a_retry_finds_its_first_copy_on_disk(self):
        found = self.successResultOf(self.node.history.byRequest("alice", "r-1"))
        self.assertEqual(found, self.first)


class HotStartTests(TestCase):
    """
    A node starts (and a slave warms up) reading the state a Login and a
    write need, and no post: every window is read from disk when it is
    first asked for, and holds then what a start used to read.
    """

    async def stored(self, path, count=HOT_POSTS + 5):
        store = SQLiteStore(path)
        await store.open()
        posts = [postUpdate("vm2.a", 1 + n, 100 + n, "alice", "p%d" % (n,))
                 for n in range(count)]
        await store.persist([userUpdate("vm2.a", 100, 1, "alice"),
                             userUpdate("vm2.a", 200, 2, "bob")] + posts)
        await store.close()
        return posts

    async def test_a_start_reads_no_post_and_holds_every_update(self):
        path = self.mktemp()
        os.makedirs(path)
        posts = await self.stored(path)
        node = Node("vm1", "vm1.n", SQLiteStore(path), Clock())
        self.addCleanup(node.store.close)
        await node.load()
        slave = Node("vm1", "vm1.s", SQLiteStore(path), Clock())
        self.addCleanup(slave.store.close)
        await slave.history.warmUp()
        newest = [p.id for p in (u.post for u in posts[-HOT_POSTS:])]
        for n in (node, slave):
            held = ([p.id for p in n.replica.postsBy("alice")], n.replica.seen.count(),
                    n.replica.users)
            recent = await n.history.recent("bob", HOT_POSTS)
            alices = await n.history.recent("alice", HOT_POSTS)
            self.assertEqual((held, recent, [p.id for p in alices]),
                             (([], len(posts) + 2, {"alice", "bob"}), [], newest))
            # Read once, alice's window is memory's.
            self.assertEqual([p.id for p in n.replica.postsBy("alice")], newest)

    async def test_a_start_reads_the_users_and_follows_a_page_at_a_time(self):
        """
        A start and a warm-up read the state in pages of STATE_PAGE (never
        all at once) and hold all of it; a follow written after the start
        is later than every one stored, so an unfollow after it wins.
        """
        self.patch(history, "STATE_PAGE", 2)
        path = self.mktemp()
        os.makedirs(path)
        store = SQLiteStore(path)
        await store.open()
        names = ["alice", "bob", "carol", "dave", "erin"]
        await store.persist([userUpdate("vm2.a", n, n, name) for n, name in enumerate(names, 1)]
                            + [followUpdate("vm2.a", 10 + n, 10**15 + n, "alice", name)
                               for n, name in enumerate(names[1:])])
        await store.close()
        for start in ("load", "warmUp"):
            node = Node("vm1", "vm1.n", SQLiteStore(path), Clock())
            pages = countPages(node.store)
            try:
                await getattr(node.history, start)()
            finally:
                await node.store.close()
            # Users 2 + 2 + 1, follows (their registers) 2 + 2 + 0, marks 0.
            self.assertEqual((node.replica.users, node.replica.following("alice"), pages),
                             (set(names), names[1:], [2, 2, 1, 2, 2, 0, 0]))
        node = Node("vm1", "vm1.w", SQLiteStore(path), Clock())
        self.addCleanup(node.store.close)
        await node.load()
        unfollow = node.unfollow("alice", "bob", "r-1")
        self.assertGreater(unfollow.time_us, 10**15 + 3)
        self.assertFalse(node.replica.isFollowing("alice", "bob"))

    async def test_a_write_after_a_start_is_later_than_everything_stored(self):
        """The clock is past every stored post, though none was read."""
        path = self.mktemp()
        os.makedirs(path)
        posts = await self.stored(path)
        clock = Clock()
        node = Node("vm1", "vm1.n", SQLiteStore(path), clock)
        self.addCleanup(node.store.close)
        await node.load()
        post = node.post("alice", "after", "r-after")
        self.assertGreater(post.time_us, posts[-1].time_us)
        await node.durable(post)
        recent = await node.history.recent("alice", 3)
        self.assertEqual([p.text for p in recent], ["p%d" % (len(posts) - 2,),
                                                    "p%d" % (len(posts) - 1,), "after"])

    async def test_a_post_arriving_older_than_the_start_is_read_from_disk(self):
        """A peer's post dated before the start is stored, and found when asked for."""
        path = self.mktemp()
        os.makedirs(path)
        posts = await self.stored(path, count=3)
        node = Node("vm1", "vm1.n", SQLiteStore(path), Clock())
        self.addCleanup(node.store.close)
        await node.load()
        late = postUpdate("vm3.c", 1, 150, "alice", "late")
        await node.receive([late])
        recent = await node.history.recent("alice", 10)
        self.assertEqual([p.text for p in recent], ["p0", "p1", "p2", "late"])
        self.assertEqual(len(posts), 3)
