"""
docs/design.md section 5, checked on the real replication code: a Hypothesis state
machine runs three VMs (L{Node}, L{Replicator}, L{PeerLink}s and
L{ReplicaReceiver}s over L{MemoryStore}s) on one L{Clock} and an in-memory
network that delivers replication messages late, twice, out of order or not
at all, while VMs take writes, crash and restart, and are cut off and healed.
After healing and letting the network settle, every replica must be equal and
hold every acknowledged write.

Nothing here touches gRPC or the reactor: a L{PeerLink} is connected to a
L{ReplicaReceiver} through a pair of fake stream ends, and the link's
C{_connect} (which would open a gRPC stream) opens a new pair instead.
"""

import functools
import itertools
import sys
import traceback

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors
from snstwist.core.limits import HISTORY
from snstwist.core.model import parseUpdateId, updateId
from snstwist.core.state import HOT_POSTS, VersionVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.core.node import Node
from snstwist.server.peers import ACK_TIMEOUT, ANTI_ENTROPY, LINK_TIMEOUT, PeerLink, ReplicaReceiver
from snstwist.server.replication import Replicator
from snstwist.storage import compaction
from snstwist.storage.store import MemoryStore
from tests.strategies import NAMES, postTexts

VMS = ("vm1", "vm2", "vm3")
SECRET = "secret"

# Steps per example: enough for writes, crashes and partitions to interleave,
# few enough that the ci profile's 60 examples take seconds.
STEPS = 80
# Rounds of (settle, advance ANTI_ENTROPY) allowed for convergence after
# healing: a link needs at most LINK_TIMEOUT + ANTI_ENTROPY to notice a dead
# stream and PeerLink.maxDelay to reconnect, so this leaves a wide margin.
QUIESCE_ROUNDS = 30
# Messages delivered in one settle before we call it a livelock.
SETTLE_LIMIT = 5000

DOMAIN_REFUSALS = (errors.AlreadyFollowing, errors.NotFollowing, errors.UnknownUser,
                   errors.FollowSelf)


def recorded(store):
    """
    The (origin, seq) a store holds: stored, or superseded (a read mark a
    newer one of its user replaced, which the record no longer keeps).
    """
    return set(store.durable) | store.superseded


class VmClock:
    """
    One VM incarnation's view of the shared L{Clock}: its own skew, and every
    call it scheduled, so that a crash can cancel them (a dead process runs
    nothing more).
    """

    def __init__(self, clock, skew):
        self.clock = clock
        self.skew = skew
        self.calls = []
        self.dead = False

    def seconds(self):
        return self.clock.seconds() + self.skew

    def callLater(self, delay, f, *args, **kwargs):
        call = self.clock.callLater(delay, f, *args, **kwargs)
        if self.dead:
            call.cancel()
        if len(self.calls) > 64:
            self.calls = [c for c in self.calls if c.active()]
        self.calls.append(call)
        return call

    def die(self):
        self.dead = True
        for call in self.calls:
            if call.active():
                call.cancel()
        self.calls = []


@attrs.define(eq=False)
class End:
    """One side of a fake stream, with grpcbridge.Stream's send and abort."""

    connection: "Connection"
    owner: "Incarnation"
    protocol: object
    ended: bool = False

    def send(self, message):
        if self.ended:
            return False
        if message.WhichOneof("kind") == "ack":
            # An ack tells the writer another VM holds the update on disk.
            store = self.owner.store
            for i in message.ack.ids:
                if parseUpdateId(i) not in recorded(store):
                    self.owner.problems.append("%s acked %s before storing it"
                                               % (self.owner.vm, i))
        self.connection.carry(self, message)
        return True

    def gather(self, kind, items, build, limit):
        """Sent at once, as a stream whose writer is idle sends what it gathers."""
        items = list(items)
        return all([self.send(build(items[i:i + limit])) for i in range(0, len(items), limit)])

    def drained(self, below):
        """The network takes each message as it is sent: none waits on this side."""
        return defer.succeed(None)

    def close(self):
        self.connection.breakOff()

    def abort(self, reason=None):
        self.connection.breakOff()


