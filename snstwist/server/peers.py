"""
The two ends of C{BroadcastPosts}, the stream between the masters of two VMs.

On that stream the receiver first says which updates it holds (a version
vector); the sender (L{PeerLink}) answers with everything the receiver lacks
(from any origin: this is the catch-up of a VM that was away), then pushes
each new local write as it happens.  The receiver (L{ReplicaReceiver})
acknowledges ids once they are durable on its disk, which is what lets a
write be acknowledged to a client only when two VMs hold it.  The receiver
repeats its version vector every L{ANTI_ENTROPY} seconds, so anything lost in
flight is sent again; applying an update twice is harmless.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.core import errors, metrics
from snstwist.core.limits import UPDATES_PER_MESSAGE
from snstwist.core.model import (
    Update,
    checkCount,
    checkHeartbeat,
    checkOrigin,
    checkVersionVector,
    checkVm,
    errorText,
    parseUpdateId,
)
from snstwist.core.slices import inSlices
from snstwist.core.state import Seen, VersionVector
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.rpc.heartbeat import Heartbeat

log = Logger()

ANTI_ENTROPY = 1.0
LINK_TIMEOUT = 3 * ANTI_ENTROPY
ACK_TIMEOUT = 5.0
# How long a write waits for a peer VM the routers list as live whose
# stream is not synced (docs/design.md section 5, "When a write is
# acknowledged"), counted from when that VM's stream was lost, or from
# when it was first listed unlinked: a promotion links again in tens of
# milliseconds (0.3 s p99 on a loaded machine), while the routers drop a
# server silent for 2 s (and a slave fences a master silent that long).  A
# VM still unlinked after that is cut off from us, not failing over; and a
# write that waited it out is answered well inside the client's 5 s call
# timeout.
UNLINKED_WAIT = 2.0
BATCH = min(100, UPDATES_PER_MESSAGE)
# A catch-up reads its next page from disk once at most this many messages
# wait on the stream.
DRAINED = 20
_BEAT = pb.ReplicationMessage(heartbeat=pb.Heartbeat())


def checkReplicationMessage(message):
    """
    The bounds of a C{BroadcastPosts} message (either way), but for each
    update's own fields (L{Update.fromProto} checks those).  An ack's ids
    are checked by parsing them: the (origin, seq) of each is returned.
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
        return [parseUpdateId(i) for i in message.ack.ids]
    elif kind == "heartbeat":
        checkHeartbeat(message.heartbeat)



def firstError(failure):
    """The failure under a L{defer.FirstError} (of gatherResults), or C{failure}."""
    if failure.check(defer.FirstError):
        return failure.value.subFailure
    return failure



def _upTo(origin, seq):
    """The version vector holding C{origin}'s updates 1..C{seq}."""
    vv = VersionVector()
    vv.origins[origin] = Seen(seq)
    return vv


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
        # The catch-up under way (a token), and how far each origin was
        # sent by catch-ups: {origin: (seq, when)}, so that the next hello
        # does not read again from disk what is on its way.
        self.catching = None
        self.sent = {}
        # Updates sent in how many messages, and ids acknowledged in how many.
        self.traffic = metrics.Traffic()
        self.ackTraffic = metrics.Traffic()

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
            acked = checkReplicationMessage(message)
        except errors.SNSError as e:
            log.warn("bad replication message from {vm}: {e}", vm=self.vm, e=e.message)
            self.stream.abort()
            return
        kind = message.WhichOneof("kind")
        if kind == "hello":
            self.remote = VersionVector.fromProto(message.hello.have)
            if not self.synced:
                log.info("replicating to {vm} at {address}", vm=self.vm, address=self.address)
                self.synced = True
                # The writes waiting for this VM go first (the catch-up
                # then skips them as in flight).
                self.replicator.linked(self)
            self._catchUp(self.remote)
        elif kind == "ack":
            self.ackTraffic.count(len(message.ack.ids))
            if message.ack.ids:
                self.failures = 0
                if self.remote is None:
                    self.remote = VersionVector()
            inflight, remote, replicator = self.inflight, self.remote, self.replicator
            for i, (origin, seq) in zip(message.ack.ids, acked):
                inflight.pop(i, None)
                remote.add(origin, seq)
                replicator.acked(self.vm, i)

    def _catchUp(self, remote):
        """
        Send what the peer lacks, read from disk a page at a time, the next
        page once the stream has taken most of the last; one catch-up at a
        time (the next hello starts the next one).
        """
        if self.catching is not None or self.stream is None:
            return
        token = self.catching = object()
        stream = self.stream
        asked = self._notSent(remote)

        def send(updates):
            if self.catching is not token or not self.synced:
                raise defer.CancelledError()  # the stream broke: the next one starts again
            now = self.clock.seconds()
            fresh = [u for u in updates
                     if now - self.inflight.get(u.id, -ACK_TIMEOUT) >= ACK_TIMEOUT]
            for u in updates:
                self.sent[u.origin] = (max(u.seq, self.sent.get(u.origin, (0, 0))[0]), now)
            d = self.push(fresh)
            return d.addCallback(lambda _: stream.drained(DRAINED))

        def finished(result):
            if self.catching is token:
                self.catching = None
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                log.failure("catching {vm} up failed", result, vm=self.vm)

        self.replicator.node.history.missingPages(asked, send).addBoth(finished)

    def _notSent(self, remote):
        """C{remote}, and what catch-ups sent in the last L{ACK_TIMEOUT} seconds."""
        asked = VersionVector.fromProto(remote.toProto())
        now = self.clock.seconds()
        for origin, (seq, when) in list(self.sent.items()):
            if now - when >= ACK_TIMEOUT:
                del self.sent[origin]
            else:
                asked.merge(_upTo(origin, seq))
        return asked

    def offer(self, update):
        """
        Send C{update}, a new write, if the peer has said what it holds,
        and keep its id until acknowledged.  It joins the updates message
        still waiting on the stream, if one is (L{Stream.gather}): under
        load one message carries what several turns wrote.
        """
        if self.synced:
            self.inflight[update.id] = self.clock.seconds()
            self.gather("updates", (update,), self._updatesMessage, BATCH)

    def _updatesMessage(self, updates):
        self.traffic.count(len(updates))
        return pb.ReplicationMessage(
            updates=pb.UpdateBatch(updates=[u.encoding() for u in updates]))

    def push(self, updates):
        """
        Send C{updates} (a page of a catch-up, in batches), if the peer has
        said what it holds.  Many are queued a slice of batches at a time
        (L{slices}); the Deferred fires once all are queued on the stream.
        """
        if not self.synced:
            return defer.succeed(None)

        def send(start):
            if self.synced:
                self.gather("updates", updates[start:start + BATCH], self._updatesMessage, BATCH)

        return inSlices(self.clock, range(0, len(updates), BATCH), send)

    def disconnected(self, reason):
        wasSynced, self.synced = self.synced, False
        self.inflight.clear()
        self.sent.clear()
        self.catching = None
        if reason is not None and not self.stopped:
            metrics.replicationFailures.inc()
            self.failures += 1
            self.lastError = errorText(grpcbridge.describe(reason))
            if self.failures in (3, 10, 100, 1000):
                log.warn("replication stream to {vm} broke {n} times without getting"
                         " updates through; last: {why}", vm=self.vm, n=self.failures,
                         why=self.lastError)
        if wasSynced:
            self.replicator.linkLost(self)

    def lacking(self):
        """How many updates held here the peer has not confirmed holding."""
        return self.replicator.node.replica.seen.lacking(self.remote)

    def state(self):
        return pb.PeerStream(vm=self.vm, lacking=self.lacking(), failures=self.failures,
                             last_error=self.lastError, connected=self.synced,
                             sent_updates=self.traffic.updates,
                             sent_messages=self.traffic.messages,
                             acked_updates=self.ackTraffic.updates,
                             ack_messages=self.ackTraffic.messages)



