"""
A store's side of the state snapshot (L{snapshot}): reading it and the
changes since it at a start, on the store's query thread; and, for the
VM's writer, writing a new one now and then, on a thread and a read-only
connection of their own, so that neither the commits nor the queries wait
for it.
"""

import os
import sqlite3

from twisted.internet import defer, task
from twisted.logger import Logger

from snstwist.core.state import VersionVector
from snstwist.storage import snapshot
from snstwist.storage.index import Index
from snstwist.storage.queries import Queries
from snstwist.storage.threads import DiskThread

log = Logger()

# How often a writer looks whether a new snapshot is due (seconds).
CHECK_EVERY = 30.0


def _copy(vv):
    return VersionVector.fromProto(vv.toProto())


class Snapshots:
    """
    A VM writer's snapshots of the data directory C{path}: every
    C{checkEvery} seconds, one if it is due (L{snapshot.saveIfDue}).
    """

    checkEvery = CHECK_EVERY

    def __init__(self, reactor, clock, path, dbPath):
        self.reactor = reactor
        self.path = path
        self.dbPath = dbPath
        self._thread = DiskThread(reactor, "sns-snapshot")
        self._db = None
        self._covers = None  # what the last snapshot read or written covers
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = clock
        self._running = None
        self.written = 0

    def start(self):
        if not self._loop.running:
            self._loop.start(self.checkEvery, now=False).addErrback(
                lambda f: log.failure("state snapshots stopped", f))

    def refresh(self):
        """Look, and write a snapshot if one is due (once at a time); fires when done."""
        if self._running is not None:
            return self._running
        d = self._thread.run(self._refresh)

        def done(result):
            self._running = None
            return result

        d.addBoth(done).addErrback(lambda f: log.failure("writing the state snapshot failed", f))
        self._running = d
        return d

    def _refresh(self):
        if self._db is None:
            self._db = sqlite3.connect("file:%s?mode=ro" % (self.dbPath,), uri=True,
                                       check_same_thread=False)
        if self._covers is None:
            self._covers = self._covered()
        size = snapshot.saveIfDue(self.path, self._db, self._covers)
        if size is not None:
            self._covers = self._covered()
            self.written += 1
        return size

    def _covered(self):
        """
        What the snapshot on disk covers (nothing, if none can be used),
        checked against what is committed now: writes committed while it
        was written are in the record, not in it.
        """
        last = snapshot.read(self.path, Index(self._db).readVersions())
        return last.covers if last is not None else VersionVector()

    @defer.inlineCallbacks
    def stop(self):
        if self._loop.running:
            self._loop.stop()
        if self._running is not None:
            yield self._running
        if self._db is not None:
            yield self._thread.run(self._db.close)
            self._db = None
        yield self._thread.stop()


class StateQueries(Queries):
    """
    L{Queries} that also read the state snapshot and the state changes since
    it (on the query thread), and keep the writer's snapshots (L{Snapshots}).
    """

    def __init__(self, reactor, dbPath, clock=None):
        Queries.__init__(self, reactor, dbPath)
        self.path = os.path.dirname(dbPath)
        self.snapshots = Snapshots(reactor, clock or reactor, self.path, dbPath)

    def stateSnapshot(self, held):
        return self._onQuery(lambda index, path, held: snapshot.read(path, held), self.path,
                             _copy(held))

    def stateSince(self, covers, after, limit):
        return self._onQuery(lambda index, *args: snapshot.changes(index.db, *args),
                             _copy(covers), after, limit)

    @defer.inlineCallbacks
    def close(self):
        yield self.snapshots.stop()
        yield Queries.close(self)


class SnapshotStore:
    """The methods of L{IStore} about the state snapshot, for a store with L{StateQueries}."""

    def stateSnapshot(self):
        return self._queries.stateSnapshot(self.held())

    def stateSince(self, covers, after, limit):
        return self._queries.stateSince(covers, after, limit)

    def keepSnapshots(self):
        self._queries.snapshots.start()
