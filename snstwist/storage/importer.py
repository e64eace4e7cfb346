"""
C{sns-admin import}: fill an empty data directory from export lines
(L{admin.EXPORT_FORMAT}), streamed.
"""

import json
import os
import shutil
import sqlite3
import time

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
from snstwist.storage import index as _index
from snstwist.storage.admin import BadLine, NotEmpty, isEmpty
from snstwist.storage.postfile import formatTime, fsync, parsePostLine, parseTime, postLineOf

_IMPORT_FIELDS = {
    "user": ({"user"}, {"time"}),
    "follow": ({"follower", "followee"}, {"time"}),
    "post": ({"author", "time", "text"}, {"id", "request"}),
}
_FLUSH_LINES = 20000
_FLUSH_BYTES = 16 * 1024 * 1024
_INSERT = _index.INSERT_RECORD.replace(" OR IGNORE", "")


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
            self.db = sqlite3.connect(os.path.join(work, "sns.sqlite3"),
                                      isolation_level=None)
            # No rollback journal on disk (a failed import is thrown away
            # whole), but one in memory for the savepoint of each batch.
            self.db.execute("PRAGMA journal_mode=MEMORY")
            self.db.execute("PRAGMA synchronous=OFF")
            self.db.executescript(_index.SCHEMA)
            self.db.execute("CREATE TEMP TABLE requests (author TEXT NOT NULL,"
                            " request TEXT NOT NULL, PRIMARY KEY (author, request))")
            self.db.execute("BEGIN")
            for lineno, line in enumerate(lines, 1):
                self._line(lineno, line)
            self._flush()
            _index.Index(self.db).writeVersions(self.versions.origins)
            self.db.execute("COMMIT")
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
            try:
                self.db.close()
            except Exception:
                pass
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self.counts

    def _nextId(self):
        self.seq += 1
        self.versions.add(self.origin, self.seq)
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
            self.versions.add(origin, seq)
        else:
            origin, seq = self._nextId()
        postId = updateId(origin, seq)
        # A post read from an export keeps what it had (no request id is
        # made up for a post that has an id), so a round trip is exact.
        requestId = checkRequestId(record.get("request", "" if "id" in record else postId))
        if "request" in record and not requestId:
            raise ValueError("an empty request id: leave \"request\" out instead")
        self._posts.append((lineno, Update(
            origin=origin, seq=seq, time_us=time_us, request_id=requestId,
            post=Post(id=postId, author=author, time_us=time_us, text=text))))
        line = postLineOf(timeText, postId, author, text, requestId).encode("utf-8")
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
            db.executemany(_INSERT, [_index.recordRow(u) for _, u in posts])
            db.executemany("INSERT INTO temp.requests (author, request) VALUES (?, ?)",
                           [u.request for _, u in posts if u.request_id])
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK TO batch")
            for lineno, u in posts:
                try:
                    db.execute(_INSERT, _index.recordRow(u))
                except sqlite3.IntegrityError:
                    raise BadLine(lineno, "post id %s twice" % (u.id,))
                try:
                    if u.request_id:
                        db.execute("INSERT INTO temp.requests (author, request) VALUES (?, ?)",
                                   u.request)
                except sqlite3.IntegrityError:
                    raise BadLine(lineno, "request id %s of %s twice" % (u.request_id,
                                                                          u.post.author))
            raise
        db.execute("RELEASE batch")

    def _flush(self):
        self._checkPosts()
        rows = self._rows
        self.db.executemany(_INSERT, [_index.recordRow(u) for u in rows["log"]])
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
    postsDir = os.path.join(work, "posts")
    for name in os.listdir(postsDir):
        fsync(os.path.join(postsDir, name))
    fsync(os.path.join(work, "sns.sqlite3"))
    fsync(postsDir)
    fsync(work)
