"""
The router: which server processes are alive, on which VM, in which role.

It holds soft state only.  Servers say hello on C{Bidirectional_r_and_s} and
heartbeat on it; the router pushes the live membership back to every server
(which is how masters find their peer VMs).  A server whose stream ends, or
whose heartbeats stop for L{Registry.timeout} seconds, is deactivated and the
others are told.  A restarted router rebuilds the same view from the
re-registrations within one heartbeat.

Clients ask C{Onetime_c_to_r} for two live masters on two different VMs,
least loaded first.

The router also keeps the last L{EVENTS} things it saw happen (a server
live, deactivated, a slave promoted, a slave respawned, a VM catching up and
caught up), for the Status RPC and so for people watching the cluster.
"""

import collections

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.logger import Logger

from snstwist.core import errors, metrics
from snstwist.core.limits import MAX_EXCLUDED_VMS, MAX_SERVERS, ROUTER_HEARTBEAT
from snstwist.core.model import checkCount, checkHeartbeat, checkUsername, checkVm
from snstwist.rpc import auth
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc.grpcbridge import GrpcServerService, Servicer
from snstwist.rpc.heartbeat import Asleep
from snstwist.routerrecords import CatchUp, ClusterEvent, ServerIdentity, ServerRecord

log = Logger()

HEARTBEAT = ROUTER_HEARTBEAT
EVENTS = 100