def _ackMessage(ids):
    return pb.ReplicationMessage(ack=pb.ReplicaAck(ids=ids))


class ReplicaReceiver:
    """
    The receiving end of a peer's C{BroadcastPosts} stream: apply what comes,
    acknowledge what is durable, and repeat our version vector so the peer
    can fill any gap.
    """

    def __init__(self, node, clock, standby=None, isMaster=None):
        self.node = node
        self.clock = clock
        self.stream = None
        self.peerVm = None
        self.beats = None
        # A slave's end, dialled by a peer whose link to this VM's dead
        # master broke (L{routerlink.peersOf}): the observers of this
        # process becoming master, which it waits for with heartbeats
        # only; then it says hello, and the peer's writes come.
        self.standby = standby
        # Whether this process serves as master by now: the bridge connects
        # a stream some turns after its call came (it sends the headers
        # first), and the promotion may have served, and told the waiting
        # streams, in between.
        self.isMaster = isMaster

    def makeConnection(self, stream):
        self.stream = stream
        if self.standby is not None:
            self.standby.add(self.serving)
        self._hello()
        # The repeated hello is this side's heartbeat, and the anti-entropy.
        self.beats = Heartbeat(self.clock, ANTI_ENTROPY, LINK_TIMEOUT, self._hello, self._silent)

    def _silent(self, seconds):
        log.warn("replication stream from {vm} silent for {s:.1f}s: closing",
                 vm=self.peerVm, s=seconds)
        self.stream.abort()

    def _hello(self):
        if self.standby is not None:
            if self.isMaster is not None and self.isMaster():
                # Master already, and not told: it served before this
                # stream was connected.
                self.serving()
                return
            self.stream.send(_BEAT)
            return
        self.stream.send(pb.ReplicationMessage(hello=pb.ReplicaHello(
            vm=self.node.vm, origin=self.node.origin,
            have=self.node.replica.seen.toProto())))

    def serving(self):
        """This process is its VM's master now: a standby's end says hello at once."""
        if self.standby is not None:
            self.standby.remove(self.serving)
            self.standby = None
            if self.stream is not None:
                self._hello()

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
        elif kind == "updates" and self.standby is not None:
            # Sent before our hello: only a master's disk takes them.
            log.warn("updates from {vm} before this slave is master: closing", vm=self.peerVm)
            self.stream.abort(errors.NotMaster("this server is a slave, not yet its VM's master"))
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
        """
        Acknowledge C{ids}, durable here now, with the other ids made
        durable before the ack message waiting on the stream is taken
        (L{Stream.gather}): the messages of one batch of the store, and
        under load of several, one ack.
        """
        if self.stream is not None and ids:
            self.stream.gather("ack", ids, _ackMessage, UPDATES_PER_MESSAGE)

    def connectionLost(self, reason):
        self.stream = None
        if self.standby is not None:
            self.standby.remove(self.serving)
            self.standby = None
        if self.beats is not None:
            self.beats.stop()
