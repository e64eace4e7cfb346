"""
The disk work of a VM's store, on its dedicated thread: the writer lock,
opening (and repairing) a data directory, writing a batch, reading it back.

A batch is written record first: its rows go into SQLite in one
transaction, with the authors whose post files it changes (C{unsynced}),
and that commit (one fsync of the WAL) is the batch's durable point; then
the post files are appended to (not flushed).  The files are flushed later,
off the acknowledgement's path, by L{Unflushed.sync} on a thread of its own, for
every batch appended since the last flush at once; the authors flushed
leave C{unsynced} in the next batch's transaction, with the ends of their
files known flushed (C{flushed}).  A crash before that leaves rows whose
lines may be missing from their files: on open, the files of the
C{unsynced} authors are checked against the record from those ends on, and
completed from it (L{repair}).
"""

import concurrent.futures
import fcntl
import os
import sqlite3

from google.protobuf.message import DecodeError
from twisted.logger import Logger

from snstwist.core import errors
from snstwist.core.state import VersionVector
from snstwist.storage import digests
from snstwist.storage import index as _index
from snstwist.storage.filesync import Unflushed
from snstwist.storage.postfile import PostFiles
from snstwist.storage.repair import Repair

log = Logger()


class DataLocked(errors.SNSError):
    """Another process holds this VM's data directory."""


def holdLock(path):
    """
    The writer lock of the data directory C{path} (C{path}/lock, flocked,
    naming our pid): its descriptor, the lock held until it is closed.  A
    server holds it while it writes; an import while it fills a directory.
    """
    fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataLocked("another process is the writer of %s" % (path,))
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % (os.getpid(),))
    return fd


