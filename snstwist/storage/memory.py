"""
L{IStore} in memory (L{MemoryStore}), for the unit and property tests: the
same answers as L{store.SQLiteStore}, with no disk.
"""

from twisted.internet import defer
from zope.interface import implementer

from snstwist.core.state import VersionVector
from snstwist.storage import compaction
from snstwist.storage.istore import IStore


@implementer(IStore)
class MemoryStore:
    """
    L{IStore} in memory, for tests.  With C{manual=True} writes become durable
    only at L{flush}, so a test can crash a VM between acceptance and flush
    and lose exactly what was not flushed.
    """

    problem = None
    onProblem = None

    def __init__(self, manual=False):
        self.manual = manual
        self.durable = {}
        self.hidden = set()  # ids of the posts stored but not shown
        # Read marks compacted as SQLiteStore's record compacts them.
        self.superseded, self.marks = set(), compaction.Marks()
        self._pending = []
        self._floors = {}

    def open(self, known=None, posts=True):
        self._floors = {}
        if posts is None:
            return defer.succeed([])
        if known is None and not posts:
            # What SQLiteStore reads for a start: each author's newest key;
            # the state is read a page at a time (statePage).
            for u in self.durable.values():
                if u.post is not None and u.key > self._floors.get(u.post.author, (0, "")):
                    self._floors[u.post.author] = u.key
            return defer.succeed([])
        if known is None:
            return defer.succeed(list(self.durable.values()))
        return defer.succeed(compaction.missingPage(self.held(), known, self._rows, None))

    def held(self):
        held = VersionVector()
        for origin, seq in [*self.durable, *self.superseded]:
            held.add(origin, seq)
        return held

    def _rows(self, origin, start):
        return iter(sorted((n, u) for (o, n), u in self.durable.items()
                           if o == origin and n > start))

    def missing(self, remote, limit, after=None):
        return defer.succeed(compaction.missingPage(self.held(), remote, self._rows, limit, after))

    def byRequests(self, keys):
        keys = set(keys)
        found = {}
        for u in self.durable.values():
            request = u.request
            if request in keys and (request not in found or u.key < found[request].key):
                found[request] = u
        return defer.succeed(found)

    def requests(self, keys, requesters):
        requesters = set(requesters)
        greatest = {}
        for u in self.durable.values():
            if u.request_id and u.requester in requesters:
                greatest[u.requester] = max(greatest.get(u.requester, ""), u.request_id)
        return self.byRequests(keys).addCallback(lambda found: (found, greatest))

    def page(self, authors, cursor, limit, inclusive=False):
        posts = sorted((u for u in self.durable.values()
                        if u.post is not None and u.post.author in authors
                        and u.id not in self.hidden
                        and (u.key >= cursor if inclusive else u.key > cursor)),
                       key=lambda u: u.key)
        return defer.succeed(posts[:limit])

    def uncovered(self, authors, covered, after, upto, limit):
        posts = sorted((u for u in self.durable.values()
                        if u.post is not None and u.post.author in authors
                        and u.id not in self.hidden and not covered.has(u.origin, u.seq)
                        and after < u.key <= upto),
                       key=lambda u: u.key)
        return defer.succeed(posts[:limit])

    def floors(self):
        return self._floors

    def statePage(self, after, limit):
        """Pages of the updates not posts, in (origin, seq) order; a position is a count."""
        return self.stateSince(VersionVector(), after, limit)

    def stateSnapshot(self):
        """Memory keeps no snapshot: a start reads the state a page at a time."""
        return defer.succeed(None)

    def stateSince(self, covers, after, limit):
        """L{statePage} of the updates C{covers} lacks."""
        state = [self.durable[k] for k in sorted(self.durable)
                 if self.durable[k].post is None and not covers.has(*k)]
        start = after or 0
        more = start + limit if len(state) > start + limit else None
        return defer.succeed((state[start:start + limit], more))

    def keepSnapshots(self):
        """Nothing to keep: memory writes no snapshot."""

    def newest(self, authors, limit):
        shown = [u for u in self.durable.values() if u.post is not None and u.id not in self.hidden]
        return defer.succeed({a: sorted((u for u in shown if u.post.author == a),
                                        key=lambda u: u.key)[-limit:] for a in authors})

    def persist(self, updates, hidden=frozenset(), displaced=()):
        d = defer.Deferred()
        self._pending.append((list(updates), set(hidden) | {u.id for u in displaced}, d))
        if not self.manual:
            self.flush()
        return d

    def flush(self):
        pending, self._pending = self._pending, []
        for updates, hidden, d in pending:
            for u in updates:
                compaction.keep(self.durable, self.superseded, self.marks, u)
            self.hidden |= hidden
            d.callback(None)

    def crash(self):
        """Forget everything not yet flushed; its Deferreds never fire."""
        self._pending = []

    def close(self):
        return defer.succeed(None)
