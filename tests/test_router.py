"""
The router's bookkeeping, on a Clock: who is live, who is handed out, and
what a server's stream does to the registry.  No network, no reactor.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist import router, routerrecords
from snstwist.core import errors
from snstwist.router import HEARTBEAT, Registry, RouterService, ServerIdentity, ServerLink
from snstwist.rpc import auth
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc.grpcbridge import SECRET_METADATA
from tests.fakes import FakeStream

SECRET = "test-secret"


def identity(vm="vm1", role=pb.MASTER, incarnation=None, address=None, pid=100):
    return ServerIdentity(vm=vm, role=role, address=address or "%s:3000" % (vm,),
                          pid=pid, incarnation=incarnation or "%s-%s" % (vm, pb.Role.Name(role)))


def hello(vm="vm1", role=pb.MASTER, incarnation=None, address=None, pid=100):
    i = identity(vm, role, incarnation, address, pid)
    return pb.ServerMessage(hello=pb.ServerHello(
        vm=i.vm, role=i.role, address=i.address, pid=i.pid, incarnation=i.incarnation))


def heartbeat(clients=0, updates=0, pending=0):
    return pb.ServerMessage(heartbeat=pb.Heartbeat(
        clients=clients, updates=updates, pending=pending))


class FakeLink:
    """What the registry keeps for a server it can abort."""

    def __init__(self):
        self.aborted = False

    def abort(self):
        self.aborted = True


class FakeContext:
    def __init__(self, metadata=()):
        self.metadata = dict(metadata)
        self.peer = FakeStream.peer


def makeRegistry():
    """A Registry on a fresh Clock, and the list its onChange appends to."""
    clock = Clock()
    changes = []
    return clock, Registry(clock, lambda: changes.append(clock.seconds())), changes


def ticking(clock, tick, seconds):
    """The router awake for C{seconds}: its timer (C{tick}) every HEARTBEAT."""
    for _ in range(int(round(seconds / HEARTBEAT))):
        clock.advance(HEARTBEAT)
        tick()


def connect(registry, message=None):
    """A ServerLink on a fake stream, having received C{message} (a hello by default)."""
    stream = FakeStream()
    link = ServerLink(registry)
    link.makeConnection(stream)
    link.messageReceived(message if message is not None else hello())
    return link, stream


class RegistryTests(SynchronousTestCase):
    def test_register_makes_server_live_and_announces_change(self):
        """A registered server is in the registry, and onChange is called once."""
        clock, registry, changes = makeRegistry()
        i = identity("vm1")
        record = registry.register(i, FakeLink())
        self.assertIs(registry.servers[i.incarnation], record)
        self.assertEqual(record.identity, i)
        self.assertEqual(changes, [0])

    def test_repeated_hello_on_same_link_is_not_a_change(self):
        """The same identity on the same link again refreshes it but announces nothing."""
        clock, registry, changes = makeRegistry()
        link = FakeLink()
        first = registry.register(identity(), link)
        clock.advance(1)
        again = registry.register(identity(), link)
        self.assertIs(again, first)
        self.assertEqual(again.lastSeen, 1)
        self.assertEqual(changes, [0])

    def test_reregistering_on_new_link_replaces_link_and_announces_membership(self):
        """
        A server that reconnects before its old stream is noticed gone keeps
        its record, gets the new link, and the membership is pushed again so
        the new stream learns it.
        """
        clock, registry, changes = makeRegistry()
        first = registry.register(identity(), FakeLink())
        newLink = FakeLink()
        clock.advance(1)
        again = registry.register(identity(), newLink)
        self.assertIs(again, first)
        self.assertIs(again.link, newLink)
        self.assertEqual(again.since, 0)
        self.assertEqual(changes, [0, 1])

    def test_role_change_of_same_incarnation_is_announced(self):
        """A slave saying hello again as master replaces its identity, and others are told."""
        clock, registry, changes = makeRegistry()
        registry.register(identity(role=pb.SLAVE, incarnation="x"), FakeLink())
        clock.advance(1)
        record = registry.register(identity(role=pb.MASTER, incarnation="x"), FakeLink())
        self.assertEqual(registry.servers["x"].identity.role, pb.MASTER)
        self.assertIs(registry.servers["x"], record)
        self.assertEqual(changes, [0, 1])

    def test_role_change_of_same_incarnation_keeps_its_load(self):
        """The clients counted for a server survive its new hello."""
        clock, registry, changes = makeRegistry()
        registry.register(identity(role=pb.SLAVE, incarnation="x"), FakeLink())
        registry.heartbeat("x", pb.Heartbeat(clients=4))
        record = registry.register(identity(role=pb.MASTER, incarnation="x"), FakeLink())
        self.assertEqual(record.clients, 4)

    def test_heartbeat_records_load_and_last_seen(self):
        """A heartbeat refreshes lastSeen and replaces the load figures."""
        clock, registry, changes = makeRegistry()
        i = identity()
        registry.register(i, FakeLink())
        clock.advance(1)
        registry.heartbeat(i.incarnation, pb.Heartbeat(clients=7, updates=30, pending=2))
        record = registry.servers[i.incarnation]
        self.assertEqual((record.lastSeen, record.clients, record.updates, record.pending),
                         (1, 7, 30, 2))

    def test_peer_streams_are_in_status_not_in_the_membership(self):
        """
        How a master's replication streams are doing reaches sns-status;
        the membership pushed to every server stays without it.
        """
        clock, registry, changes = makeRegistry()
        i = identity()
        registry.register(i, FakeLink())
        broken = pb.PeerStream(vm="vm2", lacking=3, failures=5, last_error="INTERNAL: x")
        registry.heartbeat(i.incarnation, pb.Heartbeat(pending=3, peers=[broken], refused=2))
        [info] = registry.infos()
        self.assertEqual((list(info.peers), info.refused), ([broken], 2))
        [pushed] = registry.membership().servers
        self.assertEqual((list(pushed.peers), pushed.refused), ([], 0))

    def test_heartbeat_of_unknown_server_is_ignored(self):
        """A heartbeat for an incarnation not registered creates nothing."""
        clock, registry, changes = makeRegistry()
        registry.heartbeat("nobody", pb.Heartbeat(clients=1))
        self.assertEqual(registry.servers, {})
        self.assertEqual(changes, [])

    def test_silent_server_is_deactivated_after_timeout(self):
        """
        A server silent for exactly C{timeout} is still live; a moment later
        expire() removes it, aborts its link and announces the change.
        """
        clock, registry, changes = makeRegistry()
        link = FakeLink()
        i = identity()
        registry.register(i, link)
        ticking(clock, registry.expire, Registry.timeout)
        self.assertIn(i.incarnation, registry.servers)
        self.assertFalse(link.aborted)
        ticking(clock, registry.expire, HEARTBEAT)
        self.assertNotIn(i.incarnation, registry.servers)
        self.assertTrue(link.aborted)
        self.assertEqual(changes, [0, Registry.timeout + HEARTBEAT])

    def test_heartbeats_keep_server_live_past_timeout(self):
        """A server heartbeating more often than C{timeout} is never expired."""
        clock, registry, changes = makeRegistry()
        i = identity()
        registry.register(i, FakeLink())
        for _ in range(10):
            clock.advance(HEARTBEAT)
            registry.heartbeat(i.incarnation, pb.Heartbeat())
            registry.expire()
        self.assertIn(i.incarnation, registry.servers)
        self.assertEqual(changes, [0])

    def test_expire_removes_only_silent_servers(self):
        """Of two servers, only the one that stopped heartbeating is expired."""
        clock, registry, changes = makeRegistry()
        quiet, talking = identity("vm1"), identity("vm2")
        registry.register(quiet, FakeLink())
        registry.register(talking, FakeLink())
        ticking(clock, registry.expire, Registry.timeout)
        registry.heartbeat(talking.incarnation, pb.Heartbeat())
        ticking(clock, registry.expire, HEARTBEAT)
        self.assertEqual(list(registry.servers), [talking.incarnation])

    def test_a_starved_router_deactivates_nobody_for_the_time_it_did_not_run(self):
        """
        A router that did not run for longer than the timeout (its timer
        late) has read no heartbeat meanwhile: that is no server's silence.
        """
        clock, registry, changes = makeRegistry()
        i = identity()
        registry.register(i, FakeLink())
        clock.advance(Registry.timeout + 5 * HEARTBEAT)
        registry.expire()
        self.assertIn(i.incarnation, registry.servers)

    def test_a_server_still_silent_once_the_router_runs_again_is_deactivated(self):
        """Silence counts again from the router's late tick: timeout later, the server goes."""
        clock, registry, changes = makeRegistry()
        i = identity()
        registry.register(i, FakeLink())
        clock.advance(Registry.timeout + 5 * HEARTBEAT)
        registry.expire()
        ticking(clock, registry.expire, Registry.timeout - HEARTBEAT)
        self.assertIn(i.incarnation, registry.servers)
        ticking(clock, registry.expire, HEARTBEAT)
        self.assertNotIn(i.incarnation, registry.servers)

    def test_remove_deactivates_and_announces(self):
        """remove() returns the record, forgets it and calls onChange."""
        clock, registry, changes = makeRegistry()
        i = identity()
        record = registry.register(i, FakeLink())
        self.assertIs(registry.remove(i.incarnation, "test"), record)
        self.assertEqual(registry.servers, {})
        self.assertEqual(len(changes), 2)

    def test_removing_unknown_server_changes_nothing(self):
        """remove() of an incarnation not registered returns None and announces nothing."""
        clock, registry, changes = makeRegistry()
        self.assertIsNone(registry.remove("nobody", "test"))
        self.assertEqual(changes, [])

    def test_masters_picks_most_recently_registered_master_per_vm(self):
        """Two masters claim vm1: the later one is vm1's master."""
        clock, registry, changes = makeRegistry()
        registry.register(identity("vm1", incarnation="old"), FakeLink())
        clock.advance(1)
        registry.register(identity("vm1", incarnation="new"), FakeLink())
        registry.register(identity("vm2"), FakeLink())
        masters = registry.masters()
        self.assertEqual(sorted(masters), ["vm1", "vm2"])
        self.assertEqual(masters["vm1"].identity.incarnation, "new")

    def test_masters_leaves_out_slaves(self):
        """A VM with only a slave has no master."""
        clock, registry, changes = makeRegistry()
        registry.register(identity("vm1", role=pb.SLAVE), FakeLink())
        registry.register(identity("vm2"), FakeLink())
        self.assertEqual(list(registry.masters()), ["vm2"])

    def test_membership_lists_every_server_sorted_by_vm_and_role(self):
        """The membership pushed to servers has every live server, slaves included."""
        clock, registry, changes = makeRegistry()
        registry.register(identity("vm2"), FakeLink())
        registry.register(identity("vm1", role=pb.SLAVE), FakeLink())
        registry.register(identity("vm1"), FakeLink())
        clock.advance(0.25)
        servers = registry.membership().servers
        self.assertEqual([(s.vm, s.role) for s in servers],
                         [("vm1", pb.MASTER), ("vm1", pb.SLAVE), ("vm2", pb.MASTER)])
        self.assertEqual({s.seen_ago for s in servers}, {0.25})


