"""
Replication between VMs: clocks, the VM's node, and C{BroadcastPosts}.

A L{Node} is one VM's copy of the data: it accepts local writes (giving each
a globally unique id and a hybrid logical clock timestamp), applies writes
received from peers, and makes both durable through its L{store.IStore}.

The L{Replicator} keeps one outbound C{BroadcastPosts} stream to the master
of every other VM.  On that stream the receiver first says which updates it
holds (a version vector); the sender answers with everything the receiver
lacks (from any origin: this is the catch-up of a VM that was away), then
pushes each new local write as it happens.  The receiver acknowledges ids
once they are durable on its disk, which is what lets a write be
acknowledged to a client only when two VMs hold it.  The receiver repeats its
version vector every L{ANTI_ENTROPY} seconds, so anything lost in flight is
sent again; applying an update twice is harmless.
"""

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.core import errors, metrics
from snstwist.core.limits import MAX_UPDATE_BYTES, MAX_USERS, UPDATES_PER_MESSAGE
from snstwist.core.model import (
    FollowChange,
    PasswordChange,
    Post,
    ReadMark,
    Update,
    checkCount,
    checkHeartbeat,
    checkOrigin,
    checkTime,
    checkVersionVector,
    checkVm,
    errorText,
    parseUpdateId,
    updateId,
)
from snstwist.core.slices import inSlices
from snstwist.core.state import Replica, VersionVector
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.rpc.heartbeat import Heartbeat

log = Logger()

ANTI_ENTROPY = 1.0
LINK_TIMEOUT = 3 * ANTI_ENTROPY
ACK_TIMEOUT = 5.0
SWEEP = 0.5
BATCH = min(100, UPDATES_PER_MESSAGE)
_BEAT = pb.ReplicationMessage(heartbeat=pb.Heartbeat())


def checkReplicationMessage(message):
    """
    The bounds of a C{BroadcastPosts} message (either way), but for each
    update's own fields (L{Update.fromProto} checks those).
    """
    kind = message.WhichOneof("kind")
    if kind == "hello":
        checkVm(message.hello.vm)
        checkOrigin(message.hello.origin)
        checkVersionVector(message.hello.have)
    elif kind == "updates":
        checkCount(message.updates.updates, "updates in one message", UPDATES_PER_MESSAGE)
    elif kind == "ack":
        checkCount(message.ack.ids, "ids in one ack", UPDATES_PER_MESSAGE)
        for i in message.ack.ids:
            parseUpdateId(i)
    elif kind == "heartbeat":
        checkHeartbeat(message.heartbeat)


class HybridClock:
    """
    Microsecond timestamps that never go backwards and exceed every timestamp
    observed from peers: physical time when the clocks agree, a logical bump
    when they do not.
    """

    def __init__(self, clock):
        self.clock = clock
        self.last = 0

    def now(self):
        self.last = max(int(self.clock.seconds() * 1e6), self.last + 1)
        return self.last

    def observe(self, time_us):
        self.last = max(self.last, time_us)

    def physical(self):
        """Our physical clock, in microseconds: what a peer's times are checked against."""
        return int(self.clock.seconds() * 1e6)


def firstError(failure):
    """The failure under a L{defer.FirstError} (of gatherResults), or C{failure}."""
    if failure.check(defer.FirstError):
        return failure.value.subFailure
    return failure


