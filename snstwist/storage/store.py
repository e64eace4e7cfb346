"""
Durable storage of one VM, behind one narrow interface (L{IStore}).

Layout of a data directory (docs/design.md section 4)::

    DATA/sns.sqlite3        the record of every update held, indexed
                            (L{index}), with users, follows and read marks (WAL)
    DATA/posts/<user>.txt   the posts by <user>, one JSON object per line,
                            ordered by (time, id) (L{postfile})
    DATA/lock               held (flock) by the VM's single writer

All disk work runs on dedicated threads, never on the reactor (L{disk}).
Writes are group-committed: while one batch is being written, the next
accumulates, and a batch is durable (its Deferreds fire) once its SQLite
commit is: one fsync per batch, whatever its size.  The disk thread takes
the next batch itself as soon as one is written, while the reactor hears
of the last: a write that came meanwhile does not wait for that answer to
reach the reactor and its own batch to come back to the disk thread.  A
batch's post files are appended to before it fires and flushed after, off
the acknowledgement's path, by a sync thread that flushes everything
appended since its last round at once (a crash in between is repaired from
the record on open).
The WAL's checkpoints run on a thread of their own too (L{checkpoint}),
not inside a batch's commit.
What is stored is also asked for through the store, on a query thread:
what a peer lacks, the copy of a request, pages of posts.

A post that duplicates a request already shown (a client's retry that a
second VM accepted) is in the record but not in the post files, so that
every VM's files hold exactly the posts shown.
"""

import errno
import random
import sqlite3
import threading

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from snstwist.core import errors
from snstwist.core.backoff import backoffPolicy
from snstwist.core.state import HOT_POSTS, VersionVector
from snstwist.storage.checkpoint import Checkpointer, boundWal
from snstwist.storage.disk import DataLocked, Disk
from snstwist.storage.filesync import Flusher
from snstwist.storage.istore import IStore
from snstwist.storage.queries import Committed
from snstwist.storage.snapshots import SnapshotStore, StateQueries
from snstwist.storage.threads import DiskThread

log = Logger()

__all__ = ["IStore", "SQLiteStore", "DataLocked", "storageFailure"]



def storageFailure(error, where):
    """
    The L{errors.StorageFailed} saying, in a person's words, why a write to
    the disk of C{where} (a VM's name) failed with C{error}.
    """
    code = getattr(error, "errno", None)
    sqlName = getattr(error, "sqlite_errorname", "")
    if code in (errno.ENOSPC, errno.EDQUOT) or sqlName == "SQLITE_FULL":
        cause = "disk full"
    elif code in (errno.EMFILE, errno.ENFILE):
        cause = "no file descriptors left"
    elif sqlName == "SQLITE_CANTOPEN":
        cause = "cannot open the database (no file descriptors left?)"
    elif isinstance(error, (OSError, sqlite3.Error)):
        cause = "disk error"
    else:
        cause = "storage error"
    return errors.StorageFailed("%s on %s (%s): the write is not stored there yet; try again"
                                % (cause, where, error))


