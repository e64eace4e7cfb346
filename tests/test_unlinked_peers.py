"""
A write waits for a peer VM the routers list as live whose replication
stream is not synced yet (a VM whose slave is taking over, a stream being
dialled again), for at most L{UNLINKED_WAIT} from when that VM was lost:
the update goes to the VM's next stream when it syncs, so a write accepted
during a failover is acknowledged on two disks, not on one
(docs/design.md section 5, "When a write is acknowledged").  With no other
VM live it is answered at once.  A VM whose master died is dialled at its
slave, whose end of the stream waits, open, until it is master.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors
from snstwist.core.node import Node
from snstwist.rpc import sns_pb2 as pb
from snstwist.server.peers import (
    ACK_TIMEOUT,
    ANTI_ENTROPY,
    UNLINKED_WAIT,
    PeerLink,
    ReplicaReceiver,
)
from snstwist.server.replication import SWEEP, Replicator
from snstwist.server.routerlink import RouterLinks
from snstwist.server.lifecycle import CurrentRole
from snstwist.server.service import ServerService
from snstwist.storage.store import MemoryStore
from tests.fakes import FakeHasher, FakeStream, secret
from tests.servers import serverConfig, serverParts
from tests.strategies import postUpdate, userUpdate
from tests.test_server import VMDisk, lifecycleOn


def ack(*ids):
    return pb.ReplicationMessage(ack=pb.ReplicaAck(ids=ids))


# vm2's slave's cluster port: dialled while its master is gone, and its
# address as master once promoted (the same gRPC server).
SLAVE = "127.0.0.3:9"

# The peer's hello: it holds alice's account (vm1.a/1), the set-up's only write.
HELLO = pb.ReplicationMessage(hello=pb.ReplicaHello(vm="vm2", origin="vm2.b", have=pb.VersionVector(
    origins=[pb.OriginRange(origin="vm1.a", contiguous=1)])))


class UnlinkedPeerTests(SynchronousTestCase):
    """vm1's replicator, its links started by hand (no gRPC), vm2 its peer."""

    def setUp(self):
        self.patch(PeerLink, "start", lambda link: None)
        self.patch(PeerLink, "stop", lambda link: defer.succeed(None))
        self.patch(PeerLink, "_connect", lambda link: None)
        self.clock = Clock()
        self.node = Node("vm1", "vm1.a", MemoryStore(), self.clock)
        self.node.login("alice")
        self.replicator = Replicator(self.node, "a-secret-of-16-chars", self.clock)

    def sync(self, vm="vm2"):
        """vm's current link opens its stream and hears the peer's hello."""
        link = self.replicator.links[vm]
        link.makeConnection(FakeStream())
        link.received(HELLO)
        return link

    def sentIds(self, link):
        return [u.origin + "/%d" % (u.seq,) for m in link.stream.sent
                if m.WhichOneof("kind") == "updates" for u in m.updates.updates]

    def write(self, text="hi", prefer=None):
        update = self.node.post("alice", text, "r-" + text)
        return update, self.replicator.broadcast(update, prefer)

    def test_a_live_vm_whose_stream_is_not_synced_is_waited_for(self):
        """
        The routers list vm2's master, its stream is still being opened: the
        write is sent when the stream syncs, and answered with vm2's copy.
        """
        self.replicator.setPeers({"vm2": "127.0.0.3:1"})
        update, d = self.write()
        self.assertNoResult(d)
        link = self.sync()
        self.assertEqual(self.sentIds(link), [update.id])
        link.received(ack(update.id))
        self.assertEqual(self.successResultOf(d), 1)

    def test_a_vm_whose_slave_is_taking_over_is_waited_for(self):
        """
        vm2's master died: the stream broke, the routers list only vm2's
        slave, which is dialled; a write made then, and one pushed before
        the break, both go to it once it is master and its stream syncs.
        """
        self.replicator.setPeers({"vm2": "127.0.0.3:1"})
        old = self.sync()
        before, d1 = self.write("before")
        old.connectionLost(None)
        self.replicator.setPeers({"vm2": SLAVE})
        during, d2 = self.write("during")
        self.assertNoResult(d1)
        self.assertNoResult(d2)
        # Promoted, it says hello on the stream already open, and registers
        # as master at the same address: nothing is dialled again.
        new = self.sync()
        self.replicator.setPeers({"vm2": SLAVE})
        self.assertIs(self.replicator.links["vm2"], new)
        self.assertEqual(sorted(self.sentIds(new)), sorted([before.id, during.id]),
                         "each sent once: the catch-up skips what is in flight")
        new.received(ack(before.id, during.id))
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), (1, 1))

    def test_the_wait_ends_UNLINKED_WAIT_after_the_vm_was_lost(self):
        """
        A VM that stays unlinked (cut off from us, not failing over): the
        writes waiting are answered with no other copy once the wait ends,
        and later writes at once, until its stream syncs again.
        """
        self.replicator.setPeers({"vm2": "127.0.0.3:1"})
        self.sync().connectionLost(None)
        self.clock.advance(UNLINKED_WAIT / 2)
        _, d = self.write("waits")
        self.clock.advance(UNLINKED_WAIT / 2 - SWEEP / 10)
        self.assertNoResult(d)
        self.clock.advance(SWEEP)
        self.assertEqual(self.successResultOf(d), 0)
        _, later = self.write("later")
        self.assertEqual(self.successResultOf(later), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_vm_no_router_lists_is_not_waited_for(self):
        """The routers drop vm2 (the whole VM died): the writes waiting for it are answered."""
        self.replicator.setPeers({"vm2": SLAVE})
        _, d = self.write()
        self.assertNoResult(d)
        self.replicator.setPeers({})
        self.assertEqual(self.successResultOf(d), 0)
        _, alone = self.write("alone")
        self.assertEqual(self.successResultOf(alone), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_alone_a_write_is_answered_at_once(self):
        """With no other VM listed as live, a write is durable here only, and says so at once."""
        self.replicator.setPeers({})
        _, d = self.write()
        self.assertEqual(self.successResultOf(d), 0)

    def test_a_preferred_vm_awaited_is_waited_for_past_another_copy(self):
        """
        The client's master2 is the VM taking over: another VM's copy is
        not enough while that one is awaited; its copy is.
        """
        self.replicator.setPeers({"vm2": SLAVE, "vm3": "127.0.0.4:1"})
        vm3 = self.sync("vm3")
        update, d = self.write(prefer="vm2")
        vm3.received(ack(update.id))
        self.assertNoResult(d)
        self.sync("vm2").received(ack(update.id))
        self.assertEqual(self.successResultOf(d), 2)

    def test_a_preferred_vm_whose_wait_ends_settles_for_another_copy(self):
        self.replicator.setPeers({"vm2": SLAVE, "vm3": "127.0.0.4:1"})
        vm3 = self.sync("vm3")
        update, d = self.write(prefer="vm2")
        vm3.received(ack(update.id))
        self.clock.advance(UNLINKED_WAIT + SWEEP)
        self.assertEqual(self.successResultOf(d), 1)

    def test_writes_on_the_stream_of_a_vm_that_moved_go_to_its_new_stream(self):
        """
        The routers name vm2's new master while the old stream is still
        synced; the old one then breaks: what it carried unacknowledged is
        sent on the new stream, not given up.
        """
        self.replicator.setPeers({"vm2": "127.0.0.3:1"})
        old = self.sync()
        update, d = self.write()
        self.replicator.setPeers({"vm2": "127.0.0.3:7"})
        new = self.sync()
        old.connectionLost(None)
        self.assertNoResult(d)
        self.assertIn(update.id, self.sentIds(new))
        new.received(ack(update.id))
        self.assertEqual(self.successResultOf(d), 1)

    def test_a_write_still_ends_after_ACK_TIMEOUT(self):
        """A peer that syncs but never acknowledges: the write's own deadline holds."""
        self.replicator.setPeers({"vm2": "127.0.0.3:1"})
        _, d = self.write()
        self.sync()
        self.clock.advance(ACK_TIMEOUT)
        self.assertEqual(self.successResultOf(d), 0)


class PeersFromMembershipTests(SynchronousTestCase):
    def told(self, *views):
        told = []
        links = RouterLinks(["r1", "r2"], Clock(), "a-secret-of-16-chars", "vm1",
                            CurrentRole("master"), hello=None, load=None, setPeers=told.append)
        for router, servers in zip(("r1", "r2"), views):
            links.membershipChanged(router, pb.Membership(servers=[
                pb.ServerInfo(vm=vm, role=role, address=address, peer_address=peer)
                for vm, role, address, peer in servers]))
        return told[-1]

    def test_a_vm_listed_with_only_its_slave_is_dialled_at_the_slave(self):
        """Its master died; the slave taking over is where the stream goes (its cluster port)."""
        self.assertEqual(self.told([("vm1", pb.MASTER, "127.0.0.2:1", "127.0.0.2:2"),
                                    ("vm2", pb.SLAVE, "127.0.0.3:3", "127.0.0.3:4")]),
                         {"vm2": "127.0.0.3:4"})

    def test_a_vms_master_comes_before_its_slave_whichever_router_lists_it(self):
        self.assertEqual(self.told([("vm2", pb.MASTER, "127.0.0.3:1", "127.0.0.3:2")],
                                   [("vm2", pb.SLAVE, "127.0.0.3:3", "127.0.0.3:4")]),
                         {"vm2": "127.0.0.3:2"})


class RetriedWriteCopiesTests(SynchronousTestCase):
    """
    A retry of a write this VM already holds is answered with the copies
    really held, not with 1: its first master may have died after sending
    it here and before answering, and may not have stored it itself.
    """

    def setUp(self):
        self.parts = serverParts(self)
        self.addCleanup(self.parts.replicator.stop)
        node = self.parts.node
        node.login("alice")
        # alice's post, made on vm2 and replicated here before vm2's master died.
        self.first = postUpdate("vm2.a", 1, node.hlc.now(), "alice", "hi", requestId="r1")
        node.receive([self.first])
        node.store.flush()
        self.patch(PeerLink, "start", lambda link: None)
        self.patch(PeerLink, "_connect", lambda link: None)

    def retry(self):
        return self.parts.api._post("alice", pb.PostRequest(text="hi", request_id="r1"))

    def test_a_retry_is_sent_to_the_peers_again_and_waits_for_a_copy(self):
        self.parts.replicator.setPeers({"vm2": "127.0.0.3:7"})
        d = self.retry()
        self.assertNoResult(d)
        link = self.parts.replicator.links["vm2"]
        link.makeConnection(FakeStream())
        link.received(HELLO)
        sent = [u.post.text for m in link.stream.sent if m.WhichOneof("kind") == "updates"
                for u in m.updates.updates if u.origin == "vm2.a"]
        self.assertEqual(sent, ["hi"])
        link.received(ack(self.first.id))
        reply = self.successResultOf(d)
        self.assertEqual((reply.id, reply.copies), (self.first.id, 2))

    def test_alone_a_retry_is_answered_with_one_copy(self):
        self.parts.replicator.setPeers({})
        self.assertEqual(self.successResultOf(self.retry()).copies, 1)

    def test_a_retry_while_the_first_still_waits_waits_with_it(self):
        """Two writers of one update: both are answered when its copy is known."""
        self.parts.replicator.setPeers({"vm3": "127.0.0.4:1"})
        first, again = self.retry(), self.retry()
        link = self.parts.replicator.links["vm3"]
        link.makeConnection(FakeStream())
        link.received(HELLO)
        link.received(ack(self.first.id))
        self.assertEqual([self.successResultOf(d).copies for d in (first, again)], [2, 2])


class _Role:
    """A role machine's state, set by the test (what L{CurrentRole} follows)."""

    state = "slave"


class StandbyStreamTests(SynchronousTestCase):
    """
    A slave's end of a peer's C{BroadcastPosts} (its master died, the peer
    dialled the slave taking over): open at once, heartbeats only, the
    peer's updates refused, until the slave serves as master and says
    hello, with what it holds then.
    """

    def setUp(self):
        self.role = _Role()
        current = CurrentRole()
        current.follow(self.role)
        self.parts = serverParts(self, "slave", current=current)
        self.stream = FakeStream()
        self.receiver = self.parts.internal.broadcastPosts(secret("s"))
        self.receiver.makeConnection(self.stream)
        self.addCleanup(self.receiver.connectionLost, None)

    def waiting(self):
        return len(self.parts.internal.standbyStreams._observers)

    def test_a_slave_takes_the_stream_and_beats_without_a_hello(self):
        self.parts.internal.clock.advance(ANTI_ENTROPY)
        self.assertEqual(self.stream.kinds(), ["heartbeat", "heartbeat"])

    def test_once_it_serves_as_master_it_says_hello_with_what_it_holds(self):
        self.parts.node.login("alice")
        self.role.state = "master"
        self.parts.internal.standbyStreams()
        self.assertEqual(self.stream.kinds(), ["heartbeat", "hello"])
        self.assertEqual(self.stream.last("hello").have,
                         self.parts.node.replica.seen.toProto())
        self.assertEqual(self.waiting(), 0, "told once, then an ordinary end")
        self.parts.internal.clock.advance(ANTI_ENTROPY)
        self.assertEqual(self.stream.kinds()[-1], "hello")

    def test_updates_before_it_is_master_are_refused_and_not_applied(self):
        update = userUpdate("vm2.b", 1, 1, "mallory")
        self.receiver.messageReceived(pb.ReplicationMessage(
            updates=pb.UpdateBatch(updates=[update.toProto()])))
        self.assertTrue(self.stream.aborted)
        self.assertNotIn("mallory", self.parts.node.replica.users)

    def test_a_stream_that_ends_first_is_not_told(self):
        self.receiver.connectionLost(None)
        self.assertEqual(self.waiting(), 0)

    def test_a_stream_connected_after_the_promotion_served_says_hello(self):
        """
        The bridge connects a stream some turns after its call came: a
        promotion that served in between was not heard, and the stream
        would beat without a hello for good (the peer never synced).
        """
        late = self.parts.internal.broadcastPosts(secret("s"))
        self.role.state = "master"
        self.parts.internal.standbyStreams()
        stream = FakeStream()
        late.makeConnection(stream)
        self.addCleanup(late.connectionLost, None)
        self.assertEqual(stream.kinds(), ["hello"])
        self.assertEqual(self.waiting(), 0)

    def test_a_standby_end_not_told_says_hello_at_its_next_beat(self):
        """Master, but never told (the news came before it was waiting): its next beat."""
        self.role.state = "master"
        self.parts.internal.clock.advance(ANTI_ENTROPY)
        self.assertEqual(self.stream.kinds(), ["heartbeat", "hello"])
        self.assertEqual(self.waiting(), 0)

    def test_a_stopping_server_takes_no_stream(self):
        self.role.state = "stopping"
        self.assertRaises(errors.NotMaster, self.parts.internal.broadcastPosts, secret("s"))


class StandbyStreamWiringTests(SynchronousTestCase):
    def test_a_slave_taking_over_tells_the_waiting_streams_once_it_serves(self):
        """After it took the data over (what it had not mirrored too), in the turn it serves."""
        disk = VMDisk()
        old = Node("vm1", "vm1.old", disk, Clock())
        node = Node("vm1", "vm1.new", disk, Clock())
        lifecycle, masterEnd, slaveEnd, served, reactor = lifecycleOn(
            self, "slave", node, openStore=lambda: disk)
        told = []
        lifecycle.mastering.add(lambda: told.append(("bob" in node.replica.users, served[:])))
        lifecycle.start()
        old.login("bob")
        slaveEnd.lost("buddy stream broke")
        self.assertEqual(told, [(True, ["slave", "master"])])

    def test_a_servers_waiting_streams_hear_its_lifecycle(self):
        reactor = MemoryReactorClock()
        service = ServerService(serverConfig(self), clock=reactor, reactor=reactor,
                                store=MemoryStore(), hasher=FakeHasher())
        stream = FakeStream()
        ReplicaReceiver(service.node, reactor,
                        standby=service.parts.internal.standbyStreams).makeConnection(stream)
        service.lifecycle.mastering()
        self.assertEqual(stream.kinds(), ["heartbeat", "hello"])
