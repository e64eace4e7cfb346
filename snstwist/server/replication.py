"""
Replication between VMs: the L{Replicator} keeps one outbound
C{BroadcastPosts} stream (a L{peers.PeerLink}) to the master of every other
VM, and tells a writer when its update is durable on another VM, so that a
client's write is acknowledged only once two VMs hold it.
"""

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from snstwist.server.peers import ACK_TIMEOUT, PeerLink

log = Logger()

SWEEP = 0.5


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
        synced = set()
        for vm, link in self.links.items():
            if link.synced:
                synced.add(vm)
                link.offer(update)
        if not synced:
            return defer.succeed(0)
        d = defer.Deferred()
        self.waiters[update.id] = _Waiter(d, prefer if prefer in synced else None, synced,
                                          self.clock.seconds() + ACK_TIMEOUT)
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
