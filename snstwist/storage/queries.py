"""
What a store answers from what is committed, on a thread of its own over a
read-only connection (WAL: readers do not wait for the writer), so that a
lookup never waits for a batch's fsync: what a peer lacks, the copy of a
request, pages of posts (L{index.Index}'s queries).
"""

import sqlite3

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from snstwist.core.state import VersionVector
from snstwist.storage.index import Index


class Queries:
    """The queries of the record at C{dbPath}, run on their thread, answered through C{reactor}."""

    def __init__(self, reactor, dbPath):
        self.reactor = reactor
        self.dbPath = dbPath
        self._pool = ThreadPool(1, 1, name="sns-query")
        self._reader = None
        self._lookups = []  # (keys, Deferred) asked while a lookup is under way
        self._lookingUp = False
        self.lookups = 0

    def _onQuery(self, function, *args):
        if not self._pool.started:
            self._pool.start()
        return deferToThreadPool(self.reactor, self._pool, self._query, function, *args)

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

    def byRequests(self, keys):
        """
        The earliest stored copy of each request of C{keys}.  One lookup is
        on the query thread at a time; those asked meanwhile go together in
        the next (a thread handoff each would cost more than the lookups).
        """
        d = defer.Deferred()
        self._lookups.append((list(keys), d))
        if not self._lookingUp:
            self._lookUp()
        return d

    def _lookUp(self):
        asked, self._lookups = self._lookups, []
        self._lookingUp = bool(asked)
        if not asked:
            return
        self.lookups += 1
        found = self._onQuery(Index.byRequests, list({k for keys, _ in asked for k in keys}))

        def answer(result):
            self._lookUp()
            for keys, d in asked:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback({k: result[k] for k in keys if k in result})

        found.addBoth(answer)

    @defer.inlineCallbacks
    def close(self):
        if self._pool.started:
            if self._reader is not None:
                yield self._onQuery(lambda index: index.db.close())
                self._reader = None
            self._pool.stop()
