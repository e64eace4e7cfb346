"""
Whom a master replicates to, and that every write goes out: the peers come
from the routers' membership (the masters of the other VMs), and each
broadcast reaches every synced peer, however many came before it.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.rpc import sns_pb2 as pb
from snstwist.core.node import Node
from snstwist.server.peers import BATCH, PeerLink
from snstwist.server.lifecycle import CurrentRole
from snstwist.server.replication import Replicator
from snstwist.server.routerlink import RouterLinks
from snstwist.storage.store import MemoryStore
from tests.fakes import FakeStream


def membership(*servers):
    return pb.Membership(servers=[pb.ServerInfo(vm=vm, role=role, address=address)
                                  for vm, role, address in servers])


def routerLinks(role):
    """The router links of vm1 playing C{role}: (links, the peer maps they chose)."""
    chosen = []
    links = RouterLinks(["r1", "r2"], Clock(), "a-secret-of-16-chars", "vm1",
                        CurrentRole(role), hello=None, load=None, setPeers=chosen.append)
    return links, chosen


class PeersFromMembershipTests(SynchronousTestCase):
    def test_a_master_replicates_to_the_masters_of_the_other_vms(self):
        links, chosen = routerLinks("master")
        links.membershipChanged("r1", membership(
            ("vm1", pb.MASTER, "127.0.0.2:1"), ("vm1", pb.SLAVE, "127.0.0.2:2"),
            ("vm2", pb.MASTER, "127.0.0.3:1"), ("vm2", pb.SLAVE, "127.0.0.3:2"),
            ("vm3", pb.MASTER, "127.0.0.4:1")))
        self.assertEqual(chosen, [{"vm2": "127.0.0.3:1", "vm3": "127.0.0.4:1"}])

    def test_what_several_routers_know_is_put_together(self):
        links, chosen = routerLinks("master")
        links.membershipChanged("r1", membership(("vm2", pb.MASTER, "127.0.0.3:1")))
        links.membershipChanged("r2", membership(("vm3", pb.MASTER, "127.0.0.4:1")))
        self.assertEqual(chosen[-1], {"vm2": "127.0.0.3:1", "vm3": "127.0.0.4:1"})

    def test_a_slave_replicates_to_nobody(self):
        links, chosen = routerLinks("slave")
        links.membershipChanged("r1", membership(("vm2", pb.MASTER, "127.0.0.3:1")))
        self.assertEqual(chosen, [])

    def test_a_router_newer_view_replaces_its_older_one(self):
        """A VM's master that a router no longer lists is no longer a peer."""
        links, chosen = routerLinks("master")
        links.membershipChanged("r1", membership(("vm2", pb.MASTER, "127.0.0.3:1")))
        links.membershipChanged("r1", membership(("vm3", pb.MASTER, "127.0.0.4:1")))
        self.assertEqual(chosen[-1], {"vm3": "127.0.0.4:1"})


class LinkedReplicator(SynchronousTestCase):
    """A replicator on vm1 with a synced link to vm2 over a L{FakeStream}."""

    def setUp(self):
        self.clock = Clock()
        self.node = Node("vm1", "vm1.a", MemoryStore(), self.clock)
        self.node.login("alice")
        self.replicator = Replicator(self.node, "a-secret-of-16-chars", self.clock)
        self.stream = FakeStream()
        link = PeerLink(self.replicator, "vm2", "127.0.0.3:1")
        link.synced = True
        link.stream = self.stream
        self.replicator.links["vm2"] = link

    def sentIds(self):
        return [u.origin + "/%d" % (u.seq,) for m in self.stream.sent
                if m.WhichOneof("kind") == "updates" for u in m.updates.updates]

    def posts(self, n, first=0):
        return [self.node.post("alice", "p%d" % (i,), "r%d" % (i,))
                for i in range(first, first + n)]


class OutboxTests(LinkedReplicator):
    def test_every_broadcast_is_queued_at_once(self):
        """A write broadcast to a stream with nothing waiting is on the stream at once."""
        ids = []
        for update in self.posts(3):
            ids.append(update.id)
            self.replicator.broadcast(update)
            self.assertEqual(self.sentIds(), ids)
        self.assertEqual(self.clock.getDelayedCalls()[0].func, self.replicator._expire,
                         "no timer but the waiters' sweep")

    def test_writes_made_while_a_message_waits_join_it(self):
        """
        Writes broadcast while the updates message queued before them is not
        yet taken by the stream's writer go out in that message; once it is
        taken, the next write starts another.
        """
        updates = self.posts(4)
        for u in updates[:3]:
            self.replicator.broadcast(u)
        self.assertEqual((self.sentIds(), len(self.stream.sent)),
                         ([u.id for u in updates[:3]], 1))
        self.replicator.broadcast(updates[3])
        self.assertEqual((self.sentIds(), len(self.stream.sent)),
                         ([u.id for u in updates], 2))

    def test_a_message_carries_at_most_a_batch(self):
        updates = self.posts(BATCH + 1)
        for u in updates:
            self.replicator.broadcast(u)
        self.assertEqual([len(m.updates.updates) for m in self.stream.sent], [BATCH, 1])

    def test_a_write_after_another_message_does_not_overtake_it(self):
        """An update gathered after a heartbeat was queued goes after it, in its own message."""
        first, second = self.posts(2)
        self.replicator.broadcast(first)
        self.replicator.links["vm2"].beat()
        self.replicator.broadcast(second)
        self.assertEqual(self.stream.kinds(), ["updates", "heartbeat", "updates"])
        self.assertEqual(self.sentIds(), [first.id, second.id])