class PickMastersTests(SynchronousTestCase):
    def test_two_masters_on_two_vms_least_loaded_first(self):
        """The less loaded VM's master comes first, the other second."""
        clock, registry, changes = makeRegistry()
        for vm, clients in (("vm1", 5), ("vm2", 2)):
            registry.register(identity(vm), FakeLink())
            registry.heartbeat(identity(vm).incarnation, pb.Heartbeat(clients=clients))
        first, second = registry.pickMasters()
        self.assertEqual((first.identity.vm, second.identity.vm), ("vm2", "vm1"))

    def test_only_one_vm_gives_no_second_master(self):
        """With a master on one VM only, the second is None."""
        clock, registry, changes = makeRegistry()
        registry.register(identity("vm1"), FakeLink())
        first, second = registry.pickMasters()
        self.assertEqual(first.identity.vm, "vm1")
        self.assertIsNone(second)

    def test_two_masters_of_one_vm_are_not_handed_out_together(self):
        """An old and a new master of the same VM never make a pair."""
        clock, registry, changes = makeRegistry()
        registry.register(identity("vm1", incarnation="old"), FakeLink())
        clock.advance(1)
        registry.register(identity("vm1", incarnation="new"), FakeLink())
        first, second = registry.pickMasters()
        self.assertEqual(first.identity.incarnation, "new")
        self.assertIsNone(second)

    def test_excluded_vms_are_not_picked(self):
        """A request excluding vm1 gets masters of the other VMs only."""
        clock, registry, changes = makeRegistry()
        for vm in ("vm1", "vm2", "vm3"):
            registry.register(identity(vm), FakeLink())
        first, second = registry.pickMasters(exclude={"vm1"})
        self.assertEqual({first.identity.vm, second.identity.vm}, {"vm2", "vm3"})

    def test_no_master_raises_no_master_available(self):
        """An empty registry raises NoMasterAvailable."""
        clock, registry, changes = makeRegistry()
        self.assertRaises(errors.NoMasterAvailable, registry.pickMasters)

    def test_excluding_every_vm_raises_no_master_available_naming_them(self):
        """Excluding the only VM with a master raises, and the message says which."""
        clock, registry, changes = makeRegistry()
        registry.register(identity("vm1"), FakeLink())
        e = self.assertRaises(errors.NoMasterAvailable, registry.pickMasters, {"vm1"})
        self.assertIn("vm1", e.message)

    def test_slaves_are_never_handed_out(self):
        """Slaves alone give NoMasterAvailable; beside a master, they are not second."""
        clock, registry, changes = makeRegistry()
        registry.register(identity("vm1", role=pb.SLAVE), FakeLink())
        registry.register(identity("vm2", role=pb.SLAVE), FakeLink())
        self.assertRaises(errors.NoMasterAvailable, registry.pickMasters)
        registry.register(identity("vm3"), FakeLink())
        first, second = registry.pickMasters()
        self.assertEqual(first.identity.vm, "vm3")
        self.assertIsNone(second)

    def test_load_reported_by_heartbeats_changes_the_order(self):
        """When vm1 reports more clients than vm2, vm2 moves to the front."""
        clock, registry, changes = makeRegistry()
        registry.register(identity("vm1"), FakeLink())
        registry.register(identity("vm2"), FakeLink())
        first, _ = registry.pickMasters()
        self.assertEqual(first.identity.vm, "vm1")
        registry.heartbeat(identity("vm1").incarnation, pb.Heartbeat(clients=10))
        registry.heartbeat(identity("vm2").incarnation, pb.Heartbeat(clients=3))
        first, second = registry.pickMasters()
        self.assertEqual((first.identity.vm, second.identity.vm), ("vm2", "vm1"))

    def test_burst_of_picks_spreads_over_vms(self):
        """Between heartbeats, each pick counts a client, so six picks go 2-2-2."""
        clock, registry, changes = makeRegistry()
        for vm in ("vm1", "vm2", "vm3"):
            registry.register(identity(vm), FakeLink())
        firsts = [registry.pickMasters()[0].identity.vm for _ in range(6)]
        self.assertEqual(sorted(firsts), ["vm1", "vm1", "vm2", "vm2", "vm3", "vm3"])
        self.assertEqual(firsts[:3], ["vm1", "vm2", "vm3"])

    def test_picks_count_on_top_of_heartbeats_until_they_expire(self):
        """
        A client just handed out counts as load even when a heartbeat sent
        before its session opened says otherwise, for PICK_MEMORY seconds.
        """
        clock, registry, changes = makeRegistry()
        registry.register(identity("vm1"), FakeLink())
        for _ in range(3):
            registry.pickMasters()
        record = registry.servers[identity("vm1").incarnation]
        registry.heartbeat(identity("vm1").incarnation, pb.Heartbeat(clients=1))
        self.assertEqual(record.load(clock.seconds()), 4)
        clock.advance(routerrecords.PICK_MEMORY)
        self.assertEqual(record.load(clock.seconds()), 1)

    def test_a_stale_heartbeat_does_not_send_the_next_client_to_the_same_vm(self):
        """Two clients in a row go to two VMs even if vm1 then reports 0 sessions."""
        clock, registry, changes = makeRegistry()
        registry.register(identity("vm1"), FakeLink())
        registry.register(identity("vm2"), FakeLink())
        first, _ = registry.pickMasters()
        registry.heartbeat(first.identity.incarnation, pb.Heartbeat(clients=0))
        second, _ = registry.pickMasters()
        self.assertNotEqual(first.identity.vm, second.identity.vm)


