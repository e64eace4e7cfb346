"""
C{sns-admin import}: fill an empty data directory from lines of the export
format (L{admin.EXPORT_FORMAT}), streamed, in constant memory.

A bulk load is mostly post lines without ids, and goes fast (tens of
thousands of lines a second) because it does as little as it can per line:
lines are parsed a batch at a time (one C{json.loads} per batch), and a
plain post line's record row and file line are made from the parsed values
directly (no model objects).  The writing is L{bulk.BulkWriter}'s.  An
export's lines (with ids, read marks, hidden copies and the version
vector) take the general way, which checks every field.
"""

import os
import re
import shutil
import sqlite3
import time

from snstwist.core import errors
from snstwist.core.limits import (
    CLOCK_WINDOW_US,
    MAX_EXTRA,
    MAX_FOLLOWS,
    MAX_ORIGINS,
    MAX_POST_CHARS,
    MAX_SEQ,
    MAX_USERS,
    excerpt,
)
from snstwist.core.model import (
    FollowChange,
    PasswordChange,
    ReadMark,
    Update,
    checkCount,
    checkCursor,
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
from snstwist.storage import importlines, snapshot, writes
from snstwist.storage.admin import BadLine, NotEmpty, forgetInterruptedImport, isEmpty
from snstwist.storage.bulk import BulkWriter
from snstwist.storage.disk import holdLock
from snstwist.storage.postfile import formatTime, fsync, parseTime, postLineOf

# (kind, the field that says it, required fields, optional fields)
_KINDS = [
    ("user", "user", {"user"}, {"time", "id", "hash", "request"}),
    ("password", "password", {"password", "time", "id", "hash"}, {"request"}),
    ("follow", "follower", {"follower", "followee"}, {"time", "id", "following", "request"}),
    ("read", "read", {"read", "time", "id", "post_time", "post_id"}, {"request"}),
    ("post", "author", {"author", "time", "text"}, {"id", "request", "hidden"}),
    ("versions", "versions", {"versions"}, set()),
]
_NAMES = "a user, a password, a follow, a read mark, a post nor a version vector"
# A time as export writes it: taken as it is, the line keeps it.
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
_BAD_TIME = "must be a UTC time like 2026-11-29T18:26:21.986269Z"
_VECTOR = "versions is a list of [origin, contiguous, [extra]]"
_ARGON2ID = "$argon2id$"


class Importer:
    """
    Fills an empty data directory from export lines, streamed.

    Users, follows and posts without an id get one of the origin C{origin},
    in the order of the lines; a post without a request id gets its update
    id as request id.  Importing the same file with the same origin on every
    VM gives every VM the same ids.  A request id given in the file may not
    look like the ids made up (C{origin}/N), so that a made-up one never
    repeats one given.

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
        self.follows, self.followCounts = {}, {}  # L{_followed}
        self.counts = {"user": 0, "follow": 0, "post": 0}
        self.versions = VersionVector()

    def run(self, lines):
        """Import every line of C{lines} (bytes, numbered from 1)."""
        forgetInterruptedImport(self.path)
        if not isEmpty(self.path):
            raise NotEmpty("%s is not empty: import only into a new data directory"
                           % (self.path,))
        os.makedirs(self.path, exist_ok=True)
        # The writer lock, as a server holds it: no server starts on the
        # directory while it is filled (its files would be replaced under it).
        lock = holdLock(self.path)
        work = os.path.join(self.path, ".importing")
        self.out = None
        try:
            self.out = BulkWriter(work)
            for lineno, batch in importlines.batches(lines):
                self._batch(lineno, batch)
            if self.seq:
                made = VersionVector()
                made.origins[self.origin] = Seen(self.seq)
                self.versions.merge(made)
            self.out.finish(self.versions)
            snapshotted = _snapshot(work)
            os.replace(os.path.join(work, "sns.sqlite3"), os.path.join(self.path, "sns.sqlite3"))
            os.replace(os.path.join(work, "posts"), os.path.join(self.path, "posts"))
            if snapshotted:
                os.replace(os.path.join(work, snapshot.FILE),
                           os.path.join(self.path, snapshot.FILE))
            os.rmdir(work)
            fsync(self.path)
        except BaseException:
            if self.out is not None:
                self.out.abandon()
            shutil.rmtree(work, ignore_errors=True)
            os.unlink(os.path.join(self.path, "lock"))  # as empty as it was
            raise
        finally:
            os.close(lock)
        return self.counts

    def _nextId(self):
        self.seq += 1
        return self.origin, self.seq

    def _batch(self, first, lines):
        """The lines C{lines} (bytes), the first numbered C{first}."""
        records = importlines.parsed(first, lines)
        fast, out = self._fastPost, self.out
        for lineno, record in enumerate(records, first):
            if not fast(lineno, record):
                self._line(lineno, record)
            if out.full():
                out.flush()

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
        self.out.addPost(lineno, origin, seq, postId, author, time_us, text, postId, line)
        self.counts["post"] += 1
        return True

    def _line(self, lineno, record):
        try:
            kind = self._apply(lineno, record)
        except (errors.SNSError, TypeError, ValueError) as e:
            # A duplicate in the batch before this line is the first bad
            # line: check the batch before naming this one.
            self.out.flush()
            self.out.drain()
            if isinstance(e, BadLine):
                raise
            raise BadLine(lineno, getattr(e, "message", None) or str(e))
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def _apply(self, lineno, record):
        if isinstance(record, BadLine):
            raise record
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        found = [k for k in _KINDS if k[1] in record]
        if not found:
            raise ValueError("neither " + _NAMES)
        kind, _, required, optional = found[0]
        if not required <= record.keys():
            raise ValueError("a %s line needs %s" % (kind, ", ".join(sorted(required))))
        unknown = record.keys() - required - optional
        if unknown:
            raise ValueError("unknown field %s" % (", ".join(sorted(unknown)),))
        getattr(self, "_" + kind)(lineno, record)
        return kind

    def _time(self, record, field="time", default=0):
        text = record.get(field)
        if text is None:
            return default
        if not isinstance(text, str) or not text.endswith("Z"):
            raise ValueError("%s %s" % (field, _BAD_TIME))
        try:
            time_us = parseTime(text)
        except ValueError:
            raise ValueError("%s %s" % (field, _BAD_TIME))
        # Not further ahead of this machine's clock than peers accept.
        return checkTime(time_us, self.now_us)

    def _id(self, record):
        """The (origin, seq) of C{record}: its own, or one made up."""
        if "id" not in record:
            return self._nextId()
        origin, seq = parseUpdateId(record["id"])
        self.versions.add(origin, seq)
        return origin, seq

    def _request(self, record, own=None):
        """The request id given, checked (or C{own}, the update's id, if none)."""
        if "request" not in record:
            return own or ""
        requestId = checkRequestId(record["request"])
        if not requestId:
            raise ValueError("an empty request id: leave \"request\" out instead")
        if requestId.startswith(self._madeUp) and requestId != own:
            raise ValueError("request id %s looks like the ids this import makes up:"
                             " import with another --origin" % (requestId,))
        return requestId

    def _hash(self, record, required):
        """The argon2id hash C{record} gives (or "", when it need not give one)."""
        value = record.get("hash", "")
        if (value or required) and not (isinstance(value, str)
                                         and value.startswith(_ARGON2ID)):
            raise ValueError("hash must be an argon2id hash (%s...), as export writes it"
                             % (_ARGON2ID,))
        return value

    def _update(self, lineno, record, **change):
        origin, seq = self._id(record)
        update = Update(origin=origin, seq=seq, time_us=self._time(record),
                        request_id=self._request(record), **change)
        self.out.add(lineno, writes.recordRow(update))
        return update

    def _user(self, lineno, record):
        name = checkUsername(record["user"])
        if name in self.users and "id" not in record:
            raise BadLine(lineno, "user %s twice" % (name,))
        if name not in self.users and len(self.users) >= MAX_USERS:
            # What no server would take: a cluster holds at most this many.
            raise BadLine(lineno, "more than %d users, the most a cluster holds" % (MAX_USERS,))
        update = self._update(lineno, record, user=name, hash=self._hash(record, False))
        self.users.add(name)
        self.out.tables["users"].append((name, update.time_us))

    def _known(self, lineno, name):
        if checkUsername(name) not in self.users:
            raise BadLine(lineno, "user %s is not on a user line before this one" % (name,))
        return name

    def _password(self, lineno, record):
        user = self._known(lineno, record["password"])
        self._update(lineno, record,
                     password=PasswordChange(user, self._hash(record, True)))

    def _follow(self, lineno, record):
        pair = (self._known(lineno, record["follower"]),
                self._known(lineno, record["followee"]))
        if pair[0] == pair[1]:
            raise errors.FollowSelf()
        if pair in self.follows and "id" not in record:
            raise BadLine(lineno, "%s follows %s twice" % pair)
        following = record.get("following", True)
        if not isinstance(following, bool):
            raise ValueError("following is true or false")
        update = self._update(lineno, record, follow=FollowChange(pair[0], pair[1], following))
        _followed(self.follows, self.followCounts, lineno, pair, following)
        self.out.tables["follows"].append(writes.followRow(update))

    def _read(self, lineno, record):
        user = self._known(lineno, record["read"])
        mark = checkCursor(self._time(record, "post_time"), record["post_id"])
        update = self._update(lineno, record, read=ReadMark(user, *mark))
        self.out.tables["marks"].append(writes.markRow(update))

    def _post(self, lineno, record):
        author = self._known(lineno, record["author"])
        text = checkPostText(record["text"])
        time_us = self._time(record)
        timeText = record["time"]
        if not _TIME.match(timeText):
            timeText = formatTime(time_us)
        origin, seq = self._id(record)
        postId = updateId(origin, seq)
        # A post read from an export keeps what it had (no request id is
        # made up for a post that has an id), so a round trip is exact.
        requestId = self._request(record, None if "id" in record else postId)
        hidden = record.get("hidden", False)
        if not isinstance(hidden, bool):
            raise ValueError("hidden is true or false")
        line = postLineOf(timeText, postId, author, text, requestId).encode("utf-8")
        self.out.addPost(lineno, origin, seq, postId, author, time_us, text, requestId, line,
                         (author, requestId) if "request" in record else None, not hidden)

    def _versions(self, lineno, record):
        """What the exported VM held, superseded updates included (docs/design.md s. 4)."""
        self.versions.merge(_vector(record["versions"]))


def _followed(follows, counts, lineno, pair, following):
    """
    Note in C{follows} ({(follower, followee): following, as the pair's last
    line says}) and C{counts} ({follower: how many it follows}) that line
    C{lineno} says C{pair} is C{following}; a follower past
    L{MAX_FOLLOWS} is what no server would accept: a L{BadLine}.
    """
    count = counts.get(pair[0], 0) + following - follows.get(pair, False)
    if count > MAX_FOLLOWS:
        raise BadLine(lineno, "%s follows more than %d users, the most one may"
                      % (pair[0], MAX_FOLLOWS))
    follows[pair], counts[pair[0]] = following, count


def _vector(held):
    """
    The version vector of a vector line's value C{held}, within the bounds
    of a peer's vector (L{checkVersionVector}) and of what SQLite holds.
    """
    if not isinstance(held, list) or not all(
            isinstance(e, list) and len(e) == 3 and isinstance(e[2], list) for e in held):
        raise ValueError(_VECTOR)
    checkCount(held, "origins in a version vector", MAX_ORIGINS)
    vector = VersionVector()
    for origin, contiguous, extra in held:
        if type(contiguous) is not int or not 0 <= contiguous <= MAX_SEQ:
            raise ValueError("a contiguous sequence number is 0-%d (got %s)"
                             % (MAX_SEQ, excerpt(contiguous)))
        checkCount(extra, "out-of-order sequence numbers of one origin", MAX_EXTRA)
        vector.origins[checkOrigin(origin)] = Seen(contiguous, set(map(_seq, extra)))
    return vector


def _seq(value):
    """A sequence number of a vector line: an integer (not a boolean) of L{checkSeq}."""
    if type(value) is not int:
        raise ValueError("a sequence number is 1-%d (got %s)" % (MAX_SEQ, excerpt(value)))
    return checkSeq(value)


def _snapshot(work):
    """Write the state snapshot into C{work} if a start would want one (L{snapshot.saveIfDue})."""
    db = sqlite3.connect(os.path.join(work, "sns.sqlite3"))
    try:
        return snapshot.saveIfDue(work, db) is not None
    finally:
        db.close()
