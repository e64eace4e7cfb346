"""
The batch writes of a data directory's record and of the tables derived
from it (L{index}), on the store's disk thread (or in sns-admin's own
process), never on the reactor.

A batch is one transaction of a few statements, each run once for all its
rows (L{insertRows}) and not at all when it has none: in a server every
step of SQLite lets go of the interpreter and has to win it back from a
busy reactor.
"""

import json
import sqlite3

from snstwist.core.state import Seen
from snstwist.storage.compaction import compactRows

INTO_RECORD = ("INSERT OR IGNORE INTO record (origin, seq, time_us, uid, kind, author,"
               " requester, request, shown, body) VALUES ")
INSERT_RECORD = INTO_RECORD + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

# The derived tables hold the last writer of each register.
UPSERT_FOLLOW = (
    "INSERT INTO follows (follower, followee, following, time_us, update_id)"
    " VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (follower, followee) DO UPDATE SET"
    " following = excluded.following, time_us = excluded.time_us,"
    " update_id = excluded.update_id"
    " WHERE (excluded.time_us, excluded.update_id) > (follows.time_us, follows.update_id)")
UPSERT_MARK = (
    "INSERT INTO marks (user, time_us, post_id, origin, seq) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (user) DO UPDATE SET"
    " time_us = excluded.time_us, post_id = excluded.post_id,"
    " origin = excluded.origin, seq = excluded.seq"
    " WHERE (excluded.time_us, excluded.post_id) > (marks.time_us, marks.post_id)")


def followRow(u):
    f = u.follow
    return (f.follower, f.followee, int(f.following), u.time_us, u.id)


def markRow(u):
    return (u.read.user, u.read.time_us, u.read.post_id, u.origin, u.seq)


def kindOf(update):
    for kind in ("post", "follow", "read", "password", "user"):
        if getattr(update, kind) is not None:
            return kind
    raise ValueError("an update of no kind")


def recordRow(update, shown=True, body=None):
    """The row of C{record} that holds C{update}."""
    requester = update.requester if update.request_id else None
    author = update.post.author if update.post is not None else None
    if body is None:
        body = update.encoding().SerializeToString()
    return (update.origin, update.seq, update.time_us, update.id, kindOf(update), author,
            requester, update.request_id or None, int(shown), body)


# The most rows one statement of L{insertRows} takes.
ROWS_A_STATEMENT = 64


def insertRows(db, head, rows, tail=""):
    """
    Run C{head} (an C{INSERT OR IGNORE}, or an C{INSERT} whose C{tail} is
    an C{ON CONFLICT} clause, ending in C{VALUES}) for every row of C{rows}
    (tuples of one length), as few
    statements as it takes: each takes up to L{ROWS_A_STATEMENT} rows, so a
    batch is one step of SQLite, not one a row.  Each step lets go of the
    interpreter and, in a server, has to win it back from a busy reactor.
    A statement's row count is rounded up to a power of two by repeating
    its last row (which changes nothing, the statement ignoring it or
    setting the same values again), so that few texts are prepared.
    """
    for start in range(0, len(rows), ROWS_A_STATEMENT):
        chunk = rows[start:start + ROWS_A_STATEMENT]
        size = 1 << (len(chunk) - 1).bit_length()
        chunk.extend([chunk[-1]] * (size - len(chunk)))
        db.execute(_values(head, len(chunk[0]), size, tail),
                   [v for row in chunk for v in row])


_valuesSQL = {}


def _values(head, width, count, tail=""):
    key = (head, width, count, tail)
    if key not in _valuesSQL:
        row = "(%s)" % (", ".join("?" * width),)
        _valuesSQL[key] = head + ", ".join([row] * count) + tail
    return _valuesSQL[key]


# A row of the version vector, and a flushed end, kept by key: changed in
# place when the key is there already (the table's page alone), where
# C{INSERT OR REPLACE} deletes the row and inserts it again, which changes
# the page of the key's index too: one page more for the commit to write
# and sync.
UPSERT_VERSIONS = ("INSERT INTO versions (origin, contiguous, extra) VALUES ",
                   " ON CONFLICT (origin) DO UPDATE SET contiguous = excluded.contiguous,"
                   " extra = excluded.extra")
