"""
Whether a write is a retry, answered from memory when memory can prove it
(snstwist.core.requests): a request id above its requester's floor is new
without a disk lookup; a retry whose first copy memory forgot, or that was
stored before this memory began, is still looked up and applied once.
"""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.client.client import requestId
from snstwist.core.node import Node
from snstwist.core.requests import RememberedRequests
from snstwist.core.state import Replica
from snstwist.rpc import sns_pb2 as pb
from snstwist.storage.store import MemoryStore, SQLiteStore
from tests.strategies import postUpdate, userUpdate
from tests.servers import serverParts
from tests.test_server import as_


def remembered(user, request, seq):
    return postUpdate("vm2.a", seq, seq, user, requestId=request)


class FloorTests(SynchronousTestCase):
    """L{RememberedRequests}' floors, alone."""

    def test_without_a_floor_nothing_is_new(self):
        """Until the store told it a requester's greatest id, memory proves nothing new."""
        requests = RememberedRequests()
        self.assertEqual((requests.knowsFloor("alice"), requests.isNew(("alice", "t9"))),
                         (False, False))

    def test_an_id_above_the_floor_is_new(self):
        requests = RememberedRequests()
        requests.learnFloor("alice", "t5")
        self.assertEqual([requests.isNew(("alice", r)) for r in ("t4", "t5", "t6")],
                         [False, False, True])
        # Floors are per requester: bob's are unknown.
        self.assertFalse(requests.isNew(("bob", "t6")))

    def test_a_remembered_request_is_not_new(self):
        requests = RememberedRequests()
        requests.learnFloor("alice", "")
        requests.remember(remembered("alice", "t6", 1))
        self.assertEqual((requests.isNew(("alice", "t6")), requests.isNew(("alice", "t7"))),
                         (False, True))

    def test_forgetting_a_request_raises_the_floor(self):
        """A forgotten id may be stored here: ids up to it are asked of the store again."""
        requests = RememberedRequests(count=1)
        requests.learnFloor("alice", "t1")
        requests.remember(remembered("alice", "t7", 1))
        requests.remember(remembered("alice", "t8", 2))  # t7 forgotten
        self.assertEqual([requests.isNew(("alice", r)) for r in ("t7", "t8", "t9")],
                         [False, False, True])

    def test_what_was_forgotten_before_the_floor_was_learnt_counts(self):
        """
        The store's reading may predate a copy that memory held and forgot
        since: the floor is the greater of the two.
        """
        requests = RememberedRequests(count=1)
        requests.remember(remembered("alice", "t7", 1))
        requests.remember(remembered("alice", "t2", 2))  # t7 forgotten
        requests.learnFloor("alice", "t1")
        self.assertEqual([requests.isNew(("alice", r)) for r in ("t7", "t8")], [False, True])

    def test_a_fresh_memory_has_no_floor(self):
        """What a promoted slave starts with (History.adopt): every requester is asked again."""
        requests = RememberedRequests()
        requests.learnFloor("alice", "t1")
        self.assertFalse(requests.emptied().knowsFloor("alice"))


class CountingStore(MemoryStore):
    """A MemoryStore that counts the store's request lookups."""

    lookups = 0

    def requests(self, keys, requesters):
        self.lookups += 1
        return MemoryStore.requests(self, keys, requesters)


def countingNode(rememberedRequests=100):
    store = CountingStore()
    clock = Clock()
    clock.advance(10**6)
    node = Node("vm1", "vm1.n", store, clock)
    node.replica = Replica(rememberedRequests=rememberedRequests)
    return node, store


class WriteLookupTests(SynchronousTestCase):
    """The write path (L{admission.Writes}) asks the store only what memory cannot answer."""

    def post(self, parts, request):
        d = parts.api.post(pb.PostRequest(text="hi " + request, request_id=request),
                           as_(parts, "alice"))
        parts.node.store.flush()
        return self.successResultOf(d)

    def lookups(self, parts):
        return parts.node.store.lookups

    def server(self):
        parts = serverParts(self, store=CountingStore(manual=True))
        parts.node.login("alice")
        parts.node.store.flush()
        return parts

    def test_the_first_write_of_a_user_learns_the_floor_and_later_ones_ask_nothing(self):
        parts = self.server()
        self.post(parts, "t1")
        self.post(parts, "t2")
        self.post(parts, "t3")
        self.assertEqual((self.lookups(parts), len(parts.node.replica.postsBy("alice"))), (1, 3))

    def test_a_retry_of_a_forgotten_request_is_looked_up_and_applied_once(self):
        parts = self.server()
        parts.node.replica.requests = RememberedRequests(count=1)
        first = self.post(parts, "t1")
        self.post(parts, "t2")  # t1 forgotten
        again = self.post(parts, "t1")
        self.assertEqual((again.id, self.lookups(parts),
                          [p.text for p in parts.node.replica.postsBy("alice")]),
                         (first.id, 2, ["hi t1", "hi t2"]))

    def test_an_id_below_the_floor_is_looked_up(self):
        """
        An id at most the greatest stored before this memory began (another
        client of the user, its clock behind) is asked of the store.
        """
        store = CountingStore()
        store.persist([userUpdate("vm2.a", 1, 1, "alice"), remembered("alice", "t5", 2)])
        parts = serverParts(self, store=store)
        self.post(parts, "t6")
        self.post(parts, "t7")
        self.post(parts, "t3")
        posts = sorted(u.request_id for u in store.durable.values() if u.post is not None)
        self.assertEqual((self.lookups(parts), posts), (2, ["t3", "t5", "t6", "t7"]))


