"""
What a store answers from what is committed, on a thread of its own over a
read-only connection (WAL: readers do not wait for the writer), so that a
lookup never waits for a batch's fsync: what a peer lacks, the copy of a
request, pages of posts (L{index.Index}'s queries).
"""

import sqlite3

from twisted.internet import defer
from twisted.python.failure import Failure

from snstwist.core.state import VersionVector
from snstwist.storage.index import Index
from snstwist.storage.threads import DiskThread


def _lookUp(index, keys, requesters):
    """
    On the query thread: the earliest copy of each request of C{keys}
    (L{Index.byRequests}), and the greatest request id (as strings compare)
    stored of each of C{requesters} that has one, an index seek each.
    """
    greatest = {}
    for requester in requesters:
        (last,) = index.db.execute(
            "SELECT max(request) FROM record WHERE requester = ? AND request IS NOT NULL",
            (requester,)).fetchone()
        if last is not None:
            greatest[requester] = last
    return index.byRequests(keys), greatest


class Queries:
    """The queries of the record at C{dbPath}, run on their thread, answered through C{reactor}."""

    def __init__(self, reactor, dbPath):
        self.reactor = reactor
        self.dbPath = dbPath
        self._thread = DiskThread(reactor, "sns-query")
        self._reader = None
        self._lookups = []  # (keys, requesters, Deferred) asked while a lookup is under way
        self._lookingUp = False
        self.lookups = 0

    def _onQuery(self, function, *args):
        return self._thread.run(self._query, function, *args)

    def _query(self, function, *args):
        if self._reader is None:
            self._reader = Index(sqlite3.connect("file:%s?mode=ro" % (self.dbPath,),
                                                 uri=True, check_same_thread=False))
        return function(self._reader, *args)

    def missing(self, remote, limit, after=None):
        remote = VersionVector.fromProto(remote.toProto())  # it may change meanwhile
        return self._onQuery(Index.missing, remote, limit, after)

    def page(self, authors, cursor, limit, inclusive=False):
        return self._onQuery(Index.page, list(authors), cursor, limit, inclusive)

    def uncovered(self, authors, covered, after, upto, limit):
        covered = VersionVector.fromProto(covered.toProto())  # it may change meanwhile
        return self._onQuery(Index.uncovered, list(authors), covered, after, upto, limit)

    def newest(self, authors, limit):
        return self._onQuery(Index.newestOf, list(authors), limit)

    def statePage(self, after, limit):
        return self._onQuery(Index.statePage, after, limit)

    def byRequests(self, keys):
        """The earliest stored copy of each request of C{keys} (see L{requests})."""
        return self.requests(keys, ()).addCallback(lambda answer: answer[0])

    def requests(self, keys, requesters):
        """
        The earliest stored copy of each request of C{keys}, and the
        greatest request id stored of each of C{requesters}.  One lookup is
        on the query thread at a time; those asked meanwhile go together in
        the next (a thread handoff each would cost more than the lookups).
        """
        d = defer.Deferred()
        self._lookups.append((list(keys), list(requesters), d))
        if not self._lookingUp:
            self._lookUp()
        return d

    def _lookUp(self):
        asked, self._lookups = self._lookups, []
        self._lookingUp = bool(asked)
        if not asked:
            return
        self.lookups += 1
        found = self._onQuery(_lookUp, list({k for keys, _, _ in asked for k in keys}),
                              list({r for _, requesters, _ in asked for r in requesters}))

        def answer(result):
            self._lookUp()
            for keys, requesters, d in asked:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    copies, greatest = result
                    d.callback(({k: copies[k] for k in keys if k in copies},
                                {r: greatest[r] for r in requesters if r in greatest}))

        found.addBoth(answer)

    @defer.inlineCallbacks
    def close(self):
        if self._reader is not None:
            yield self._onQuery(lambda index: index.db.close())
            self._reader = None
        yield self._thread.stop()


class Committed:
    """
    The methods of L{IStore} that read what is committed: a store's
    L{Queries} (its C{_queries}) answers them on the query thread.
    """

    def missing(self, remote, limit, after=None):
        return self._queries.missing(remote, limit, after)

    def byRequests(self, keys):
        return self._queries.byRequests(keys)

    def requests(self, keys, requesters):
        return self._queries.requests(keys, requesters)

    def page(self, authors, cursor, limit, inclusive=False):
        return self._queries.page(authors, cursor, limit, inclusive)

    def uncovered(self, authors, covered, after, upto, limit):
        return self._queries.uncovered(authors, covered, after, upto, limit)

    def newest(self, authors, limit):
        return self._queries.newest(authors, limit)

    def statePage(self, after, limit):
        return self._queries.statePage(after, limit)
