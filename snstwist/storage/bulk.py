"""
The writing side of C{sns-admin import} (L{importer}): a new data directory
filled a batch at a time, in constant memory.

Rows go into SQLite with C{executemany} and without the record's secondary
indexes, which are made once at the end (several times faster than keeping
them up to date row by row); post lines are appended to their files a
batch at a time; each batch is written on a thread of its own while the
next is parsed (SQLite lets go of the GIL while it works).  A duplicate
update id, or a duplicate request id given, is found a batch at a time and
named by its line (L{admin.BadLine}).
"""

import concurrent.futures
import os
import sqlite3

from snstwist.rpc import sns_pb2 as pb
from snstwist.storage import index as _index
from snstwist.storage import writes
from snstwist.storage.admin import BadLine
from snstwist.storage.postfile import fsync, parsePostLine

# The most rows (or bytes of post lines) held before they are written.
FLUSH_ROWS = 50000
FLUSH_BYTES = 32 * 1024 * 1024
_INSERT = writes.INSERT_RECORD.replace(" OR IGNORE", "")
_INSERT_REQUEST = "INSERT INTO temp.requests (author, request) VALUES (?, ?)"


class BulkWriter:
    """Writes the rows and post lines of an import into the directory C{work}."""

    def __init__(self, work):
        self.work = work
        self.postsDir = os.path.join(work, "posts")
        os.makedirs(self.postsDir)
        self._lastKey = {}
        self.unsorted = set()
        self._new()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, "sns-import")
        self._writing = None
        self.db = sqlite3.connect(os.path.join(work, "sns.sqlite3"),
                                  isolation_level=None, check_same_thread=False)
        # No rollback journal on disk (a failed import is thrown away
        # whole), but one in memory for the savepoint of each batch.
        self.db.execute("PRAGMA journal_mode=MEMORY")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA cache_size=-65536")
        self.db.executescript(_index.TABLES)
        self.db.execute("CREATE TEMP TABLE requests (author TEXT NOT NULL,"
                        " request TEXT NOT NULL, PRIMARY KEY (author, request)) WITHOUT ROWID")
        self.db.execute("BEGIN")

    def _new(self):
        # The record rows of the batch, the line of each, and the request
        # id given with each (None if made up or none).
        self.rows, self.lineNumbers, self.requests = [], [], []
        self.tables = {"users": [], "follows": [], "marks": []}
        self.lines = {}
        self.bytes = 0

    def add(self, lineno, row, given=None):
        """The record row C{row} of line C{lineno}, with the (user, request id) it gave."""
        self.rows.append(row)
        self.lineNumbers.append(lineno)
        self.requests.append(given)

    def addPost(self, lineno, origin, seq, postId, author, time_us, text, requestId, line,
                given=None, shown=True):
        """A post: its record row, and its line C{line} (bytes) if shown."""
        # Setting the post's fields in place is twice as fast as pb.Post(...).
        update = pb.Update(origin=origin, seq=seq, time_us=time_us, request_id=requestId)
        post = update.post
        post.id, post.author, post.time_us, post.text = postId, author, time_us, text
        self.rows.append((origin, seq, time_us, postId, "post", author,
                          author if requestId else None, requestId or None, int(shown),
                          update.SerializeToString()))
        self.lineNumbers.append(lineno)
        self.requests.append(given if shown else None)
        if not shown:
            return
        key = (time_us, postId)
        last = self._lastKey.get(author)
        if last is not None and key < last:
            self.unsorted.add(author)
        else:
            self._lastKey[author] = key
        lines = self.lines.get(author)
        if lines is None:
            lines = self.lines[author] = []
        lines.append(line)
        self.bytes += len(line)

    def full(self):
        return len(self.rows) >= FLUSH_ROWS or self.bytes >= FLUSH_BYTES

    def flush(self):
        """Write the batch held, once the one before is written (L{_write})."""
        batch = (self.rows, self.lineNumbers, self.requests, self.tables, self.lines)
        self._new()
        self.drain()
        self._writing = self._writer.submit(self._write, *batch)

    def drain(self):
        """Wait for the batch being written; raise what its writing raised."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _write(self, rows, lineNumbers, requests, tables, posts):
        """
        On the writer thread: the record rows, refusing an update id or a
        given (user, request id) seen before (in bulk, and row by row only
        to name the first bad line), then the tables and post lines.
        """
        db = self.db
        db.execute("SAVEPOINT batch")
        try:
            db.executemany(_INSERT, rows)
            db.executemany(_INSERT_REQUEST, [r for r in requests if r is not None])
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK TO batch")
            for row, lineno, request in zip(rows, lineNumbers, requests):
                try:
                    db.execute(_INSERT, row)
                except sqlite3.IntegrityError:
                    raise BadLine(lineno, "%s id %s twice" % (row[4], row[3]))
                try:
                    if request is not None:
                        db.execute(_INSERT_REQUEST, request)
                except sqlite3.IntegrityError:
                    raise BadLine(lineno, "request id %s of %s twice" % (request[1],
                                                                          request[0]))
            raise
        db.execute("RELEASE batch")
        db.executemany("INSERT INTO users (name, created_us) VALUES (?, ?)"
                       " ON CONFLICT (name) DO UPDATE SET created_us = excluded.created_us"
                       " WHERE excluded.created_us < users.created_us", tables["users"])
        db.executemany(writes.UPSERT_FOLLOW, tables["follows"])
        db.executemany(writes.UPSERT_MARK, tables["marks"])
        for author, lines in posts.items():
            with open(os.path.join(self.postsDir, author + ".txt"), "ab") as f:
                f.write(b"".join(lines))

    def finish(self, versions):
        """The last batch, the version vector, the indexes; every file sorted and flushed."""
        self.flush()
        self.drain()
        self._writer.shutdown()
        _index.Index(self.db).writeVersions(versions.origins)
        self.db.execute("COMMIT")
        self.db.executescript(_index.INDEXES)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.close()
        _sortFiles(self.postsDir, self.unsorted)
        _syncAll(self.work)

    def abandon(self):
        self._writer.shutdown(cancel_futures=True)
        try:
            self.db.close()
        except Exception:
            pass


def _sortFiles(postsDir, unsorted):
    """Rewrite in (time, id) order the files whose posts came out of order."""
    for author in sorted(unsorted):
        path = os.path.join(postsDir, author + ".txt")
        with open(path, "rb") as f:
            lines = f.readlines()
        keyed = []
        for line in lines:
            u = parsePostLine(line.decode("utf-8"))
            keyed.append((u.post.key, line))
        keyed.sort(key=lambda pair: pair[0])
        with open(path, "wb") as f:
            f.writelines(line for _, line in keyed)


def _syncAll(work):
    """fsync every file written, several at a time, then the directories."""
    postsDir = os.path.join(work, "posts")
    paths = [os.path.join(postsDir, name) for name in os.listdir(postsDir)]
    paths.append(os.path.join(work, "sns.sqlite3"))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in pool.map(fsync, paths):
            pass
    fsync(postsDir)
    fsync(work)