class Node:
    """
    One VM's replica: the in-memory state, its durable store, and the rules
    for accepting writes.  C{onDurable(updates)} is called with every batch of
    new updates once it is on disk (to push posts to live sessions).
    """

    def __init__(self, vm, origin, store, clock, onDurable=lambda updates: None):
        self.vm = vm
        self.origin = origin
        self.clock = clock
        self.hlc = HybridClock(clock)
        self.replica = Replica()
        self.onDurable = onDurable
        self.seq = 0
        self._durable = {}  # update id -> Deferreds waiting for its flush
        self.refused = 0  # peer updates refused (out of the clock window)
        self._refusedIds = set()  # logged once each (bounded)
        self._watch(store)

    def _watch(self, store):
        self.store = store
        store.onProblem = self._storageFailed

    def _refuseIfStorageFailed(self):
        """
        While the disk refuses writes nothing new is accepted: a write
        refused now is never applied later.  (A fresh error each time: one
        raised again and again would grow its traceback.)
        """
        problem = self.store.problem
        if problem is not None:
            raise errors.StorageFailed(problem.message)

    def _storageFailed(self, problem):
        """
        The disk refused a batch: every writer waiting for a flush is
        answered now.  The updates stay pending in the store, which writes
        them once the disk takes writes again.
        """
        for observers in self._durable.values():
            waiting = observers[:]
            del observers[:]
            for d in waiting:
                d.errback(errors.StorageFailed(problem.message))

    def load(self):
        """Open the store and apply what it holds, in slices (L{slices})."""
        def loaded(updates):
            d = self.mirrorAll(updates)
            return d.addCallback(lambda _: setattr(
                self, "seq", self.replica.lastSeq(self.origin))).addCallback(lambda _: updates)

        return self.store.open().addCallback(loaded)

    def _new(self, requestId, **change):
        # Take the seq only once the update is built: a write rejected by
        # validation must not leave a hole in our origin's sequence (peers
        # would carry it in their version vectors forever).
        seq = self.seq + 1
        time_us = self.hlc.now()
        if "post" in change:
            change["post"] = Post(id=updateId(self.origin, seq), time_us=time_us,
                                  **change["post"])
        update = Update(origin=self.origin, seq=seq, time_us=time_us,
                        request_id=requestId, **change)
        size = update.toProto().ByteSize()
        if size > MAX_UPDATE_BYTES:
            # The bounds of limits.py make this impossible; should a new
            # field escape them, the write is refused here rather than
            # stored and then never replicated.
            raise errors.InvalidRequest("this write would take %d bytes; at most %d replicate"
                                        % (size, MAX_UPDATE_BYTES))
        self.seq = seq
        return update

    def accept(self, requestId="", **change):
        """
        Accept one local write (C{user=}, C{post=dict(author, text)} or
        C{follow=FollowChange}).  Returns the update; C{durable(update)} gives
        the Deferred of its local flush.
        """
        self._refuseIfStorageFailed()
        update = self._new(requestId, **change)
        self.replica.apply(update)
        self._persist([update])
        return update

    def _persist(self, updates, displaced=()):
        """
        Store C{updates}.  Posts that are duplicates of a request already
        shown, and the shown posts C{displaced} by an earlier copy of their
        request, are kept out of the post files (stored, not shown).
        """
        hidden = {u.id for u in updates if u.post is not None and not self.replica.shows(u)}
        ids = [u.id for u in updates]
        for i in ids:
            self._durable[i] = []

        def finished(result):
            failed = isinstance(result, Failure)
            for i in ids:
                for observer in self._durable.pop(i, ()):
                    observer.errback(result) if failed else observer.callback(None)
            if failed:
                log.failure("storing {n} updates failed", result, n=len(updates))
            else:
                self.onDurable(updates)

        self.store.persist(updates, hidden, displaced).addBoth(finished)

    def isDurable(self, updateId):
        """Is the update C{updateId} (held here) on this VM's disk yet?"""
        return updateId not in self._durable

    def durable(self, update):
        """A Deferred that fires once C{update} is on this VM's disk."""
        observers = self._durable.get(update.id)
        if observers is None:
            return defer.succeed(None)
        if self.store.problem is not None:
            # Kept, and written once the disk takes writes again: not yet.
            return defer.fail(errors.StorageFailed(self.store.problem.message))
        d = defer.Deferred()
        observers.append(d)
        return d

    def receive(self, updates):
        """
        Apply updates from a peer.  The Deferred fires, once they are
        durable, with the ids of those accepted: an update dated more than
        L{CLOCK_WINDOW_US} ahead of our clock is refused (and logged), not
        stored and never observed by our hybrid clock; the peer's
        anti-entropy offers it again later.  While the disk refuses writes
        none is applied (the peer sends them again: our version vector does
        not have them).
        """
        try:
            self._refuseIfStorageFailed()
        except errors.StorageFailed:
            return defer.fail()
        fresh, displaced = [], []
        accepted = self.inWindow(updates)
        for u in accepted:
            self.hlc.observe(u.time_us)
            if self.replica.apply(u, displaced):
                fresh.append(u)
        if fresh:
            self._persist(fresh, displaced)
        d = defer.gatherResults([self.durable(u) for u in accepted], consumeErrors=True)
        return d.addCallback(lambda _: [u.id for u in accepted])

    def inWindow(self, updates):
        """
        The updates of a peer dated at most L{CLOCK_WINDOW_US} ahead of our
        clock (their read marks too); the others are refused and logged.
        """
        now = self.hlc.physical()
        accepted = []
        for u in updates:
            try:
                checkTime(u.time_us, now)
                if u.read is not None:
                    checkTime(u.read.time_us, now)
            except errors.InvalidRequest as e:
                self._refuse(u, e)
                continue
            accepted.append(u)
        return accepted

    def _refuse(self, update, why):
        self.refused += 1
        if update.id not in self._refusedIds:
            if len(self._refusedIds) >= 1000:
                self._refusedIds.clear()
            self._refusedIds.add(update.id)
            log.warn("refused update {id} from a peer: {why}", id=update.id, why=why.message)

    def mirror(self, updates):
        """
        Apply updates that are already durable on this VM (the master's,
        as its slave hears them): memory only.  Returns how many were new.
        """
        fresh = 0
        for u in updates:
            self.hlc.observe(u.time_us)
            fresh += self.replica.apply(u)
        return fresh

    def mirrorAll(self, updates):
        """
        L{mirror} for many updates (a whole history read from disk), a
        slice at a time so that the reactor keeps running; the Deferred
        fires with how many were new.
        """
        fresh = [0]

        def one(u):
            self.hlc.observe(u.time_us)
            fresh[0] += self.replica.apply(u)

        return inSlices(self.clock, updates, one).addCallback(lambda _: fresh[0])

    def adopt(self, store):
        """
        Take over the VM's data as its writer: open C{store} (writer lock
        and all) and add whatever it holds that the mirror missed; only
        that is read.
        """
        self._watch(store)

        def opened(added):
            self.seq = self.replica.lastSeq(self.origin)
            return added

        d = store.open(self.replica.seen).addCallback(self.mirrorAll)
        return d.addCallback(opened)

    # -- the domain rules of each write

    def login(self, user, passwordHash=""):
        """
        Create C{user} (with the argon2id hash of its password) if new.
        Returns the update, or None if it existed.
        """
        if user in self.replica.users:
            return None
        if len(self.replica.users) >= MAX_USERS:
            raise errors.TooMany("this cluster has its maximum of %d users" % (MAX_USERS,))
        return self.accept(user=user, hash=passwordHash)

    def setPassword(self, user, passwordHash, requestId=""):
        """C{user}'s password is now the one hashed as C{passwordHash}."""
        if user not in self.replica.users:
            raise errors.UnknownUser("user %s does not exist" % (user,))
        return self.accept(requestId, password=PasswordChange(user, passwordHash))

    def follow(self, user, target, requestId):
        self._checkTarget(user, target)
        if self.replica.isFollowing(user, target):
            raise errors.AlreadyFollowing("you already follow %s" % (target,))
        return self.accept(requestId, follow=FollowChange(user, target, True))

    def unfollow(self, user, target, requestId):
        self._checkTarget(user, target)
        if not self.replica.isFollowing(user, target):
            raise errors.NotFollowing("you do not follow %s" % (target,))
        return self.accept(requestId, follow=FollowChange(user, target, False))

    def post(self, user, text, requestId):
        return self.accept(requestId, post=dict(author=user, text=text))

    def markRead(self, user, key):
        """Record that C{user} has read up to the post C{key}; None if not newer."""
        current = self.replica.readUpTo(user)
        if current is not None and key <= current:
            return None
        return self.accept(read=ReadMark(user, key[0], key[1]))

    def _checkTarget(self, user, target):
        if target == user:
            raise errors.FollowSelf()
        if target not in self.replica.users:
            raise errors.UnknownUser("user %s does not exist" % (target,))


