"""
What a slave holds: what its master feeds it (C{Onetime_s_to_buddy}, in
batches), and, once promoted, everything on the VM's disk, fed or not.
"""

import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist import buddy
from snstwist.rpc import sns_pb2 as pb
from snstwist.core.node import Node
from snstwist.core.limits import UPDATES_PER_MESSAGE
from snstwist.core.requests import RememberedRequests
from snstwist.server.buddyfeed import FEED_LINGER, BuddyFeed
from snstwist.server.lifecycle import CurrentRole, takeLock
from snstwist.storage.store import MemoryStore, SQLiteStore
from tests.fakes import FakeCallContext, NoRoleWork, session
from tests.servers import serverParts
from tests.strategies import postUpdate
from tests.test_auth import login


class SlaveRoute:
    """
    The master's feed, routed to C{slave} in-process with the metadata its
    calls carry (what the slave's C{Onetime_s_to_buddy} checks).  Calls
    whose number (from 0) is in C{fail} fail as an unreachable slave's
    would; C{sent} is the size of every batch sent.
    """

    def __init__(self, slave, fail=()):
        self.slave = slave
        self.fail = fail
        self.sent = []

    def feedTo(self, address, secret):
        return BuddyFeed(self.send, secret)

    def send(self, batch, metadata):
        self.sent.append(len(batch.updates))
        if len(self.sent) - 1 in self.fail:
            return defer.fail(RuntimeError("slave unreachable"))
        return defer.succeed(
            self.slave.internal.onetimeSToBuddy(batch, FakeCallContext(metadata)))


def emptySlave(test):
    """A slave that holds nothing yet."""
    return serverParts(test, "slave", store=MemoryStore())


def feedingMaster(test, feedTo):
    """
    A master where alice exists, and may post more at once than one user
    may (these tests are about the feed), feeding its slave by C{feedTo}.
    """
    master = serverParts(test, "master", postRate=10**6, feedTo=feedTo)
    master.node.login("alice")
    master.node.store.flush()
    return master, master.node.store


def lingeringFeed(test):
    """
    A master feeding its slave through a L{BuddyFeed} on a L{Clock} that
    lingers FEED_LINGER for more: (clock, the size of each batch sent, the
    feed, the master, its store).
    """
    clock = Clock()
    sent = []
    feed = BuddyFeed(lambda batch, metadata: sent.append(len(batch.updates))
                     or defer.succeed(None), "s" * 16, clock=clock, linger=FEED_LINGER)
    master, store = feedingMaster(test, lambda address, secret: feed)
    return clock, sent, feed, master, store


def slaveHello(slave):
    return pb.BuddyHello(vm="vm1", role=pb.SLAVE, pid=4242, address="127.0.0.9:1",
                         have=slave.node.replica.seen.toProto())


def writePosts(test, master, store, n):
    token = login(test, master, store, "alice")
    for i in range(n):
        master.api.post(pb.PostRequest(text="p%d" % (i,), request_id="r%d" % (i,)), session(token))
    store.flush()


