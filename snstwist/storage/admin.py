"""
Operators' copies of a data directory (sns-admin): export and backup; and
the format and errors that import (L{importer}) shares with them.

These run in their own short-lived process, never in a server, so they
work synchronously; what they share with the server is the format of
L{postfile} and L{index}.
"""

import json
import os
import sqlite3

from snstwist.core import errors
from snstwist.storage.disk import Disk
from snstwist.storage.postfile import fsync, formatTime

EXPORT_FORMAT = """\
One JSON object per line, in this order: users, then follows, then posts.
  {"user": NAME, "time": T}
  {"follower": A, "followee": B, "time": T}
  {"time": T, "id": ID, "author": A, "text": TEXT, "request": RID}
T is UTC "YYYY-MM-DDTHH:MM:SS.ffffffZ". A post line is its line of
posts/<author>.txt as is; "request" is absent when the post had no request id.
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


def isEmpty(path):
    return not os.path.exists(path) or not os.listdir(path)



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
