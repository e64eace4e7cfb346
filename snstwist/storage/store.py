"""
Durable storage of one VM: the only module that touches SQLite and the post
files.

Layout of a data directory (docs/design.md section 4)::

    DATA/sns.sqlite3        users, follows, and the log of their updates (WAL)
    DATA/posts/<user>.txt   the posts by <user>, one JSON object per line,
                            ordered by (time, id); the post store itself
    DATA/lock               held (flock) by the VM's single writer

All disk work runs on one dedicated thread, never on the reactor.  Writes are
group-committed: while one batch is being written and fsync'd, the next
accumulates, so durability costs one round of flushes per batch (the batch's
post files together, then one SQLite commit), not one per post.

A post that duplicates a request already shown (a client's retry that a
second VM accepted) is kept in the SQLite log, not in the post files, so
that every VM's files hold exactly the posts shown.
"""

import concurrent.futures
import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import time

from google.protobuf.message import DecodeError
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from snstwist.core import errors
from snstwist.core.model import (
    FollowChange,
    Post,
    Update,
    checkOrigin,
    checkPostText,
    checkRequestId,
    checkSeq,
    checkTime,
    checkUsername,
    parseUpdateId,
    updateId,
)
from snstwist.core.state import VersionVector
from snstwist.rpc import sns_pb2 as pb

log = Logger()

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


class IStore(Interface):
    """Durable storage of the updates a VM holds."""

    def open(known=None):
        """
        Take the VM's writer lock and read everything stored (with a version
        vector C{known}: only what it lacks).  Returns a Deferred firing with
        the list of stored L{Update}s.
        """

    def persist(updates, hidden=frozenset(), displaced=()):
        """
        Make C{updates} durable.  The Deferred fires once all of them are on
        disk and flushed.  Updates already stored are ignored.  Posts whose
        id is in C{hidden} (duplicates of a request already shown) are stored
        but not shown; the already stored posts C{displaced} by an earlier
        copy of their request stop being shown.
        """

    def close():
        """Finish pending writes and release the writer lock (Deferred)."""

    problem = Attribute(
        "None, or the L{errors.StorageFailed} saying why the disk refuses writes now")
    onProblem = Attribute("Called with C{problem} each time a batch of writes fails")


class DataLocked(errors.SNSError):
    """Another process holds this VM's data directory."""


def formatTime(time_us):
    moment = _EPOCH + datetime.timedelta(microseconds=time_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parseTime(text):
    # fromisoformat is several times faster than strptime, and a promoted
    # slave parses every stored post.
    moment = datetime.datetime.fromisoformat(text)
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000000 + delta.microseconds


def postLine(update):
    """The line of DATA/posts/<author>.txt that stores C{update}'s post."""
    post = update.post
    return _postLine(formatTime(post.time_us), post.id, post.author, post.text,
                     update.request_id)


def _postLine(time, postId, author, text, requestId):
    record = {"time": time, "id": postId, "author": author, "text": text}
    if requestId:
        record["request"] = requestId
    # ensure_ascii=False keeps the file readable; json escapes newlines,
    # so a post is always exactly one line.
    return json.dumps(record, ensure_ascii=False) + "\n"


def parsePostLine(line):
    record = json.loads(line)
    origin, _, seq = record["id"].rpartition("/")
    time_us = parseTime(record["time"])
    # One string per author, not one per post held.
    post = Post(id=record["id"], author=sys.intern(record["author"]), time_us=time_us,
                text=record["text"])
    return Update(origin=origin, seq=int(seq), time_us=time_us, post=post,
                  request_id=record.get("request", ""))


def _decoded(bodies):
    """
    The stored updates of the log.  One that breaks a bound of limits.py (it
    was stored before the bound existed) is left out, and said so: it could
    never be replicated, and loading it would keep the VM apart forever.
    """
    updates = []
    for body in bodies:
        try:
            updates.append(Update.fromProto(pb.Update.FromString(body)))
        except errors.SNSError as e:
            log.warn("ignoring a stored update that breaks a bound: {e}", e=e.message)
    return updates


_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    origin TEXT NOT NULL, seq INTEGER NOT NULL, time_us INTEGER NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (origin, seq));
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, created_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS follows (
    follower TEXT NOT NULL, followee TEXT NOT NULL, following INTEGER NOT NULL,
    time_us INTEGER NOT NULL, update_id TEXT NOT NULL,
    PRIMARY KEY (follower, followee));