class ServerLinkTests(SynchronousTestCase):
    def test_hello_registers_server_with_its_link(self):
        """A valid hello makes the server live, with this link as its way back."""
        clock, registry, changes = makeRegistry()
        link, stream = connect(registry, hello("vm1", pid=42))
        record = registry.servers[identity("vm1").incarnation]
        self.assertEqual(record.identity, identity("vm1", pid=42))
        self.assertIs(record.link, link)
        self.assertFalse(stream.aborted)

    def test_bad_hello_aborts_stream_and_registers_nothing(self):
        """A hello without vm, address, incarnation or role is refused."""
        bad = [
            pb.ServerHello(role=pb.MASTER, address="h:1", incarnation="i"),
            pb.ServerHello(vm="vm1", role=pb.MASTER, incarnation="i"),
            pb.ServerHello(vm="vm1", role=pb.MASTER, address="h:1"),
            pb.ServerHello(vm="vm1", address="h:1", incarnation="i"),
        ]
        for h in bad:
            clock, registry, changes = makeRegistry()
            link, stream = connect(registry, pb.ServerMessage(hello=h))
            self.assertTrue(stream.aborted, h)
            self.assertEqual(registry.servers, {}, h)
            self.assertEqual(changes, [], h)

    def test_heartbeat_on_stream_reports_load(self):
        """Heartbeats after the hello reach the registry."""
        clock, registry, changes = makeRegistry()
        link, stream = connect(registry)
        clock.advance(1)
        link.messageReceived(heartbeat(clients=4, updates=9, pending=1))
        record = registry.servers[identity().incarnation]
        self.assertEqual((record.lastSeen, record.clients, record.updates, record.pending),
                         (1, 4, 9, 1))

    def test_heartbeat_before_hello_is_ignored(self):
        """A stream that has not said hello registers nothing by heartbeating."""
        clock, registry, changes = makeRegistry()
        link, stream = connect(registry, heartbeat(clients=4))
        self.assertEqual(registry.servers, {})
        self.assertFalse(stream.aborted)

    def test_connection_lost_deactivates_server(self):
        """When the stream ends, the server is removed and the others are told."""
        clock, registry, changes = makeRegistry()
        link, stream = connect(registry)
        link.connectionLost(None)
        self.assertEqual(registry.servers, {})
        self.assertEqual(len(changes), 2)

    def test_connection_lost_before_hello_changes_nothing(self):
        """A stream that never said hello ends without touching the registry."""
        clock, registry, changes = makeRegistry()
        registry.register(identity("vm2"), FakeLink())
        link, stream = connect(registry, heartbeat())
        link.connectionLost(None)
        self.assertEqual(list(registry.servers), [identity("vm2").incarnation])
        self.assertEqual(len(changes), 1)

    def test_stale_link_connection_lost_keeps_reregistered_server(self):
        """
        The server said hello again on a new stream; the old stream's end,
        arriving late, does not deactivate it.
        """
        clock, registry, changes = makeRegistry()
        old, _ = connect(registry)
        new, _ = connect(registry)
        old.connectionLost(None)
        record = registry.servers[identity().incarnation]
        self.assertIs(record.link, new)

    def test_expired_link_connection_lost_keeps_server_registered_anew(self):
        """
        Expired, then back on a new stream: the expired stream's end, arriving
        after, leaves the new registration alone.
        """
        clock, registry, changes = makeRegistry()
        old, oldStream = connect(registry)
        ticking(clock, registry.expire, Registry.timeout + HEARTBEAT)
        self.assertTrue(oldStream.aborted)
        new, _ = connect(registry)
        old.connectionLost(None)
        self.assertIs(registry.servers[identity().incarnation].link, new)

    def test_send_and_abort_go_to_the_stream(self):
        """The registry talks to a server through its link's stream."""
        clock, registry, changes = makeRegistry()
        link, stream = connect(registry)
        message = pb.RouterMessage(heartbeat=pb.Heartbeat())
        link.send(message)
        link.abort()
        self.assertEqual(stream.sent, [message])
        self.assertTrue(stream.aborted)


