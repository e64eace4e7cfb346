"""
C{sns-admin import}: fill an empty data directory from export lines
(L{admin.EXPORT_FORMAT}), streamed.

A bulk load is mostly post lines without ids, and goes fast (tens of
thousands of lines a second) because it does as little as it can per line:
lines are parsed a batch at a time (one C{json.loads} per batch), a post's
record row and file line are made from the parsed values directly (no
model objects), rows go into SQLite with C{executemany} and without the
secondary indexes, which are made once at the end, and post lines are
appended to their files a batch at a time.  Memory holds users, follows
and one batch, whatever the number of posts.
"""

import concurrent.futures
import json
import os
import re
import shutil
import sqlite3
import time

from snstwist.core import errors
from snstwist.core.limits import CLOCK_WINDOW_US, MAX_POST_CHARS
from snstwist.core.model import (
    FollowChange,
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
from snstwist.core.state import Seen, VersionVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.storage import index as _index
from snstwist.storage.admin import BadLine, NotEmpty, isEmpty
from snstwist.storage.postfile import formatTime, fsync, parsePostLine, parseTime, postLineOf

_IMPORT_FIELDS = {
    "user": ({"user"}, {"time"}),
    "follow": ({"follower", "followee"}, {"time"}),
    "post": ({"author", "time", "text"}, {"id", "request"}),
}
# Lines parsed at once, and the most lines (or bytes of post lines) held
# before they are written.
_PARSE_LINES = 5000
_FLUSH_LINES = 50000
_FLUSH_BYTES = 32 * 1024 * 1024
_INSERT = _index.INSERT_RECORD.replace(" OR IGNORE", "")
_INSERT_REQUEST = "INSERT INTO temp.requests (author, request) VALUES (?, ?)"
# A time as export writes it: taken as it is, the line keeps it.
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")


class Importer:
    """
    Fills an empty data directory from export lines, streamed.

    Users and follows without an id get one of the origin C{origin}, in the
    order of the lines, and so do posts without an id; a post without a
    request id gets its update id as request id.  Importing the same file
    with the same origin on every VM gives every VM the same ids.  A request
    id given in the file may not look like the ids made up (C{origin}/N),
    so that a made-up one never repeats one given.

    Everything is written under C{DATA/.importing} and moved into place at
    the end: a bad line leaves the data directory as empty as it was.
    """

    def __init__(self, path, origin, now_us=None):
        self.path = path
        self.origin = checkOrigin(origin)
        self._madeUp = self.origin + "/"
        self.now_us = now_us if now_us is not None else int(time.time() * 1e6)
        self.seq = 0
        self.users = set()
        self.follows = set()
        self.counts = {"user": 0, "follow": 0, "post": 0}
        self._lastKey = {}
        self._unsorted = set()
        self._lines = {}
        self._bytes = 0
        # The record rows of the batch, the line of each, and the request
        # given with each (None if made up or none).
        self._rows, self._rowLines, self._requests = [], [], []
        self._users, self._follows = [], []
        self.versions = VersionVector()

    def run(self, lines):
        """Import every line of C{lines} (bytes, numbered from 1)."""
        if not isEmpty(self.path):
            raise NotEmpty("%s is not empty: import only into a new data directory"
                           % (self.path,))
        os.makedirs(self.path, exist_ok=True)
        work = os.path.join(self.path, ".importing")
        self.postsDir = os.path.join(work, "posts")
        os.makedirs(self.postsDir)
        try:
            # Batches are written on a thread of their own while the next
            # is parsed (SQLite lets go of the GIL while it works).
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
                            " request TEXT NOT NULL, PRIMARY KEY (author, request))"
                            " WITHOUT ROWID")
            self.db.execute("BEGIN")
            for lineno, batch in _batches(lines, _PARSE_LINES):
                self._batch(lineno, batch)
            self._flush()
            self._drain()
            self._writer.shutdown()
            if self.seq:
                made = VersionVector()
                made.origins[self.origin] = Seen(self.seq)
                self.versions.merge(made)
            _index.Index(self.db).writeVersions(self.versions.origins)
            self.db.execute("COMMIT")
            self.db.executescript(_index.INDEXES)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.close()
            _sortFiles(self.postsDir, self._unsorted)
            _syncAll(work)
            os.replace(os.path.join(work, "sns.sqlite3"),
                       os.path.join(self.path, "sns.sqlite3"))
            os.replace(self.postsDir, os.path.join(self.path, "posts"))
            os.rmdir(work)
            fsync(self.path)
        except BaseException:
            self._writer.shutdown(cancel_futures=True)
            try:
                self.db.close()
            except Exception:
                pass
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self.counts

    def _nextId(self):
        self.seq += 1
        return self.origin, self.seq

    def _batch(self, first, lines):
        """The lines C{lines} (bytes), the first numbered C{first}."""
        records = None
        try:
            texts = [line.decode("utf-8") for line in lines]
            records = json.loads("[" + ",".join(texts) + "]")
        except ValueError:
            pass
        if records is None or len(records) != len(lines):
            # One is not a JSON object of its own: find which, line by line.
            records = [_parse(first + i, line) for i, line in enumerate(lines)]
        fast = self._fastPost
        for lineno, record in enumerate(records, first):
            if not fast(lineno, record):
                self._line(lineno, record)
            if len(self._rows) >= _FLUSH_LINES or self._bytes >= _FLUSH_BYTES:
                self._flush()

    def _fastPost(self, lineno, record):
        """
        Import C{record} if it is a plain post line ({author, time, text},
        every value as expected); False (nothing done) if not, and the
        general way (L{_line}) then imports it or says what is wrong.
        """
        if type(record) is not dict or len(record) != 3:
            return False
        author, timeText, text = record.get("author"), record.get("time"), record.get("text")
        if (type(author) is not str or author not in self.users or type(timeText) is not str
                or type(text) is not str or not 1 <= len(text) <= MAX_POST_CHARS
                or not _TIME.match(timeText)):
            return False
        postId = self._madeUp + str(self.seq + 1)
        try:
            time_us = parseTime(timeText)
            line = postLineOf(timeText, postId, author, text, postId).encode("utf-8")
        except ValueError:  # not a date, or text that is not UTF-8 (UnicodeError)
            return False
        if not 0 <= time_us <= self.now_us + CLOCK_WINDOW_US:
            return False
        origin, seq = self._nextId()
        self._addPost(lineno, origin, seq, postId, author, time_us, text, postId, line, None)
        return True

    def _addPost(self, lineno, origin, seq, postId, author, time_us, text, requestId, line,
                 given):
        # Setting the post's fields in place is twice as fast as pb.Post(...).
        update = pb.Update(origin=origin, seq=seq, time_us=time_us, request_id=requestId)
        post = update.post
        post.id, post.author, post.time_us, post.text = postId, author, time_us, text
        body = update.SerializeToString()
        self._rows.append((origin, seq, time_us, postId, "post", author,
                           author if requestId else None, requestId or None, 1, body))
        self._rowLines.append(lineno)
        self._requests.append(given)
        key = (time_us, postId)
        last = self._lastKey.get(author)
        if last is not None and key < last:
            self._unsorted.add(author)
        else:
            self._lastKey[author] = key
        lines = self._lines.get(author)
        if lines is None:
            lines = self._lines[author] = []
        lines.append(line)
        self._bytes += len(line)
        self.counts["post"] += 1

    def _line(self, lineno, record):
        try:
            kind = self._apply(lineno, record)
        except (errors.SNSError, TypeError, ValueError) as e:
            # A duplicate in the batch before this line is the first bad
            # line: check the batch before naming this one.
            self._flush()
            self._drain()
            if isinstance(e, BadLine):
                raise
            raise BadLine(lineno, getattr(e, "message", None) or str(e))
        if kind != "post":
            self.counts[kind] += 1

    def _apply(self, lineno, record):
        if isinstance(record, BadLine):
            raise record
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

    def _addUpdate(self, lineno, update):
        self._rows.append(_index.recordRow(update))
        self._rowLines.append(lineno)
        self._requests.append(None)

    def _user(self, lineno, record):
        name = checkUsername(record["user"])
        if name in self.users:
            raise BadLine(lineno, "user %s twice" % (name,))
        origin, seq = self._nextId()
        update = Update(origin=origin, seq=seq, time_us=self._time(record), user=name)
        self.users.add(name)
        self._addUpdate(lineno, update)
        self._users.append((name, update.time_us))

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
        self._addUpdate(lineno, update)
        self._follows.append((pair[0], pair[1], 1, update.time_us, update.id))

    def _post(self, lineno, record):
        author = self._known(lineno, record["author"])
        text = checkPostText(record["text"])
        time_us = self._time(record)
        timeText = record["time"]
        if not _TIME.match(timeText):
            timeText = formatTime(time_us)
        given = None
        if "id" in record:
            if not isinstance(record["id"], str):
                raise ValueError("a post id is a string")
            origin, seq = parseUpdateId(record["id"])
            checkOrigin(origin)
            checkSeq(seq)
            self.versions.add(origin, seq)
        else:
            origin, seq = self._nextId()
        postId = updateId(origin, seq)
        # A post read from an export keeps what it had (no request id is
        # made up for a post that has an id), so a round trip is exact.
        requestId = checkRequestId(record.get("request", "" if "id" in record else postId))
        if "request" in record:
            if not requestId:
                raise ValueError("an empty request id: leave \"request\" out instead")
            if requestId.startswith(self._madeUp) and requestId != postId:
                raise ValueError("request id %s looks like the ids this import makes up:"
                                 " import with another --origin" % (requestId,))
            given = (author, requestId)
        line = postLineOf(timeText, postId, author, text, requestId).encode("utf-8")
        self._addPost(lineno, origin, seq, postId, author, time_us, text, requestId, line,
                      given)

    def _flush(self):
        """Write the batch held, once the one before is written (L{_write})."""
        batch = (self._rows, self._rowLines, self._requests, self._users, self._follows,
                 self._lines)
        self._rows, self._rowLines, self._requests = [], [], []
        self._users, self._follows, self._lines = [], [], {}
        self._bytes = 0
        self._drain()
        self._writing = self._writer.submit(self._write, *batch)

    def _drain(self):
        """Wait for the batch being written; raise what its writing raised."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _write(self, rows, lineNumbers, requests, users, follows, posts):
        """
        On the writer thread: the record rows, refusing an update id or a
        given (user, request id) seen before (in bulk, and row by row only
        to name the first bad line), then users, follows and post lines.
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
                    raise BadLine(lineno, "post id %s twice" % (row[3],))
                try:
                    if request is not None:
                        db.execute(_INSERT_REQUEST, request)
                except sqlite3.IntegrityError:
                    raise BadLine(lineno, "request id %s of %s twice" % (request[1],
                                                                          request[0]))
            raise
        db.execute("RELEASE batch")
        db.executemany("INSERT INTO users (name, created_us) VALUES (?, ?)", users)
        db.executemany(
            "INSERT INTO follows (follower, followee, following, time_us, update_id)"
            " VALUES (?, ?, ?, ?, ?)", follows)
        for author, lines in posts.items():
            with open(os.path.join(self.postsDir, author + ".txt"), "ab") as f:
                f.write(b"".join(lines))


def _batches(lines, size):
    """(number of the first line, [line]) of C{lines}, C{size} lines at a time."""
    batch, first = [], 1
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield first, batch
            first += size
            batch = []
    if batch:
        yield first, batch


def _parse(lineno, line):
    """The JSON value of one line, or the L{BadLine} it is."""
    try:
        return json.loads(line)
    except ValueError as e:
        return BadLine(lineno, "not JSON (%s)" % (getattr(e, "msg", e),))


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