class Registry:
    """
    The live servers, by incarnation.  Pure bookkeeping on an injected clock;
    C{onChange} is called whenever the membership changes.
    """

    timeout = 4 * HEARTBEAT

    def __init__(self, clock, onChange=lambda: None):
        self.clock = clock
        self.onChange = onChange
        self.asleep = Asleep(clock, HEARTBEAT)  # ticked by expire()
        self.servers = {}
        self.events = collections.deque(maxlen=EVENTS)
        self.vmsSeen = set()
        self.slavesSeen = set()
        self.catchingUp = {}

    def event(self, kind, where, text, **fields):
        """Remember that C{kind} happened on VM C{where}, told by C{text}."""
        self.events.append(ClusterEvent(self.clock.seconds(), kind, where,
                                        text.format(**fields)))

    def _noteNew(self, identity):
        """Say what a server registering anew means for its VM."""
        i = identity
        if i.role == pb.SLAVE:
            if i.vm in self.slavesSeen:
                self.event("respawned", i.vm, "new slave of {vm} at {address} (pid {pid})",
                           vm=i.vm, address=i.address, pid=i.pid)
            else:
                self.event("live", i.vm, "slave of {vm} live at {address} (pid {pid})",
                           vm=i.vm, address=i.address, pid=i.pid)
            self.slavesSeen.add(i.vm)
        else:
            peers = [r.updates for r in self.masters().values() if r.identity.vm != i.vm]
            if i.vm in self.vmsSeen and peers and max(peers) > 0:
                self.catchingUp[i.incarnation] = CatchUp(max(peers), self.clock.seconds())
                self.event("catching-up", i.vm,
                           "{vm} back with master at {address} (pid {pid}),"
                           " catching up to {n} updates",
                           vm=i.vm, address=i.address, pid=i.pid, n=max(peers))
            else:
                self.event("live", i.vm, "master of {vm} live at {address} (pid {pid})",
                           vm=i.vm, address=i.address, pid=i.pid)
        self.vmsSeen.add(i.vm)

    def _checkCatchUp(self, record):
        catchUp = self.catchingUp.get(record.identity.incarnation)
        if catchUp is not None and record.updates >= catchUp.target:
            del self.catchingUp[record.identity.incarnation]
            self.event("caught-up", record.identity.vm,
                       "{vm} caught up: {n} updates in {s:.2f}s", vm=record.identity.vm,
                       n=record.updates, s=self.clock.seconds() - catchUp.since)

    def register(self, identity, link):
        now = self.clock.seconds()
        old = self.servers.get(identity.incarnation)
        if old is not None and old.identity == identity:
            relinked = old.link is not link
            old.link, old.lastSeen, old.awakeSeen = link, now, self.asleep.awake()
            if relinked:
                # Back on a new stream before the old one was noticed gone:
                # membership pushed meanwhile went to the old stream, so the
                # new one must be told it again.
                self.onChange()
            return old
        record = ServerRecord(identity, link, since=now, lastSeen=now,
                              awakeSeen=self.asleep.awake())
        if old is not None:
            # A role change (a promoted slave): it is the newest master of
            # its VM from now on, with the clients it already had.
            record.clients = old.clients
            self.event("promoted", identity.vm,
                       "slave {pid} promoted to master of {vm} at {address}",
                       pid=identity.pid, vm=identity.vm, address=identity.address)
        else:
            self._noteNew(identity)
        self.servers[identity.incarnation] = record
        log.info("server {role} of {vm} at {address} (pid {pid}) is live",
                 role=pb.Role.Name(identity.role), vm=identity.vm,
                 address=identity.address, pid=identity.pid)
        self.onChange()
        return record

    def heartbeat(self, incarnation, beat):
        record = self.servers.get(incarnation)
        if record is not None:
            record.lastSeen, record.awakeSeen = self.clock.seconds(), self.asleep.awake()
            record.clients, record.updates, record.pending = (
                beat.clients, beat.updates, beat.pending)
            record.users = tuple(beat.users)
            record.peers = tuple(beat.peers)
            record.refused = beat.refused
            record.acknowledged = beat.acknowledged
            record.fedUpdates, record.fedCalls = beat.fed_updates, beat.fed_calls
            self._checkCatchUp(record)

    def remove(self, incarnation, why):
        record = self.servers.pop(incarnation, None)
        if record is not None:
            i = record.identity
            log.info("server {role} of {vm} at {address} (pid {pid}) deactivated: {why}",
                     role=pb.Role.Name(i.role), vm=i.vm, address=i.address,
                     pid=i.pid, why=why)
            metrics.deactivations.inc()
            self.catchingUp.pop(incarnation, None)
            self.event("deactivated", i.vm, "{role} of {vm} (pid {pid}) deactivated: {why}",
                       role=pb.Role.Name(i.role).lower(), vm=i.vm, pid=i.pid, why=why)
            self.onChange()
        return record

    def expire(self):
        """
        Deactivate every server silent for longer than C{timeout} of our
        own running time (L{Asleep}: a starved router has read nothing).
        """
        self.asleep.ticked()
        awake = self.asleep.awake()
        for incarnation, record in list(self.servers.items()):
            silent = awake - record.awakeSeen
            if silent > self.timeout:
                self.remove(incarnation, "no heartbeat for %.1fs" % (silent,))
                if record.link is not None:
                    record.link.abort()

    def masters(self):
        """The master of each VM: the most recently registered one, if several."""
        best = {}
        for record in self.servers.values():
            if record.identity.role != pb.MASTER:
                continue
            vm = record.identity.vm
            if vm not in best or record.since > best[vm].since:
                best[vm] = record
        return best

    def pickMasters(self, exclude=()):
        """
        Two live masters on two different VMs, least loaded first; the second
        is None when only one VM qualifies.
        """
        candidates = [r for vm, r in self.masters().items() if vm not in exclude]
        if not candidates:
            raise errors.NoMasterAvailable(
                "no live master server is registered with this router"
                + (" outside VMs %s" % (", ".join(sorted(exclude)),) if exclude else ""))
        now = self.clock.seconds()
        candidates.sort(key=lambda r: (r.load(now), r.identity.vm))
        first = candidates[0]
        # Count the client now, so a burst of clients spreads over the VMs
        # before heartbeats report the real load.
        first.picks.append(now)
        return first, (candidates[1] if len(candidates) > 1 else None)

    def infos(self, streams=True):
        now = self.clock.seconds()
        return [r.info(now, streams) for r in sorted(
            self.servers.values(), key=lambda r: (r.identity.vm, r.identity.role))]

    def membership(self):
        # Servers need to know where the others are, not how their streams
        # are doing: that stays in Status, and the push stays small.
        return pb.Membership(servers=self.infos(streams=False))

    def countByRole(self):
        counts = {"master": 0, "slave": 0}
        for record in self.servers.values():
            counts[pb.Role.Name(record.identity.role).lower()] += 1
        return counts