def makeRouter():
    """A RouterService on a Clock, never started: its RPCs are plain functions."""
    clock = Clock()
    clock.advance(1000)
    return clock, RouterService("127.0.0.1:0", SECRET, clock=clock)


def serverOn(router, vm, role=pb.MASTER):
    link, stream = connect(router.registry, hello(vm, role))
    return stream


def memberships(stream):
    return [m.membership for m in stream.sent if m.WhichOneof("kind") == "membership"]


class RouterServiceTests(SynchronousTestCase):
    def test_constructing_router_schedules_nothing(self):
        """Until it is started, a router leaves no timer on its clock."""
        clock, router = makeRouter()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_onetime_c_to_r_returns_two_masters_on_two_vms(self):
        """master1 is the least loaded master, master2 one on another VM."""
        clock, router = makeRouter()
        serverOn(router, "vm1")
        serverOn(router, "vm2")
        router.registry.heartbeat(identity("vm1").incarnation, pb.Heartbeat(clients=3))
        reply = router.onetimeCToR(pb.MasterRequest(user="alice"), FakeContext())
        self.assertEqual(reply.master1, pb.ServerAddress(vm="vm2", address="vm2:3000"))
        self.assertEqual(reply.master2, pb.ServerAddress(vm="vm1", address="vm1:3000"))

    def test_onetime_c_to_r_excludes_requested_vms(self):
        """A client keeping its vm1 master asks for a replacement elsewhere."""
        clock, router = makeRouter()
        for vm in ("vm1", "vm2"):
            serverOn(router, vm)
        reply = router.onetimeCToR(
            pb.MasterRequest(user="alice", exclude_vms=["vm1"]), FakeContext())
        self.assertEqual(reply.master1.vm, "vm2")
        self.assertFalse(reply.HasField("master2"))

    def test_onetime_c_to_r_with_one_vm_leaves_master2_unset(self):
        """With one live VM, master2 is absent, not an empty address."""
        clock, router = makeRouter()
        serverOn(router, "vm1")
        reply = router.onetimeCToR(pb.MasterRequest(user="alice"), FakeContext())
        self.assertEqual(reply.master1.address, "vm1:3000")
        self.assertFalse(reply.HasField("master2"))

    def test_onetime_c_to_r_without_master_raises_unavailable(self):
        """No live master: NoMasterAvailable, which the edge maps to UNAVAILABLE."""
        clock, router = makeRouter()
        serverOn(router, "vm1", role=pb.SLAVE)
        e = self.assertRaises(errors.NoMasterAvailable, router.onetimeCToR,
                              pb.MasterRequest(user="alice"), FakeContext())
        self.assertEqual(errors.statusFor(e)[0], errors.Status.UNAVAILABLE)

    def test_status_lists_servers_and_uptime(self):
        """Status shows every live server with its load, and the router's uptime."""
        clock, router = makeRouter()
        serverOn(router, "vm1")
        serverOn(router, "vm1", role=pb.SLAVE)
        router.registry.heartbeat(identity("vm1").incarnation, pb.Heartbeat(clients=2))
        clock.advance(5)
        reply = router.status(pb.StatusRequest(), FakeContext(auth.secretMetadata(SECRET)))
        self.assertEqual(reply.uptime, 5)
        self.assertEqual([(s.vm, s.role, s.clients, s.seen_ago) for s in reply.servers],
                         [("vm1", pb.MASTER, 2, 5), ("vm1", pb.SLAVE, 0, 5)])

    def test_new_server_is_announced_to_every_server(self):
        """A registration pushes the new membership to all servers, the newcomer too."""
        clock, router = makeRouter()
        first = serverOn(router, "vm1")
        second = serverOn(router, "vm2")
        self.assertEqual([len(m.servers) for m in memberships(first)], [1, 2])
        self.assertEqual([len(m.servers) for m in memberships(second)], [2])

    def test_server_back_on_new_stream_is_sent_the_membership(self):
        """
        vm1 reconnects before its old stream is noticed gone, after vm2 joined:
        its new stream still gets a membership that includes vm2.
        """
        clock, router = makeRouter()
        serverOn(router, "vm1")
        serverOn(router, "vm2")
        again = serverOn(router, "vm1")
        self.assertEqual([s.vm for s in memberships(again)[-1].servers], ["vm1", "vm2"])

    def test_deactivated_server_is_announced_to_the_others(self):
        """When vm2's stream ends, vm1 is sent a membership without vm2."""
        clock, router = makeRouter()
        first = serverOn(router, "vm1")
        link, _ = connect(router.registry, hello("vm2"))
        link.connectionLost(None)
        self.assertEqual([s.vm for s in memberships(first)[-1].servers], ["vm1"])

    def test_tick_heartbeats_every_server(self):
        """Each tick sends a heartbeat on every server's stream."""
        clock, router = makeRouter()
        streams = [serverOn(router, vm) for vm in ("vm1", "vm2")]
        router.tick()
        for stream in streams:
            self.assertEqual(stream.sent[-1], pb.RouterMessage(heartbeat=pb.Heartbeat()))

    def test_tick_deactivates_silent_servers(self):
        """A tick after the timeout aborts a silent server's stream and tells the rest."""
        clock, router = makeRouter()
        silent = serverOn(router, "vm1")
        ticking(clock, router.tick, Registry.timeout)
        talking = serverOn(router, "vm2")
        ticking(clock, router.tick, HEARTBEAT)
        self.assertTrue(silent.aborted)
        self.assertFalse(talking.aborted)
        self.assertEqual([s.vm for s in memberships(talking)[-1].servers], ["vm2"])

    def test_status_needs_the_cluster_secret(self):
        """Status names pids, addresses and users online: not without the secret."""
        clock, router = makeRouter()
        serverOn(router, "vm1")
        for context in (FakeContext(), FakeContext({SECRET_METADATA: "wrong"})):
            e = self.assertRaises(errors.PermissionDenied, router.status,
                                  pb.StatusRequest(), context)
            self.assertEqual(errors.statusFor(e)[0], errors.Status.PERMISSION_DENIED)

    def test_server_link_needs_the_cluster_secret(self):
        """Bidirectional_r_and_s without the shared secret is refused."""
        clock, router = makeRouter()
        self.assertRaises(errors.PermissionDenied, router.serverLink, FakeContext())
        self.assertRaises(errors.PermissionDenied, router.serverLink,
                          FakeContext({SECRET_METADATA: "wrong"}))
        link = router.serverLink(FakeContext(auth.secretMetadata(SECRET)))
        self.assertIsInstance(link, ServerLink)


