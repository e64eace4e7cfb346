"""
The flushes of the post files, off the acknowledgement's path: a batch is
durable once its SQLite commit is (L{disk.Disk.write}), and the lines it
appended to its post files are flushed afterwards by L{Flusher}, on a thread
of its own, one round at a time, each round taking every file appended to
since the last.  Until a file is flushed its author stays in the record's
C{unsynced} table, and a crash leaves it to be repaired from the record on
open: from the end the record says was flushed (C{flushed}) on.
"""

import contextlib
import threading

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.storage.rounds import AfterBatches
from snstwist.storage.threads import DiskThread

log = Logger()


class Unflushed:
    """
    What the disk thread appended to the post files C{files} and the sync
    thread has not flushed yet, shared by the two: the authors appended to
    (L{appended}), with their files' ends; those flushed since the last
    commit, which the next commit takes out of C{unsynced}; and the ends
    known flushed, which it writes to the record's C{flushed} (L{synced}).

    An end is (size, post key): the file's first size bytes hold its posts
    up to that key.  A file rewritten (a late post, one dropped) makes the
    ends taken before it wrong: L{moved} says so before the batch's commit,
    and an end appended before is then not kept when its flush ends.
    """

    def __init__(self, files):
        self.files = files
        self._lock = threading.Lock()
        self._dirty = {}  # author: (end after its last append, rewrites then)
        self._newFile = False
        self._synced = set()
        self._flushed = {}  # author: a flushed end, for the next commit
        self._rewrites = {}  # author: how many rewrites of its file were announced

    def appended(self, ends, created):
        """On the disk thread: the files of C{ends} ({author: end}) were appended to."""
        with self._lock:
            for author, end in ends.items():
                self._dirty[author] = (end, self._rewrites.get(author, 0))
            self._newFile = self._newFile or created

    def moved(self, authors):
        """
        On the disk thread, before the commit of a batch that rewrites the
        files of C{authors}: the ends taken of them so far are not sure any
        more (their posts change before those ends).
        """
        with self._lock:
            for author in authors:
                self._rewrites[author] = self._rewrites.get(author, 0) + 1
                self._flushed.pop(author, None)

    def rewritten(self, ends):
        """
        On the disk thread: the files of C{ends} were rewritten whole and
        flushed (L{postfile.PostFiles.write}): their ends are flushed, and
        lines appended before are in them.
        """
        with self._lock:
            for author, end in ends.items():
                self._rewrites[author] = self._rewrites.get(author, 0) + 1
                self._dirty.pop(author, None)
                self._flushed[author] = end
                self._synced.add(author)

    def dirty(self):
        """How many files were appended to since the last round took them."""
        with self._lock:
            return len(self._dirty)

    @contextlib.contextmanager
    def synced(self):
        """
        (flushed ends, authors flushed) since the last commit, for the
        commit in the block: if it fails they are kept for the next.
        """
        with self._lock:
            flushed, self._flushed = self._flushed, {}
            synced, self._synced = self._synced, set()
        try:
            yield flushed, synced
        except BaseException:
            with self._lock:
                for author, end in flushed.items():
                    self._flushed.setdefault(author, end)
                self._synced |= synced
            raise

    def sync(self):
        """
        On the sync thread: flush every post file appended to since the last
        round (and the directory, if one is new).  Their authors are done,
        but for those appended to again meanwhile, and their ends flushed,
        but for files rewritten meanwhile.  On failure they stay to be
        flushed, and the error is raised.  Returns how many were flushed.
        """
        with self._lock:
            taken, self._dirty = self._dirty, {}
            created, self._newFile = self._newFile, False
        try:
            self.files.sync(sorted(taken), created)
        except BaseException:
            with self._lock:
                for author, entry in taken.items():
                    self._dirty.setdefault(author, entry)
                self._newFile = self._newFile or created
            raise
        with self._lock:
            for author, (end, rewrites) in taken.items():
                if self._rewrites.get(author, 0) == rewrites:
                    self._flushed[author] = end
            self._synced |= taken.keys() - self._dirty.keys()
        return len(taken)


