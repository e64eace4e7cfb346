"""
One server process (C{twistd sns-server}): wires the pieces of a VM's master.

- a L{replication.Node} on the VM's L{store.SQLiteStore};
- the client-facing C{SNS} service (Login, List, Follow, UnFollow, Post,
  History, and the live sessions of L{sessions});
- the cluster-internal C{Cluster} service (C{BroadcastPosts} receiving);
- a L{RouterLink} to every router (C{Bidirectional_r_and_s}), whose
  membership tells the L{replication.Replicator} where the peer VMs are.
"""

import os
import uuid

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from snstwist import auth, errors, grpcbridge
from snstwist import sns_pb2 as pb
from snstwist import sns_pb2_grpc as pbg
from snstwist.grpcbridge import GrpcServerService, Servicer
from snstwist.model import HISTORY, checkPostText, checkUsername
from snstwist.replication import Node, ReplicaReceiver, Replicator
from snstwist.router import HEARTBEAT
from snstwist.sessions import MAX_QUEUE, SessionHub
from snstwist.store import SQLiteStore

log = Logger()

MAX_REQUEST_ID = 64


def _checkRequestId(requestId):
    if len(requestId) > MAX_REQUEST_ID:
        raise errors.InvalidRequest("request ids are at most %d characters" % (MAX_REQUEST_ID,))
    return requestId


class RouterLink:
    """
    This server's C{Bidirectional_r_and_s} stream to one router: hello,
    heartbeats with our load, and the membership pushed back.  Reconnects
    with backoff for as long as the server runs.
    """

    minDelay = 0.05
    maxDelay = 1.0

    def __init__(self, server, address):
        self.server = server
        self.address = address
        self.channel = None
        self.stream = None
        self.stopped = False
        self.delay = self.minDelay
        self.timer = None
        self.lastHeard = 0

    @property
    def clock(self):
        return self.server.clock

    def start(self):
        self.channel = grpcbridge.channel(self.address)
        self._connect()

    def _connect(self):
        self.timer = None
        if not self.stopped:
            grpcbridge.openStream(pbg.RouterStub(self.channel).Bidirectional_r_and_s, self,
                                  metadata=auth.secretMetadata(self.server.secret))

    def makeConnection(self, stream):
        self.stream = stream
        self.lastHeard = self.clock.seconds()
        stream.send(pb.ServerMessage(hello=self.server.hello()))
        self.timer = self.clock.callLater(HEARTBEAT, self._beat)

    def _beat(self):
        self.timer = None
        if self.clock.seconds() - self.lastHeard > 3 * HEARTBEAT:
            log.warn("router {address} silent: reconnecting", address=self.address)
            self.stream.abort()
            return
        self.stream.send(pb.ServerMessage(heartbeat=self.server.load()))
        self.timer = self.clock.callLater(HEARTBEAT, self._beat)

    def messageReceived(self, message):
        self.lastHeard = self.clock.seconds()
        if self.delay != self.minDelay:
            log.info("registered with router {address}", address=self.address)
            self.delay = self.minDelay
        if message.WhichOneof("kind") == "membership":
            self.server.membershipChanged(self.address, message.membership)

    def connectionLost(self, reason):
        self.stream = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.stopped:
            return
        if self.delay == self.minDelay:
            log.warn("lost router {address}: {why}", address=self.address,
                     why=reason.getErrorMessage() if reason else "stream ended")
        self.timer = self.clock.callLater(self.delay, self._connect)
        self.delay = min(self.delay * 2, self.maxDelay)

    def stop(self):
        self.stopped = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.stream is not None:
            self.stream.close()
        return grpcbridge.closeChannel(self.channel) if self.channel else defer.succeed(None)