class ServerLink:
    """The router's end of one server's C{Bidirectional_r_and_s} stream."""

    def __init__(self, registry):
        self.registry = registry
        self.stream = None
        self.incarnation = None

    def makeConnection(self, stream):
        self.stream = stream

    def messageReceived(self, message):
        kind = message.WhichOneof("kind")
        try:
            if kind == "hello":
                identity = ServerIdentity.fromHello(message.hello)
                if (identity.incarnation not in self.registry.servers
                        and len(self.registry.servers) >= MAX_SERVERS):
                    raise errors.TooMany("this router has its maximum of %d servers"
                                         % (MAX_SERVERS,))
            elif kind == "heartbeat":
                checkHeartbeat(message.heartbeat)
        except errors.SNSError as e:
            log.warn("bad {kind} from {peer}: {e}", kind=kind, peer=self.stream.peer,
                     e=e.message)
            self.stream.abort(e)
            return
        if kind == "hello":
            self.incarnation = identity.incarnation
            self.registry.register(identity, self)
        elif kind == "heartbeat" and self.incarnation is not None:
            self.registry.heartbeat(self.incarnation, message.heartbeat)

    def send(self, message):
        self.stream.send(message)

    def abort(self):
        self.stream.abort()

    def connectionLost(self, reason):
        if self.incarnation is not None:
            record = self.registry.servers.get(self.incarnation)
            if record is not None and record.link is self:
                self.registry.remove(self.incarnation, "stream ended")


def _toAddress(record):
    if record is None:
        return None
    return pb.ServerAddress(vm=record.identity.vm, address=record.identity.address)


class RouterService(MultiService):
    """One router process: the registry, its gRPC face and its timers."""

    def __init__(self, listen, secret, clock=None, peerListen=None):
        MultiService.__init__(self)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.secret = secret
        self.started = clock.seconds()
        self.registry = Registry(clock, self.broadcastMembership)
        metrics.watch(metrics.servers, self.registry.countByRole)
        self.grpc = GrpcServerService(listen, self._register, services=[
            pb.DESCRIPTOR.services_by_name["Router"].full_name], peerListen=peerListen)
        self.grpc.setServiceParent(self)
        TimerService(HEARTBEAT, self.tick).setServiceParent(self)

    def _register(self, server, openStreams):
        servicer = Servicer(
            unary={"Onetime_c_to_r": self.onetimeCToR, "Status": self.status},
            streams={"Bidirectional_r_and_s": self.serverLink},
            openStreams=openStreams)
        servicer.register(server, pb.DESCRIPTOR.services_by_name["Router"])

    def tick(self):
        self.registry.expire()
        beat = pb.RouterMessage(heartbeat=pb.Heartbeat())
        for record in self.registry.servers.values():
            record.link.send(beat)

    def broadcastMembership(self):
        message = pb.RouterMessage(membership=self.registry.membership())
        for record in self.registry.servers.values():
            record.link.send(message)

    # -- RPCs

    def onetimeCToR(self, request, ctx):
        if request.user:
            checkUsername(request.user)
        checkCount(request.exclude_vms, "excluded VMs", MAX_EXCLUDED_VMS)
        for vm in request.exclude_vms:
            checkVm(vm, "excluded VM")
        exclude = set(request.exclude_vms)
        first, second = self.registry.pickMasters(exclude)
        return pb.MasterReply(master1=_toAddress(first), master2=_toAddress(second))

    def serverLink(self, ctx):
        auth.checkSecret(ctx, self.secret)
        return ServerLink(self.registry)

    def status(self, request, ctx):
        # Pids, addresses and the names of users online are for operators.
        auth.checkSecret(ctx, self.secret)
        return pb.StatusReply(servers=self.registry.infos(),
                              uptime=self.clock.seconds() - self.started,
                              events=[e.toProto() for e in self.registry.events],
                              time=self.clock.seconds())
