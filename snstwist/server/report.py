"""
What a server says about itself: its hello (to the routers and to its
buddy), its load (the routers' heartbeats) and its digest (for operators).
Read-only: nothing here changes the server.
"""

import os

from snstwist.core import metrics
from snstwist.core.limits import MAX_HEARTBEAT_USERS
from snstwist.rpc import sns_pb2 as pb

MAX_UINT32 = 2**32 - 1


class Report:
    """
    The server's self-description, from the parts that know each figure:
    C{address()} is where it serves clients and C{peerAddress()} the
    cluster's other processes (known once gRPC listens); C{writes} counts
    the acknowledged posts, C{fed} (a L{metrics.Traffic}) what the slave was
    fed.
    """

    def __init__(self, identity, current, address, peerAddress, node, sessions, replicator,
                 writes, fed=None):
        self.identity = identity
        self.current = current
        self.address = address
        self.peerAddress = peerAddress
        self.node = node
        self.sessions = sessions
        self.replicator = replicator
        self.writes = writes
        self.fed = fed if fed is not None else metrics.Traffic()

    def _role(self):
        return pb.MASTER if self.current.isMaster() else pb.SLAVE

    def hello(self):
        return pb.ServerHello(vm=self.identity.vm, role=self._role(), address=self.address(),
                              peer_address=self.peerAddress(), pid=os.getpid(),
                              incarnation=self.identity.incarnation)

    def buddyHello(self):
        return pb.BuddyHello(vm=self.identity.vm, role=self._role(), pid=os.getpid(),
                             address=self.peerAddress(),
                             incarnation=self.identity.incarnation,
                             have=self.node.replica.seen.toProto())

    def _unreplicated(self):
        return min(self.replicator.lag(), MAX_UINT32)

    def load(self):
        return pb.Heartbeat(clients=self.sessions.count(),
                            updates=self.node.replica.seen.count(),
                            pending=self._unreplicated(),
                            users=sorted(self.sessions.sessions)[:MAX_HEARTBEAT_USERS],
                            peers=self.replicator.peerStates(),
                            refused=self.node.window.refused,
                            acknowledged=self.writes.acknowledgedPosts,
                            fed_updates=self.fed.updates, fed_calls=self.fed.messages)

    def digest(self, after=""):
        """A Deferred L{pb.DigestReply}: what this VM holds, read from its store, a page."""
        def reply(digest):
            return pb.DigestReply(vm=self.identity.vm, updates=self.node.replica.seen.count(),
                                  unreplicated=self._unreplicated(),
                                  peers=self.replicator.peerStates(),
                                  refused=self.node.window.refused, **digest)

        return self.node.store.digest(after).addCallback(reply)