class ServerService(MultiService):
    """The master of one VM."""

    def __init__(self, vm, listen, routers, data, secret, clock=None):
        MultiService.__init__(self)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.vm = vm
        self.secret = secret
        self.routers = routers
        self.data = data
        self.incarnation = "%x" % (int(clock.seconds() * 1e6),) + uuid.uuid4().hex[:6]
        self.origin = "%s.%s" % (vm, self.incarnation)
        self.node = Node(vm, self.origin, SQLiteStore(data), clock, self._durable)
        self.sessions = SessionHub(self.node, clock)
        self.replicator = Replicator(self.node, secret, clock)
        self.grpc = GrpcServerService(listen, self._register)
        self.links = []
        self.memberships = {}
        self.ready = None

    # -- lifecycle

    def startService(self):
        MultiService.startService(self)
        self.ready = self.node.load()
        self.ready.addCallback(self._loaded)
        self.ready.addErrback(self._failed)

    def _loaded(self, _):
        self.grpc.setServiceParent(self)
        for address in self.routers:
            link = RouterLink(self, address)
            self.links.append(link)
            link.start()
        log.info("master of VM {vm} serving at {address} (pid {pid}, data {data})",
                 vm=self.vm, address=self.grpc.address, pid=os.getpid(), data=self.data)

    def _failed(self, failure):
        log.failure("server of VM {vm} could not start", failure, vm=self.vm)
        from twisted.internet import reactor
        if reactor.running:
            reactor.stop()

    @defer.inlineCallbacks
    def stopService(self):
        for link in self.links:
            yield link.stop()
        yield self.replicator.stop()
        self.sessions.closeAll()
        yield MultiService.stopService(self)
        yield self.node.store.close()

    # -- what the router learns and tells

    def hello(self):
        return pb.ServerHello(vm=self.vm, role=pb.MASTER, address=self.grpc.address,
                              pid=os.getpid(), incarnation=self.incarnation)

    def load(self):
        return pb.Heartbeat(clients=self.sessions.count(),
                            updates=self.node.replica.seen.count(),
                            pending=self.replicator.lag())

    def membershipChanged(self, router, membership):
        self.memberships[router] = membership
        peers = {}
        for m in self.memberships.values():
            for server in m.servers:
                if server.role == pb.MASTER and server.vm != self.vm:
                    peers[server.vm] = server.address
        self.replicator.setPeers(peers)

    def _durable(self, updates):
        self.sessions.publish(updates)

    # -- gRPC

    def _register(self, server, openStreams):
        sns = Servicer(
            unary={"Login": self.login, "List": self.list, "Follow": self.follow,
                   "UnFollow": self.unfollow, "Post": self.post, "History": self.history},
            streams={"Bidirectional_s_and_c": self.session},
            openStreams=openStreams, maxQueue=MAX_QUEUE)
        pbg.add_SNSServicer_to_server(sns, server)
        cluster = Servicer(
            unary={"Onetime_s_to_buddy": self.onetimeSToBuddy},
            streams={"BroadcastPosts": self.broadcastPosts,
                     "BuddyConnection": self.buddyConnection},
            openStreams=openStreams, maxQueue=10000)
        pbg.add_ClusterServicer_to_server(cluster, server)

    def _user(self, ctx):
        return auth.userOf(ctx, self.secret)

    def login(self, request, ctx):
        user = checkUsername(request.user)
        update = self.node.login(user)
        d = defer.succeed(None)
        if update is not None:
            log.info("new user {user}", user=user)
            d = self._acknowledged(update, "")
        return d.addCallback(lambda _: pb.LoginReply(
            token=auth.makeToken(self.secret, user), created=update is not None))

    def list(self, request, ctx):
        user = self._user(ctx)
        replica = self.node.replica
        return pb.ListReply(all_users=sorted(replica.users), followers=replica.followers(user))

    def follow(self, request, ctx):
        return self._write(ctx, request, lambda user, rid: self.node.follow(
            user, checkUsername(request.target), rid))

    def unfollow(self, request, ctx):
        return self._write(ctx, request, lambda user, rid: self.node.unfollow(
            user, checkUsername(request.target), rid))

    def post(self, request, ctx):
        return self._write(ctx, request, lambda user, rid: self.node.post(
            user, checkPostText(request.text), rid))

    def _write(self, ctx, request, make):
        user = self._user(ctx)
        requestId = _checkRequestId(request.request_id)
        update = self.node.replica.byRequest(requestId) if requestId else None
        if update is None:
            update = make(user, requestId)
            d = self._acknowledged(update, request.prefer_vm)
        else:
            # A retry of a command we (or a peer VM) already applied.
            d = self.node.durable(update).addCallback(lambda _: 1)

        def reply(copies):
            out = pb.WriteReply(id=update.id, copies=copies)
            if update.post is not None:
                out.post.CopyFrom(update.post.toProto())
            return out

        return d.addCallback(reply)

    def _acknowledged(self, update, prefer):
        """Fires with the number of VMs holding C{update} durably (at least 1)."""
        replicated = self.replicator.broadcast(update, prefer or None)
        d = defer.gatherResults([self.node.durable(update), replicated], consumeErrors=True)
        return d.addCallback(lambda results: 1 + results[1])

    def history(self, request, ctx):
        user = self._user(ctx)
        limit = min(request.limit or HISTORY, HISTORY)
        return pb.HistoryReply(posts=[p.toProto() for p in self.node.replica.timeline(user, limit)])

    def session(self, ctx):
        return self.sessions.session(self._user(ctx))

    def onetimeSToBuddy(self, request, ctx):
        auth.checkSecret(ctx, self.secret)
        raise errors.NotBuddy("this server runs without a buddy")

    def buddyConnection(self, ctx):
        auth.checkSecret(ctx, self.secret)
        raise errors.NotBuddy("this server runs without a buddy")

    def broadcastPosts(self, ctx):
        auth.checkSecret(ctx, self.secret)
        return ReplicaReceiver(self.node, self.clock)