def kinds(registry):
    return [(e.kind, e.vm) for e in registry.events]


class EventTests(SynchronousTestCase):
    """What the router remembers having seen, for people watching the cluster."""

    def test_first_master_and_slave_of_a_vm_are_live_events(self):
        clock, registry, _ = makeRegistry()
        registry.register(identity("vm1"), FakeLink())
        registry.register(identity("vm1", pb.SLAVE), FakeLink())
        self.assertEqual(kinds(registry), [("live", "vm1"), ("live", "vm1")])
        self.assertEqual(registry.events[1].text, "slave of vm1 live at vm1:3000 (pid 100)")

    def test_master_death_promotion_and_new_slave_are_told_in_order(self):
        """
        A killed master is deactivated, its slave (same incarnation) comes
        back as master, and the slave it spawns is a respawn.
        """
        clock, registry, _ = makeRegistry()
        registry.register(identity("vm1", pid=1), FakeLink())
        registry.register(identity("vm1", pb.SLAVE, incarnation="s", pid=2), FakeLink())
        clock.advance(1)
        registry.remove(identity("vm1", pid=1).incarnation, "stream ended")
        clock.advance(0.07)
        registry.register(identity("vm1", pb.MASTER, incarnation="s", pid=2), FakeLink())
        clock.advance(0.3)
        registry.register(identity("vm1", pb.SLAVE, incarnation="t", pid=3), FakeLink())
        self.assertEqual(kinds(registry)[2:], [
            ("deactivated", "vm1"), ("promoted", "vm1"), ("respawned", "vm1")])
        self.assertEqual([e.time for e in registry.events][2:], [1, 1.07, 1.37])
        self.assertEqual(registry.events[2].text,
                         "master of vm1 (pid 1) deactivated: stream ended")
        self.assertEqual(registry.events[3].text,
                         "slave 2 promoted to master of vm1 at vm1:3000")

    def test_a_vm_back_catches_up_until_it_holds_what_its_peers_held(self):
        clock, registry, _ = makeRegistry()
        registry.register(identity("vm1"), FakeLink())
        registry.register(identity("vm2"), FakeLink())
        registry.heartbeat(identity("vm1").incarnation, pb.Heartbeat(updates=50))
        registry.remove(identity("vm2").incarnation, "stream ended")
        registry.register(identity("vm2", incarnation="again"), FakeLink())
        self.assertEqual(kinds(registry)[-1], ("catching-up", "vm2"))
        clock.advance(0.5)
        registry.heartbeat("again", pb.Heartbeat(updates=20))
        self.assertEqual(kinds(registry)[-1], ("catching-up", "vm2"))
        clock.advance(0.5)
        registry.heartbeat("again", pb.Heartbeat(updates=50))
        self.assertEqual(kinds(registry)[-1], ("caught-up", "vm2"))
        self.assertEqual(registry.events[-1].text, "vm2 caught up: 50 updates in 1.00s")
        registry.heartbeat("again", pb.Heartbeat(updates=51))
        self.assertEqual(len([k for k, _ in kinds(registry) if k == "caught-up"]), 1)

    def test_events_are_bounded(self):
        clock, registry, _ = makeRegistry()
        for n in range(router.EVENTS + 10):
            registry.register(identity("vm1", incarnation="i%d" % (n,)), FakeLink())
            registry.remove("i%d" % (n,), "stream ended")
        self.assertEqual(len(registry.events), router.EVENTS)

    def test_status_carries_the_events_and_the_router_time(self):
        clock, router_ = makeRouter()
        clock.advance(10)
        serverOn(router_, "vm1")
        reply = router_.status(pb.StatusRequest(), FakeContext(auth.secretMetadata(SECRET)))
        self.assertEqual([(e.kind, e.vm, e.time) for e in reply.events],
                         [("live", "vm1", 1010)])
        self.assertEqual(reply.time, 1010)

    def test_heartbeat_reports_acknowledged_posts(self):
        clock, registry, _ = makeRegistry()
        registry.register(identity("vm1"), FakeLink())
        registry.heartbeat(identity("vm1").incarnation, pb.Heartbeat(acknowledged=7))
        self.assertEqual(registry.infos()[0].acknowledged, 7)

    def test_heartbeat_reports_what_the_slave_was_fed(self):
        clock, registry, _ = makeRegistry()
        registry.register(identity("vm1"), FakeLink())
        registry.heartbeat(identity("vm1").incarnation,
                           pb.Heartbeat(fed_updates=30, fed_calls=2))
        info = registry.infos()[0]
        self.assertEqual((info.fed_updates, info.fed_calls), (30, 2))