@attrs.define
class _Waiter:
    """A writer waiting for a peer VM's durable copy of its update."""

    deferred: defer.Deferred
    prefer: str | None
    peers: set  # the synced peers the update was pushed to
    deadline: float
    acked: set = attrs.field(factory=set)

    def ready(self):
        """Fire now?  The preferred peer has it, or any peer when none is preferred."""
        if self.prefer is not None:
            return self.prefer in self.acked
        return bool(self.acked) or not self.peers

    def fire(self):
        self.deferred.callback(len(self.acked))


class PeerLink(grpcbridge.ReconnectingLink):
    """
    Our outbound C{BroadcastPosts} stream to the master of one other VM, kept
    open (reconnecting with backoff) until L{stop}.
    """

    maxDelay = 2.0
    maxQueue = 10000
    interval = ANTI_ENTROPY
    timeout = LINK_TIMEOUT

    def __init__(self, replicator, vm, address):
        self.replicator = replicator
        self.vm = vm
        self.address = address
        self.metadata = auth.secretMetadata(replicator.secret)
        self.synced = False
        self.inflight = {}
        # What the peer said it holds (its last hello, and every ack since):
        # kept when the stream breaks, so that a stream failing again and
        # again shows as a peer falling behind, not as nothing pending.
        self.remote = None
        self.failures = 0  # breaks since updates last got through
        self.lastError = ""

    @property
    def clock(self):
        return self.replicator.clock

    def method(self, channel):
        return pbg.ClusterStub(channel).BroadcastPosts

    def connected(self):
        self.send(pb.ReplicationMessage(hello=pb.ReplicaHello(
            vm=self.replicator.node.vm, origin=self.replicator.node.origin)))

    def beat(self):
        self.send(_BEAT)

    def received(self, message):
        try:
            checkReplicationMessage(message)
        except errors.SNSError as e:
            log.warn("bad replication message from {vm}: {e}", vm=self.vm, e=e.message)
            self.stream.abort()
            return
        kind = message.WhichOneof("kind")
        if kind == "hello":
            if not self.synced:
                log.info("replicating to {vm} at {address}", vm=self.vm, address=self.address)
            self.synced = True
            self.remote = VersionVector.fromProto(message.hello.have)
            self._catchUp(self.remote)
        elif kind == "ack":
            if message.ack.ids:
                self.failures = 0
                if self.remote is None:
                    self.remote = VersionVector()
            for i in message.ack.ids:
                self.inflight.pop(i, None)
                self.remote.add(*parseUpdateId(i))
                self.replicator.acked(self.vm, i)

    def _catchUp(self, remote):
        now = self.clock.seconds()
        missing = [u for u in self.replicator.node.replica.missing(remote)
                   if now - self.inflight.get(u.id, -ACK_TIMEOUT) >= ACK_TIMEOUT]
        if missing:
            log.debug("sending {n} missing updates to {vm}", n=len(missing), vm=self.vm)
            self.push(missing)

    def push(self, updates):
        """
        Send C{updates} (in batches), if the peer has said what it holds.
        A long catch-up is sent a slice of batches at a time (L{slices}).
        """
        if not self.synced:
            return

        def send(start):
            if not self.synced:
                return
            chunk = updates[start:start + BATCH]
            now = self.clock.seconds()
            for u in chunk:
                self.inflight[u.id] = now
            self.send(pb.ReplicationMessage(
                updates=pb.UpdateBatch(updates=[u.toProto() for u in chunk])))

        inSlices(self.clock, range(0, len(updates), BATCH), send)

    def disconnected(self, reason):
        wasSynced, self.synced = self.synced, False
        self.inflight.clear()
        if reason is not None and not self.stopped:
            metrics.replicationFailures.inc()
            self.failures += 1
            self.lastError = errorText(grpcbridge.describe(reason))
            if self.failures in (3, 10, 100, 1000):
                log.warn("replication stream to {vm} broke {n} times without getting"
                         " updates through; last: {why}", vm=self.vm, n=self.failures,
                         why=self.lastError)
        if wasSynced:
            self.replicator.linkLost(self.vm)

    def lacking(self):
        """How many updates held here the peer has not confirmed holding."""
        return self.replicator.node.replica.seen.lacking(self.remote)

    def state(self):
        return pb.PeerStream(vm=self.vm, lacking=self.lacking(), failures=self.failures,
                             last_error=self.lastError, connected=self.synced)