UPSERT_FLUSHED = ("INSERT INTO flushed (author, size, time_us, uid) VALUES ",
                  " ON CONFLICT (author) DO UPDATE SET size = excluded.size,"
                  " time_us = excluded.time_us, uid = excluded.uid")


def copySeen(seen):
    return Seen(seen.contiguous, set(seen.extra)) if seen is not None else Seen()


class RecordWrites:
    """
    The writes of L{index.Index}: C{self.db} (autocommit mode: transactions
    are explicit) and C{self.versions}, the version vector of what the
    record holds.
    """

    def writeVersions(self, seen):
        """Store C{seen} ({origin: L{Seen}}); inside the caller's transaction."""
        if seen:
            head, tail = UPSERT_VERSIONS
            insertRows(self.db, head, [(o, s.contiguous, json.dumps(sorted(s.extra)))
                                       for o, s in seen.items()], tail)

    def write(self, rows, displaced=(), authors=(), synced=(), flushed=None, moved=None):
        """
        One transaction: the updates C{rows} ([(update, shown)]), the posts
        C{displaced} no longer shown, the derived tables, the version vector,
        and C{unsynced}: the authors C{synced} (whose files were flushed
        since) leave it, and the authors whose files the caller writes next,
        C{authors}, join it.  C{flushed} ({author: (size, post key)}) are
        flushed ends of files; C{moved} ({author: post key}) the authors
        whose posts this batch changes from that key on: a flushed end at or
        after it is no longer one.

        Each statement runs once for all its rows, and not at all when it
        has none: a batch of posts is a few steps of SQLite whatever its
        size (L{insertRows}).
        """
        db = self.db
        seen = {}
        for u, _ in rows:
            if u.origin not in seen:
                seen[u.origin] = copySeen(self.versions.origins.get(u.origin))
            seen[u.origin].add(u.seq)
        db.execute("BEGIN")
        try:
            rows, superseded = compactRows(db, rows)
            updates = [u for u, _ in rows]
            if rows:
                insertRows(db, INTO_RECORD, [recordRow(u, shown) for u, shown in rows])
            if superseded:
                db.executemany("DELETE FROM record WHERE origin = ? AND seq = ?", superseded)
            if displaced:
                db.executemany("UPDATE record SET shown = 0 WHERE origin = ? AND seq = ?",
                               [(u.origin, u.seq) for u in displaced])
            self._derived(updates)
            self.writeVersions(seen)
            if synced:
                db.execute("DELETE FROM unsynced WHERE author IN"
                           " (SELECT value FROM json_each(?))", (json.dumps(sorted(synced)),))
            if authors:
                db.execute("INSERT OR IGNORE INTO unsynced (author)"
                           " SELECT value FROM json_each(?)", (json.dumps(sorted(authors)),))
            if flushed:
                head, tail = UPSERT_FLUSHED
                insertRows(db, head, [(a, size, t, uid)
                                      for a, (size, (t, uid)) in sorted(flushed.items())], tail)
            if moved:
                db.executemany("DELETE FROM flushed WHERE author = ?"
                               " AND (time_us, uid) >= (?, ?)",
                               [(a, t, uid) for a, (t, uid) in moved.items()])
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolled back already (a failed COMMIT)
            raise
        self.versions.origins.update(seen)

    def _derived(self, rows):
        users = [(u.user, u.time_us) for u in rows if u.user is not None]
        if users:
            self.db.executemany(
                "INSERT OR IGNORE INTO users (name, created_us) VALUES (?, ?)", users)
        # (Each of these may not change its row: one statement a row.)
        follows = [followRow(u) for u in rows if u.follow is not None]
        if follows:
            self.db.executemany(UPSERT_FOLLOW, follows)
        marks = [markRow(u) for u in rows if u.read is not None]
        if marks:
            self.db.executemany(UPSERT_MARK, marks)
