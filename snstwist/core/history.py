"""
What a VM holds on disk only, asked for through its store: the replica in
memory (L{state.Replica}) keeps users, follows, read marks, version vectors
and the newest posts of each author; the rest is read when it is needed.

- the copy of a request, before a write of that request is applied (the
  dedupe of a client's retry, L{History.knowRequests});
- what a peer or the slave lacks, a page at a time (L{History.missingPages});
- a page of a returning reader's timeline older than memory holds
  (L{History.timelinePage});
- the newest posts of authors whose windows memory let go, or has not
  read since it started (L{History.recent}).

Every answer is a Deferred: the store reads on its own thread, never on the
reactor's.
"""

import functools
import itertools

from twisted.internet import defer, task
from twisted.logger import Logger

from snstwist.core.slices import inSlices
from snstwist.core.stateload import Rebuild
from snstwist.core.window import Windows

log = Logger()

# Updates read from the store per page of a catch-up (a peer's or the slave's).
MISSING_PAGE = 1000
# Updates of the state (users, passwords, follows, read marks) read a page at a start.
STATE_PAGE = 2000


class History:
    """The store-backed reads of the node C{node} (it may change stores: read each time)."""

    missingPage = MISSING_PAGE

    def __init__(self, node):
        self.node = node
        # Has the node applied what a start (or a warm-up) reads?
        self.warm = False

    # -- what a node reads when it starts, warms up or takes over

    def _held(self, store):
        """After C{store} was read: the replica holds all it holds (ranges, not updates)."""
        node = self.node
        node.replica.seen.merge(store.held())
        node.seq = node.replica.lastSeq(node.origin)

    def _apply(self, read, store):
        """
        Apply what C{read} (a Deferred list of updates read from C{store},
        no post) brings, then the state a Login and a write need (users,
        passwords, follows, read marks) a page at a time, each in slices
        (L{slices}, L{readState}).  First memory lets go of every window
        and knows each author's newest post stored (L{IStore.floors}): each
        window is read from disk when it is first asked for (L{recent},
        L{timelinePage}), and the posts written from now on are held.
        """
        d = read.addCallback(lambda updates: self._cold(store.floors()) or updates)
        d.addCallback(self.node.mirrorAll)
        d.addCallback(lambda fresh: defer.ensureDeferred(readState(self.node, store, fresh)))

        def applied(fresh):
            self._held(store)
            self.warm = True
            return fresh

        return d.addCallback(applied)

    def load(self):
        """
        Open the node's store and apply what memory holds of it (never the
        whole history: L{IStore.open}), in slices (L{slices}); then, as the
        VM's writer, keep its state snapshot (L{IStore.keepSnapshots}).
        """
        store = self.node.store
        return self._apply(store.open(posts=False), store).addCallback(self._keep, store)

    @staticmethod
    def _keep(fresh, store):
        store.keepSnapshots()
        return fresh

    def warmUp(self):
        """The same, read without the writer lock: a slave warming up while its master writes."""
        store = self.node.store
        return self._apply(store.read(posts=False), store)

    def adopt(self, store):
        """
        Open C{store} as the VM's writer (a promoted slave) and apply what
        the mirror lacks of it: a warm slave only what its master had not
        fed it yet, a page at a time (L{missingPages}), nothing in
        proportion to the history; a cold one (its warm-up not done) what a
        start reads.  The requests remembered are forgotten, and the
        windows let go (L{Windows.releaseAll}): a slave applies what its
        master feeds it and never looks a request up, so a later copy of a
        retried post whose first copy it does not remember (stored before
        it started, or forgotten since) is held as shown; the record says
        which copy is, and each window is read from it when first asked for.
        """
        if self.warm:
            fresh = [0]

            def mirror(updates):
                d = self.node.mirrorAll(updates)
                return d.addCallback(lambda n: fresh.__setitem__(0, fresh[0] + n))

            def tail(_):
                seen = self.node.replica.seen
                if not store.held().lacking(seen):
                    # The master had fed the mirror everything it stored: no
                    # query (and no query thread started) before serving.
                    return None
                return self.missingPages(seen, mirror, self.missingPage)

            d = store.open(posts=None).addCallback(tail)
            d.addCallback(lambda _: fresh[0])
        else:
            d = self._apply(store.open(posts=False), store)
        d.addCallback(self._keep, store)

        def opened(fresh):
            self.warm = True
            self._forget(self.node.replica)
            self._held(store)
            return fresh

        return d.addCallback(opened)

    def _cold(self, floors):
        """
        Hold no window (a cold slave taking over may hold some it was fed),
        every author's posts up to C{floors} on disk only; the clock is
        then past every post stored.
        """
        replica, old = self.node.replica, self.node.replica.windows
        replica.windows = Windows(old.hotPosts, old.authorBytes, old.windowBytes)
        replica.startCold(floors)
        self.node.hlc.observe(max((key[0] for key in floors.values()), default=0))

    def _forget(self, replica):
        """
        Forget the requests C{replica} remembers and let its windows go
        (L{Windows.releaseAll}), freeing both in slices: ten thousand
        requests, or 160,000 posts held, freed at once hold the reactor for
        tens of milliseconds.
        """
        remembered, replica.requests = replica.requests, replica.requests.emptied()
        windows = replica.windows.releaseAll()
        frees = itertools.chain((remembered.forgetOldest for _ in range(len(remembered))),
                                (functools.partial(windows.pop, a) for a in list(windows)))
        inSlices(self.node.clock, frees, lambda free: free())

    # -- what is read when it is needed

    def knowRequests(self, requests):
        """
        Make the replica know the earliest stored copy of each request of
        C{requests} ((requester, request id) pairs) that it does not
        remember.  Fires once it does; nothing waits when it remembers all
        or knows the rest to be new (L{Replica.answersRequest}).  The store
        is asked for the requests it may hold, and for the greatest request
        id of each requester whose floor memory lacks
        (L{RememberedRequests.learnFloor}).
        """
        replica = self.node.replica
        unknown = set()
        for r in requests:
            if r and not replica.answersRequest(r):
                # Forgotten before its copy reached the disk: that copy.
                writing = self.node.writing.copyOf(r)
                if writing is not None:
                    replica.rememberRequest(writing)
                else:
                    unknown.add(r)
        if not unknown:
            return defer.succeed(None)
        # The floors go to the memory that asked (a promotion replaces it:
        # a reading older than the new one is no floor of it).
        remembered = replica.requests
        requesters = {requester for requester, _ in unknown
                      if not remembered.knowsFloor(requester)}

        def found(answer):
            copies, greatest = answer
            for update in copies.values():
                replica.rememberRequest(update)
            for requester in requesters:
                remembered.learnFloor(requester, greatest.get(requester, ""))

        return self.node.store.requests(unknown, requesters).addCallback(found)

    def byRequest(self, user, requestId):
        """A Deferred of the update C{user}'s request C{requestId} made, or None."""
        if not requestId:
            return defer.succeed(None)
        d = self.knowRequests([(user, requestId)])
        return d.addCallback(lambda _: self.node.replica.byRequest(user, requestId))

    def missingPages(self, remote, send, page=MISSING_PAGE):
        """
        Call C{send(updates)} with each page of the stored updates that the
        version vector C{remote} lacks, the next page once what C{send}
        returned has fired (flow control); fires when every page is sent.
        """
        done = defer.Deferred()

        def nextPage(after):
            d = self.node.store.missing(remote, page, after)
            d.addCallback(sent)
            d.addErrback(done.errback)

        def sent(updates):
            if not updates:
                done.callback(None)
                return
            d = defer.maybeDeferred(send, updates)
            last = (updates[-1].origin, updates[-1].seq)
            if len(updates) < page:
                d.addCallback(lambda _: done.callback(None))
            else:
                d.addCallback(lambda _: nextPage(last))
            d.addErrback(done.errback)

        nextPage(None)
        return done

    def timelinePage(self, user, cursor, limit, inclusive=False):
        """
        A Deferred list of at most C{limit} posts of C{user}'s timeline after
        the post key C{cursor} (from it, if C{inclusive}), oldest first: from
        memory when it holds them all, else from disk merged with memory
        (which holds the posts not on disk yet).
        """
        replica = self.node.replica
        if replica.covers(user, cursor, inclusive):
            return defer.succeed(replica.timelinePage(user, cursor, limit, inclusive))

        def merged(stored):
            # Memory as it is now, once the disk answered: a post made
            # meanwhile is in one or the other.
            posts = {p.id: p for p in replica.timelinePage(user, cursor, limit, inclusive)}
            for u in stored:
                posts.setdefault(u.post.id, u.post)
            return sorted(posts.values(), key=lambda p: p.key)[:limit]

        d = self.node.store.page(replica.sources(user), cursor, limit, inclusive)
        return d.addCallback(merged)

    def recent(self, user, limit):
        """
        A Deferred list of the C{limit} newest posts of C{user}'s timeline,
        oldest first: from memory, once the windows of the authors whose
        newest posts memory lacks (L{Replica.coldSources}) are read from
        disk again.
        """
        replica = self.node.replica
        cold = replica.coldSources(user, limit)
        if not cold:
            return defer.succeed(replica.timeline(user, limit))
        read = max(limit, replica.hotPosts)

        def loaded(found):
            # Memory as it is now (it may hold posts not on disk yet), and
            # what was read, which memory may not keep (its bound).
            posts = {p.id: p for p in replica.timeline(user, limit)}
            for author, updates in found.items():
                stored = [u.post for u in updates]
                floor = stored.pop(0).key if len(stored) > read else None
                replica.windows.restore(author, stored, floor)
                for post in stored[-limit:]:
                    posts.setdefault(post.id, post)
            return sorted(posts.values(), key=lambda p: p.key)[-limit:]

        return self.node.store.newest(cold, read + 1).addCallback(loaded)