class Replicator:
    """
    Keeps a L{PeerLink} to the master of every other live VM and tells
    writers when their update is durable on another VM.
    """

    def __init__(self, node, secret, clock):
        self.node = node
        self.secret = secret
        self.clock = clock
        self.links = {}
        self.waiters = {}
        self._outbox = []
        self._flush = None
        self._sweep = None

    def setPeers(self, peers):
        """C{peers}: {vm: address} of the other VMs' masters."""
        for vm in list(self.links):
            if peers.get(vm) != self.links[vm].address:
                self.links.pop(vm).stop().addErrback(
                    lambda f, vm=vm: log.failure("closing the link to {vm} failed", f, vm=vm))
        for vm, address in peers.items():
            if vm != self.node.vm and vm not in self.links:
                link = self.links[vm] = PeerLink(self, vm, address)
                link.start()

    def broadcast(self, update, prefer=None):
        """
        Push C{update} to every peer.  The Deferred fires with the number of
        other VMs holding it durably: when C{prefer} has it (if C{prefer} is
        a live peer), else when any peer has it; early with what it has when
        the peers it was pushed to are lost, and after L{ACK_TIMEOUT} at the
        latest; with 0 at once when no peer is connected.
        """
        synced = {vm for vm, link in self.links.items() if link.synced}
        self._outbox.append(update)
        if self._flush is None:
            self._flush = self.clock.callLater(0, self._sendOutbox)
        if not synced:
            return defer.succeed(0)
        d = defer.Deferred()
        self.waiters[update.id] = _Waiter(d, prefer if prefer in synced else None, synced,
                                          self.clock.seconds() + ACK_TIMEOUT)
        if self._sweep is None:
            # One timer for every waiter, not one per write.
            self._sweep = self.clock.callLater(SWEEP, self._expire)
        return d

    def _sendOutbox(self):
        self._flush = None
        batch, self._outbox = self._outbox, []
        for link in self.links.values():
            link.push(batch)

    def acked(self, vm, updateId):
        waiter = self.waiters.get(updateId)
        if waiter is None:
            return
        waiter.acked.add(vm)
        if waiter.ready():
            del self.waiters[updateId]
            waiter.fire()
            self._idle()

    def _idle(self):
        """No writer waits any more: no timer is left behind."""
        if not self.waiters and self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
            self._sweep = None

    def linkLost(self, vm):
        """The stream to C{vm} broke: nobody waits for its acks any more."""
        for key, waiter in list(self.waiters.items()):
            if vm in waiter.peers:
                waiter.peers.discard(vm)
                if waiter.prefer == vm:
                    waiter.prefer = None
                if waiter.ready():
                    del self.waiters[key]
                    waiter.fire()
        self._idle()

    def _expire(self):
        self._sweep = None
        now = self.clock.seconds()
        for key, waiter in list(self.waiters.items()):
            if now >= waiter.deadline:
                del self.waiters[key]
                waiter.fire()
        if self.waiters:
            self._sweep = self.clock.callLater(SWEEP, self._expire)

    def stop(self):
        waiters, self.waiters = self.waiters, {}
        for waiter in waiters.values():
            waiter.fire()
        for call in (self._flush, self._sweep):
            if call is not None and call.active():
                call.cancel()
        self._flush = self._sweep = None
        links, self.links = self.links, {}
        return defer.gatherResults([link.stop() for link in links.values()],
                                   consumeErrors=True)

    def lag(self):
        """Updates held here that the peer VM furthest behind has not confirmed."""
        return max((link.lacking() for link in self.links.values()), default=0)

    def peerStates(self):
        """How each outgoing stream is doing (L{pb.PeerStream}s, by VM)."""
        return [self.links[vm].state() for vm in sorted(self.links)]