class WritingCopyTests(SynchronousTestCase):
    """A request memory forgot before its copy reached the disk: that copy answers."""

    def test_a_retry_of_a_request_forgotten_while_written_is_applied_once(self):
        parts = serverParts(self, store=CountingStore(manual=True))
        parts.node.login("alice")
        parts.node.store.flush()
        parts.node.replica.requests = RememberedRequests(count=1)
        alice = as_(parts, "alice")
        first = parts.api.post(pb.PostRequest(text="hi", request_id="t1"), alice)
        parts.api.post(pb.PostRequest(text="other", request_id="t2"), alice)  # t1 forgotten
        again = parts.api.post(pb.PostRequest(text="hi", request_id="t1"), alice)
        parts.node.store.flush()
        posts = sorted(u.request_id for u in parts.node.store.durable.values()
                       if u.post is not None)
        self.assertEqual((self.successResultOf(again).id, posts),
                         (self.successResultOf(first).id, ["t1", "t2"]))

    def test_a_peers_copy_of_a_request_forgotten_while_written_is_hidden(self):
        node, store = countingNode(rememberedRequests=1)
        self.successResultOf(node.load())
        node.login("alice")
        store.manual = True
        first = node.post("alice", "hi", "t1")
        node.post("alice", "other", "t2")  # t1 forgotten, not on disk yet
        later = postUpdate("vm2.b", 1, first.time_us + 5, "alice", "hi", requestId="t1")
        d = node.receive([later])
        store.flush()
        self.successResultOf(d)
        self.assertEqual((later.id in store.hidden,
                          [p.text for p in node.replica.postsBy("alice")]),
                         (True, ["hi", "other"]))


class ReceiveLookupTests(SynchronousTestCase):
    """Updates from peers: the same proof, the same lookups."""

    def test_a_peers_new_requests_need_no_lookup_once_the_floor_is_known(self):
        node, store = countingNode()
        self.successResultOf(node.load())
        self.successResultOf(node.receive([userUpdate("vm2.a", 1, 1, "alice"),
                                           remembered("alice", "t1", 2)]))
        self.successResultOf(node.receive([remembered("alice", "t2", 3),
                                           remembered("alice", "t3", 4)]))
        self.assertEqual((store.lookups, len(node.replica.postsBy("alice"))), (1, 3))

    def test_a_later_copy_of_a_forgotten_request_is_still_hidden(self):
        """Memory forgot t1 (and so raised alice's floor): a later copy is looked up."""
        node, store = countingNode(rememberedRequests=1)
        self.successResultOf(node.load())
        node.login("alice")
        first = node.post("alice", "hi", "t1")
        self.successResultOf(node.history.knowRequests([("alice", "t0")]))
        node.post("alice", "other", "t2")  # t1 forgotten
        later = postUpdate("vm2.b", 1, first.time_us + 5, "alice", "hi", requestId="t1")
        self.successResultOf(node.receive([later]))
        self.assertEqual((store.lookups, later.id in store.hidden,
                          [p.text for p in node.replica.postsBy("alice")]),
                         (2, True, ["hi", "other"]))


class StoredBeforeTests(TestCase):
    """On a real SQLite store: what an earlier process stored is found, once per user."""

    async def test_a_retry_of_a_request_stored_before_a_restart_is_applied_once(self):
        path = self.mktemp()
        os.makedirs(path)
        store = SQLiteStore(path)
        await store.open()
        first = remembered("alice", "t5", 2)
        await store.persist([userUpdate("vm2.a", 1, 1, "alice"), first])
        await store.close()
        node = Node("vm1", "vm1.n", SQLiteStore(path), Clock())
        self.addCleanup(node.store.close)
        await node.load()
        # t5 is above no floor yet: the store answers, and gives alice's.
        self.assertEqual(await node.history.byRequest("alice", "t5"), first)
        lookups = node.store._queries.lookups
        self.assertEqual((await node.history.byRequest("alice", "t4"),
                          await node.history.byRequest("alice", "t6")), (None, None))
        # t4 (below the floor) was asked of the store; t6 was not.
        self.assertEqual(node.store._queries.lookups, lookups + 1)

    async def test_the_store_gives_the_greatest_request_id_of_each_requester(self):
        path = self.mktemp()
        os.makedirs(path)
        store = SQLiteStore(path)
        self.addCleanup(store.close)
        await store.open()
        await store.persist([userUpdate("vm2.a", 1, 1, "alice"),
                             remembered("alice", "t5", 2), remembered("alice", "t7", 3),
                             remembered("bob", "a", 4), postUpdate("vm2.a", 5, 5, "carol")])
        copies, greatest = await store.requests([("alice", "t5")], ["alice", "bob", "carol"])
        self.assertEqual((list(copies), greatest),
                         ([("alice", "t5")], {"alice": "t7", "bob": "a"}))


class RequestIdTests(SynchronousTestCase):
    def test_ids_grow_with_time_as_strings(self):
        ids = [requestId(t) for t in (1, 2, 15, 16, 10**15, 2 * 10**15)]
        self.assertEqual(sorted(ids), ids)

    def test_ids_made_at_one_time_are_unique(self):
        self.assertEqual(len({requestId(7) for _ in range(100)}), 100)

    def test_a_clients_ids_grow_when_its_clock_goes_back(self):
        from snstwist.client.client import Client
        clock = Clock()
        clock.advance(100)
        client = Client(["127.0.0.1:1"], "alice", "password", clock=clock)
        first = client._requestId()
        clock.rightNow = 50
        second = client._requestId()
        self.assertLess(first, second)
