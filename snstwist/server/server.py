"""
One server process (C{twistd sns-server}): wires the pieces of a VM's
master or slave.

- a L{buddy.Role} state machine: master or slave, and the hand-over;
- a L{replication.Node} on the VM's L{store.SQLiteStore};
- the client-facing C{SNS} service (Login, List, Follow, UnFollow, Post,
  History, and the live sessions of L{sessions}), served by the master only;
- the cluster-internal C{Cluster} service: C{BroadcastPosts} (master),
  C{BuddyConnection} (the master's end) and C{Onetime_s_to_buddy} (the
  slave's end, how the master keeps its standby warm);
- a L{RouterLink} to every router (C{Bidirectional_r_and_s}), whose
  membership tells the L{replication.Replicator} where the peer VMs are.

The master spawns its slave through a L{buddy.BuddySupervisor}; the slave
dials the master's C{BuddyConnection}.  When the master dies or hangs the
slave fences it, takes the VM's writer lock, becomes master and spawns a new
slave.
"""

import collections
import gc
import os
import sys
import uuid

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from snstwist import buddy
from snstwist.core import errors, limits, logs, metrics
from snstwist.core.limits import HISTORY, MAX_HEARTBEAT_USERS, UPDATES_PER_MESSAGE
from snstwist.core.looplag import LoopLag
from snstwist.core.node import Node
from snstwist.core.model import (
    Update,
    checkCount,
    checkPassword,
    checkPostText,
    checkRequestId,
    checkUsername,
    checkVm,
)
from snstwist.core.state import VersionVector
from snstwist.router import HEARTBEAT
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.rpc.grpcbridge import GrpcServerService, Servicer
from snstwist.server.passwords import FailedLogins, Hasher, TokenBuckets
from snstwist.server.peers import ReplicaReceiver, firstError
from snstwist.server.replication import Replicator
from snstwist.server.sessions import MAX_QUEUE, SessionHub, hostOf
from snstwist.storage.store import DataLocked, SQLiteStore

log = Logger()

MAX_UINT32 = 2**32 - 1


def _kind(update):
    """What a client's write was, for the metrics: post, follow or unfollow."""
    if update.post is not None:
        return "post"
    return "follow" if update.follow.following else "unfollow"


class RouterLink(grpcbridge.ReconnectingLink):
    """
    This server's C{Bidirectional_r_and_s} stream to one router: hello,
    heartbeats with our load, and the membership pushed back.  Reconnects
    with backoff for as long as the server runs.
    """

    interval = HEARTBEAT
    timeout = 3 * HEARTBEAT

    def __init__(self, server, address):
        self.server = server
        self.address = address
        self.metadata = auth.secretMetadata(server.secret)

    @property
    def clock(self):
        return self.server.clock

    def method(self, channel):
        return pbg.RouterStub(channel).Bidirectional_r_and_s

    def connected(self):
        self.sendHello()

    def sendHello(self):
        """Tell the router who we are (again, when our role changed)."""
        self.send(pb.ServerMessage(hello=self.server.hello()))

    def beat(self):
        self.send(pb.ServerMessage(heartbeat=self.server.load()))

    def received(self, message):
        if message.WhichOneof("kind") == "membership":
            self.server.membershipChanged(self.address, message.membership)


def _stopOnlyOnce(reactor):
    """
    Make a second stop of this process's reactor a no-op.  A slave is told
    to stop more than once (its master's SIGTERM, sns-cluster's SIGTERM, the
    master's stopping notice), and twistd's own signal handler calls
    C{reactor.stop()} each time: the second raised ReactorNotRunning, logged
    as a critical error, in an orderly stop.
    """
    stop = reactor.stop
    if getattr(stop, "once", False):
        return

    def stopOnce():
        try:
            stop()
        except ReactorNotRunning:
            log.info("asked to stop again while stopping")

    stopOnce.once = True
    reactor.stop = stopOnce