async def readState(node, store, fresh):
    """
    Apply the state C{store} holds to C{node}'s replica: its snapshot, a
    part a turn (L{stateload.Rebuild}), and the state updates it does not
    cover (L{IStore.stateSince}); or, with no snapshot, everything
    (L{IStore.statePage}).  Updates are read a page at a time and applied
    in slices: no reactor turn and no memory holds all of it, and the next
    page is read while one is applied.  What it applies is not noted in the
    version vector (L{Replica.applyState}; the follows may come as their
    registers, L{Index.statePage}): the store's is merged once all is read
    (L{History._held}).  Returns C{fresh} plus how many updates were read.
    """

    def apply(item):
        if type(item) is tuple:  # a follow register as the store holds it
            node.hlc.observe(item[2])
            node.replica.follows.apply(*item)
        else:
            node.hlc.observe(item.time_us)
            node.replica.applyState(item)

    if not store.held().origins:
        return fresh  # nothing is stored: no page to read
    snapshot = await store.stateSnapshot()
    if snapshot is not None:
        try:
            rebuild = Rebuild(snapshot.origins)
            for part in snapshot.parts():
                rebuild.apply(part)
                await task.deferLater(node.clock, 0, lambda: None)
        except Exception:
            # Checked, yet not what it says (built beside: nothing applied).
            log.failure("ignoring the state snapshot: it does not read; reading every row")
            snapshot = None
    if snapshot is None:
        pageOf = store.statePage
    else:
        rebuild.install(node.replica)
        node.hlc.observe(snapshot.maxTime)
        fresh += snapshot.count
        pageOf = functools.partial(store.stateSince, snapshot.covers)
    reading = pageOf(None, STATE_PAGE)
    while reading is not None:
        updates, after = await reading
        reading = pageOf(after, STATE_PAGE) if after is not None else None
        await inSlices(node.clock, updates, apply)
        fresh += len(updates)
    return fresh
