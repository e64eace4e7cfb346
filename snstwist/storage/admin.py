"""
Operators' copies of a data directory (sns-admin): export and backup; and
the format and errors that import (L{importer}) shares with them.

These run in their own short-lived process, never in a server, so they
work synchronously; what they share with the server is the format of
L{postfile} and L{index}.
"""

import json
import os
import shutil
import sqlite3

from snstwist.core import errors
from snstwist.storage.disk import Disk, holdLock
from snstwist.storage import index as _index
from snstwist.storage.postfile import formatTime, fsync, postLine

EXPORT_FORMAT = """\
One JSON object per line, in this order: users, password changes, follows,
read marks, posts, hidden copies, the version vector.
  {"user": NAME, "time": T, "id": ID, "hash": H, "request": RID}
  {"password": NAME, "time": T, "id": ID, "hash": H, "request": RID}
  {"follower": A, "followee": B, "time": T, "id": ID, "following": false, "request": RID}
  {"read": NAME, "time": T, "id": ID, "post_time": T, "post_id": ID, "request": RID}
  {"time": T, "id": ID, "author": A, "text": TEXT, "request": RID}
  {"time": T, "id": ID, "author": A, "text": TEXT, "request": RID, "hidden": true}
  {"versions": [[ORIGIN, CONTIGUOUS, [SEQ, ...]], ...]}
T is UTC "YYYY-MM-DDTHH:MM:SS.ffffffZ".  A post line is its line of
posts/<author>.txt as is.  "hash" (an argon2id hash), "request" and
"following": false (an unfollow) appear only when there is one.  To import,
only {"user": NAME}, {"follower": A, "followee": B} and {"author": A,
"time": T, "text": TEXT} are needed: ids (and request ids) are made up.
"""


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
    The lines (bytes) of the export of the data directory C{path}, streamed
    in constant memory: SQLite rows a cursor at a time, post files a line
    at a time.  The rows come from one read transaction: the record as it
    is (its superseded read marks compacted away, L{compaction}), so an
    import of the lines holds the same updates and the same version vector.
    The post lines are the files' as they are (a torn last line, a write in
    progress, left out): of a running VM, export a backup (L{backup}), whose
    files and record agree.
    """
    db = _readOnly(path)
    try:
        db.execute("BEGIN")
        for kind in ("user", "password", "follow"):
            for (body,) in db.execute("SELECT body FROM record WHERE author IS NULL AND"
                                      " kind = ?", (kind,)):
                yield from (_jsonLine(_stateLine(u)) for u in _index.decoded([body]))
        for (body,) in db.execute("SELECT body FROM marks JOIN record USING (origin, seq)"
                                  " ORDER BY user"):
            yield from (_jsonLine(_stateLine(u)) for u in _index.decoded([body]))
        postsDir = os.path.join(path, "posts")
        for name in sorted(n for n in os.listdir(postsDir) if n.endswith(".txt")):
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name[:-4],)).fetchone():
                yield from _postLines(os.path.join(postsDir, name))
        for (requester, request) in db.execute(
                "SELECT requester, request FROM record WHERE request IS NOT NULL"
                " GROUP BY requester, request HAVING count(*) > 1"):
            for (body,) in db.execute(
                    "SELECT body FROM record WHERE requester = ? AND request = ?"
                    " AND kind = 'post' AND shown = 0 ORDER BY time_us, uid",
                    (requester, request)):
                for u in _index.decoded([body]):
                    record = json.loads(postLine(u))
                    record["hidden"] = True
                    yield _jsonLine(record)
        held = _index.Index(db).readVersions()
        yield _jsonLine({"versions": [[o, s.contiguous, sorted(s.extra)]
                                      for o, s in sorted(held.origins.items())]})
        db.execute("COMMIT")
    finally:
        db.close()


def _stateLine(u):
    """The export line of a user, password, follow or read mark update."""
    record = {"time": formatTime(u.time_us), "id": u.id}
    if u.user is not None:
        record = {"user": u.user, **record}
        if u.hash:
            record["hash"] = u.hash
    elif u.password is not None:
        record = {"password": u.password.user, **record, "hash": u.password.hash}
    elif u.follow is not None:
        record = {"follower": u.follow.follower, "followee": u.follow.followee, **record}
        if not u.follow.following:
            record["following"] = False
    else:
        record = {"read": u.read.user, **record, "post_time": formatTime(u.read.time_us),
                  "post_id": u.read.post_id}
    if u.request_id:
        record["request"] = u.request_id
    return record


def _postLines(path):
    """The lines of the post file C{path} as they are, a line at a time."""
    with open(path, "rb") as f:
        for line in f:
            # A torn last line is a write in progress: not a post yet.
            if line.endswith(b"\n"):
                yield line


def _jsonLine(record):
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def isEmpty(path):
    return not os.path.exists(path) or not os.listdir(path)


def forgetInterruptedImport(path):
    """
    Remove what an import killed part-way left in the data directory
    C{path} (C{.importing}, and the lock file, in a directory holding
    nothing else), so that it is empty again, as a failed import leaves it;
    unless that import still runs: L{DataLocked}, as for a directory a
    server holds.
    """
    try:
        names = set(os.listdir(path))
    except FileNotFoundError:
        return
    if ".importing" not in names or not names <= {".importing", "lock"}:
        return
    lock = holdLock(path)
    try:
        shutil.rmtree(os.path.join(path, ".importing"))
        os.unlink(os.path.join(path, "lock"))
    finally:
        os.close(lock)


def backup(path, dest):
    """
    A consistent copy of the data directory C{path} of a running VM into the
    new directory C{dest}; returns (post files, bytes of posts).

    The master commits a batch to its record (SQLite) before it appends the
    batch's posts to their files.  So the post files are copied first and
    SQLite (with its backup API, one snapshot) after: every post line copied
    was committed before the snapshot.  What the snapshot holds beyond the
    copied files (posts written after their file was copied, or a torn last
    line, an append in progress) is then written into the copied files from
    the copied record, as a VM does for the files a crash left behind.
    """
    if not isEmpty(dest):
        raise NotEmpty("%s is not empty: back up into a new directory" % (dest,))
    if os.path.realpath(dest).startswith(os.path.join(os.path.realpath(path), "")):
        # A copy in the VM's own directory goes where the VM goes.
        raise errors.SNSError("%s is inside %s: back up into a directory of its own"
                              % (dest, path))
    src = _readOnly(path)
    postsDir = os.path.join(path, "posts")
    outDir = os.path.join(dest, "posts")
    os.makedirs(outDir)
    files = 0
    for name in sorted(os.listdir(postsDir)):
        if not name.endswith(".txt"):
            continue
        files += 1
        _copyWholeLines(os.path.join(postsDir, name), os.path.join(outDir, name))
    out = sqlite3.connect(os.path.join(dest, "sns.sqlite3"))
    try:
        src.backup(out)
    finally:
        out.close()
        src.close()
    disk = Disk(dest)
    try:
        disk.openRecord()
        disk.repairAll()
        disk.settle()  # the files the open left to a round: flushed, none unsynced
    finally:
        disk.close()
    fsync(os.path.join(dest, "sns.sqlite3"))
    fsync(outDir)
    fsync(dest)
    return files, sum(os.path.getsize(os.path.join(outDir, n)) for n in os.listdir(outDir))


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
