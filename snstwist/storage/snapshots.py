"""
A store's side of the state snapshot (L{snapshot}): reading it and the
changes since it at a start, on the store's query thread; and, for the
VM's writer, writing a new one now and then, on a thread and a read-only
connection of their own, so that neither the commits nor the queries wait
for it.  A stop does not wait for a snapshot being written: it is
abandoned at its next page (or its SQLite statement interrupted), its
temporary file removed, the last snapshot left in place.
"""

import os
import sqlite3
import threading

from twisted.internet import defer, task
from twisted.logger import Logger

from snstwist.core.state import VersionVector
from snstwist.storage import snapshot
from snstwist.storage.index import Index
from snstwist.storage.queries import Queries
from snstwist.storage.snapshotparts import Aborted, Parts
from snstwist.storage.threads import DiskThread

log = Logger()

# How often a writer looks whether a new snapshot is due (seconds).
CHECK_EVERY = 30.0


def _copy(vv):
    return VersionVector.fromProto(vv.toProto())


def settings(environ=None):
    """
    {name: value} of the writer's settings the environment gives (the
    others keep their defaults): $SNS_SNAPSHOT_CHANGES, the state updates
    not covered that make a new snapshot due (L{snapshot.CHANGES});
    $SNS_SNAPSHOT_EVERY, the seconds between two looks (L{CHECK_EVERY});
    $SNS_SNAPSHOT_PAUSE, seconds the writer rests after each page (none by
    default: a gentler writer, its snapshot later).  A bad value is a
    ValueError that names it.
    """
    environ = os.environ if environ is None else environ
    found = {}
    for name, attribute, kind, least in (("CHANGES", "changes", int, 1),
                                         ("EVERY", "checkEvery", float, 0.001),
                                         ("PAUSE", "pause", float, 0.0)):
        value = environ.get("SNS_SNAPSHOT_" + name)
        if value is None:
            continue
        try:
            found[attribute] = kind(value)
        except ValueError:
            found[attribute] = None
        if found[attribute] is None or not found[attribute] >= least:
            raise ValueError("$SNS_SNAPSHOT_%s must be a number of at least %s, not %r"
                             % (name, least, value))
    return found


class Snapshots:
    """
    A VM writer's snapshots of the data directory C{path}: every
    C{checkEvery} seconds, one if C{changes} state updates are not covered
    (L{snapshot.saveIfDue}); C{pause} seconds' rest after each page
    (L{snapshotparts.Parts}).  The environment may set them (L{settings}).
    """

    checkEvery = CHECK_EVERY
    changes = None  # snapshot.CHANGES
    pause = 0.0

    def __init__(self, reactor, clock, path, dbPath, environ=None):
        self.reactor = reactor
        self.path = path
        self.dbPath = dbPath
        for name, value in settings(environ).items():
            setattr(self, name, value)
        self._thread = DiskThread(reactor, "sns-snapshot")
        self._db = None
        self._covers = None  # what the last snapshot read or written covers
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = clock
        self._running = None
        self._stopping = threading.Event()
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

        d.addBoth(done).addErrback(self._failed)
        self._running = d
        return d

    def _failed(self, f):
        if self._stopping.is_set() and f.check(Aborted, sqlite3.OperationalError):
            log.info("stopped writing the state snapshot: the last one stays in place")
        else:
            log.failure("writing the state snapshot failed", f)

    def _refresh(self):
        if self._stopping.is_set():
            raise Aborted("the state snapshot's writer is stopping")
        if self._db is None:
            self._db = sqlite3.connect("file:%s?mode=ro" % (self.dbPath,), uri=True,
                                       check_same_thread=False)
        if self._covers is None:
            self._covers = self._covered()
        size = snapshot.saveIfDue(self.path, self._db, self._covers, self.changes,
                                  Parts(self._db, self._stopping, self.pause))
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
        """Stop looking, and stop a snapshot being written (L{Aborted}); fires once stopped."""
        if self._loop.running:
            self._loop.stop()
        self._stopping.set()
        if self._running is not None:
            if self._db is not None:
                self._db.interrupt()  # a long statement (the followers' sort)
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