CREATE TABLE IF NOT EXISTS reads (
    user TEXT PRIMARY KEY, time_us INTEGER NOT NULL, post_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS post_files (
    origin TEXT NOT NULL, seq INTEGER NOT NULL, author TEXT NOT NULL,
    PRIMARY KEY (origin, seq));
"""


def _damaged(error):
    """Does this SQLite error say the database file itself is damaged?"""
    return getattr(error, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB")


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


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsyncAll(pool, paths):
    """fsync every file of C{paths}, several at a time."""
    if len(paths) == 1:
        _fsync(paths[0])
    elif paths:
        for _ in pool.map(_fsync, paths):
            pass


class _Disk:
    """The part of the store that runs on the disk thread only."""

    def __init__(self, path):
        self.path = path
        self.postsDir = os.path.join(path, "posts")
        self._flushers = concurrent.futures.ThreadPoolExecutor(8, "sns-fsync")
        self.db = None
        self.lockFile = None
        self.lastKey = {}
        # How post files are opened for writing (a test puts a failing
        # filesystem here).
        self.opener = open

    def lock(self):
        os.makedirs(self.postsDir, exist_ok=True)
        fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataLocked("another process is the writer of %s" % (self.path,))
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % (os.getpid(),))
        self.lockFile = fd

    def read(self):
        """
        Read what is stored without taking the lock or repairing anything:
        how a slave warms up while its master writes.
        """
        path = os.path.join(self.path, "sns.sqlite3")
        updates = []
        if os.path.exists(path):
            db = sqlite3.connect("file:%s?mode=ro" % (path,), uri=True)
            try:
                updates = _decoded(body for (body,) in db.execute("SELECT body FROM log"))
            except (sqlite3.DatabaseError, DecodeError):
                # Damaged or mid-write: a standby is correct cold, and its
                # promotion reads the file again (and refuses a damaged one).
                updates = []
            finally:
                db.close()
        if os.path.isdir(self.postsDir):
            for name in sorted(os.listdir(self.postsDir)):
                if name.endswith(".txt"):
                    updates.extend(self._readPosts(os.path.join(self.postsDir, name),
                                                   repair=False))
        return updates

    def open(self, known=None):
        """
        Lock and load.  With C{known} (a version vector: what a warm slave
        already holds), only what it lacks is read: the log rows it lacks,
        and only the post files that the post_files table says hold a post
        it lacks.
        """
        self.lock()
        lacks = (lambda origin, seq: not known.has(origin, seq)) if known else None
        updates = self._openDatabase(lacks)
        if lacks is None:
            names = [n for n in os.listdir(self.postsDir) if n.endswith(".txt")]
        else:
            names = {author + ".txt" for (origin, seq, author)
                     in self.db.execute("SELECT origin, seq, author FROM post_files")
                     if lacks(origin, seq)}
        for name in sorted(names):
            path = os.path.join(self.postsDir, name)
            if os.path.exists(path):
                updates.extend(u for u in self._readPosts(path)
                               if lacks is None or lacks(u.origin, u.seq))
        return updates

    def _openDatabase(self, lacks):
        """Open SQLite and read the log rows; a damaged file is L{DataDamaged}."""
        path = os.path.join(self.path, "sns.sqlite3")
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            return _decoded(body for (origin, seq, body)
                            in self.db.execute("SELECT origin, seq, body FROM log")
                            if lacks is None or lacks(origin, seq))
        except (sqlite3.DatabaseError, DecodeError) as e:
            if isinstance(e, sqlite3.OperationalError) and not _damaged(e):
                raise  # locked, disk full, no file descriptors: not the file's fault
            if self.db is not None:
                self.db.close()
                self.db = None
            raise errors.DataDamaged(
                "%s is damaged (%s): restore it from a backup (sns-admin backup), or move"
                " it away and restart, and this VM rebuilds it from its post files and the"
                " other VMs" % (path, e))

    def _lastKey(self, author):
        """The (time, id) of the last post in the author's file, read from its end."""
        if author not in self.lastKey:
            path = self._postsPath(author)
            last = None
            if os.path.exists(path):
                with open(path, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    size = f.tell()
                    f.seek(max(0, size - 64 * 1024))
                    lines = f.read().splitlines()
                try:
                    last = parsePostLine(lines[-1].decode("utf-8")).post.key if lines else None
                except (ValueError, KeyError, errors.SNSError):
                    # A torn last line: read (and repair) the whole file.
                    self.lastKey.pop(author, None)
                    self._readPosts(path)
                    return self.lastKey.get(author)
            self.lastKey[author] = last
        return self.lastKey[author]

    def _readPosts(self, path, repair=True):
        updates = []
        good = 0
        with open(path, "rb") as f:
            data = f.read()
        for raw in data.splitlines(keepends=True):
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("torn last line")
                updates.append(parsePostLine(raw.decode("utf-8")))
            except (ValueError, KeyError, errors.SNSError) as e:
                log.warn("{path}: dropping damaged post line after byte {good}: {e}",
                         path=path, good=good, e=e)
                break
            good += len(raw)
        if good != len(data) and repair:
            # A crash mid-append left a partial line: it was never
            # acknowledged, so cut it off.
            with open(path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        if updates and repair:
            self.lastKey[updates[0].post.author] = max(u.post.key for u in updates)
        return updates

    def write(self, updates, hidden=frozenset(), displaced=()):
        posts = {}
        rows = []
        for u in updates:
            if u.post is not None and u.id not in hidden:
                posts.setdefault(u.post.author, []).append(u)
            else:
                # Not shown (a duplicate of a request): kept in the log so
                # that it still counts as held.
                rows.append(u)
        drop = {}
        for u in displaced:
            drop.setdefault(u.post.author, set()).add(u.post.id)
            rows.append(u)
        # The rows first, with the index of which file holds which post: a
        # crash between the two leaves an index entry for a post never
        # written (harmless), never a post the index does not know.
        self._writeRows(rows, [u for ups in posts.values() for u in ups])
        appended, created, undo = [], False, []
        try:
            for author in set(posts) | set(drop):
                path, new = self._writePosts(author, posts.get(author, []), drop.get(author),
                                             undo)
                if path is not None:
                    appended.append(path)
                    created = created or new
            # One flush per batch, not one per file in turn: the files of a
            # batch are fsync'd at the same time (the disk takes them
            # together), then their new directory entries.
            _fsyncAll(self._flushers, appended)
            if created:
                self._syncDir()
        except BaseException:
            self._undo(undo)
            raise

    def _undo(self, undo):
        """
        A batch failed (disk full, no file descriptors): take back what it
        appended, so that its retry writes each line once and no torn line
        is left.  The last keys are read again from the files' ends.
        """
        for path, size, author in reversed(undo):
            self.lastKey.pop(author, None)
            try:
                if size is None:
                    os.unlink(path)
                else:
                    os.truncate(path, size)
            except FileNotFoundError:
                pass
            except OSError as e:
                # The retry then rewrites the file merging by post id, so a
                # line left here is not stored twice.
                log.warn("{path}: could not take back a failed append: {e}", path=path, e=e)

    def _postsPath(self, author):
        return os.path.join(self.postsDir, checkUsername(author) + ".txt")

    def _writePosts(self, author, ups, drop=None, undo=None):
        """
        Add C{ups} to the author's file, without the posts C{drop}.  Returns
        (path, created) when the lines were appended and still need an
        fsync, (None, False) when the file was rewritten (and flushed) whole.
        How to take an append back is added to C{undo}.
        """
        path = self._postsPath(author)
        ups.sort(key=lambda u: u.post.key)
        last = self._lastKey(author)
        if not drop and (last is None or ups[0].post.key > last):
            exists = os.path.exists(path)
            created = last is None and not exists
            if undo is not None:
                undo.append((path, os.path.getsize(path) if exists else None, author))
            with self.opener(path, "a", encoding="utf-8") as f:
                f.writelines(postLine(u) for u in ups)
            newest = ups[-1].post.key
            self.lastKey[author] = max(newest, last) if last else newest
            return path, created
        else:
            # A post older than the newest stored one arrived (replication
            # out of order): rewrite the file in order, atomically, so that
            # every VM's file is byte-identical.
            merged = {}
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        u = parsePostLine(line)
                        merged[u.post.id] = u
            for u in ups:
                merged.setdefault(u.post.id, u)
            for postId in drop or ():
                merged.pop(postId, None)
            ordered = sorted(merged.values(), key=lambda u: u.post.key)
            tmp = path + ".tmp"
            try:
                with self.opener(tmp, "w", encoding="utf-8") as f:
                    f.writelines(postLine(u) for u in ordered)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            os.replace(tmp, path)
            self._syncDir()
            self.lastKey[author] = ordered[-1].post.key if ordered else None
        return None, False

    def _syncDir(self):
        """Make a new or renamed post file's directory entry durable."""
        dirfd = os.open(self.postsDir, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def _writeRows(self, rows, posted=()):
        if not rows and not posted:
            return
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR IGNORE INTO log (origin, seq, time_us, body) VALUES (?, ?, ?, ?)",
                [(u.origin, u.seq, u.time_us, u.toProto().SerializeToString()) for u in rows])
            db.executemany(
                "INSERT OR IGNORE INTO users (name, created_us) VALUES (?, ?)",
                [(u.user, u.time_us) for u in rows if u.user is not None])
            db.executemany(
                "INSERT INTO follows (follower, followee, following, time_us, update_id)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (follower, followee) DO UPDATE SET"
                " following = excluded.following, time_us = excluded.time_us,"
                " update_id = excluded.update_id"
                " WHERE (excluded.time_us, excluded.update_id)"
                " > (follows.time_us, follows.update_id)",
                [(u.follow.follower, u.follow.followee, int(u.follow.following),
                  u.time_us, u.id) for u in rows if u.follow is not None])
            db.executemany(
                "INSERT INTO reads (user, time_us, post_id) VALUES (?, ?, ?)"
                " ON CONFLICT (user) DO UPDATE SET"
                " time_us = excluded.time_us, post_id = excluded.post_id"
                " WHERE (excluded.time_us, excluded.post_id) > (reads.time_us, reads.post_id)",
                [(u.read.user, u.read.time_us, u.read.post_id)
                 for u in rows if u.read is not None])
            db.executemany(
                "INSERT OR IGNORE INTO post_files (origin, seq, author) VALUES (?, ?, ?)",
                [(u.origin, u.seq, u.post.author) for u in posted])
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolled back already (a failed COMMIT)
            raise

    def digest(self):
        """Hashes of what is on disk: each post file, the users, the follows."""
        files = {}
        lines = 0
        for name in sorted(os.listdir(self.postsDir)):
            if name.endswith(".txt"):
                with open(os.path.join(self.postsDir, name), "rb") as f:
                    data = f.read()
                files[name] = hashlib.sha256(data).hexdigest()
                lines += data.count(b"\n")
        users = "\n".join(n for (n,) in self.db.execute("SELECT name FROM users ORDER BY name"))
        follows = "\n".join("%s %s" % pair for pair in self.db.execute(
            "SELECT follower, followee FROM follows WHERE following = 1"
            " ORDER BY follower, followee"))
        return {"post_files": files, "posts": lines,
                "users": hashlib.sha256(users.encode()).hexdigest(),
                "follows": hashlib.sha256(follows.encode()).hexdigest()}

    def close(self):
        self._flushers.shutdown()
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.lockFile is not None:
            os.close(self.lockFile)
            self.lockFile = None


@implementer(IStore)
class SQLiteStore:
    """L{IStore} on SQLite and post files, with group commit on one thread."""

    # After a failed batch (disk full, no file descriptors) the writes wait
    # this long, then twice as long each time, before they are tried again.
    minRetryDelay = 0.25
    maxRetryDelay = 5.0

    def __init__(self, path, reactor=None, name=None, clock=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.clock = clock or reactor
        self.path = path
        self.name = name or path
        self._disk = _Disk(path)
        self._pool = ThreadPool(1, 1, name="sns-store")
        self._pending = []
        self._writing = None
        # What is stored or being written, as ranges per origin: a set of
        # (origin, seq) would cost about 90 bytes per post held.
        self._stored = VersionVector()
        self._retry = None
        self._retryDelay = self.minRetryDelay
        self._known = None
        self.batches = 0
        self.problem = None
        self.onProblem = lambda error: None

    def _onDisk(self, function, *args):
        if not self._pool.started:
            self._pool.start()
        return deferToThreadPool(self.reactor, self._pool, function, *args)

    def read(self):
        """
        The updates stored, read without the writer lock and without
        repairing anything (a slave warming up while its master writes).
        """
        return self._onDisk(self._disk.read)

    def open(self, known=None):
        if known is not None:
            # A copy: the replica goes on learning, and what it learns from
            # now on must still be written here.
            known = VersionVector.fromProto(known.toProto())
        d = self._onDisk(self._openAndCount, known)
        self._known = known

        def loaded(result):
            updates, self._stored = result
            log.info("opened {path}: {n} updates stored", path=self.path, n=len(updates))
            return updates

        return d.addCallback(loaded)

    def _openAndCount(self, known):
        """
        On the disk thread: what is stored, and its version vector (for a
        million updates, seconds of work the reactor must not do).
        """
        updates = self._disk.open(known)
        stored = VersionVector()
        for u in updates:
            stored.add(u.origin, u.seq)
        return updates, stored

    def persist(self, updates, hidden=frozenset(), displaced=()):
        fresh = []
        for u in updates:
            # Marked as stored one by one, so an update repeated within
            # this call is written once, like one repeated across calls.
            if not self._stored.has(u.origin, u.seq) and not (
                    self._known is not None and self._known.has(u.origin, u.seq)):
                self._stored.add(u.origin, u.seq)
                fresh.append(u)
        if not fresh and not displaced:
            return defer.succeed(None)
        d = defer.Deferred()
        self._pending.append((fresh, d, set(hidden), list(displaced)))
        if self._writing is None and self._retry is None:
            self._nextBatch()
        return d

    def _nextBatch(self):
        """
        Write everything pending as one batch.  Its Deferreds fire once it is
        on disk.  When the disk refuses it, the batch is kept and tried again
        (with backoff) until it is written; meanwhile C{problem} says why and
        C{onProblem(problem)} tells whoever waits, and no update is lost from
        the queue nor written twice.
        """
        self._retry = None
        batch, self._pending = self._pending, []
        updates = [u for ups, _, _, _ in batch for u in ups]
        hidden = set().union(*(h for _, _, h, _ in batch))
        displaced = [u for _, _, _, ds in batch for u in ds]
        self.batches += 1
        self._writing = self._onDisk(self._disk.write, updates, hidden, displaced)

        def written(_):
            self._writing = None
            if self.problem is not None:
                log.info("{name}: the disk takes writes again ({n} updates written that"
                         " waited for it)", name=self.name, n=len(updates))
                self.problem = None
                self._retryDelay = self.minRetryDelay
            if self._pending:
                self._nextBatch()
            for _, d, _, _ in batch:
                d.callback(None)

        def failed(f):
            self._writing = None
            first = self.problem is None
            self.problem = storageFailure(f.value, self.name)
            if first:
                log.error("{name}: writing {n} updates failed: {why}; they are kept and"
                          " written when the disk takes writes again, and new writes are"
                          " refused until then", name=self.name, n=len(updates),
                          why=self.problem.message)
            # First in line again, with their Deferreds, for the retry.
            self._pending[:0] = batch
            self._retry = self.clock.callLater(self._retryDelay, self._nextBatch)
            self._retryDelay = min(self._retryDelay * 2, self.maxRetryDelay)
            self.onProblem(self.problem)

        self._writing.addCallbacks(written, failed)

    def digest(self):
        """Hashes of the VM's files and tables (a dict), read on the disk thread."""
        return self._onDisk(self._disk.digest)

    @defer.inlineCallbacks
    def close(self):
        while self._writing is not None:
            try:
                yield self._writing
            except Exception as e:
                # _nextBatch logged the failure, and its writers got it.
                log.info("closing {path} after a failed write: {e}", path=self.path, e=e)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
            self._retry = None
            log.warn("{name}: closing with {n} updates not written: {why}", name=self.name,
                     n=sum(len(ups) for ups, _, _, _ in self._pending),
                     why=self.problem.message if self.problem else "")
        if self._pool.started:
            yield self._onDisk(self._disk.close)
            self._pool.stop()


@implementer(IStore)
class MemoryStore:
    """
    L{IStore} in memory, for tests.  With C{manual=True} writes become durable
    only at L{flush}, so a test can crash a VM between acceptance and flush
    and lose exactly what was not flushed.
    """

    problem = None
    onProblem = None

    def __init__(self, manual=False):
        self.manual = manual
        self.durable = {}
        self._pending = []

    def open(self, known=None):
        return defer.succeed([u for u in self.durable.values()
                              if known is None or not known.has(u.origin, u.seq)])

    def persist(self, updates, hidden=frozenset(), displaced=()):
        d = defer.Deferred()
        self._pending.append((list(updates), d))
        if not self.manual:
            self.flush()
        return d

    def flush(self):
        pending, self._pending = self._pending, []
        for updates, d in pending:
            for u in updates:
                self.durable.setdefault((u.origin, u.seq), u)
            d.callback(None)

    def crash(self):
        """Forget everything not yet flushed; its Deferreds never fire."""
        self._pending = []

    def close(self):
        return defer.succeed(None)


# -- operators' copies of a data directory (sns-admin): export, import, backup.
#
# These run in their own short-lived process, never in a server, so they
# work synchronously; what they share with the server is the format above.

EXPORT_FORMAT = """\
One JSON object per line, in this order: users, then follows, then posts.
  {"user": NAME, "time": T}
  {"follower": A, "followee": B, "time": T}
  {"time": T, "id": ID, "author": A, "text": TEXT, "request": RID}
T is UTC "YYYY-MM-DDTHH:MM:SS.ffffffZ". A post line is its line of
posts/<author>.txt as is; "request" is absent when the post had no request id.
"""

_IMPORT_FIELDS = {
    "user": ({"user"}, {"time"}),
    "follow": ({"follower", "followee"}, {"time"}),
    "post": ({"author", "time", "text"}, {"id", "request"}),
}
_FLUSH_LINES = 20000
_FLUSH_BYTES = 16 * 1024 * 1024


class BadLine(errors.SNSError):
    """A line of an import file that can not be imported."""

    def __init__(self, lineno, why):
        errors.SNSError.__init__(self, "line %d: %s" % (lineno, why))
        self.lineno = lineno


class NotEmpty(errors.SNSError):
    """The data directory to import into already holds data."""


def _readOnly(path):
    if not os.path.exists(os.path.join(path, "sns.sqlite3")):
        raise errors.SNSError("%s holds no sns.sqlite3: not a data directory" % (path,))
    return sqlite3.connect("file:%s?mode=ro" % (os.path.join(path, "sns.sqlite3"),),
                           uri=True)


def exportLines(path):
    """
    The lines (bytes) of the export of the data directory C{path}, streamed:
    one post file is read a chunk at a time, SQLite rows a cursor at a time.
    The users and follows come from one read transaction; post files of
    users that transaction does not know yet (created since) are left out.
    """
    db = _readOnly(path)
    try:
        db.execute("BEGIN")
        for name, created in db.execute("SELECT name, created_us FROM users ORDER BY name"):
            yield _jsonLine({"user": name, "time": formatTime(created)})
        for follower, followee, time_us in db.execute(
                "SELECT follower, followee, time_us FROM follows WHERE following = 1"
                " ORDER BY follower, followee"):
            yield _jsonLine({"follower": follower, "followee": followee,
                             "time": formatTime(time_us)})
        postsDir = os.path.join(path, "posts")
        names = sorted(n for n in os.listdir(postsDir) if n.endswith(".txt"))
        for name in names:
            author = name[:-len(".txt")]
            if db.execute("SELECT 1 FROM users WHERE name = ?", (author,)).fetchone() is None:
                continue
            with open(os.path.join(postsDir, name), "rb") as f:
                for line in f:
                    # A torn last line is a write in progress: not a post yet.
                    if line.endswith(b"\n"):
                        yield line
        db.execute("COMMIT")
    finally:
        db.close()


def _jsonLine(record):
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def _isEmpty(path):
    return not os.path.exists(path) or not os.listdir(path)


class Importer:
    """
    Fills an empty data directory from export lines, streamed: SQLite rows
    go in by batches in one transaction, post lines are appended to their
    files by batches, and memory holds only users and follows (which a
    server holds anyway) and one batch.

    Users and follows without an id get one of the origin C{origin}, in the
    order of the lines, and so do posts without an id; a post without a
    request id gets its update id as request id.  Importing the same file
    with the same origin on every VM gives every VM the same ids.

    Everything is written under C{DATA/.importing} and moved into place at
    the end: a bad line leaves the data directory as empty as it was.
    """

    def __init__(self, path, origin, now_us=None):
        self.path = path
        self.origin = checkOrigin(origin)
        self.now_us = now_us if now_us is not None else int(time.time() * 1e6)
        self.seq = 0
        self.users = set()
        self.follows = set()
        self.counts = {"user": 0, "follow": 0, "post": 0}
        self._lastKey = {}
        self._unsorted = set()
        self._lines = {}
        self._bytes = 0
        self._posts = []
        self._rows = {"log": [], "users": [], "follows": []}
        self._pending = 0

    def run(self, lines):
        """Import every line of C{lines} (bytes, numbered from 1)."""
        if not _isEmpty(self.path):
            raise NotEmpty("%s is not empty: import only into a new data directory"
                           % (self.path,))
        os.makedirs(self.path, exist_ok=True)
        self.work = os.path.join(self.path, ".importing")
        self.postsDir = os.path.join(self.work, "posts")
        os.makedirs(self.postsDir)
        try:
            self.db = sqlite3.connect(os.path.join(self.work, "sns.sqlite3"),
                                      isolation_level=None)
            # No rollback journal on disk (a failed import is thrown away
            # whole), but one in memory for the savepoint of each batch.
            self.db.execute("PRAGMA journal_mode=MEMORY")
            self.db.execute("PRAGMA synchronous=OFF")
            self.db.executescript(_SCHEMA)
            self.db.execute("CREATE TEMP TABLE requests (author TEXT NOT NULL,"
                            " request TEXT NOT NULL, PRIMARY KEY (author, request))")
            self.db.execute("BEGIN")
            for lineno, line in enumerate(lines, 1):
                self._line(lineno, line)
            self._flush()
            self.db.execute("COMMIT")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.close()
            self._sortFiles()
            self._syncAll()
            os.replace(os.path.join(self.work, "sns.sqlite3"),
                       os.path.join(self.path, "sns.sqlite3"))
            os.replace(self.postsDir, os.path.join(self.path, "posts"))
            os.rmdir(self.work)
            _fsync(self.path)
        except BaseException:
            try:
                self.db.close()
            except Exception:
                pass
            shutil.rmtree(self.work, ignore_errors=True)
            raise
        return self.counts

    def _nextId(self):
        self.seq += 1
        return self.origin, self.seq

    def _line(self, lineno, line):
        try:
            kind = self._apply(lineno, line)
        except (errors.SNSError, TypeError, ValueError) as e:
            # A duplicate post in the batch before this line is the first
            # bad line: check the batch before naming this one.
            self._checkPosts()
            if isinstance(e, BadLine):
                raise
            raise BadLine(lineno, getattr(e, "message", None) or str(e))
        self.counts[kind] += 1
        self._pending += 1
        if self._pending >= _FLUSH_LINES or self._bytes >= _FLUSH_BYTES:
            self._flush()

    def _apply(self, lineno, line):
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ValueError("not JSON (%s)" % (getattr(e, "msg", e),))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        kind = ("user" if "user" in record else "follow" if "follower" in record
                else "post" if "author" in record else None)
        if kind is None:
            raise ValueError("neither a user, a follow nor a post")
        required, optional = _IMPORT_FIELDS[kind]
        if not required <= record.keys():
            raise ValueError("a %s line needs %s" % (kind, ", ".join(sorted(required))))
        unknown = record.keys() - required - optional
        if unknown:
            raise ValueError("unknown field %s" % (", ".join(sorted(unknown)),))
        getattr(self, "_" + kind)(lineno, record)
        return kind

    def _time(self, record, default=0):
        text = record.get("time")
        if text is None:
            return default
        if not isinstance(text, str) or not text.endswith("Z"):
            raise ValueError("time must be a UTC time like 2026-11-29T18:26:21.986269Z")
        try:
            time_us = parseTime(text)
        except ValueError:
            raise ValueError("time must be a UTC time like 2026-11-29T18:26:21.986269Z")
        # Not further ahead of this machine's clock than peers accept.
        return checkTime(time_us, self.now_us)

    def _user(self, lineno, record):
        name = checkUsername(record["user"])
        if name in self.users:
            raise BadLine(lineno, "user %s twice" % (name,))
        origin, seq = self._nextId()
        update = Update(origin=origin, seq=seq, time_us=self._time(record), user=name)
        self.users.add(name)
        self._rows["log"].append(update)
        self._rows["users"].append((name, update.time_us))

    def _known(self, lineno, name):
        if checkUsername(name) not in self.users:
            raise BadLine(lineno, "user %s is not on a user line before this one" % (name,))
        return name

    def _follow(self, lineno, record):
        pair = (self._known(lineno, record["follower"]),
                self._known(lineno, record["followee"]))
        if pair[0] == pair[1]:
            raise errors.FollowSelf()
        if pair in self.follows:
            raise BadLine(lineno, "%s follows %s twice" % pair)
        origin, seq = self._nextId()
        update = Update(origin=origin, seq=seq, time_us=self._time(record),
                        follow=FollowChange(pair[0], pair[1], True))
        self.follows.add(pair)
        self._rows["log"].append(update)
        self._rows["follows"].append((pair[0], pair[1], 1, update.time_us, update.id))

    def _post(self, lineno, record):
        author = self._known(lineno, record["author"])
        text = checkPostText(record["text"])
        time_us = self._time(record)
        timeText = record["time"]
        if len(timeText) != 27 or timeText[10] != "T" or timeText[19] != ".":
            timeText = formatTime(time_us)
        if "id" in record:
            if not isinstance(record["id"], str):
                raise ValueError("a post id is a string")
            origin, seq = parseUpdateId(record["id"])
            checkOrigin(origin)
            checkSeq(seq)
        else:
            origin, seq = self._nextId()
        postId = updateId(origin, seq)
        # A post read from an export keeps what it had (no request id is
        # made up for a post that has an id), so a round trip is exact.
        requestId = checkRequestId(record.get("request", "" if "id" in record else postId))
        if "request" in record and not requestId:
            raise ValueError("an empty request id: leave \"request\" out instead")
        self._posts.append((lineno, origin, seq, author, requestId))
        line = _postLine(timeText, postId, author, text, requestId).encode("utf-8")
        key = (time_us, postId)
        last = self._lastKey.get(author)
        if last is not None and key < last:
            self._unsorted.add(author)
        else:
            self._lastKey[author] = key
        self._lines.setdefault(author, []).append(line)
        self._bytes += len(line)

    def _checkPosts(self):
        """
        Index the batch's posts, refusing a post id or a (user, request id)
        seen before: in bulk, and line by line only to name the bad line.
        """
        posts, self._posts = self._posts, []
        db = self.db
        db.execute("SAVEPOINT batch")
        try:
            db.executemany("INSERT INTO post_files (origin, seq, author) VALUES (?, ?, ?)",
                           [(o, s, a) for _, o, s, a, _ in posts])
            db.executemany("INSERT INTO temp.requests (author, request) VALUES (?, ?)",
                           [(a, r) for _, _, _, a, r in posts if r])
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK TO batch")
            for lineno, origin, seq, author, requestId in posts:
                try:
                    db.execute("INSERT INTO post_files (origin, seq, author) VALUES (?, ?, ?)",
                               (origin, seq, author))
                except sqlite3.IntegrityError:
                    raise BadLine(lineno, "post id %s twice" % (updateId(origin, seq),))
                try:
                    if requestId:
                        db.execute("INSERT INTO temp.requests (author, request) VALUES (?, ?)",
                                   (author, requestId))
                except sqlite3.IntegrityError:
                    raise BadLine(lineno, "request id %s of %s twice" % (requestId, author))
            raise
        db.execute("RELEASE batch")

    def _flush(self):
        self._checkPosts()
        rows = self._rows
        self.db.executemany(
            "INSERT INTO log (origin, seq, time_us, body) VALUES (?, ?, ?, ?)",
            [(u.origin, u.seq, u.time_us, u.toProto().SerializeToString())
             for u in rows["log"]])
        self.db.executemany("INSERT INTO users (name, created_us) VALUES (?, ?)", rows["users"])
        self.db.executemany(
            "INSERT INTO follows (follower, followee, following, time_us, update_id)"
            " VALUES (?, ?, ?, ?, ?)", rows["follows"])
        for author, lines in self._lines.items():
            with open(os.path.join(self.postsDir, author + ".txt"), "ab") as f:
                f.writelines(lines)
        self._rows = {"log": [], "users": [], "follows": []}
        self._lines = {}
        self._bytes = self._pending = 0

    def _sortFiles(self):
        """Rewrite in (time, id) order the files whose posts came out of order."""
        for author in sorted(self._unsorted):
            path = os.path.join(self.postsDir, author + ".txt")
            with open(path, "rb") as f:
                lines = f.readlines()
            keyed = []
            for line in lines:
                u = parsePostLine(line.decode("utf-8"))
                keyed.append((u.post.key, line))
            keyed.sort(key=lambda pair: pair[0])
            with open(path, "wb") as f:
                f.writelines(line for _, line in keyed)

    def _syncAll(self):
        for name in os.listdir(self.postsDir):
            _fsync(os.path.join(self.postsDir, name))
        _fsync(os.path.join(self.work, "sns.sqlite3"))
        _fsync(self.postsDir)
        _fsync(self.work)


def backup(path, dest):
    """
    A consistent copy of the data directory C{path} of a running VM into the
    new directory C{dest}; returns (post files, bytes of posts).

    The master commits a batch's SQLite rows (with the index of which file
    holds which post) before it appends the batch's posts to their files.
    So the post files are copied first and SQLite (with its backup API, one
    snapshot) after: every post line copied was committed before the
    snapshot, so the copy never holds a post its SQLite does not know; what
    the snapshot knows beyond the files (posts written after their file was
    copied) is what a crash between commit and append leaves, which a VM
    handles on start (its peers send those posts again).  A torn last line
    (an append in progress) is cut off, as the VM itself does on start.
    """
    if not _isEmpty(dest):
        raise NotEmpty("%s is not empty: back up into a new directory" % (dest,))
    src = _readOnly(path)
    postsDir = os.path.join(path, "posts")
    outDir = os.path.join(dest, "posts")
    os.makedirs(outDir)
    files = size = 0
    for name in sorted(os.listdir(postsDir)):
        if not name.endswith(".txt"):
            continue
        files += 1
        size += _copyWholeLines(os.path.join(postsDir, name), os.path.join(outDir, name))
    out = sqlite3.connect(os.path.join(dest, "sns.sqlite3"))
    try:
        src.backup(out)
    finally:
        out.close()
        src.close()
    _fsync(os.path.join(dest, "sns.sqlite3"))
    _fsync(outDir)
    _fsync(dest)
    return files, size


def _copyWholeLines(source, target, chunk=1024 * 1024):
    """Copy C{source} up to its last newline, a chunk at a time; fsync it."""
    end = 0
    with open(source, "rb") as f, open(target, "wb") as out:
        while True:
            data = f.read(chunk)
            if not data:
                break
            out.write(data)
            cut = data.rfind(b"\n")
            if cut >= 0:
                end = out.tell() - len(data) + cut + 1
        out.truncate(end)
        out.flush()
        os.fsync(out.fileno())
    return end
