"""
The store's group commit (L{GroupCommit}, a part of L{store.SQLiteStore}):
writes are queued by L{GroupCommit.persist}, and the disk thread writes
them a batch at a time, taking the next itself as soon as one is written,
while the reactor hears of the last (docs/design.md section 4, "Off the
reactor").  A batch the disk refuses (full, no file descriptors) is kept,
first in line, and tried again with backoff until it is written; meanwhile
C{problem} says why.
"""

import errno
import random
import sqlite3
import threading

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.core import errors
from snstwist.core.backoff import backoffPolicy

log = Logger()


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


class GroupCommit:
    """
    The writes of a store: C{self._disk} (a L{disk.Disk}) written on
    C{self._thread} (a L{threads.DiskThread}); C{self._stored}, the version
    vector of what is stored or being written; C{self._flusher} and
    C{self._checkpointer}, told after each batch.
    """

    # After a failed batch (disk full, no file descriptors) the writes wait
    # this long, then twice as long each time (backoffPolicy, with jitter),
    # before they are tried again.
    minRetryDelay = 0.25
    maxRetryDelay = 5.0
    jitter = staticmethod(random.random)

    def startWrites(self):
        """The state of the writes (from the store's C{__init__})."""
        # What waits to be written, taken by the disk thread (L{_drain})
        # under the lock; C{_draining} while it writes, or a failed batch
        # waits for its retry.
        self._lock = threading.Lock()
        self._pending = []
        self._draining = False
        self._writing = None
        self._retry = None
        self._failedInARow = 0
        self.batches = 0
        self.problem = None
        self.onProblem = lambda error: None

    def _retryDelay(self, failedInARow):
        return backoffPolicy(self.minRetryDelay, self.maxRetryDelay,
                             jitter=self.jitter)(failedInARow)

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