class TrafficTests(LinkedReplicator):
    """A stream's state says what it carried: updates in how many messages, acks likewise."""

    def test_the_state_counts_updates_and_acks_with_their_messages(self):
        updates = self.posts(3)
        for u in updates:
            self.replicator.broadcast(u)
        self.stream.take()
        self.replicator.broadcast(self.posts(1, 3)[0])
        self.stream.take()
        link = self.replicator.links["vm2"]
        link.received(pb.ReplicationMessage(ack=pb.ReplicaAck(ids=[u.id for u in updates])))
        state = link.state()
        self.assertEqual((state.sent_updates, state.sent_messages,
                          state.acked_updates, state.ack_messages), (4, 2, 3, 1))


class SetPeersTests(SynchronousTestCase):
    """The replicator keeps one link to each other VM's master, and only those."""

    def setUp(self):
        self.started, self.stopped = [], []
        self.patch(PeerLink, "start", lambda link: self.started.append(link))
        self.patch(PeerLink, "stop", lambda link: defer.succeed(self.stopped.append(link)))
        clock = Clock()
        self.replicator = Replicator(Node("vm1", "vm1.a", MemoryStore(), clock),
                                     "a-secret-of-16-chars", clock)

    def links(self):
        return {vm: link.address for vm, link in self.replicator.links.items()}

    def test_a_link_is_started_to_each_other_vm(self):
        self.replicator.setPeers({"vm2": "127.0.0.3:1", "vm3": "127.0.0.4:1",
                                  "vm1": "127.0.0.2:1"})
        self.assertEqual(self.links(), {"vm2": "127.0.0.3:1", "vm3": "127.0.0.4:1"})
        self.assertEqual(sorted(link.vm for link in self.started), ["vm2", "vm3"])

    def test_the_same_peers_again_change_nothing(self):
        self.replicator.setPeers({"vm2": "127.0.0.3:1"})
        self.replicator.setPeers({"vm2": "127.0.0.3:1"})
        self.assertEqual((len(self.started), self.stopped), (1, []))

    def test_a_peer_that_moved_is_linked_again_and_one_that_left_is_dropped(self):
        self.replicator.setPeers({"vm2": "127.0.0.3:1", "vm3": "127.0.0.4:1"})
        old = dict(self.replicator.links)
        self.replicator.setPeers({"vm2": "127.0.0.3:2"})
        self.assertEqual(self.links(), {"vm2": "127.0.0.3:2"})
        self.assertEqual(sorted(link.vm for link in self.stopped), ["vm2", "vm3"])
        self.assertIn(old["vm3"], self.stopped)


class HidingStore(MemoryStore):
    """A MemoryStore that records which posts it is told not to show."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def persist(self, updates, hidden=frozenset(), displaced=()):
        self.calls.append(([u.id for u in updates], set(hidden), [u.id for u in displaced]))
        return super().persist(updates, hidden, displaced)


class RetriedRequestStorageTests(SynchronousTestCase):
    """The store is told which copy of a retried request is shown."""

    def copies(self):
        from tests.strategies import postUpdate
        earlier = postUpdate("vm2.a", 1, 10, "alice", "hi", requestId="r")
        later = postUpdate("vm3.a", 1, 20, "alice", "hi", requestId="r")
        store = HidingStore()
        return Node("vm1", "vm1.a", store, Clock()), store, earlier, later

    def test_a_later_copy_arriving_second_is_stored_hidden(self):
        node, store, earlier, later = self.copies()
        node.receive([earlier])
        node.receive([later])
        self.assertEqual(store.calls, [([earlier.id], set(), []),
                                       ([later.id], {later.id}, [])])

    def test_an_earlier_copy_arriving_second_displaces_the_shown_one(self):
        node, store, earlier, later = self.copies()
        node.receive([later])
        node.receive([earlier])
        self.assertEqual(store.calls, [([later.id], set(), []),
                                       ([earlier.id], set(), [later.id])])

    def test_other_writes_with_request_ids_are_never_hidden(self):
        node, store, earlier, later = self.copies()
        node.login("alice")
        node.login("bob")
        node.follow("alice", "bob", "r-follow")
        self.assertTrue(all(hidden == set() for _, hidden, _ in store.calls))
