"""
The record's WAL checkpoints, off the acknowledgement's path.

SQLite's writer checkpoints by itself once the WAL holds 1,000 pages: inside
the COMMIT of whichever batch crosses that, so that batch (and every writer
waiting on it) also waits for the pages copied into the database and its
fsync.  The store's writer instead checkpoints only past L{WAL_BOUND_BYTES}
(the bound on the WAL's size, should the checkpoints below fall behind),
and L{Checkpointer} runs a PASSIVE checkpoint on a connection and thread of
its own L{Checkpointer.delay} seconds after a batch, as a batch is handed
back (L{rounds.AfterBatches}: not at a moment a commit may meet it): it copies what is
committed without stopping the writer, and the writer starts the WAL over
at its next transaction once everything in it is copied.

What is durable does not change: a batch is durable once its commit (the
WAL's fsync) is; a checkpoint only moves committed pages into the database.
"""

import sqlite3

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.storage.rounds import AfterBatches
from snstwist.storage.threads import DiskThread

log = Logger()

# Past this many bytes in the WAL the writer checkpoints by itself, inside a
# commit, as SQLite does by default past 1,000 pages.
WAL_BOUND_BYTES = 64 * 1024 * 1024


def boundWal(db):
    """Let the writer connection C{db} checkpoint only past L{WAL_BOUND_BYTES}."""
    pageSize = db.execute("PRAGMA page_size").fetchone()[0]
    db.execute("PRAGMA wal_autocheckpoint=%d" % (max(1, WAL_BOUND_BYTES // pageSize),))


def walCommits(walPath):
    """
    The commits in the WAL at C{walPath} since it last started over, as
    lists of the page numbers each wrote (its frames, in order): what each
    commit had to write and sync.  Read from the file (its header's salts
    mark the frames of this generation); for benchmarks and tests.
    """
    commits, frames = [], []
    try:
        f = open(walPath, "rb")
    except FileNotFoundError:
        return commits
    with f:
        header = f.read(32)
        if len(header) < 32:
            return commits
        pageSize, salts = int.from_bytes(header[8:12], "big"), header[16:24]
        while True:
            frame = f.read(24)
            if len(frame) < 24 or frame[8:16] != salts:
                return commits
            frames.append(int.from_bytes(frame[0:4], "big"))
            if int.from_bytes(frame[4:8], "big"):  # a commit's last frame
                commits.append(frames)
                frames = []
            f.seek(pageSize, 1)


class Checkpointer:
    """
    PASSIVE checkpoints of the record at C{dbPath}, L{delay} seconds after a
    batch, at the end of the batch that finds one due (L{soon}), one at a
    time, on their own thread.  C{last} is the
    last one's (busy, pages in the WAL, pages checkpointed).
    """

    delay = 0.5

    def __init__(self, reactor, clock, dbPath, name):
        self.reactor = reactor
        self.clock = clock
        self.dbPath = dbPath
        self.name = name
        self._thread = DiskThread(reactor, "sns-checkpoint")
        self._db = None
        self._round = AfterBatches(clock, self.checkpoint)
        self._running = None
        self.rounds = 0
        self.last = None

    def soon(self):
        """
        A batch was committed: checkpoint now if one is due, else once
        L{delay} seconds have passed since the first batch after the last
        round (with the batches that follow), at the end of a batch.
        """
        if self._running is None:
            self._round.batch(self.delay)

    def checkpoint(self):
        """Checkpoint now (unless one is under way); the Deferred fires once it is done."""
        self._round.started()
        if self._running is not None:
            return self._running
        self.rounds += 1
        self._running = self._thread.run(self._checkpoint)
        return self._running.addBoth(self._done)

    def _checkpoint(self):
        """On the checkpoint thread."""
        if self._db is None:
            self._db = sqlite3.connect(self.dbPath, isolation_level=None,
                                       check_same_thread=False)
        return self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _done(self, result):
        self._running = None
        if isinstance(result, Failure):
            # The writer still checkpoints past the bound: nothing is lost,
            # and the next batch tries again.
            log.warn("{name}: a checkpoint of the record failed: {why}", name=self.name,
                     why=result.getErrorMessage())
            return None
        self.last = tuple(result)
        return self.last

    @defer.inlineCallbacks
    def stop(self):
        """No more checkpoints: wait for one under way, close the connection."""
        self._round.cancel()
        if self._running is not None:
            yield self._running
        if self._thread.started:
            yield self._thread.run(self._close)
        yield self._thread.stop()

    def _close(self):
        if self._db is not None:
            self._db.close()
            self._db = None
