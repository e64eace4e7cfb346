"""
Replication between VMs: the L{Replicator} keeps one outbound
C{BroadcastPosts} stream (a L{peers.PeerLink}) to the master of every other
VM, and tells a writer when its update is durable on another VM, so that a
client's write is acknowledged only once two VMs hold it.
"""

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from snstwist.server.peers import ACK_TIMEOUT, UNLINKED_WAIT, PeerLink

log = Logger()

SWEEP = 0.5


@attrs.define
class _Waiter:
    """A writer waiting for a peer VM's durable copy of its update."""

    deferred: defer.Deferred
    update: object
    prefer: str | None
    peers: set  # the synced peers the update was pushed to
    deadline: float
    # Live peers without a synced stream, waited for until their stream
    # syncs (the update then goes to them) or their wait ends.
    unlinked: set = attrs.field(factory=set)
    acked: set = attrs.field(factory=set)
    also: list | None = None  # more writers of the same update (a retry)

    def ready(self):
        """Fire now?  The preferred peer has it, or any peer when none is preferred."""
        if self.prefer is not None:
            return self.prefer in self.acked
        return bool(self.acked) or not (self.peers or self.unlinked)

    def forget(self, vm):
        """C{vm} is waited for no more."""
        self.peers.discard(vm)
        self.unlinked.discard(vm)
        if self.prefer == vm:
            self.prefer = None

    def fire(self):
        self.deferred.callback(len(self.acked))
        for d in self.also or ():
            d.callback(len(self.acked))



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
        self._sweep = None
        # The other VMs the routers list as live (any of their servers),
        # and since when each of those without a synced stream is so.
        self.live = frozenset()
        self.unlinked = {}

    def setPeers(self, peers):
        """
        C{peers}: {vm: address} of the other live VMs' masters, or of their
        slaves taking over (L{routerlink.peersOf}).
        """
        for vm in list(self.links):
            if peers.get(vm) != self.links[vm].address:
                self.links.pop(vm).stop().addErrback(
                    lambda f, vm=vm: log.failure("closing the link to {vm} failed", f, vm=vm))
        for vm, address in peers.items():
            if vm != self.node.vm and vm not in self.links:
                link = self.links[vm] = PeerLink(self, vm, address)
                link.start()
        self.setLive(set(peers) - {self.node.vm})

    def setLive(self, live):
        """C{live}: the other VMs the routers list (with any server): awaited when unlinked."""
        now = self.clock.seconds()
        for vm in live - self.live:
            link = self.links.get(vm)
            if link is None or not link.synced:
                self.unlinked.setdefault(vm, now)
        gone = self.live - live
        self.live = frozenset(live)
        for vm in gone:
            # No router lists it: nobody waits for it any more.
            self.unlinked.pop(vm, None)
            self._drop(vm)

    def _awaited(self, now):
        """The live VMs without a synced stream whose wait has not ended."""
        return {vm for vm, since in self.unlinked.items() if now - since < UNLINKED_WAIT}

    def broadcast(self, update, prefer=None):
        """
        Push C{update} to every peer.  The Deferred fires with the number of
        other VMs holding it durably: when C{prefer} has it (if C{prefer} is
        a live peer), else when any peer has it; early with what it has when
        the peers it was pushed to are lost, and after L{ACK_TIMEOUT} at the
        latest; with 0 at once when no peer is connected or awaited.  A peer
        the routers list as live whose stream is not synced is awaited for
        L{UNLINKED_WAIT} from when it was lost (a promotion): the update
        goes to it when its stream syncs.
        """
        waiting = self.waiters.get(update.id)
        if waiting is not None:
            # A retry of a write still waiting for its copies: it waits with it.
            d = defer.Deferred()
            waiting.also = (waiting.also or []) + [d]
            return d
        synced = set()
        for vm, link in self.links.items():
            if link.synced:
                synced.add(vm)
                link.offer(update)
        now = self.clock.seconds()
        unlinked = self._awaited(now) if self.unlinked else set()
        if not synced and not unlinked:
            return defer.succeed(0)
        d = defer.Deferred()
        self.waiters[update.id] = _Waiter(
            d, update, prefer if prefer in synced or prefer in unlinked else None, synced,
            now + ACK_TIMEOUT, unlinked)
        if self._sweep is None:
            # One timer for every waiter, not one per write.
            self._sweep = self.clock.callLater(SWEEP, self._expire)
        return d

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

    def linked(self, link):
        """
        C{link}'s stream is synced: the writes waiting for its VM go to it,
        and are waited for as if pushed when they were made.
        """
        vm = link.vm
        self.unlinked.pop(vm, None)
        for waiter in self.waiters.values():
            if vm in waiter.unlinked:
                waiter.unlinked.discard(vm)
                waiter.peers.add(vm)
                link.offer(waiter.update)

    def linkLost(self, link):
        """
        C{link}'s stream broke.  The writes pushed on it and not yet
        acknowledged go to its VM's newer stream if that one is synced (the
        VM moved), wait for one while the routers list the VM as live (for
        L{UNLINKED_WAIT}), or else wait for its acks no more.
        """
        vm = link.vm
        pushed = [w for w in self.waiters.values() if vm in w.peers and vm not in w.acked]
        current = self.links.get(vm)
        if current is not None and current.synced:
            for waiter in pushed:
                current.offer(waiter.update)
            return
        now = self.clock.seconds()
        if vm in self.live:
            self.unlinked.setdefault(vm, now)
        awaited = vm in self._awaited(now)
        for waiter in pushed:
            if awaited:
                waiter.peers.discard(vm)
                waiter.unlinked.add(vm)
            else:
                waiter.forget(vm)
        self._fireReady()

    def _drop(self, vm):
        """Nobody waits for C{vm} any more."""
        for waiter in self.waiters.values():
            waiter.forget(vm)
        self._fireReady()

    def _fireReady(self):
        for key, waiter in list(self.waiters.items()):
            if waiter.ready():
                del self.waiters[key]
                waiter.fire()
        self._idle()

    def _expire(self):
        self._sweep = None
        now = self.clock.seconds()
        awaited = self._awaited(now) if self.unlinked else set()
        for key, waiter in list(self.waiters.items()):
            for vm in waiter.unlinked - awaited:
                waiter.forget(vm)
            if now >= waiter.deadline or waiter.ready():
                del self.waiters[key]
                waiter.fire()
        if self.waiters:
            self._sweep = self.clock.callLater(SWEEP, self._expire)

    def stop(self):
        waiters, self.waiters = self.waiters, {}
        for waiter in waiters.values():
            waiter.fire()
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        links, self.links = self.links, {}
        return defer.gatherResults([link.stop() for link in links.values()],
                                   consumeErrors=True)

    def lag(self):
        """Updates held here that the peer VM furthest behind has not confirmed."""
        return max((link.lacking() for link in self.links.values()), default=0)

    def peerStates(self):
        """How each outgoing stream is doing (L{pb.PeerStream}s, by VM)."""
        return [self.links[vm].state() for vm in sorted(self.links)]
