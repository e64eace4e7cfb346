"""
One server process (C{twistd sns-server}): a VM's master or its slave,
composed of small parts, each given its collaborators and the clock.

- L{ServerParts}: what answers RPCs and acts on the node: the node's
  L{replication.Replicator}, the live L{sessions}, write L{admission}, the
  C{SNS} service (L{api}), the C{Cluster} service (L{internal}), the
  master's end of the buddy pair (L{buddylink}) and the server's
  L{report} about itself;
- L{ServerService}: those parts plus the process around them: the gRPC
  server, the L{routerlink}s, the slave's end of the buddy pair and the
  L{lifecycle} that carries out the role machine's decisions.

This module only composes: it holds no rule of its own.
"""

from twisted.application.service import MultiService
from twisted.internet import defer

from snstwist.core import metrics
from snstwist.core.looplag import LoopLag
from snstwist.core.node import Node
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc.grpcbridge import GrpcServerService, Servicer
from snstwist.server.admission import Admission, Writes
from snstwist.server.api import SNSApi, postBuckets
from snstwist.server.buddylink import MasterEnd, SlaveEnd, slaveCommand
from snstwist.server.config import Identity
from snstwist.server.internal import ClusterApi
from snstwist.server.lifecycle import CurrentRole, Lifecycle
from snstwist.server.passwords import Hasher
from snstwist.server.replication import Replicator
from snstwist.server.report import Report
from snstwist.server.routerlink import RouterLinks
from snstwist.server.sessions import MAX_QUEUE, SessionHub
from snstwist.storage.store import SQLiteStore

CLUSTER_QUEUE = 10000


class ServerParts:
    """
    Everything of one server that answers RPCs and acts on its C{node},
    wired together: no process, no socket, no router.  C{current} is the
    role this process plays (L{CurrentRole}); C{address()} where it serves
    clients, C{peerAddress()} the other processes of the cluster; C{reactor}
    spawns the slave of a master; C{feedTo} makes the feed to that slave
    (L{buddyfeed.slaveFeed} by default).
    """

    def __init__(self, config, identity, node, clock, reactor, hasher, current, address,
                 peerAddress, feedTo=None):
        secret = config.secret
        self.node = node
        self.replicator = Replicator(node, secret, clock)
        # Read marks are replicated, but nobody waits for them.
        self.sessions = SessionHub(node, clock, self.replicator.broadcast)
        self.admission = Admission(config.vm, secret, clock, node, current,
                                   config.tokenLifetime)
        self.writes = Writes(node, self.replicator)
        self.api = SNSApi(self.admission, self.writes, node, self.sessions, hasher, clock,
                          postBuckets(clock, config.postRate))
        fed = metrics.Traffic()
        self.report = Report(identity, current, address, peerAddress, node, self.sessions,
                             self.replicator, self.writes, fed)
        self.masterEnd = MasterEnd(node, clock, reactor, secret, self.report.buddyHello,
                                   lambda spare=False: slaveCommand(
                                       config, None if spare else peerAddress(), spare),
                                   feedTo, fed, current)
        self.internal = ClusterApi(secret, current, self.admission, node, clock, self.report,
                                   self.masterEnd)
        # In this order: a password change ends old sessions before anything
        # is pushed, and the slave is fed what the clients were shown.
        node.addDurableObserver(self.sessions.durable)
        node.addDurableObserver(self.masterEnd.durable)

    def register(self, server, openStreams):
        """Add the C{SNS} and C{Cluster} servicers to a gRPC C{server}."""
        for name, servicer, maxQueue in (("SNS", self.api, MAX_QUEUE),
                                         ("Cluster", self.internal, CLUSTER_QUEUE)):
            Servicer(unary=servicer.unary(), streams=servicer.streams(),
                     openStreams=openStreams, maxQueue=maxQueue).register(
                server, pb.DESCRIPTOR.services_by_name[name])


class ServerService(MultiService):
    """
    One server process of a VM, its master or its slave, as C{config} (a
    L{config.ServerConfig}) says.  C{store} is the VM's data (its SQLite
    store by default); C{hasher} hashes passwords (argon2 on a thread pool
    by default); C{reactor} stops this process and spawns its slave.
    """

    def __init__(self, config, clock=None, reactor=None, store=None, hasher=None):
        MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        clock = clock if clock is not None else reactor
        self.config = config
        self.clock = clock
        self.identity = Identity.new(config.vm, clock)
        current = CurrentRole()
        if store is None:
            store = SQLiteStore(config.data, name=config.vm)
        self.node = Node(config.vm, self.identity.origin, store, clock)
        self.hasher = hasher if hasher is not None else Hasher(clock)
        self.parts = parts = ServerParts(config, self.identity, self.node, clock, reactor,
                                         self.hasher, current, lambda: self.grpc.address,
                                         lambda: self.grpc.peerAddress)
        # Peers dial the cluster port (mutual TLS), clients the other.
        self.grpc = GrpcServerService(config.listen, parts.register, services=[
            pb.DESCRIPTOR.services_by_name[name].full_name for name in ("SNS", "Cluster")],
            peerListen=config.peerListen or config.listen.rsplit(":", 1)[0] + ":0")
        self.routerLinks = RouterLinks(config.routers, clock, config.secret, config.vm,
                                       current, parts.report.hello, parts.report.load,
                                       parts.replicator.setPeers)
        self.slaveEnd = SlaveEnd(clock, config.secret, config.master, config.masterPid,
                                 parts.report.buddyHello, lambda: self.node.replica.seen,
                                 reactor, config.data)
        parts.masterEnd.master = self.slaveEnd.masterPid
        parts.internal.mirrored.add(self.slaveEnd.mirrored)
        self.slaveEnd.ready.add(self.routerLinks.report)
        # A ready standby keeps a spare: its slave once it is master.
        self.slaveEnd.ready.add(parts.masterEnd.keepSpare)
        self.lifecycle = Lifecycle(config, current, self.node, self._serve, parts.masterEnd,
                                   self.slaveEnd,
                                   lambda: SQLiteStore(config.data, name=config.vm),
                                   reactor, clock)
        self.lifecycle.mastering.add(parts.internal.standbyStreams)
        metrics.watch(metrics.sessions, parts.sessions.count)
        metrics.watch(metrics.replicationLag, parts.replicator.lag)
        lag = LoopLag.fromEnvironment(clock)
        if lag is not None:
            lag.setServiceParent(self)

    def _serve(self):
        """Serve gRPC and dial the routers (once); say hello again on a new role."""
        if self.grpc.parent is None:
            self.grpc.setServiceParent(self)
        self.routerLinks.serve()
        return self.grpc.address

    def startService(self):
        MultiService.startService(self)
        self.lifecycle.start()

    @defer.inlineCallbacks
    def stopService(self):
        self.lifecycle.stop()
        yield self.routerLinks.stop()
        yield self.parts.replicator.stop()
        self.parts.sessions.closeAll()
        yield self.parts.masterEnd.stop()
        self.hasher.stop()
        yield MultiService.stopService(self)
        yield self.node.store.close()
        self.lifecycle.pidfile.remove()
