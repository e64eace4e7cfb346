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

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from snstwist.core.state import HOT_POSTS, VersionVector
from snstwist.storage.checkpoint import Checkpointer, boundWal
from snstwist.storage.disk import DataLocked, Disk
from snstwist.storage.filesync import Flusher
from snstwist.storage.groupcommit import GroupCommit, storageFailure
from snstwist.storage.istore import IStore
from snstwist.storage.queries import Committed
from snstwist.storage.snapshots import SnapshotStore, StateQueries
from snstwist.storage.threads import DiskThread

log = Logger()

__all__ = ["IStore", "SQLiteStore", "DataLocked", "storageFailure"]



@implementer(IStore)
class SQLiteStore(GroupCommit, Committed, SnapshotStore):
    """L{IStore} on SQLite and post files, with group commit on one thread."""

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
        # What is stored or being written, as ranges per origin: a set of
        # (origin, seq) would cost about 90 bytes per post held.
        self._stored = VersionVector()
        self._floors = {}
        self._closing = False
        self.startWrites()

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