def _exitNow(status):
    """End this process with C{status} (twistd itself would exit 0)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _settleMemory():
    """
    What was loaded or accepted so far lives as long as the process: keep it
    out of the garbage collector's full passes, which otherwise hold the
    reactor for hundreds of milliseconds once a million posts are held.
    Young garbage is collected first; a full collection is not (it would
    cost what freezing saves).  Done once warm, then every L{SETTLE} seconds.
    """
    gc.collect(1)
    gc.freeze()


def _withoutCollections(load):
    """
    Run C{load()} (a Deferred: a history read on the disk thread and applied
    in slices) with the collector off, so that no full collection over the
    objects being loaded runs in the middle, on either thread; then freeze
    what was loaded and turn the collector on again.  Not even a young
    collection first: with the collector off nothing aged, so everything
    loaded is young, and collecting it would be the long pass avoided.
    """
    gc.disable()

    def settle(result):
        gc.freeze()
        gc.enable()
        return result

    return load().addBoth(settle)


SETTLE = 60.0


class BuddyFeed:
    """
    C{Onetime_s_to_buddy}: the master tells its slave about every durable
    update, in batches, one call in flight at a time.  Nothing is lost when a
    call fails: a (new) slave says what it holds in its hello and is sent the
    rest.
    """

    def __init__(self, server, address):
        self.server = server
        self.channel = grpcbridge.channel(address)
        self.stub = pbg.ClusterStub(self.channel)
        self.queue = collections.deque()
        self.busy = False
        self.closed = False

    def push(self, updates):
        if self.closed:
            return
        self.queue.extend(updates)
        if not self.busy:
            self._send()

    def _send(self):
        # Cut from the front without copying the rest: a cold slave's
        # first push is the whole history.
        batch = [self.queue.popleft() for _ in range(min(UPDATES_PER_MESSAGE, len(self.queue)))]
        if not batch or self.closed:
            self.busy = False
            return
        self.busy = True
        d = grpcbridge.call(self.stub.Onetime_s_to_buddy,
                            pb.UpdateBatch(updates=[u.toProto() for u in batch]),
                            timeout=5, metadata=auth.secretMetadata(self.server.secret))

        def failed(f):
            log.info("could not update the slave: {why}", why=f.getErrorMessage())
            self.queue.clear()

        d.addCallbacks(lambda _: None, failed)
        d.addCallback(lambda _: self._send())

    def close(self):
        self.closed = True
        return grpcbridge.closeChannel(self.channel)


class ServerService(MultiService):
    """One server process of a VM: its master, or its slave."""

    lockDeadline = 10.0
    maxWriting = 10000
    writing = 0
    orphanStop = 10.0
    orphaned = None

    def __init__(self, vm, listen, routers, data, secret, role="master", master=None,
                 masterPid=0, logfile=None, clock=None, metricsListen=None, hasher=None,
                 postRate=None, tlsArgs=(), peerListen=None, tokenLifetime=None):
        MultiService.__init__(self)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.vm = vm
        self.listen = listen
        self.secret = secret
        self.routers = routers
        self.data = data
        self.logfile = logfile
        self.metricsListen = metricsListen
        self.startRole = role
        self.master = master
        self.masterPid = masterPid
        self.incarnation = "%x" % (int(clock.seconds() * 1e6),) + uuid.uuid4().hex[:6]
        self.origin = "%s.%s" % (vm, self.incarnation)
        self.node = Node(vm, self.origin, SQLiteStore(data, name=vm), clock)
        self.node.addDurableObserver(self._durable)
        self.sessions = SessionHub(self.node, clock, self._replicate)
        self.replicator = Replicator(self.node, secret, clock)
        self.hasher = hasher if hasher is not None else Hasher(clock)
        self.failedLogins = FailedLogins(clock)
        self.logins = TokenBuckets(clock, limits.LOGINS_PER_ADDRESS_RATE,
                                   limits.LOGINS_PER_ADDRESS_BURST, "logins from one address")
        self.postRate = postRate
        self.tokenLifetime = tokenLifetime
        self.tlsArgs = list(tlsArgs)
        rate = postRate or limits.POSTS_PER_USER_RATE
        self.posts = TokenBuckets(clock, rate, rate * limits.POSTS_PER_USER_BURST_SECONDS,
                                  "posts by one user")
        # Peers dial the cluster port (mutual TLS), clients the other.
        self.grpc = GrpcServerService(listen, self._register, services=[
            pb.DESCRIPTOR.services_by_name[name].full_name for name in ("SNS", "Cluster")],
            peerListen=peerListen or listen.rsplit(":", 1)[0] + ":0")
        self.acknowledgedPosts = 0
        metrics.watch(metrics.sessions, self.sessions.count)
        metrics.watch(metrics.replicationLag, self.replicator.lag)
        self.role = buddy.Role(self)
        self.links = []
        self.memberships = {}
        self.ready = None
        self.supervisor = None
        self.slaveLink = None
        self.feed = None
        self.masterLink = None
        self.pidfile = os.path.join(data, "run", "%d.pid" % (os.getpid(),))
        self.settler = task.LoopingCall(_settleMemory)
        self.settler.clock = clock
        lag = LoopLag.fromEnvironment(clock)
        if lag is not None:
            lag.setServiceParent(self)

    # -- lifecycle

    def startService(self):
        MultiService.startService(self)
        if self.clock is self._reactor():
            _stopOnlyOnce(self.clock)
        os.makedirs(os.path.dirname(self.pidfile), exist_ok=True)
        with open(self.pidfile, "w") as f:
            f.write("%d\n" % (os.getpid(),))
        if self.startRole == "master":
            self.ready = _withoutCollections(self.node.load)
            self.ready.addCallback(lambda _: self.role.startAsMaster())
        else:
            # A slave settles its memory once warm (standBy).
            self.ready = defer.maybeDeferred(self.role.startAsSlave)
        self.ready.addCallback(self._settleEvery)
        self.ready.addErrback(self._failed)

    def _settleEvery(self, _):
        self.settler.start(SETTLE, now=False).addErrback(
            lambda f: log.failure("settling memory failed", f))

    def _failed(self, failure):
        """
        The server can not go on (loading or taking over failed): say why
        and exit with status 1, once the services have stopped.
        """
        if failure.check(errors.DataDamaged):
            # One sentence: which file, and what to do.
            log.critical("VM {vm} can not start: {why}", vm=self.vm, why=failure.value.message)
        else:
            log.failure("server of VM {vm} could not start", failure, vm=self.vm)
        reactor = self._reactor()
        reactor.addSystemEventTrigger("after", "shutdown", _exitNow, 1)
        self._stopReactor()

    def _stopReactor(self):
        """Stop this process, unless it is stopping already."""
        try:
            self._reactor().stop()
        except ReactorNotRunning:
            pass

    def _serve(self):
        """Start the gRPC server and the router links (once)."""
        if self.grpc.parent is None:
            self.grpc.setServiceParent(self)
            for address in self.routers:
                link = RouterLink(self, address)
                self.links.append(link)
                link.start()
        else:
            for link in self.links:
                link.sendHello()

    @defer.inlineCallbacks
    def stopService(self):
        if self.orphaned is not None and self.orphaned.active():
            self.orphaned.cancel()
        if self.settler.running:
            self.settler.stop()
        self.role.stop()
        for link in self.links:
            yield link.stop(graceful=True)
        yield self.replicator.stop()
        self.sessions.closeAll()
        if self.supervisor is not None:
            yield self.supervisor.stop()
        if self.feed is not None:
            yield self.feed.close()
        self.hasher.stop()
        yield MultiService.stopService(self)
        yield self.node.store.close()
        try:
            os.remove(self.pidfile)
        except OSError:
            pass

    # -- the role's hooks (called by buddy.Role only)

    def serveAsMaster(self):
        logs.setIdentity(self.vm, "master")
        self._serve()
        self.supervisor = buddy.BuddySupervisor(self._slaveCommand(), self._reactor())
        self.supervisor.start()
        log.info("master of VM {vm} serving at {address} (pid {pid}, data {data})",
                 vm=self.vm, address=self.grpc.address, pid=os.getpid(), data=self.data)

    def standBy(self):
        """
        Register as the VM's standby at once, warm up from the VM's files
        (read without the lock), then dial the master, whose hello answer
        brings whatever the files did not have yet.  A standby is correct
        even cold: taking over reads the files again under the lock.
        """
        logs.setIdentity(self.vm, "slave")
        self._serve()
        self.masterChannel = grpcbridge.channel(self.master)
        self.masterLink = buddy.SlaveLink(self.clock, self._buddyHello,
                                          self.role.masterLost, self._masterStopping,
                                          self._dialMaster)
        d = _withoutCollections(lambda: self.node.store.read().addCallback(self.node.mirrorAll))
        d.addCallback(lambda _: self.masterLink.start())
        d.addErrback(self._failed)
        log.info("slave of VM {vm} at {address} standing by for master {master} (pid {pid})",
                 vm=self.vm, address=self.grpc.address, master=self.master,
                 pid=self.masterPid)

    def _dialMaster(self, link):
        grpcbridge.openStream(pbg.ClusterStub(self.masterChannel).BuddyConnection,
                              link, metadata=auth.secretMetadata(self.secret))

    def takeOver(self, why):
        logs.setIdentity(self.vm, "promoting")
        pid = self.masterLink.masterPid or self.masterPid
        log.warn("master {pid} of VM {vm} lost ({why}): fencing it and taking over",
                 pid=pid, vm=self.vm, why=why)
        buddy.fence(pid)
        grpcbridge.closeChannel(self.masterChannel).addErrback(
            lambda f: log.failure("closing the channel to the old master failed", f))
        self._takeLock(self.clock.seconds() + self.lockDeadline)

    def _takeLock(self, deadline):
        d = self.node.adopt(SQLiteStore(self.data, name=self.vm))

        def locked(added):
            log.info("took the writer lock of {data}; {n} updates not mirrored before",
                     data=self.data, n=added)
            self.role.promoted()

        def busy(f):
            f.trap(DataLocked)
            if self.clock.seconds() > deadline:
                log.critical("the old master still holds {data}: giving up", data=self.data)
                self._failed(f)
                return
            self.clock.callLater(0.01, self._takeLock, deadline)

        d.addCallbacks(locked, busy).addErrback(self._failed)

    def shutdown(self):
        if self.masterLink is not None:
            self.masterLink.sendStopping()
            self.masterLink.close()
        if self.slaveLink is not None:
            self.slaveLink.sendStopping()

    def _masterStopping(self):
        """
        The master is stopping in order and stops us next (SIGTERM): take
        nothing over from now on, and wait for that signal rather than stop
        first (twistd logs a second stop as a critical error).  Should the
        master die before it signals us, we stop by ourselves.
        """
        log.info("master is stopping in order: stopping too")
        self.role.stop()
        self.orphaned = self.clock.callLater(self.orphanStop, self._stopReactor)

    def _reactor(self):
        from twisted.internet import reactor
        return reactor

    def _slaveCommand(self):
        host = self.listen.rsplit(":", 1)[0]
        # Never a pipe to us: a slave outlives its master when it takes over,
        # and a full pipe to a hung master would block it.
        args = buddy.twistdArgs(self.logfile if self.logfile and self.logfile != "-"
                                else os.path.join(self.data, "buddies.log"))
        args += ["sns-server", "--role", "slave", "--vm", self.vm,
                 "--listen", host + ":0", "--data", self.data,
                 "--router", ",".join(self.routers),
                 "--buddy", self.grpc.peerAddress, "--buddy-pid", str(os.getpid())]
        if self.metricsListen:
            # Master and slave run at once: the slave serves its metrics on
            # a free port of the same host (it logs which).
            args += ["--metrics", self.metricsListen.rsplit(":", 1)[0] + ":0"]
        if self.postRate:
            args += ["--posts-per-second", repr(self.postRate)]
        if self.tokenLifetime:
            args += ["--token-lifetime", repr(self.tokenLifetime)]
        args += self.tlsArgs
        env = dict(os.environ, SNS_SECRET=self.secret, GRPC_ENABLE_FORK_SUPPORT="0")
        return buddy.BuddyCommand(sys.executable, tuple(args), env)

    # -- the master's side of its slave

    def _buddyHello(self):
        return pb.BuddyHello(vm=self.vm, role=self.hello().role, pid=os.getpid(),
                             address=self.grpc.peerAddress, incarnation=self.incarnation,
                             have=self.node.replica.seen.toProto())

    def _slaveHello(self, link, hello):
        log.info("slave {pid} at {address} connected", pid=hello.pid, address=hello.address)
        if self.feed is not None:
            self.feed.close().addErrback(
                lambda f: log.failure("closing the feed to the old slave failed", f))
        self.slaveLink = link
        self.feed = BuddyFeed(self, hello.address)
        self.feed.push(self.node.replica.missing(VersionVector.fromProto(hello.have)))

    def _slaveHung(self, hello, why):
        if self.supervisor is not None:
            self.supervisor.kill(why)

    def _slaveStopping(self, pid):
        if self.supervisor is not None:
            self.supervisor.stopping(pid)

    # -- what the router learns and tells

    def hello(self):
        role = pb.MASTER if self.role.state == "master" else pb.SLAVE
        return pb.ServerHello(vm=self.vm, role=role, address=self.grpc.address,
                              peer_address=self.grpc.peerAddress, pid=os.getpid(),
                              incarnation=self.incarnation)

    def load(self):
        return pb.Heartbeat(clients=self.sessions.count(),
                            updates=self.node.replica.seen.count(),
                            pending=min(self.replicator.lag(), MAX_UINT32),
                            users=sorted(self.sessions.sessions)[:MAX_HEARTBEAT_USERS],
                            peers=self.replicator.peerStates(), refused=self.node.window.refused,
                            acknowledged=self.acknowledgedPosts)

    def membershipChanged(self, router, membership):
        self.memberships[router] = membership
        if self.role.state != "master":
            return
        peers = {}
        for m in self.memberships.values():
            for server in m.servers:
                if server.role == pb.MASTER and server.vm != self.vm:
                    peers[server.vm] = server.peer_address or server.address
        self.replicator.setPeers(peers)

    def _durable(self, updates):
        for update in updates:
            changed = update.password.user if update.password is not None else update.user
            if changed is not None:
                # A new password (here or on another VM) ends the sessions
                # opened under an older one.
                self.sessions.revoke(changed, self.node.replica.password(changed).key)
        self.sessions.publish(updates)
        if self.feed is not None:
            self.feed.push(updates)

    # -- gRPC

    def _register(self, server, openStreams):
        sns = Servicer(
            unary={"Login": self.login, "Password": self.password,
                   "List": self.list, "Follow": self.follow,
                   "UnFollow": self.unfollow, "Post": self.post, "History": self.history},
            streams={"Bidirectional_s_and_c": self.session},
            openStreams=openStreams, maxQueue=MAX_QUEUE)
        sns.register(server, pb.DESCRIPTOR.services_by_name["SNS"])
        cluster = Servicer(
            unary={"Onetime_s_to_buddy": self.onetimeSToBuddy, "Digest": self.digest},
            streams={"BroadcastPosts": self.broadcastPosts,
                     "BuddyConnection": self.buddyConnection},
            openStreams=openStreams, maxQueue=10000)
        cluster.register(server, pb.DESCRIPTOR.services_by_name["Cluster"])

    def _asMaster(self):
        if self.role.state != "master":
            raise errors.NotMaster("this server is the %s of VM %s, not its master"
                                   % (self.role.state, self.vm))

    def _session(self, ctx):
        self._asMaster()
        return auth.sessionOf(ctx, self.secret, self.clock.seconds(), self._generation)

    def _user(self, ctx):
        return self._session(ctx).user

    def _generation(self, user):
        register = self.node.replica.password(user)
        return register.key if register is not None else None

    def _loginReply(self, user, created=False):
        expires = int(self.clock.seconds() + (self.tokenLifetime or limits.TOKEN_LIFETIME))
        token = auth.makeToken(self.secret, user, expires, self._generation(user) or (0, ""))
        return pb.LoginReply(token=token, created=created, expires=expires)

    def login(self, request, ctx):
        """
        The first Login of a name creates the account with the password
        given; later ones must give it.  With no password, a live token of
        the same user is renewed.  Failed logins slow the next attempts of
        that user and of that address; logins per address are rate-limited.
        """
        self._asMaster()
        user = checkUsername(request.user)
        if not request.password and auth.SESSION_METADATA in ctx.metadata:
            if self._user(ctx) != user:
                raise errors.NotLoggedIn("this session token is not %s's" % (user,))
            reply = self._loginReply(user)
            # The timeline on this connection goes on under the new token.
            self.sessions.renew(user, ctx.peer, reply.expires)
            return reply
        password = checkPassword(request.password)
        address = hostOf(ctx.peer)
        self.failedLogins.check(user, address)
        self.logins.take(address)
        return defer.ensureDeferred(self._login(user, password, address))

    async def _login(self, user, password, address):
        register = self.node.replica.password(user)
        created = False
        if register is None or not register.hash:
            hashed = await self.hasher.hash(password)
            register = self.node.replica.password(user)
            update = None
            if register is None:
                # (Unless someone created it while we were hashing.)
                update = self.node.login(user, hashed)
                created = True
                log.info("new user {user}", user=user)
            elif not register.hash:
                # An account from before passwords: its first login sets one.
                update = self.node.setPassword(user, hashed)
            if update is not None:
                await self._acknowledged(update, "")
                register = None
        if register is not None:
            if not await self.hasher.verify(register.hash, password):
                self.failedLogins.failed(user, address)
                log.info("failed login of {user} from {address}", user=user, address=address)
                raise errors.WrongPassword("invalid password")
        self.failedLogins.succeeded(user, address)
        return self._loginReply(user, created)

    def password(self, request, ctx):
        """
        Change the password: the old one proves it is the user.  The new
        generation ends every session opened under the old password, on
        every VM it reaches; the reply's token is of the new one.
        """
        self._asMaster()
        user = checkUsername(request.user)
        old, new = checkPassword(request.old_password), checkPassword(request.new_password)
        requestId = checkRequestId(request.request_id)
        address = hostOf(ctx.peer)
        self.failedLogins.check(user, address)
        self.logins.take(address)
        return defer.ensureDeferred(
            self._changePassword(user, old, new, requestId, request.prefer_vm, address))

    async def _changePassword(self, user, old, new, requestId, prefer, address):
        done = self.node.replica.byRequest(user, requestId) if requestId else None
        if done is not None and done.password is not None and done.password.user == user:
            # A retry of a change already made: the new password proves it.
            proof, hashed = new, done.password.hash
        else:
            register = self.node.replica.password(user)
            if register is None:
                raise errors.UnknownUser("user %s does not exist" % (user,))
            proof, hashed, done = old, register.hash, None
        if not await self.hasher.verify(hashed, proof):
            self.failedLogins.failed(user, address)
            raise errors.WrongPassword("invalid password")
        self.failedLogins.succeeded(user, address)
        if done is None:
            update = self.node.setPassword(user, await self.hasher.hash(new), requestId)
            log.info("{user} changed their password", user=user)
            await self._acknowledged(update, prefer)
        else:
            await self.node.durable(done)
        return self._loginReply(user)

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
        def make(user, rid):
            text = checkPostText(request.text)
            self.posts.take(user)
            return self.node.post(user, text, rid)

        return self._write(ctx, request, make)

    def _write(self, ctx, request, make):
        """
        Apply a write once per (user, request id); answer when it is durable.

        The reply's id names the copy of the request this VM holds.  A write
        is identified by its request, not by that id: when a VM stored a
        request and died before answering, and the client's retry was
        stored by another VM, the request has two copies; every VM shows the
        earlier by (time, id) and hides the other, so the reply may name the
        hidden copy (this VM could not know of one still on a dead VM's
        disk).  Either way the request is shown exactly once.
        """
        user = self._user(ctx)
        requestId = checkRequestId(request.request_id)
        if request.prefer_vm:
            checkVm(request.prefer_vm, "preferred VM")
        if self.writing >= self.maxWriting:
            # Writes waiting on disks and peers are bounded: past that the
            # client is told to back off instead of growing our memory.
            raise errors.Overloaded("%d writes in flight on this master; try again"
                                    % (self.writing,))
        update = self.node.replica.byRequest(user, requestId) if requestId else None
        if update is None:
            update = make(user, requestId)
            d = self._acknowledged(update, request.prefer_vm)
        else:
            # A retry of a command we (or a peer VM) already applied.
            d = self.node.durable(update).addCallback(lambda _: 1)

        def reply(copies):
            out = pb.WriteReply(id=update.id, copies=copies)
            metrics.acknowledgedWrites.labels(_kind(update)).inc()
            metrics.copies.observe(copies)
            if update.post is not None:
                self.acknowledgedPosts += 1
                out.post.CopyFrom(update.post.toProto())
            return out

        def done(result):
            self.writing -= 1
            return result

        self.writing += 1
        return d.addCallback(reply).addBoth(done)

    def _replicate(self, update):
        """Replicate a write nobody waits for (a read mark)."""
        self.replicator.broadcast(update)

    def _acknowledged(self, update, prefer):
        """Fires with the number of VMs holding C{update} durably (at least 1)."""
        replicated = self.replicator.broadcast(update, prefer or None)
        d = defer.gatherResults([self.node.durable(update), replicated], consumeErrors=True)
        # The disk's refusal (StorageFailed) reaches the client as itself.
        return d.addCallbacks(lambda results: 1 + results[1], firstError)

    def history(self, request, ctx):
        user = self._user(ctx)
        limit = min(request.limit or HISTORY, HISTORY)
        return pb.HistoryReply(posts=[p.toProto() for p in self.node.replica.timeline(user, limit)])

    def session(self, ctx):
        token = self._session(ctx)
        session = self.sessions.session(token.user, ctx.peer)
        session.generation = token.generation
        session.expires, session.peer = token.expires, ctx.peer
        return session

    def onetimeSToBuddy(self, request, ctx):
        auth.checkSecret(ctx, self.secret)
        if self.role.state != "slave":
            raise errors.NotBuddy("this server is not a slave")
        checkCount(request.updates, "updates in one message", UPDATES_PER_MESSAGE)
        updates = [Update.fromProto(u) for u in request.updates]
        # The master checked its peers' times; a buddy's are checked again,
        # so that nothing poisons the clock of a master-to-be.
        return pb.BuddyAck(applied=self.node.mirror(self.node.window.accepted(updates)))

    def digest(self, request, ctx):
        # Post file names are user names: for operators only.
        auth.checkSecret(ctx, self.secret)
        self._asMaster()

        def reply(digest):
            return pb.DigestReply(vm=self.vm, updates=self.node.replica.seen.count(),
                                  unreplicated=min(self.replicator.lag(), MAX_UINT32),
                                  peers=self.replicator.peerStates(),
                                  refused=self.node.window.refused, **digest)

        return self.node.store.digest().addCallback(reply)

    def buddyConnection(self, ctx):
        auth.checkSecret(ctx, self.secret)
        self._asMaster()
        return buddy.MasterLink(self.clock, self._buddyHello, self._slaveHello,
                                self._slaveHung, self._slaveStopping)

    def broadcastPosts(self, ctx):
        auth.checkSecret(ctx, self.secret)
        self._asMaster()
        return ReplicaReceiver(self.node, self.clock)