class Connection:
    """
    One C{BroadcastPosts} stream from a L{PeerLink} to a L{ReplicaReceiver}
    on another VM; without a server end it is a black hole (a stream opened
    across a partition: whatever is sent is lost, nothing comes back).
    """

    def __init__(self, network, client, server=None):
        self.network = network
        self.client = End(self, *client)
        self.server = End(self, *server) if server is not None else None

    def ends(self):
        return [e for e in (self.client, self.server) if e is not None]

    def peerOf(self, end):
        return self.server if end is self.client else self.client

    def carry(self, end, message):
        peer = self.peerOf(end)
        if peer is not None:
            self.network.inflight.append(InFlight(peer, message.SerializeToString()))

    def touches(self, vms):
        return any(e.owner.vm in vms for e in self.ends())

    def breakOff(self):
        """
        Tear the stream down: what is in flight on it is lost, and each end's
        protocol hears connectionLost soon after (as from grpcbridge), unless
        its process is dead.
        """
        for end in self.ends():
            if not end.ended:
                end.ended = True
                end.owner.clock.callLater(0, end.protocol.connectionLost,
                                          Failure(ConnectionLost("stream broken")))
        self.network.forget(self)


@attrs.frozen
class InFlight:
    to: End
    data: bytes


class Network:
    """The streams between VMs and the messages in flight on them."""

    def __init__(self):
        self.connections = []
        self.inflight = []
        self.cut = set()  # frozenset({vmA, vmB}): pairs that cannot talk

    def reachable(self, a, b):
        return frozenset((a, b)) not in self.cut

    def open(self, source, link, target):
        """Connect C{link} (of C{source}) to a new receiver on C{target}."""
        if self.reachable(source.vm, target.vm):
            receiver = ReplicaReceiver(target.node, target.clock)
            connection = Connection(self, (source, link), (target, receiver))
            link.makeConnection(connection.client)
            receiver.makeConnection(connection.server)
        else:
            connection = Connection(self, (source, link))
            link.makeConnection(connection.client)
        self.connections.append(connection)

    def forget(self, connection):
        if connection in self.connections:
            self.connections.remove(connection)
        dead = set(map(id, connection.ends()))
        self.inflight = [m for m in self.inflight if id(m.to) not in dead]

    def breakAll(self, crosses):
        for connection in list(self.connections):
            if crosses(connection):
                connection.breakOff()

    def deliver(self, index):
        self.receive(self.inflight.pop(index))

    def receive(self, message):
        if not message.to.ended:
            message.to.protocol.messageReceived(
                pb.ReplicationMessage.FromString(message.data))


class Incarnation:
    """One run of a VM's master: its node, replicator, and clock."""

    def __init__(self, vm, origin, store, clock, problems):
        self.vm = vm
        self.store = store
        self.clock = clock
        self.alive = True
        self.problems = problems  # what callbacks saw go wrong, checked after each step
        self.node = Node(vm, origin, store, clock)
        self.node.addDurableObserver(self._durable)
        self.replicator = Replicator(self.node, SECRET, clock)
        self.lastHlc = 0

    def _durable(self, updates):
        # The server pushes these to live sessions: they must really be stored.
        for u in updates:
            key = (u.origin, u.seq)
            if key not in self.store.superseded and self.store.durable.get(key) != u:
                self.problems.append("the node reported %s before it was stored" % (u.id,))

    def die(self):
        self.alive = False
        self.clock.die()


def pairsOf(vector):
    """Every (origin, seq) the version vector C{vector} holds."""
    return {(origin, seq) for origin, seen in vector.origins.items()
            for seq in itertools.chain(range(1, seen.contiguous + 1), seen.extra)}


def userViews(replica):
    """
    What each user is shown (following, followers, timeline, read mark),
    checking on the way that the follow indexes agree with the registers.
    """
    views = []
    for name in NAMES:
        live = [pair for pair, r in replica.follows.items() if r.following]
        following, followers = replica.following(name), replica.followers(name)
        assert following == sorted(b for a, b in live if a == name), (name, following)
        assert followers == sorted(a for a, b in live if b == name), (name, followers)
        timeline = tuple(p.key for p in replica.timeline(name, HISTORY))
        views.append((name, tuple(following), tuple(followers), timeline,
                      replica.readUpTo(name)))
    return tuple(views)