class ReplicaReceiver:
    """
    The receiving end of a peer's C{BroadcastPosts} stream: apply what comes,
    acknowledge what is durable, and repeat our version vector so the peer
    can fill any gap.
    """

    def __init__(self, node, clock):
        self.node = node
        self.clock = clock
        self.stream = None
        self.peerVm = None
        self.beats = None

    def makeConnection(self, stream):
        self.stream = stream
        self._hello()
        # The repeated hello is this side's heartbeat, and the anti-entropy.
        self.beats = Heartbeat(self.clock, ANTI_ENTROPY, LINK_TIMEOUT, self._hello, self._silent)

    def _silent(self, seconds):
        log.warn("replication stream from {vm} silent for {s:.1f}s: closing",
                 vm=self.peerVm, s=seconds)
        self.stream.abort()

    def _hello(self):
        self.stream.send(pb.ReplicationMessage(hello=pb.ReplicaHello(
            vm=self.node.vm, origin=self.node.origin,
            have=self.node.replica.seen.toProto())))

    def messageReceived(self, message):
        self.beats.heard()
        try:
            checkReplicationMessage(message)
            kind = message.WhichOneof("kind")
            if kind == "updates":
                updates = [Update.fromProto(u) for u in message.updates.updates]
        except errors.SNSError as e:
            log.warn("bad replication message from {vm}: {e}", vm=self.peerVm, e=e.message)
            self.stream.abort(e)
            return
        if kind == "hello":
            self.peerVm = message.hello.vm
        elif kind == "updates":
            d = self.node.receive(updates)
            d.addCallback(self._ack)
            d.addErrback(self._notStored, len(updates))

    def _notStored(self, failure, n):
        failure = firstError(failure)
        if failure.check(errors.StorageFailed):
            log.warn("{n} updates from {vm} not stored now: {why}", n=n, vm=self.peerVm,
                     why=failure.value.message)
        else:
            log.failure("storing replicated updates failed", failure)

    def _ack(self, ids):
        if self.stream is not None and ids:
            self.stream.send(pb.ReplicationMessage(ack=pb.ReplicaAck(ids=ids)))

    def connectionLost(self, reason):
        self.stream = None
        if self.beats is not None:
            self.beats.stop()