class BuddyFeedTests(SynchronousTestCase):
    def test_a_slave_lacking_several_batches_ends_up_holding_everything(self):
        """
        A slave that says it holds the first 100 updates of 1,300 is sent
        the other 1,200 (in several batches) and then holds all of them.
        """
        slave = emptySlave(self)
        route = SlaveRoute(slave)
        master, store = feedingMaster(self, route.feedTo)
        writePosts(self, master, store, 1300)
        held = sorted((u for u in store.durable.values() if u.origin == master.node.origin),
                      key=lambda u: u.seq)
        slave.node.mirror(held[:100])
        master.masterEnd.slaveHello(object(), slaveHello(slave))
        self.assertGreater(len(route.sent), 1, "more than one batch")
        self.assertEqual(sum(route.sent), len(held) - 100)
        self.assertEqual(slave.node.replica.snapshot(), master.node.replica.snapshot())
        self.assertEqual(slave.node.replica.seen.count(), master.node.replica.seen.count())

    def test_updates_made_while_a_batch_is_in_flight_all_arrive(self):
        """New writes queue behind the call in flight; none is skipped or sent twice."""
        slave = emptySlave(self)
        pending = []

        def send(request, metadata):
            d = defer.Deferred()
            pending.append((request, metadata, d))
            return d

        master, store = feedingMaster(self, lambda address, secret: BuddyFeed(send, secret))

        def deliver():
            request, metadata, d = pending.pop(0)
            self.assertLessEqual(len(request.updates), 500)
            d.callback(slave.internal.onetimeSToBuddy(request, FakeCallContext(metadata)))

        master.masterEnd.slaveHello(object(), slaveHello(slave))
        self.assertEqual(len(pending), 1, "one call in flight at a time")
        writePosts(self, master, store, 300)
        deliver()
        writePosts(self, master, store, 700)
        self.assertEqual(len(pending), 1, "one call in flight at a time")
        while pending:
            deliver()
        self.assertEqual(slave.node.replica.snapshot(), master.node.replica.snapshot())
        self.assertEqual(slave.node.replica.seen.count(), master.node.replica.seen.count())

    def test_a_failed_feed_is_made_good_by_the_next_hello(self):
        """A call that fails loses nothing: the slave's next hello brings the rest."""
        slave = emptySlave(self)
        master, store = feedingMaster(self, SlaveRoute(slave, fail={1}).feedTo)
        writePosts(self, master, store, 1200)
        master.masterEnd.slaveHello(object(), slaveHello(slave))
        self.assertNotEqual(slave.node.replica.seen.count(), master.node.replica.seen.count())
        master.masterEnd.slaveHello(object(), slaveHello(slave))
        self.assertEqual(slave.node.replica.snapshot(), master.node.replica.snapshot())

    def test_the_feed_carries_the_cluster_secret(self):
        """The slave accepts the feed: it carries the secret the slave checks."""
        slave = emptySlave(self)
        master, store = feedingMaster(self, SlaveRoute(slave).feedTo)
        writePosts(self, master, store, 3)
        master.masterEnd.slaveHello(object(), slaveHello(slave))
        self.assertEqual(slave.node.replica.postsBy("alice"), master.node.replica.postsBy("alice"))

    def test_a_small_batch_lingers_for_more_and_a_full_one_goes_at_once(self):
        """
        With a clock, what is pushed waits FEED_LINGER for more and goes in
        one call; a full message's worth goes at once.
        """
        clock, sent, feed, master, store = lingeringFeed(self)
        writePosts(self, master, store, 3)
        fed = list(store.durable.values())
        feed.push(fed[:2])
        feed.push(fed[2:])
        self.assertEqual(sent, [])
        clock.advance(FEED_LINGER)
        self.assertEqual(sent, [len(fed)])
        feed.push(fed * (UPDATES_PER_MESSAGE // len(fed) + 1))
        self.assertEqual(sent[1], UPDATES_PER_MESSAGE, "a full message is not held back")
        clock.advance(FEED_LINGER)
        self.assertEqual(sum(sent), len(fed) * (UPDATES_PER_MESSAGE // len(fed) + 2))
        feed.close()
        self.assertFalse(clock.getDelayedCalls())

    def test_a_page_of_a_catch_up_goes_at_once(self):
        """
        A catch-up's page does not linger (nothing more is coming for it),
        nor does what was lingering when it came; the page's Deferred fires
        once all of it is sent.
        """
        clock, sent, feed, master, store = lingeringFeed(self)
        writePosts(self, master, store, 3)
        fed = list(store.durable.values())
        feed.push(fed[:1])
        pageUpdates = fed * (UPDATES_PER_MESSAGE // len(fed) + 1)
        page = feed.pushPage(pageUpdates)
        self.successResultOf(page)
        self.assertEqual(sent, [UPDATES_PER_MESSAGE, len(pageUpdates) + 1 - UPDATES_PER_MESSAGE])
        self.assertFalse(clock.getDelayedCalls())
        feed.close()

    def test_the_heartbeat_counts_what_every_feed_carried(self):
        """
        The master's heartbeat says how many updates its feeds carried and
        in how many calls, across a new slave's new feed.
        """
        slave = emptySlave(self)
        route = SlaveRoute(slave)
        master, store = feedingMaster(self, route.feedTo)
        master.masterEnd.slaveHello(object(), slaveHello(slave))
        writePosts(self, master, store, 2)
        master.masterEnd.slaveHello(object(), slaveHello(slave))
        writePosts(self, master, store, 1)
        beat = master.report.load()
        self.assertEqual(len(route.sent), 4)  # alice's account at the first hello, 3 posts
        self.assertEqual((beat.fed_updates, beat.fed_calls), (sum(route.sent), len(route.sent)))

    def test_every_durable_write_is_fed_to_the_slave(self):
        """Once a slave has said hello, each write reaches it when durable."""
        slave = emptySlave(self)
        route = SlaveRoute(slave)
        master, store = feedingMaster(self, route.feedTo)
        master.masterEnd.slaveHello(object(), slaveHello(slave))
        writePosts(self, master, store, 5)
        self.assertTrue(route.sent)
        self.assertEqual([p.text for p in slave.node.replica.postsBy("alice")],
                         ["p0", "p1", "p2", "p3", "p4"])


class SpyStore(SQLiteStore):
    """A store that notes how it is opened and each page of what is missing asked for."""

    def __init__(self, *args, **kwargs):
        SQLiteStore.__init__(self, *args, **kwargs)
        self.opened, self.pages = [], []

    def open(self, known=None, posts=True):
        self.opened.append((known, posts))
        return SQLiteStore.open(self, known, posts)

    def missing(self, remote, limit, after=None):
        d = SQLiteStore.missing(self, remote, limit, after)
        return d.addCallback(lambda updates: self.pages.append((limit, len(updates))) or updates)


class SlaveOnDisk:
    """A slave of vm1 on a data directory, and its promotion (a test case's mixin)."""

    def slaveOn(self, path):
        """
        The parts of a slave of vm1 on the data at C{path}, and its role
        machine (whose hooks do nothing: the test does their work).
        """
        role, current = buddy.Role(NoRoleWork()), CurrentRole()
        current.follow(role)
        role.startAsSlave()
        slave = serverParts(self, "slave", store=SQLiteStore(path, name="vm1"), clock=Clock(),
                            load=False, current=current)
        return slave, role

    async def promote(self, slave, role, path):
        """The master is lost: take the VM's data over, as the lifecycle does."""
        role.masterLost("master died")
        await takeLock(slave.node, lambda: SQLiteStore(path, name="vm1"), slave.node.clock,
                       slave.node.clock.seconds() + 10)
        self.addCleanup(slave.node.store.close)
        role.promoted()


class PromotionTests(SlaveOnDisk, TestCase):
    """A slave taking over reads the VM's disk: what it was never fed too."""

    async def masterWrote(self, path):
        """A master on C{path} that wrote users, follows and posts, then died."""
        node = Node("vm1", "vm1.old", SQLiteStore(path), Clock())
        await node.load()
        updates = [node.login("alice"), node.login("bob"),
                   node.follow("alice", "bob", "f1")]
        updates += [node.post("bob", "post %d" % (i,), "p%d" % (i,)) for i in range(6)]
        await defer.gatherResults([node.durable(u) for u in updates])
        await node.store.close()  # the lock goes with the process
        return updates

    async def test_a_promoted_slave_serves_what_it_was_never_fed(self):
        """
        Fed only the users and the first two posts, the slave, once master,
        shows all six posts and the follow from the disk.
        """
        path = self.mktemp()
        os.makedirs(path)
        updates = await self.masterWrote(path)
        slave, role = self.slaveOn(path)
        self.assertEqual(slave.node.mirror(updates[:2] + updates[3:5]), 4)
        await self.promote(slave, role, path)
        replica = slave.node.replica
        self.assertTrue(replica.isFollowing("alice", "bob"))
        self.assertEqual([p.text for p in await slave.node.history.recent("alice", 20)],
                         ["post %d" % (i,) for i in range(6)])
        token = (await slave.api.login(pb.LoginRequest(user="alice", password="pw"),
                                   FakeCallContext())).token
        history = await slave.api.history(pb.HistoryRequest(), session(token))
        self.assertEqual(len(history.posts), 6)

    async def test_a_warm_slave_reads_only_what_it_lacks_a_page_at_a_time(self):
        """
        Warm (it read the VM's data, then was fed nothing), the slave taking
        over reads nothing again but the updates written since it warmed
        up, in pages: none of the history it holds.
        """
        path = self.mktemp()
        os.makedirs(path)
        await self.masterWrote(path)
        slave, role = self.slaveOn(path)
        await slave.node.history.warmUp()
        await slave.node.store.close()
        node = Node("vm1", "vm1.old2", SQLiteStore(path), Clock())
        await node.load()
        later = [node.post("alice", "later %d" % (i,), "l%d" % (i,)) for i in range(7)]
        await defer.gatherResults([node.durable(u) for u in later])
        await node.store.close()
        slave.node.history.missingPage = 3
        store = SpyStore(path, name="vm1")
        role.masterLost("master died")
        self.assertEqual(await takeLock(slave.node, lambda: store, slave.node.clock, 10), 7)
        self.addCleanup(store.close)
        self.assertEqual((store.opened, store.pages), ([(None, None)], [(3, 3), (3, 3), (3, 1)]))
        self.assertEqual(slave.node.replica.seen.count(), 9 + 7)
        recent = await slave.node.history.recent("alice", 20)
        self.assertEqual([p.text for p in recent if p.author == "alice"],
                         ["later %d" % (i,) for i in range(7)])

    async def test_a_slave_fed_everything_asks_the_store_nothing_more(self):
        """
        Warm and fed every update its master stored, the slave taking over
        opens the store and asks it for no page of what it lacks (no query
        before it serves), and holds everything.
        """
        path = self.mktemp()
        os.makedirs(path)
        updates = await self.masterWrote(path)
        slave, role = self.slaveOn(path)
        await slave.node.history.warmUp()
        await slave.node.store.close()
        store = SpyStore(path, name="vm1")
        role.masterLost("master died")
        self.assertEqual(await takeLock(slave.node, lambda: store, slave.node.clock, 10), 0)
        self.addCleanup(store.close)
        self.assertEqual((store.opened, store.pages, slave.node.replica.seen.count()),
                         ([(None, None)], [], len(updates)))

    async def test_a_cold_slave_reads_what_a_start_reads(self):
        """Cold (its warm-up not done), the slave reads what a start reads, not the history."""
        path = self.mktemp()
        os.makedirs(path)
        await self.masterWrote(path)
        slave, role = self.slaveOn(path)
        store = SpyStore(path, name="vm1")
        role.masterLost("master died")
        await takeLock(slave.node, lambda: store, slave.node.clock, 10)
        self.addCleanup(store.close)
        self.assertEqual((store.opened, store.pages, slave.node.replica.seen.count()),
                         ([(None, False)], [], 9))

    async def test_a_cold_slave_promoted_serves_everything(self):
        """A slave fed nothing at all takes over with all that is on disk."""
        path = self.mktemp()
        os.makedirs(path)
        updates = await self.masterWrote(path)
        slave, role = self.slaveOn(path)
        await self.promote(slave, role, path)
        self.assertEqual(slave.node.replica.seen.count(), len(updates))
        self.assertEqual(len(await slave.node.history.recent("bob", 20)), 6)

    async def test_a_promoted_slave_numbers_its_writes_after_the_old_masters(self):
        """Nothing the old master wrote is hidden by a new write's id or time."""
        path = self.mktemp()
        os.makedirs(path)
        updates = await self.masterWrote(path)
        slave, role = self.slaveOn(path)
        await self.promote(slave, role, path)
        newest = max(u.time_us for u in updates)
        post = slave.node.post("bob", "after", "p-after")
        self.assertGreater(post.time_us, newest)
        self.assertEqual(slave.node.replica.postsBy("bob")[-1].text, "after")


class RetriedPostTests(SlaveOnDisk, TestCase):
    """
    A retried post stored twice (two copies of one request, accepted on two
    VMs) is shown once by a promoted slave, the copy its master showed,
    though the slave was fed the other copy without the first's request
    (stored before it started, or forgotten since).
    """

    async def masterOn(self, path):
        """A running master of vm1 on C{path} where alice exists."""
        clock = Clock()
        clock.advance(10**6)
        master = Node("vm1", "vm1.old", SQLiteStore(path), clock)
        self.addCleanup(master.store.close)
        await master.load()
        await master.durable(master.login("alice"))
        return master

    async def receive(self, master, update):
        """C{master} receives a peer's C{update} and stores it."""
        self.assertEqual(await master.receive([update]), [update.id])

    async def promoted(self, slave, role, master, path):
        """C{master} dies; C{slave} takes over: what each showed of alice."""
        shown = [p.id for p in await master.history.recent("alice", 20)]
        await master.store.close()
        await self.promote(slave, role, path)
        return shown, [p.id for p in await slave.node.history.recent("alice", 20)]

    async def test_a_later_copy_fed_after_the_start_is_not_shown(self):
        """
        The first copy was stored before the slave started; the later one,
        from a peer, is fed to it: once master, it shows the first only.
        """
        path = self.mktemp()
        os.makedirs(path)
        master = await self.masterOn(path)
        first = master.post("alice", "hi", "r-1")
        await master.durable(first)
        slave, role = self.slaveOn(path)
        await slave.node.history.warmUp()
        await slave.node.store.close()
        later = postUpdate("vm2.b", 1, first.time_us + 5, "alice", "hi", requestId="r-1")
        await self.receive(master, later)
        self.assertEqual(slave.node.mirror([later]), 1)
        self.assertEqual(await self.promoted(slave, role, master, path),
                         ([first.id], [first.id]))

    async def test_an_earlier_copy_fed_after_the_later_was_forgotten_hides_it(self):
        """
        The slave was fed the later copy and has forgotten its request
        when the earlier copy, from a peer, is fed: once master, it shows
        the earlier only, as its master did.
        """
        path = self.mktemp()
        os.makedirs(path)
        master = await self.masterOn(path)
        slave, role = self.slaveOn(path)
        await slave.node.history.warmUp()
        await slave.node.store.close()
        slave.node.replica.requests = RememberedRequests(count=1)
        later = master.post("alice", "hi", "r-1")
        other = master.post("alice", "other", "r-2")
        await defer.gatherResults([master.durable(later), master.durable(other)])
        self.assertEqual(slave.node.mirror([later, other]), 2)
        earlier = postUpdate("vm2.b", 1, later.time_us - 5, "alice", "hi", requestId="r-1")
        await self.receive(master, earlier)
        self.assertEqual(slave.node.mirror([earlier]), 1)
        self.assertEqual(await self.promoted(slave, role, master, path),
                         ([earlier.id, other.id], [earlier.id, other.id]))