def indices():
    """Which in-flight message, modulo how many there are: shrinks to the oldest."""
    return st.integers(min_value=0, max_value=63)


class ReplicationMachine(RuleBasedStateMachine):
    """Three VMs replicating over a lossy, reordering, partitionable network."""

    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.clock.advance(1000)
        self.network = Network()
        self.stores = {vm: MemoryStore(manual=True) for vm in VMS}
        self.vms = {}
        self.skews = {}
        self.incarnations = 0
        self.requests = {}      # user -> request ids used (scoped to the user)
        self.produced = {}      # update id -> Update, every write any node made
        self.acknowledged = {}  # update id -> copies the client was told
        self.problems = []

    # -- the cluster

    def _start(self, vm):
        """A new master for C{vm}: new origin, loaded from the VM's store."""
        self.incarnations += 1
        origin = "%s.i%d" % (vm, self.incarnations)
        store = self.stores[vm]
        inc = Incarnation(vm, origin, store, VmClock(self.clock, self.skews[vm]),
                          self.problems)
        loaded = inc.node.load()
        assert loaded.called, "MemoryStore.open answers at once"
        stored = [u.time_us for u in store.durable.values()]
        assert inc.node.hlc.last >= max(stored, default=0), "restart must observe stored times"
        self.vms[vm] = inc
        # The routers list every VM throughout (a crashed master's slave
        # takes over; a partition cuts VMs off from each other, not from
        # the routers): a write waits for a peer whose stream is down, for
        # a while, and must then be sent on the next stream.
        inc.replicator.setLive(set(VMS) - {vm})
        return inc

    def _link(self, inc, other):
        link = PeerLink(inc.replicator, other, "%s:3500" % (other,))
        link._connect = functools.partial(self._connect, inc, link)
        # Hypothesis replays an example exactly only if time does too.
        link.jitter = lambda: 0.5
        inc.replicator.links[other] = link
        return link

    def _connect(self, inc, link):
        """PeerLink._connect, through the fake network instead of gRPC."""
        link.retry = None
        if link.stopped or not inc.alive:
            return
        self.network.open(inc, link, self.vms[link.vm])

    def _connectAll(self, inc):
        for other in VMS:
            if other != inc.vm:
                self._link(inc, other)._connect()

    def live(self):
        return [self.vms[vm] for vm in VMS]

    @initialize(skews=st.tuples(*[st.sampled_from([0.0, 0.25, -0.25, 3.0])] * len(VMS)))
    def boot(self, skews):
        """Start the three VMs, their physical clocks possibly apart."""
        self.skews = dict(zip(VMS, skews))
        for vm in VMS:
            self._start(vm)
        for vm in VMS:
            self._connectAll(self.vms[vm])
        # The VMs find each other before clients come.
        self._settle()

    # -- writes, acknowledged the way ServerService._acknowledged does

    def _produce(self, vm, user, make):
        """
        Make one write of C{user} at C{vm}'s node; None if the node refused
        or had nothing to do.  Each user numbers its own requests, so users
        pick the same request ids all the time: they must not collide.
        """
        inc = self.vms[vm]
        self.requests[user] = self.requests.get(user, 0) + 1
        try:
            update = make(inc.node, "r-%d" % (self.requests[user],))
        except DOMAIN_REFUSALS:
            return None
        if update is None:
            return None
        previous = self.produced.get("%s/%d" % (update.origin, update.seq - 1))
        assert update.id not in self.produced, "update id %s reused" % (update.id,)
        assert previous is None or previous.time_us < update.time_us, \
            "HLC of %s did not advance between its writes" % (update.origin,)
        self.produced[update.id] = update
        return update

    def _write(self, vm, user, make, prefer):
        """A client's write: answered once durable here and acked by a peer (or timed out)."""
        update = self._produce(vm, user, make)
        if update is None:
            return
        inc = self.vms[vm]
        d = defer.gatherResults(
            [inc.node.durable(update), inc.replicator.broadcast(update, prefer)],
            consumeErrors=True)
        d.addCallback(self._acknowledged, update)
        d.addErrback(lambda f: self.problems.append("write %s failed: %s" % (update.id, f)))
        # Each request is a reactor turn of its own: the outbox goes out now,
        # one message per write, so that losing or reordering a message
        # leaves holes in a peer's version vector.
        self.clock.advance(0)

    def _acknowledged(self, results, update):
        copies = 1 + results[1]
        holders = sum(1 for s in self.stores.values() if (update.origin, update.seq) in recorded(s))
        if holders < copies:
            self.problems.append("%s acknowledged with %d copies, durable on %d VMs"
                                 % (update.id, copies, holders))
        self.acknowledged[update.id] = copies

    @rule(vm=st.sampled_from(VMS), user=st.sampled_from(NAMES),
          prefer=st.sampled_from((None,) + VMS))
    def login(self, vm, user, prefer):
        """A login creates the user on that VM if the VM does not know them yet."""
        self._write(vm, user, lambda node, rid: node.login(user), prefer)

    @rule(vm=st.sampled_from(VMS), user=st.sampled_from(NAMES), text=postTexts(),
          prefer=st.sampled_from((None,) + VMS))
    def post(self, vm, user, text, prefer):
        """A client logs in at C{vm} (as the CLI does on connecting) and posts."""
        self.login(vm, user, prefer)
        self._write(vm, user, lambda node, rid: node.post(user, text, rid), prefer)

    @rule(vm=st.sampled_from(VMS), nth=st.integers(0, 7),
          prefer=st.sampled_from((None,) + VMS))
    def retry_post(self, vm, nth, prefer):
        """
        A client whose master died retries a post at another VM, with the
        same request id: that VM answers from what it holds (in memory or on
        disk), or (if the original has not reached it) accepts the post again.
        """
        posts = [u for u in self.produced.values() if u.post is not None]
        if not posts:
            return
        original = posts[nth % len(posts)]
        author = original.post.author
        # As a server does (Admission): memory, else the store, which holds
        # the copies memory does not remember (a start reads no post).
        known = self.vms[vm].node.history.byRequest(author, original.request_id)
        assert known.called, "a MemoryStore answers at once"
        # Memory may answer without the store (a request id above its
        # requester's floor): never for a request the disk holds.
        assert known.result is not None or not any(
            u.request == original.request for u in self.stores[vm].durable.values()), \
            "%s missed the stored copy of %s" % (vm, original.request)
        if known.result is not None:
            return
        self._write(vm, author, lambda node, rid: node.post(
            original.post.author, original.post.text, original.request_id), prefer)

    @rule(vm=st.sampled_from(VMS), user=st.sampled_from(NAMES[:3]),
          followee=st.sampled_from(NAMES[:3]),
          change=st.sampled_from(["toggle", "follow", "unfollow"]),
          prefer=st.sampled_from((None,) + VMS))
    def follow(self, vm, user, followee, change, prefer):
        """
        A client logs in at C{vm} and follows or unfollows, as typed (maybe
        refused), or whichever this VM allows: toggling makes concurrent,
        conflicting changes of one pair on two VMs common, which is what the
        last-writer-wins register is for.
        """
        self.login(vm, user, prefer)
        if change == "toggle":
            following = self.vms[vm].node.replica.isFollowing(user, followee)
            change = "unfollow" if following else "follow"
        self._write(vm, user, lambda node, rid: getattr(node, change)(user, followee, rid),
                    prefer)

    @rule(vm=st.sampled_from(VMS), user=st.sampled_from(NAMES), nth=st.integers(0, 7))
    def read(self, vm, user, nth):
        """
        A client at C{vm} has read its timeline up to a post: the read mark
        is written and replicated with nobody waiting for it, as
        SessionHub.saveReadMarks does.
        """
        timeline = self.vms[vm].node.replica.timeline(user, HISTORY)
        if timeline:
            key = timeline[nth % len(timeline)].key
            update = self._produce(vm, user, lambda node, rid: node.markRead(user, key))
            if update is not None:
                self.vms[vm].replicator.broadcast(update)
                self.clock.advance(0)

    @rule(vm=st.sampled_from(VMS), user=st.sampled_from(NAMES))
    def read_through(self, vm, user):
        """
        A client scrolls through its timeline: one read mark per post, each
        superseding the one before (the record keeps only the last, and
        counts the others: docs/design.md section 4, "Compaction").
        """
        for post in self.vms[vm].node.replica.timeline(user, HISTORY)[-4:]:
            self.read(vm, user, self.vms[vm].node.replica.timeline(user, HISTORY).index(post))

    # -- disks, network, time

    @rule(vm=st.sampled_from(VMS))
    def flush(self, vm):
        """C{vm}'s disk finishes what it was writing: pending writes become durable."""
        self.stores[vm].flush()

    @precondition(lambda self: self.network.inflight)
    @rule(index=indices())
    def deliver(self, index):
        """Deliver any one message: later ones may overtake earlier ones."""
        self.network.deliver(index % len(self.network.inflight))

    @precondition(lambda self: self.network.inflight)
    @rule(index=indices())
    def duplicate(self, index):
        """Deliver a copy of one message, leaving the original in flight."""
        inflight = self.network.inflight
        self.network.receive(inflight[index % len(inflight)])

    @precondition(lambda self: self.network.inflight)
    @rule(index=indices())
    def drop(self, index):
        """Lose one message."""
        del self.network.inflight[index % len(self.network.inflight)]

    @precondition(lambda self: self.network.inflight)
    @rule(fates=st.lists(st.sampled_from(["deliver", "drop", "twice", "later"]),
                         min_size=1, max_size=12))
    def unreliable(self, fates):
        """
        A bad patch of network: the oldest messages in flight are, one by
        one, delivered, lost, delivered twice or held back behind the rest.
        """
        inflight = self.network.inflight
        for fate in fates:
            if not inflight:
                break
            message = inflight.pop(0)
            if fate == "later":
                inflight.append(message)
            elif fate != "drop":
                self.network.receive(message)
                if fate == "twice":
                    self.network.receive(message)

    @rule()
    def settle(self):
        """A calm moment: timers due now run, disks flush, every message arrives."""
        self._settle()

    @rule(seconds=st.sampled_from(
        [0, 0.05, ANTI_ENTROPY, ACK_TIMEOUT, LINK_TIMEOUT + ANTI_ENTROPY]))
    def advance(self, seconds):
        """Time passes (messages stay in flight): hellos, heartbeats, timeouts, retries."""
        self.clock.advance(seconds)

    # -- failures

    # Crashes and partitions share one rule, so that together they are as
    # frequent as one kind of write: often enough to interleave with every
    # stage of replication, rarely enough that writes do get replicated.
    @rule(vm=st.sampled_from(VMS), kind=st.sampled_from(["crash", "partition"]))
    def fail(self, vm, kind):
        """C{vm}'s master crashes (and restarts), or C{vm} is cut off."""
        getattr(self, "_" + kind)(vm)

    def _crash(self, vm):
        """
        kill -9 of a VM's master and its restart: unflushed writes are lost,
        its streams break, and a new incarnation (new origin) loads what the
        disk holds and reconnects.
        """
        self.vms[vm].die()
        self.stores[vm].crash()
        self.network.breakAll(lambda c: c.touches({vm}))
        self._connectAll(self._start(vm))

    def _partition(self, vm):
        """Cut C{vm} off from the others: streams across break, new ones go nowhere."""
        for other in VMS:
            if other != vm:
                self.network.cut.add(frozenset((vm, other)))
        reachable = self.network.reachable
        self.network.breakAll(lambda c: c.server is not None and not reachable(
            c.client.owner.vm, c.server.owner.vm))

    @precondition(lambda self: self.network.cut)
    @rule()
    def heal(self):
        """
        The network is whole again; streams opened into the void stay dead
        until their links' timeouts notice, then reconnect.
        """
        self.network.cut.clear()

    # -- invariants

    @invariant()
    def sane(self):
        """
        After every step (one invariant, so that a counterexample prints one
        line per step): nothing went wrong in a callback, replicas hold only
        what was written, clocks never go back, what is on a VM's disk is in
        its memory, and catch-up would send a peer exactly what it lacks.
        """
        assert not self.problems, self.problems
        self.replicas_hold_only_what_was_written()
        self.hybrid_clocks_never_go_backwards()
        self.the_disk_holds_nothing_the_replica_lacks()
        self.catch_up_offers_exactly_what_a_peer_lacks()

    def held(self, inc):
        """The updates C{inc} holds: on its disk, or on their way there."""
        store = self.stores[inc.vm]
        held = dict(store.durable)
        # A read mark superseded is held (counted, not stored): as produced.
        held.update({key: self.produced[updateId(*key)] for key in store.superseded})
        for updates, _, _ in store._pending:
            for u in updates:
                # A void on its way answers for a superseded mark: as produced.
                held.setdefault((u.origin, u.seq),
                                self.produced[u.id] if compaction.marksNothing(u) else u)
        return held

    def replicas_hold_only_what_was_written(self):
        """
        A replica holds (its version vector says) exactly the updates its
        store has or is writing, and each is exactly one some node produced.
        """
        for inc in self.live():
            held = self.held(inc)
            assert set(held) == pairsOf(inc.node.replica.seen), \
                "%s holds %s in memory, %s in its store" % (
                    inc.vm, sorted(pairsOf(inc.node.replica.seen)), sorted(held))
            for u in held.values():
                assert self.produced.get(u.id) == u, \
                    "%s holds %s, which no node wrote as such: %r" % (inc.vm, u.id, u)

    def hybrid_clocks_never_go_backwards(self):
        for inc in self.live():
            hlc = inc.node.hlc.last
            assert hlc >= inc.lastHlc, "HLC of %s went back" % (inc.node.origin,)
            inc.lastHlc = hlc
            # (A superseded read mark is not stored: its time is nobody's
            # order, and a restart does not see it.)
            superseded = self.stores[inc.vm].superseded
            newest = max((u.time_us for key, u in self.held(inc).items()
                          if key not in superseded), default=0)
            assert hlc >= newest, "HLC of %s is behind an update it holds" % (inc.vm,)

    def the_disk_holds_nothing_the_replica_lacks(self):
        for inc in self.live():
            for u in self.stores[inc.vm].durable.values():
                assert inc.node.replica.has(u), "%s stored %s but forgot it" % (inc.vm, u.id)

    def catch_up_offers_exactly_what_a_peer_lacks(self):
        """
        The pages of what a peer lacks (History.missingPages, from the
        store), given its version vector as a hello carries it, are every
        update stored here that the peer does not hold: holes in either
        vector included, which is where a shortcut would go wrong.
        """
        for here, there in itertools.permutations(self.live(), 2):
            vector = VersionVector.fromProto(there.node.replica.seen.toProto())
            offered = []
            done = here.node.history.missingPages(
                vector, lambda updates, out=offered: out.extend(u.id for u in updates), page=3)
            assert done.called, "a MemoryStore answers at once"
            # Superseded read marks are offered too (as voids): the peer's
            # version vector must take them.
            lacking = {updateId(*key) for key in recorded(self.stores[here.vm])
                       if not there.node.replica.seen.has(*key)}
            assert len(offered) == len(set(offered)) and set(offered) == lacking, \
                "%s would send %s %s, which lacks %s" % (here.vm, there.vm, offered, lacking)

    # -- after healing

    def _settle(self):
        """Run due timers, flush every disk and deliver every message, until calm."""
        for _ in range(SETTLE_LIMIT):
            self.clock.advance(0)
            for store in self.stores.values():
                store.flush()
            if not self.network.inflight:
                return
            self.network.deliver(0)
        raise AssertionError("replication never went quiet: %d messages in flight"
                             % (len(self.network.inflight),))

    def _converged(self):
        if self.network.inflight:
            return False
        vectors = set()
        for inc in self.live():
            held = pairsOf(inc.node.replica.seen)
            if held != recorded(self.stores[inc.vm]):
                return False
            vectors.add(frozenset(held))
        return len(vectors) == 1

    def teardown(self):
        if not self.vms or sys.exc_info()[0] is not None:
            # A step failed (or Hypothesis cut the run short): report that,
            # not whatever follows from it here.
            return
        self.network.cut.clear()
        for _ in range(QUIESCE_ROUNDS):
            self._settle()
            if self._converged():
                break
            self.clock.advance(ANTI_ENTROPY)
        else:
            raise AssertionError("replicas did not converge: %s" % (
                {inc.vm: inc.node.replica.seen.toProto() for inc in self.live()},))

        # A start reads no window: each is read when first asked for, the
        # window of every author stored here (the model posts as users that
        # may have no account anywhere: a crash lost it).
        for inc in self.live():
            authors = {u.post.author for u in self.stores[inc.vm].durable.values()
                       if u.post is not None}
            for user in sorted(inc.node.replica.users | authors):
                assert inc.node.history.recent(user, HISTORY).called
        snapshots = {inc.vm: inc.node.replica.snapshot() for inc in self.live()}
        assert len(set(snapshots.values())) == 1, snapshots
        views = {inc.vm: userViews(inc.node.replica) for inc in self.live()}
        assert len(set(views.values())) == 1, views

        # A request retried at another VM is shown once, the same everywhere;
        # and every request is shown, whoever else used its id.  What is
        # shown is what the store shows (the post files); memory holds the
        # newest of it.
        for inc in self.live():
            store = self.stores[inc.vm]
            shownPosts = sorted((u.post for u in store.durable.values()
                                 if u.post is not None and u.id not in store.hidden),
                                key=lambda p: p.key)
            for author in {p.author for p in shownPosts}:
                newest = [p for p in shownPosts if p.author == author][-HOT_POSTS:]
                memory = inc.node.replica.postsBy(author)
                # (A window not read since a start holds nothing.)
                assert memory == newest[len(newest) - len(memory):] and (
                    len(memory) == len(newest)
                    or inc.node.replica.windows.floor(author) is not None), \
                    "%s shows %s of %s in memory, %s on disk" % (
                        inc.vm, [p.id for p in memory], author, [p.id for p in newest])
            shown = [(p.author, self.produced[p.id].request_id) for p in shownPosts]
            assert len(shown) == len(set(shown)), "a request shown twice on %s" % (inc.vm,)
            made = {(u.post.author, u.request_id) for u in self.produced.values()
                    if u.post is not None and inc.node.replica.has(u)}
            assert set(shown) == made, "a request not shown on %s: %s" % (
                inc.vm, made - set(shown))

        # A MemoryStore never loses what it flushed, and every acknowledged
        # write was flushed at least on its own VM: so every one of them,
        # whatever its number of copies, must now be everywhere.
        for acked, copies in self.acknowledged.items():
            u = self.produced[acked]
            for inc in self.live():
                assert inc.node.replica.has(u), \
                    "acknowledged %s (%d copies) missing on %s" % (acked, copies, inc.vm)
                assert (u.origin, u.seq) in recorded(self.stores[inc.vm]), \
                    "acknowledged %s (%d copies) not durable on %s" % (acked, copies, inc.vm)
        # And so must every write that reached any disk, acknowledged or not.
        everywhere = set.union(*(recorded(s) for s in self.stores.values()))
        for vm, store in self.stores.items():
            assert recorded(store) == everywhere, "%s lacks stored writes" % (vm,)
        # Of the read marks, each store keeps only the one that wins per user.
        for vm, store in self.stores.items():
            marks = [u.read.user for u in store.durable.values() if u.read is not None]
            assert len(marks) == len(set(marks)), "%s keeps superseded read marks" % (vm,)


class ConvergenceTests(SynchronousTestCase):
    def test_replicas_converge_and_keep_every_acknowledged_write(self):
        """
        Whatever the writes, message loss, duplication and reordering,
        crashes and partitions, healed VMs end equal and hold every
        acknowledged write.
        """
        try:
            run_state_machine_as_test(ReplicationMachine,
                                      settings=settings(stateful_step_count=STEPS))
        except ExceptionGroup as group:
            # Several distinct failures: trial shows none of them, so say each.
            raise self.failureException("\n".join(
                "".join(traceback.format_exception(e)) for e in group.exceptions)) from group
        except Exception as e:
            # Hypothesis puts the steps of the shrunk counterexample in the
            # exception's notes, which trial does not print: add them.
            notes = getattr(e, "__notes__", ())
            if notes:
                e.args = ("\n".join([str(e), *notes]),)
            raise