class Flusher:
    """
    Flushes what C{disk} (a L{disk.Disk}) appended, on the reactor's side:
    L{soon} after each batch.  C{writing()} says whether the store has a
    batch in flight; C{retryDelay(n)} how long to wait after the n-th
    failure in a row before flushing again.
    """

    # How long after a batch its files are flushed (with those of the batches
    # that follow meanwhile), unless L{most} files wait before then.  A
    # round costs an fsync a file (40-65 us of CPU each here, and a commit
    # of the file system's journal that the record's own commit may wait
    # behind), so a file appended to many times a second is flushed once
    # a second.  What a round leaves is the repair of a crash, one file
    # at a time (about 0.2 ms each, on the way of a promotion): the files
    # of the round under way, and those waiting, under L{most} but for the
    # last batch's own (one batch may append to more).
    delay = 1.0
    most = 128

    def __init__(self, reactor, clock, disk, name, writing, retryDelay):
        self.reactor = reactor
        self.clock = clock
        self.disk = disk
        self.name = name
        self.writing = writing
        self.retryDelay = retryDelay
        self._thread = DiskThread(reactor, "sns-sync")
        self._syncing = None
        self._failures = 0
        self._retry = None
        self._settled = []  # Deferreds of settled(), fired once nothing waits for a flush
        self._round = AfterBatches(clock, self.flush)  # when the next round is due
        self.rounds = 0
        self.files = 0  # post files flushed, in every round so far

    def soon(self):
        """
        After a batch: flush the post files appended to once L{delay}
        seconds have passed since the first batch after the last round, at
        the end of a batch (L{rounds.AfterBatches}), or now if L{most} wait:
        a round takes every file appended to by then, so that the files'
        fsyncs do not compete with each batch's commit for the disk.
        """
        if self._syncing is not None or self._retry is not None:
            return
        waiting = self.disk.unflushed.dirty()
        if self._settled or waiting >= self.most:
            self.flush()
        elif waiting:
            self._round.batch(self.delay)

    def flush(self):
        """Flush the post files appended to, now: one round at a time, each taking all."""
        self._round.started()
        if self._syncing is not None or self._retry is not None:
            return
        if not self.disk.unflushed.dirty():
            if not self.writing():
                settled, self._settled = self._settled, []
                for d in settled:
                    d.callback(None)
            return
        self.rounds += 1
        self._syncing = self._thread.run(self.disk.unflushed.sync)
        self._syncing.addBoth(self._flushed)

    def _flushed(self, result):
        self._syncing = None
        if isinstance(result, Failure):
            # The record holds the lines, and their authors stay unsynced
            # (repaired on open): the flush is tried again.
            delay = self.retryDelay(self._failures)
            self._failures += 1
            log.failure("{name}: flushing post files failed; trying again in {delay:.1f} s",
                        result, name=self.name, delay=delay)
            self._retry = self.clock.callLater(delay, self._again)
            return
        self._failures = 0
        self.files += result
        self.soon()

    def _again(self):
        self._retry = None
        self.flush()

    def settled(self):
        """A Deferred that fires once every post file written is flushed."""
        d = defer.Deferred()
        self._settled.append(d)
        self.flush()
        return d

    def _cancelLater(self):
        self._round.cancel()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    @defer.inlineCallbacks
    def stop(self):
        """Stop flushing (the store's close settles what is left on its own thread)."""
        self._cancelLater()
        if self._syncing is not None:
            try:
                yield self._syncing
            except Exception:
                pass  # logged by _flushed
            # Its end may have scheduled the next round (or a retry).
            self._cancelLater()
        yield self._thread.stop()
        settled, self._settled = self._settled, []
        for d in settled:
            d.callback(None)