class Disk:
    """The part of the store that runs on the disk thread only."""

    def __init__(self, path):
        self.path = path
        self.dbPath = os.path.join(path, "sns.sqlite3")
        self.postsDir = os.path.join(path, "posts")
        self._flushers = concurrent.futures.ThreadPoolExecutor(8, "sns-fsync")
        self.files = PostFiles(self.postsDir, self._flushers)
        self.index = None
        self.lockFile = None
        self.unflushed = Unflushed(self.files)
        # The authors in the record's unsynced table (kept by this writer).
        self.unsynced = set()

    @property
    def db(self):
        """The connection to the record (a test puts a failing one here)."""
        return self.index.db if self.index is not None else None

    @db.setter
    def db(self, value):
        self.index.db = value

    @property
    def append(self):
        """How bytes are appended to post files (a test puts a failing filesystem here)."""
        return self.files.append

    @append.setter
    def append(self, value):
        self.files.append = value

    def lock(self):
        os.makedirs(self.path, exist_ok=True)
        self.lockFile = holdLock(self.path)
        os.makedirs(self.postsDir, exist_ok=True)

    def read(self, hotPosts):
        """
        What a replica holds in memory (L{index.Index.hot}), the version
        vector and, when no post is read, each author's newest post key
        (L{index.Index.floors}), read in one snapshot without taking the
        lock or repairing anything: how a slave warms up while its master
        writes.
        """
        if not os.path.exists(self.dbPath):
            return [], VersionVector(), {}
        db = sqlite3.connect("file:%s?mode=ro" % (self.dbPath,), uri=True)
        try:
            db.execute("BEGIN")  # one snapshot
            index = _index.Index(db)
            floors = index.floors() if hotPosts is None else {}
            return index.hot(hotPosts), index.readVersions(), floors
        except (sqlite3.DatabaseError, DecodeError):
            # Damaged, mid-write or not made yet: a standby is correct
            # cold, and its promotion reads the file again (and refuses a
            # damaged one).
            return [], VersionVector(), {}
        finally:
            db.close()

    def open(self, hotPosts, known=None):
        """
        Lock, open the record (repairing what a crash left) and read what a
        replica holds in memory (L{index.Index.hot}); with C{known} (a
        version vector: what a warm slave already holds), what it lacks.
        """
        self.openRecord()
        try:
            if known is not None:
                return self.index.missing(known, limit=None)
            return self.index.hot(hotPosts)
        except (sqlite3.DatabaseError, DecodeError) as e:
            self._refuseDamaged(e)

    def openRecord(self):
        """Lock, open the record, and make the post files agree with it."""
        self.lock()
        try:
            db = sqlite3.connect(self.dbPath, isolation_level=None, check_same_thread=False)
            self.index = _index.Index(db)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            # A record older than its unsynced table does not say which
            # files a crash may have torn: all are looked at, this once.
            older = not db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'unsynced'").fetchone()
            self.index.create()
            if not self.index.versions.origins:
                self._adoptFiles()
        except (sqlite3.DatabaseError, DecodeError) as e:
            self._refuseDamaged(e)
        repair = Repair(self.index, self.files)
        unsynced = self.index.unsyncedAuthors()
        left = repair.unsynced(unsynced)
        for author in sorted(set(repair.torn()) - set(unsynced)) if older else ():
            repair.whole(author)
        done = [a for a in unsynced if a not in left]
        if done:
            # Each of their files now holds what the record says, flushed.
            self.files.syncDir()
            self.index.write([], synced=done)
        # The others hold it too, unflushed (a dead writer's appends, or
        # their tails written again): the first round flushes them (and the
        # directory: a dead writer's new file), then they leave unsynced.
        self.unsynced = set(left)
        self.unflushed.appended(left, bool(left))

    def repairAll(self):
        """Make every post file agree with the record (a backup's copy)."""
        repair = Repair(self.index, self.files)
        for author in sorted(set(self.index.authors())
                             | {n[:-len(".txt")] for n in self.files.names()}):
            repair.whole(author)

    def _refuseDamaged(self, error):
        if isinstance(error, sqlite3.OperationalError) and not _index.damaged(error):
            raise error  # locked, disk full, no file descriptors: not the file's fault
        if self.index is not None:
            self.index.db.close()
            self.index = None
        raise errors.DataDamaged(
            "%s is damaged (%s): restore it from a backup (sns-admin backup), or move"
            " it away and restart, and this VM rebuilds it from its post files and the"
            " other VMs" % (self.dbPath, error))

    def _adoptFiles(self):
        """
        An empty record beside post files (the database was moved away, or
        the data directory is of the layout before the record): the posts
        of the files, and the updates of the old log, go into the record.
        """
        db = self.db
        rows = []
        hasLog = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'log'").fetchone()
        if hasLog:
            # The old log held everything but the posts shown.
            rows += [(u, False) for u in _index.decoded(
                body for (body,) in db.execute("SELECT body FROM log"))]
        for name in self.files.names():
            rows += [(u, True) for u in self.files.read(os.path.join(self.postsDir, name))]
        if not rows:
            return
        log.info("{path}: indexing {n} updates of its files and its old log",
                 path=self.path, n=len(rows))
        self.index.write(rows)
        if hasLog:
            db.execute("DROP TABLE log")
            db.execute("DROP TABLE IF EXISTS post_files")

    def write(self, updates, hidden=frozenset(), displaced=()):
        """
        Commit the batch to the record (its durable point), then append its
        posts to their files, unflushed (L{sync} flushes them).  A failed
        append is taken back and raised: the batch is tried again, and its
        rows, already committed, are not written twice.
        """
        posts = {}
        rows = []
        for u in updates:
            shown = u.post is not None and u.id not in hidden
            rows.append((u, shown or u.post is None))
            if shown:
                posts.setdefault(u.post.author, []).append(u)
        drop = {}
        for u in displaced:
            drop.setdefault(u.post.author, set()).add(u.post.id)
        authors = set(posts) | set(drop)
        moved = rewrittenFrom(self.files, posts, displaced)
        self.unflushed.moved(moved)
        # The record first, naming the files to be written: a crash before
        # they are flushed leaves rows the files may lack, which the next
        # open writes.  The authors flushed since the last batch are done.
        with self.unflushed.synced() as (flushed, synced):
            before = self.unsynced - synced
            # A file not unsynced holds what the record says, flushed: its
            # end now is a flushed end.
            ends = dict(flushed)
            ends.update((a, self.files.end(a)) for a in authors - before)
            # The table holds self.unsynced: only what changes is written
            # (an author flushed and appended to again stays).
            self.index.write(rows, displaced, authors - self.unsynced,
                             synced=(synced & self.unsynced) - authors, flushed=ends,
                             moved=moved)
        self.unsynced = before | authors
        appended, created, rewritten = self.files.write(posts, drop)
        self.unflushed.appended(appended, created)
        self.unflushed.rewritten(rewritten)

    def settle(self):
        """
        On the disk thread, nothing else writing (closing): flush what is
        left and take every flushed author out of C{unsynced}.
        """
        self.unflushed.sync()
        with self.unflushed.synced() as (flushed, synced):
            if flushed or synced:
                self.index.write([], synced=synced, flushed=flushed)
        self.unsynced -= synced

    def digest(self, after="", limit=None, most=None):
        """Hashes of what is on disk, a page of them (L{digests.page})."""
        return digests.page(self.db, self.files, after, limit, most)

    def close(self):
        self.files.close()
        self._flushers.shutdown()
        if self.index is not None:
            self.index.db.close()
            self.index = None
        if self.lockFile is not None:
            os.close(self.lockFile)
            self.lockFile = None


def rewrittenFrom(files, posts, displaced):
    """
    {author: the first post key its file changes at} of the authors whose
    files a batch of C{posts} ({author: [update]}) and C{displaced} rewrites
    (a post before the file's last one, a post dropped) rather than appends
    to, in the post files C{files}.
    """
    first = {}
    for u in displaced:
        first[u.post.author] = min(first.get(u.post.author, u.post.key), u.post.key)
    for author, ups in posts.items():
        key = min(u.post.key for u in ups)
        last = files.lastKeyOf(author)
        if author in first or (last is not None and key <= last):
            first[author] = min(first.get(author, key), key)
    return first
