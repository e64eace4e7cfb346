"""
One VM's node: its replica of the data, the rules every write obeys, and the
hybrid logical clock that orders them.

A L{Node} accepts local writes (giving each a globally unique id and a
hybrid logical clock timestamp), applies writes received from peers, and
makes both durable through its L{snstwist.storage.store.IStore}.  It knows
nothing of gRPC or of who listens: what became durable is announced to the
observers that subscribed (L{Node.addDurableObserver}).
"""

import os

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.core import errors
from snstwist.core.limits import MAX_UPDATE_BYTES, MAX_USERS
from snstwist.core.model import (
    FollowChange,
    PasswordChange,
    Post,
    ReadMark,
    Update,
    checkTime,
    updateId,
)
from snstwist.core.history import History
from snstwist.core.observers import CountDown, Observers
from snstwist.core.requests import WritingRequests
from snstwist.core.slices import inSlices
from snstwist.core.state import Replica, Seen, VersionVector

log = Logger()


class HybridClock:
    """
    Microsecond timestamps that never go backwards and exceed every timestamp
    observed from peers: physical time when the clocks agree, a logical bump
    when they do not.
    """

    def __init__(self, clock, skew=0.0):
        self.clock = clock
        self.skew = skew  # seconds our physical clock is ahead (a test of skew)
        self.last = 0

    @classmethod
    def fromEnvironment(cls, clock, environ=None):
        """
        A clock C{$SNS_CLOCK_SKEW} seconds ahead of C{clock} (behind, if
        negative): how tests give one VM a clock that disagrees with the others.
        """
        skew = (os.environ if environ is None else environ).get("SNS_CLOCK_SKEW")
        return cls(clock, float(skew) if skew else 0.0)

    def now(self):
        self.last = max(self.physical(), self.last + 1)
        return self.last

    def observe(self, time_us):
        self.last = max(self.last, time_us)

    def physical(self):
        """Our physical clock, in microseconds: what a peer's times are checked against."""
        return int((self.clock.seconds() + self.skew) * 1e6)



class ClockWindow:
    """
    Keeps a peer's clock from poisoning ours: an update dated more than
    L{CLOCK_WINDOW_US} ahead of our physical clock is refused (counted, and
    logged once per id), never observed by the hybrid clock.
    """

    def __init__(self, hlc):
        self.hlc = hlc
        self.refused = 0
        self._refusedIds = set()  # logged once each (bounded)

    def accepted(self, updates):
        """The updates (and their read marks) within the window, in order."""
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


def durableVector(node, origins=None):
    """
    The version vector of what is on C{node}'s disk (of C{origins} only, if
    given): every update held but those still being written, so everything
    the durable observers were told of, or that was durable before they were.
    """
    held = node.replica.seen.origins
    vector = VersionVector()
    for origin in held if origins is None else origins:
        seen = held.get(origin)
        if seen is not None:
            vector.origins[origin] = Seen(seen.contiguous, set(seen.extra))
    for pending in node._durable:
        origin, _, seq = pending.rpartition("/")
        if origin in vector.origins:
            vector.discard(origin, int(seq))
    return vector


class Node:
    """
    One VM's replica: the in-memory state, its durable store, and the rules
    for accepting writes.  Whoever acts on what became durable (live
    sessions, the slave's feed, password revocation) subscribes with
    L{addDurableObserver}: the node knows none of them.
    """

    def __init__(self, vm, origin, store, clock):
        self.vm = vm
        self.origin = origin
        self.clock = clock
        self.hlc = HybridClock.fromEnvironment(clock)
        self.window = ClockWindow(self.hlc)
        self.replica = Replica()
        self.history = History(self)
        self.seq = 0
        self._durable = {}  # update id -> Deferreds (or a CountDown) waiting for its flush
        self.writing = WritingRequests()
        self._durableObservers = Observers("durable updates")
        self._watch(store)

    def addDurableObserver(self, observer):
        """
        Call C{observer(updates)} with every batch of new updates (local or
        from peers, not those mirrored) once it is on this VM's disk: only
        then may a post be shown to a client or fed to the slave.
        """
        self._durableObservers.add(observer)

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
        """Open the store and apply what memory holds of it (L{History.load})."""
        return self.history.load()

    def _new(self, requestId, **change):
        # Take the seq only once the update is built: a write rejected by
        # validation must not leave a hole in our origin's sequence (peers
        # would carry it in their version vectors forever).
        seq = self.seq + 1
        time_us = self.hlc.now()
        if "post" in change:
            change["post"] = Post(id=updateId(self.origin, seq), time_us=time_us,
                                  request=requestId, **change["post"])
        update = Update(origin=self.origin, seq=seq, time_us=time_us,
                        request_id=requestId, **change)
        size = update.encoding().ByteSize()
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
        requested = self.writing.started(updates)

        def finished(result):
            failed = isinstance(result, Failure)
            self.writing.finished(requested)
            waiting = [d for i in ids for d in self._durable.pop(i, ())]
            if failed:
                log.failure("storing {n} updates failed", result, n=len(updates))
            else:
                # Shown before answered: an answer sent first delays the push.
                self._durableObservers(updates)
            for d in waiting:
                d.errback(result) if failed else d.callback(None)

        self.store.persist(updates, hidden, displaced).addBoth(finished)

    def isDurable(self, updateId):
        """Is the update C{updateId} (held here) on this VM's disk yet?"""
        return updateId not in self._durable

    def durable(self, update):
        """A Deferred that fires once C{update} is on this VM's disk."""
        return self.allDurable((update,))

    def allDurable(self, updates):
        """A Deferred: all of C{updates} are on this VM's disk (or the first failure)."""
        pending = [self._durable[u.id] for u in updates if u.id in self._durable]
        if not pending:
            return defer.succeed(None)
        if self.store.problem is not None:
            # Kept, and written once the disk takes writes again: not yet.
            return defer.fail(errors.StorageFailed(self.store.problem.message))
        return CountDown.among(pending)

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
        accepted = self.window.accepted(updates)
        # Whether a post is a retry's second copy is known before it is
        # applied: the earliest copy of each request may be on disk only.
        d = self.history.knowRequests(u.request for u in accepted if u.request)
        return d.addCallback(lambda _: self._receive(accepted))

    def _receive(self, accepted):
        try:
            self._refuseIfStorageFailed()
        except errors.StorageFailed:
            return defer.fail()
        fresh, displaced = [], []
        for u in accepted:
            self.hlc.observe(u.time_us)
            if self.replica.apply(u, displaced):
                fresh.append(u)
        if fresh:
            self._persist(fresh, displaced)
        return self.allDurable(accepted).addCallback(lambda _: [u.id for u in accepted])

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
        return self.history.adopt(store)

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
        self.replica.checkFollow(user, target)
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
