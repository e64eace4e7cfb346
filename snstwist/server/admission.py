"""
What the client-facing service lets in, and when it answers a write.

- L{Admission}: only the VM's master serves clients, and only calls that
  carry a live session token of the user's current password generation;
- L{Writes}: a write is applied once per (user, request id), answered once
  it is durable here and (when a peer VM is connected) on another VM, and
  the writes waiting for that are bounded.
"""

from twisted.internet import defer
from twisted.python.failure import Failure

from snstwist.core import errors, limits, metrics
from snstwist.core.model import checkRequestId, checkVm
from snstwist.rpc import auth
from snstwist.rpc import sns_pb2 as pb


class Admission:
    """
    Who may call the SNS service here.  C{current} is this process's
    L{lifecycle.CurrentRole}; tokens are signed with C{secret} and last
    C{tokenLifetime} seconds (L{limits.TOKEN_LIFETIME} by default).
    """

    def __init__(self, vm, secret, clock, node, current, tokenLifetime=None):
        self.vm = vm
        self.secret = secret
        self.tokens = auth.GenuineTokens(secret)
        self.clock = clock
        self.node = node
        self.current = current
        self.tokenLifetime = tokenLifetime or limits.TOKEN_LIFETIME

    def asMaster(self):
        """Refuse the call unless this process is the VM's master (NotMaster)."""
        if not self.current.isMaster():
            raise errors.NotMaster("this server is the %s of VM %s, not its master"
                                   % (self.current.name, self.vm))

    def session(self, ctx):
        """The L{auth.Session} the call acts as, on a master only."""
        self.asMaster()
        return auth.sessionOf(ctx, self.secret, self.clock.seconds(), self.generation,
                              self.tokens)

    def user(self, ctx):
        return self.session(ctx).user

    def generation(self, user):
        """C{user}'s password generation here (None: this VM does not know it yet)."""
        register = self.node.replica.password(user)
        return register.key if register is not None else None

    def loginReply(self, user, created=False):
        """A fresh token for C{user}, of its current password generation."""
        expires = int(self.clock.seconds() + self.tokenLifetime)
        token = auth.makeToken(self.secret, user, expires, self.generation(user) or (0, ""))
        return pb.LoginReply(token=token, created=created, expires=expires)


def _kind(update):
    """What a client's write was, for the metrics: post, follow or unfollow."""
    if update.post is not None:
        return "post"
    return "follow" if update.follow.following else "unfollow"


# The counter of each kind of write acknowledged, looked up once, not once a write.
_acknowledged = {}


def _countAcknowledged(update):
    kind = _kind(update)
    counter = _acknowledged.get(kind)
    if counter is None:
        counter = _acknowledged[kind] = metrics.acknowledgedWrites.labels(kind)
    counter.inc()


class _Copies:
    """
    The VMs holding a write: fires with 1 (this VM's flush, C{durable}) +
    the other VMs' durable copies (C{replicated}) once both are known, or
    with the first failure at once (the disk's refusal, StorageFailed,
    reaches the client as itself); a failure after that is consumed.  What
    C{gatherResults} of the two did, without its list and wrappers: this
    is on the path of every write.
    """

    __slots__ = ("deferred", "waiting", "others")

    def __init__(self, durable, replicated):
        self.deferred = defer.Deferred()
        self.waiting = 2
        self.others = 0
        durable.addBoth(self._one, False)
        replicated.addBoth(self._one, True)

    def _one(self, result, fromPeers):
        if self.deferred.called:
            return None
        if isinstance(result, Failure):
            self.deferred.errback(result)
            return None
        if fromPeers:
            self.others = result
        self.waiting -= 1
        if not self.waiting:
            self.deferred.callback(1 + self.others)
        return None


def writeReply(update, copies):
    """The C{WriteReply} of C{update}, held by C{copies} VMs: a post's carries the post."""
    if update.post is None:
        return pb.WriteReply(id=update.id, copies=copies)
    return pb.WriteReply(id=update.id, copies=copies, post=update.encoding().post)


class Writes:
    """
    The writes of this master's clients: applied on C{node}, replicated by
    C{replicator}, answered once held by enough VMs.
    """

    maxWriting = 10000

    def __init__(self, node, replicator):
        self.node = node
        self.replicator = replicator
        self.writing = 0
        self.acknowledgedPosts = 0

    def write(self, user, request, make, check, answer=None):
        """
        Apply a write once per (user, request id); answer when it is durable.
        C{make(user, requestId)} applies it (on the node) and returns its
        update; C{check(user)} refuses bad input (and takes the user's rate
        token) at once, before the disk is asked whether it is a retry.
        The Deferred fires with C{answer(update, copies)}: by default the
        C{WriteReply} (L{writeReply}); a session's post is answered with its
        stream's message built at once (L{sessionposts.answerOf}).

        The reply's id names the copy of the request this VM holds.  A write
        is identified by its request, not by that id: when a VM stored a
        request and died before answering, and the client's retry was
        stored by another VM, the request has two copies; every VM shows the
        earlier by (time, id) and hides the other, so the reply may name the
        hidden copy (this VM could not know of one still on a dead VM's
        disk).  Either way the request is shown exactly once.
        """
        requestId = checkRequestId(request.request_id)
        if request.prefer_vm:
            checkVm(request.prefer_vm, "preferred VM")
        if self.writing >= self.maxWriting:
            # Writes waiting on disks and peers are bounded: past that the
            # client is told to back off instead of growing our memory.
            raise errors.Overloaded("%d writes in flight on this master; try again"
                                    % (self.writing,))
        check(user)
        if requestId and not self.node.replica.answersRequest((user, requestId)):
            # Is it a retry?  Its first copy may be on disk only.  (Waiting
            # for the disk counts as a write in flight.)
            self.writing += 1

            def known(done):
                self.writing -= 1
                return self._writeOnce(user, requestId, done, request, make, answer)

            def failed(f):
                self.writing -= 1
                return f

            return self.node.history.byRequest(user, requestId).addCallbacks(known, failed)
        done = self.node.replica.byRequest(user, requestId) if requestId else None
        return self._writeOnce(user, requestId, done, request, make, answer)

    def _writeOnce(self, user, requestId, update, request, make, answer):
        """Apply the write, unless C{update} is the copy of its request already applied."""
        if update is None:
            update = make(user, requestId)
        # else a retry of a command we (or a peer VM: its master may have
        # died before answering) already applied: sent to the peers again,
        # so that it too is answered with the copies really held.
        d = self.acknowledged(update, request.prefer_vm)
        self.writing += 1
        return d.addBoth(self._reply, update, answer or writeReply)

    def _reply(self, copies, update, answer):
        """The answer to the write of C{update}, held by C{copies} VMs (or its failure)."""
        self.writing -= 1
        if isinstance(copies, Failure):
            return copies
        _countAcknowledged(update)
        metrics.copies.observe(copies)
        if update.post is not None:
            self.acknowledgedPosts += 1
        return answer(update, copies)

    def acknowledged(self, update, prefer):
        """Fires with the number of VMs holding C{update} durably (at least 1)."""
        replicated = self.replicator.broadcast(update, prefer or None)
        return _Copies(self.node.durable(update), replicated).deferred
