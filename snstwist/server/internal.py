"""
The cluster-internal C{Cluster} service: C{BroadcastPosts} and
C{BuddyConnection} (a master's), C{Onetime_s_to_buddy} (a slave's: how the
master keeps its standby warm) and C{Digest} (a master's view, for
operators).  Every call must carry the cluster secret.
"""

from snstwist.core import errors
from snstwist.core.limits import UPDATES_PER_MESSAGE
from snstwist.core.model import Update, checkCount
from snstwist.core.observers import Observers
from snstwist.core.pages import checkDigestAfter
from snstwist.rpc import auth
from snstwist.rpc import sns_pb2 as pb
from snstwist.server.peers import ReplicaReceiver


class ClusterApi:
    """
    The servicer functions of C{Cluster}.  C{current} is our role (a slave's
    calls are refused by a master and the other way round, through
    C{admission}); C{masterEnd} answers our slave; C{report} gives the digest.
    """

    def __init__(self, secret, current, admission, node, clock, report, masterEnd):
        self.secret = secret
        self.current = current
        self.admission = admission
        self.node = node
        self.clock = clock
        self.report = report
        self.masterEnd = masterEnd
        # A slave's: told after each batch from the master is applied.
        self.mirrored = Observers("updates mirrored from the master")
        # A slave's: the peers' streams waiting for it to be master, told
        # when it is (L{lifecycle.Lifecycle.mastering}).
        self.standbyStreams = Observers("this slave serving as master")

    def unary(self):
        return {"Onetime_s_to_buddy": self.onetimeSToBuddy, "Digest": self.digest}

    def streams(self):
        return {"BroadcastPosts": self.broadcastPosts, "BuddyConnection": self.buddyConnection}

    def onetimeSToBuddy(self, request, ctx):
        auth.checkSecret(ctx, self.secret)
        if not self.current.isSlave():
            raise errors.NotBuddy("this server is not a slave")
        checkCount(request.updates, "updates in one message", UPDATES_PER_MESSAGE)
        updates = [Update.fromProto(u) for u in request.updates]
        # The master checked its peers' times; a buddy's are checked again,
        # so that nothing poisons the clock of a master-to-be.
        applied = self.node.mirror(self.node.window.accepted(updates))
        self.mirrored()
        return pb.BuddyAck(applied=applied)

    def digest(self, request, ctx):
        # Post file names are user names: for operators only.
        auth.checkSecret(ctx, self.secret)
        self.admission.asMaster()
        return self.report.digest(checkDigestAfter(request.after))

    def buddyConnection(self, ctx):
        auth.checkSecret(ctx, self.secret)
        self.admission.asMaster()
        return self.masterEnd.connection()

    def broadcastPosts(self, ctx):
        auth.checkSecret(ctx, self.secret)
        if self.current.name in ("slave", "promoting"):
            # A peer dials the slave of a VM whose master is gone: its
            # stream is open, TLS and all, by the time we are master.
            return ReplicaReceiver(self.node, self.clock, standby=self.standbyStreams,
                                   isMaster=self.current.isMaster)
        self.admission.asMaster()
        return ReplicaReceiver(self.node, self.clock)