@implementer(IStore)
class SQLiteStore(Committed, SnapshotStore):
    """L{IStore} on SQLite and post files, with group commit on one thread."""

    # After a failed batch (disk full, no file descriptors) the writes wait
    # this long, then twice as long each time (backoffPolicy, with jitter),
    # before they are tried again.
    minRetryDelay = 0.25
    maxRetryDelay = 5.0
    jitter = staticmethod(random.random)

    def __init__(self, path, reactor=None, name=None, clock=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.clock = clock or reactor
        self.path = path
        self.name = name or path
        self._disk = Disk(path)
        self._thread = DiskThread(self.reactor, "sns-store")
        # The post files' flushes, off the acknowledgement's path.
        self._flusher = Flusher(self.reactor, self.clock, self._disk, self.name,
                                lambda: self._writing is not None, self._retryDelay)
        self._queries = StateQueries(self.reactor, self._disk.dbPath, self.clock)
        # The WAL's checkpoints, off the commits (L{checkpoint}).
        self._checkpointer = Checkpointer(self.reactor, self.clock, self._disk.dbPath,
                                          self.name)
        # What waits to be written, taken by the disk thread (L{_drain})
        # under the lock; C{_draining} while it writes, or a failed batch
        # waits for its retry.
        self._lock = threading.Lock()
        self._pending = []
        self._draining = False
        self._writing = None
        # What is stored or being written, as ranges per origin: a set of
        # (origin, seq) would cost about 90 bytes per post held.
        self._stored = VersionVector()
        self._floors = {}
        self._retry = None
        self._failedInARow = 0
        self._closing = False
        self.batches = 0
        self.problem = None
        self.onProblem = lambda error: None

    def _retryDelay(self, failedInARow):
        return backoffPolicy(self.minRetryDelay, self.maxRetryDelay,
                             jitter=self.jitter)(failedInARow)

    def _onDisk(self, function, *args):
        return self._thread.run(function, *args)

    def read(self, posts=True):
        """
        What L{open} reads, read without the writer lock and without
        repairing anything (a slave warming up while its master writes).
        """
        def read(result):
            updates, self._stored, self._floors = result
            return updates

        return self._onDisk(self._disk.read, HOT_POSTS if posts else None).addCallback(read)

    def held(self):
        return self._stored

    def floors(self):
        return self._floors

    def open(self, known=None, posts=True):
        if known is not None:
            # A copy, read on the disk thread: the replica goes on learning.
            known = VersionVector.fromProto(known.toProto())
        d = self._onDisk(self._openAndCount, known, HOT_POSTS if posts else None,
                         posts is not None)

        def loaded(result):
            updates, self._stored, self._floors = result
            log.info("opened {path}: {n} updates stored, {k} read", path=self.path,
                     n=self._stored.count(), k=len(updates))
            # The files the open checked and did not flush (disk.openRecord).
            self._flusher.soon()
            return updates

        return d.addCallback(loaded)

    def _openAndCount(self, known, hotPosts, read):
        """
        On the disk thread: what is stored (what C{known} lacks), its
        version vector, and each author's newest post key if no post is read.
        """
        updates = self._disk.open(hotPosts, known) if read else self._disk.openRecord() or []
        boundWal(self._disk.index.db)
        floors = self._disk.index.floors() if read and hotPosts is None and known is None else {}
        return updates, VersionVector.fromProto(self._disk.index.versions.toProto()), floors

    def persist(self, updates, hidden=frozenset(), displaced=()):
        fresh = []
        for u in updates:
            # Marked as stored one by one, so an update repeated within
            # this call is written once, like one repeated across calls.
            if not self._stored.has(u.origin, u.seq):
                self._stored.add(u.origin, u.seq)
                fresh.append(u)
        if not fresh and not displaced:
            return defer.succeed(None)
        d = defer.Deferred()
        with self._lock:
            self._pending.append((fresh, d, set(hidden), list(displaced)))
            start, self._draining = not self._draining, True
        if start:
            self._nextBatch()
        return d

    def _nextBatch(self):
        """
        Write everything pending, a batch at a time, on the disk thread
        (L{_drain}), until nothing is.  Each batch's Deferreds fire once it
        is on disk.  When the disk refuses one, it is kept and tried again
        (with backoff) until it is written; meanwhile C{problem} says why
        and C{onProblem(problem)} tells whoever waits, and no update is lost
        from the queue nor written twice.
        """
        self._retry = None
        writing = self._writing = self._onDisk(self._drain)
        writing.addCallback(self._drained, writing)
        writing.addErrback(lambda f: log.failure("{name}: the writer failed", f,
                                                 name=self.name))

    def _drain(self):
        """
        On the disk thread: write what is pending, one batch at a time, and
        hand each to the reactor (L{_written}) as it is written, until
        nothing is pending or the disk refuses a batch.  Returns the run's
        last batch written, as C{(batch, count)} (or None), and the batch
        the disk refused with its failure (or None).

        The last batch goes back with the run's end, in the one wake-up of
        the reactor that ends the run: at a low rate every run is one
        batch, and a second wake-up per batch would cost the reactor a turn
        and, when it lands while the reactor pushes the batch's posts, the
        interpreter.
        """
        last = None
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._draining = False
                    return last, None
            if last is not None:
                self._thread.callFromThread(self._written, *last)
                last = None
            updates = [u for ups, _, _, _ in batch for u in ups]
            hidden = set().union(*(h for _, _, h, _ in batch))
            displaced = [u for _, _, _, ds in batch for u in ds]
            try:
                self._disk.write(updates, hidden, displaced)
            except Exception:
                return None, (batch, Failure())
            last = batch, len(updates)

    def _written(self, batch, count):
        """On the reactor: C{batch} (of C{count} updates) is on disk."""
        self.batches += 1
        if self.problem is not None:
            log.info("{name}: the disk takes writes again ({n} updates written that"
                     " waited for it)", name=self.name, n=count)
            self.problem = None
            self._failedInARow = 0
        for _, d, _, _ in batch:
            d.callback(None)
        if not self._closing:
            # After its writers: a round wakes a thread of its own, which
            # would take the interpreter from their pushes and answers.
            self._flusher.soon()
            self._checkpointer.soon()

    def _drained(self, result, writing):
        """
        The disk thread's run C{writing} stopped (L{_drain}'s C{result}):
        its last batch written, if any, is on disk; then nothing was
        pending, or the disk refused a batch.  (A write that came after it
        found nothing pending, and before the reactor heard, started the
        next run: that one is in flight now.)
        """
        last, refused = result
        if self._writing is writing:
            self._writing = None
        if refused is None:
            if last is not None:
                self._written(*last)
            if not self._closing:
                # (Nothing is in flight now: whoever waits for the files to
                # settle may be told.)
                self._flusher.soon()
            return
        batch, f = refused
        first = self.problem is None
        self.problem = storageFailure(f.value, self.name)
        if first:
            log.error("{name}: writing {n} updates failed: {why}; they are kept and"
                      " written when the disk takes writes again, and new writes are"
                      " refused until then", name=self.name,
                      n=sum(len(ups) for ups, _, _, _ in batch), why=self.problem.message)
        # First in line again, with their Deferreds, for the retry (the
        # store stays draining: nothing starts a write before it).
        with self._lock:
            self._pending[:0] = batch
        delay = self._retryDelay(self._failedInARow)
        self._failedInARow += 1
        self._retry = self.clock.callLater(delay, self._nextBatch)
        self.onProblem(self.problem)


    def synced(self):
        """A Deferred that fires once every post file written is flushed (tests, close)."""
        return self._flusher.settled()

    def digest(self, after=""):
        """Hashes of the VM's files and tables (a dict), a page, read on the disk thread."""
        return self._onDisk(self._disk.digest, after)

    @defer.inlineCallbacks
    def close(self):
        self._closing = True
        while self._writing is not None:
            try:
                yield self._writing
            except Exception as e:
                # The writer's errback logged it.
                log.info("closing {path} after a failed write: {e}", path=self.path, e=e)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
            self._retry = None
            log.warn("{name}: closing with {n} updates not written: {why}", name=self.name,
                     n=sum(len(ups) for ups, _, _, _ in self._pending),
                     why=self.problem.message if self.problem else "")
        yield self._flusher.stop()
        yield self._checkpointer.stop()
        if self._thread.started and self._disk.index is not None:
            # The files flushed, and their authors out of unsynced (else repaired on open).
            yield self._onDisk(self._disk.settle).addErrback(lambda f: log.warn(
                "{name}: closing with post files not flushed: {why}", name=self.name,
                why=f.getErrorMessage()))
        yield self._queries.close()
        if self._thread.started:
            yield self._onDisk(self._disk.close)
        yield self._thread.stop()


def __getattr__(name):
    # MemoryStore, the tests' store, lives in memory.py.
    if name == "MemoryStore":
        from snstwist.storage.memory import MemoryStore
        return MemoryStore
    raise AttributeError(name)
