"""
The SQLite side of a data directory, DATA/sns.sqlite3: the record of every
update a VM holds, indexed, and the tables derived from it.

- C{record}: one row per update (posts included), with its body (the
  update's protobuf) and the columns the queries need: the post's author
  and (time, id), the request (requester, request id) that made it, and
  whether the post is shown (a duplicate of a request is stored, not
  shown).  Rows are written in the same transaction as the tables below.
- C{versions}: the version vector of what C{record} holds, per origin.
- C{users}, C{follows}, C{marks}: the current users, follow relations and
  read marks (the last writer of each; a mark names its update).
- C{unsynced}: the authors whose post files may lack lines of C{record}
  (appended by a batch committed, not flushed yet); the post files of those
  authors are checked against C{record} (and rewritten from it) when the VM
  opens its data again.
- C{flushed}: for an author, an end of its post file known flushed: the
  file's first C{size} bytes are durable and hold exactly its shown posts
  up to the post key (C{time_us}, C{uid}).  A repair checks only what lies
  after it (L{repair}).  A batch that changes the author's posts at or
  before that key takes the row out in its own transaction.

Everything here runs on the store's disk thread (or in sns-admin's own
process), never on the reactor.
"""

import json

from twisted.logger import Logger

from snstwist.core import errors
from snstwist.core.limits import MAX_TIME_US
from snstwist.core.model import Update
from snstwist.core.state import Seen, VersionVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.storage.compaction import compactRecord, missingPage
from snstwist.storage.postfile import NO_KEY
from snstwist.storage.writes import RecordWrites

log = Logger()

TABLES = """
CREATE TABLE IF NOT EXISTS record (
    origin TEXT NOT NULL, seq INTEGER NOT NULL, time_us INTEGER NOT NULL,
    uid TEXT NOT NULL, kind TEXT NOT NULL, author TEXT, requester TEXT, request TEXT,
    shown INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (origin, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    origin TEXT PRIMARY KEY, contiguous INTEGER NOT NULL, extra TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, created_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS follows (
    follower TEXT NOT NULL, followee TEXT NOT NULL, following INTEGER NOT NULL,
    time_us INTEGER NOT NULL, update_id TEXT NOT NULL,
    PRIMARY KEY (follower, followee));
CREATE TABLE IF NOT EXISTS marks (
    user TEXT PRIMARY KEY, time_us INTEGER NOT NULL, post_id TEXT NOT NULL,
    origin TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS unsynced (author TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS flushed (
    author TEXT PRIMARY KEY, size INTEGER NOT NULL, time_us INTEGER NOT NULL,
    uid TEXT NOT NULL);
"""
# The secondary indexes of C{record}: a bulk load (L{importer}) makes them
# after its rows are in, which is several times faster than keeping them
# up to date row by row.
INDEXES = """
CREATE INDEX IF NOT EXISTS record_posts ON record (author, time_us, uid)
    WHERE author IS NOT NULL;
CREATE INDEX IF NOT EXISTS record_requests ON record (requester, request, time_us, uid)
    WHERE request IS NOT NULL;
CREATE INDEX IF NOT EXISTS record_state ON record (kind) WHERE author IS NULL;
"""
SCHEMA = TABLES + INDEXES

_BODY = "SELECT body FROM record WHERE "


def decoded(bodies):
    """
    The updates of C{bodies}.  One that breaks a bound of limits.py (it was
    stored before the bound existed) is left out, and said so: it could
    never be replicated, and loading it would keep the VM apart forever.
    """
    updates = []
    for body in bodies:
        try:
            updates.append(Update.fromProto(pb.Update.FromString(body)))
        except errors.SNSError as e:
            log.warn("ignoring a stored update that breaks a bound: {e}", e=e.message)
    return updates


def damaged(error):
    """Does this SQLite error say the database file itself is damaged?"""
    return getattr(error, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB")


class Index(RecordWrites):
    """
    The queries and the batch writes (L{writes.RecordWrites}) of C{record}
    and its tables, on one connection C{db} (autocommit mode: transactions
    are explicit).
    """

    def __init__(self, db):
        self.db = db
        self.versions = VersionVector()

    def create(self):
        """
        Make the tables (an empty database), compact the read marks (a
        record of the layout that kept them all), read the version vector.
        """
        self.db.executescript(SCHEMA)
        compactRecord(self.db)
        self.versions = self.readVersions()

    def readVersions(self):
        vv = VersionVector()
        for origin, contiguous, extra in self.db.execute(
                "SELECT origin, contiguous, extra FROM versions"):
            vv.origins[origin] = Seen(contiguous, set(json.loads(extra)))
        return vv

    def countVersions(self):
        """The version vector of C{record}, counted row by row (a migration, an import)."""
        vv = VersionVector()
        for origin, seq in self.db.execute("SELECT origin, seq FROM record"):
            vv.add(origin, seq)
        return vv

    # -- reading

    def unsyncedAuthors(self):
        return [a for (a,) in self.db.execute("SELECT author FROM unsynced")]

    def flushedEnds(self):
        """{author: (size, post key)}: the flushed ends of the unsynced authors' files."""
        return {a: (size, (t, uid)) for a, size, t, uid in self.db.execute(
            "SELECT author, size, time_us, uid FROM flushed JOIN unsynced USING (author)")}

    def shownPosts(self, author, after=None):
        """The shown posts of C{author} after the post key C{after}, in (time, id) order."""
        return decoded(body for (body,) in self.db.execute(
            _BODY + "author = ? AND shown = 1 AND (time_us, uid) > (?, ?)"
            " ORDER BY time_us, uid", (author,) + tuple(after or NO_KEY)))

    def missing(self, remote, limit, after=None):
        """
        At most C{limit} (None: no limit) updates held here that the version
        vector C{remote} lacks, in (origin, seq) order, from after the
        (origin, seq) C{after}: a page of a catch-up, read through the
        primary key; a superseded one as a void (L{compaction.missingPage}).
        """
        # What this connection sees held now; rows committed after it are
        # sent next time, and a row deleted after it was superseded since.
        return missingPage(self.readVersions(), remote, self._rowsOf, limit, after)

    def _rowsOf(self, origin, start, chunk=500):
        """The stored (seq, update) of C{origin} after C{start}, in order, a chunk at a time."""
        while True:
            rows = self.db.execute(
                "SELECT seq, body FROM record WHERE origin = ? AND seq > ? ORDER BY seq LIMIT ?",
                (origin, start, chunk)).fetchall()
            for seq, body in rows:
                # One that breaks a bound (decoded leaves it out) is answered as a void.
                for u in decoded([body]):
                    yield seq, u
                start = seq
            if len(rows) < chunk:
                return

    def byRequests(self, keys):
        """{(requester, request id): the earliest update of that request} of C{keys}."""
        found = {}
        for requester, request in keys:
            row = self.db.execute(
                _BODY + "requester = ? AND request = ? ORDER BY time_us, uid LIMIT 1",
                (requester, request)).fetchone()
            if row is not None:
                for u in decoded([row[0]]):
                    found[(requester, request)] = u
        return found

    def page(self, authors, cursor, limit, inclusive=False):
        """
        At most C{limit} shown posts by C{authors} after the post key
        C{cursor} (from it, if C{inclusive}), oldest first.
        """
        time_us, postId = cursor
        op = ">=" if inclusive else ">"
        posts = []
        for author in set(authors):
            posts.extend(decoded(body for (body,) in self.db.execute(
                _BODY + "author = ? AND shown = 1 AND (time_us, uid) %s (?, ?)"
                " ORDER BY time_us, uid LIMIT ?" % (op,), (author, time_us, postId, limit))))
        posts.sort(key=lambda u: u.post.key)
        return posts[:limit]

    def uncovered(self, authors, covered, after, upto, limit):
        """
        At most C{limit} shown posts by C{authors} whose updates the version
        vector C{covered} lacks, with post keys after C{after} and up to
        C{upto}, oldest first: a page of what a resumed timeline missed,
        whatever the posts' times.  Reads, by primary key, the updates of
        the ranges C{covered} lacks (what was written since it was taken;
        the caller bounds how many, L{limits.RESUME_GAP_MAX}), filtered and
        ordered by SQLite, and keeps at most C{limit} of each origin.
        """
        authors = sorted(set(authors))
        if not authors:
            return []
        upto = (min(upto[0], MAX_TIME_US), upto[1])
        found = []
        for origin, mine in self.readVersions().origins.items():
            theirs = covered.origins.get(origin) or Seen()
            if mine.top <= theirs.contiguous:
                continue
            rows = self.db.execute(
                "SELECT seq, time_us, uid FROM record WHERE origin = ? AND seq > ?"
                " AND kind = 'post' AND shown = 1 AND (time_us, uid) > (?, ?)"
                " AND (time_us, uid) <= (?, ?)"
                " AND author IN (SELECT value FROM json_each(?))"
                " ORDER BY time_us, uid",
                (origin, theirs.contiguous) + tuple(after) + upto + (json.dumps(authors),))
            kept = 0
            for seq, time_us, uid in rows:
                if seq in theirs.extra:
                    continue
                found.append((time_us, uid, origin, seq))
                kept += 1
                if kept >= limit:
                    break
            rows.close()
        found.sort()
        return decoded(self.db.execute(_BODY + "origin = ? AND seq = ?", key[2:]).fetchone()[0]
                       for key in found[:limit])

    def newest(self, author, limit):
        """The C{limit} newest shown posts of C{author}, oldest first."""
        posts = decoded(body for (body,) in self.db.execute(
            _BODY + "author = ? AND shown = 1 ORDER BY time_us DESC, uid DESC LIMIT ?",
            (author, limit)))
        posts.reverse()
        return posts

    def newestOf(self, authors, limit):
        """{author: its C{limit} newest shown posts, oldest first} of C{authors}."""
        return {author: self.newest(author, limit) for author in authors}

    def authors(self):
        """Every author of a post held, found by skipping along the index (not a scan)."""
        return [a for (a,) in self.db.execute(
            "WITH RECURSIVE a(author) AS ("
            " SELECT min(author) FROM record WHERE author IS NOT NULL"
            " UNION ALL SELECT (SELECT min(author) FROM record WHERE author > a.author)"
            " FROM a WHERE a.author IS NOT NULL)"
            " SELECT author FROM a WHERE author IS NOT NULL")]

    def floors(self):
        """
        {author: the post key of its newest post held}, one index seek an
        author: what a replica that reads no window at start needs to know
        (L{state.Replica.startCold}).
        """
        floors = {}
        for author in self.authors():
            row = self.db.execute(
                "SELECT time_us, uid FROM record WHERE author = ?"
                " ORDER BY time_us DESC, uid DESC LIMIT 1", (author,)).fetchone()
            floors[author] = (row[0], row[1])
        return floors

    def hot(self, hotPosts):
        """
        What a replica holds in memory: the users, passwords and follow
        changes, each user's last read mark, and the C{hotPosts} + 1 newest
        shown posts of each author (one more than the window, so that the
        replica knows the author has older ones).  Nothing when C{hotPosts}
        is None: a server reads the state a page at a time (L{statePage})
        and each window when it is asked for (L{floors}).
        """
        if hotPosts is None:
            return []
        updates = decoded(body for (body,) in self.db.execute(
            _BODY + "author IS NULL AND kind <> 'read'"))
        updates += decoded(body for (body,) in self.db.execute(
            "SELECT body FROM marks JOIN record USING (origin, seq)"))
        for author in self.authors():
            updates += self.newest(author, hotPosts + 1)
        return updates

    def statePage(self, after, limit):
        """
        At most C{limit} of what a replica's state is made of (L{hot} less
        the posts), from after the position C{after} (None: from the
        first), and the position of the next page (None: there is none): the
        updates of the users and passwords in (kind, origin, seq) order;
        then the follow registers as C{follows} holds them (the last writer
        of each pair: no update decoded), as (follower, followee, time_us,
        origin, seq, following), by pair; then each user's last read mark,
        by user.  A start reads them so, a page at a time: neither the disk
        thread nor the reactor holds a hundred thousand users and their
        follows at once.
        """
        stage = after[0] if after else "users"
        if stage == "users":
            # Kinds sort follow < password < read < user: from "password" on,
            # the follows' rows are not read, and the read marks' filtered out.
            rows = self.db.execute(
                "SELECT kind, origin, seq, body FROM record WHERE author IS NULL"
                " AND kind <> 'read' AND (kind, origin, seq) > (?, ?, ?)"
                " ORDER BY kind, origin, seq LIMIT ?",
                tuple(after[1:] if after else ("password", "", 0)) + (limit,)).fetchall()
            more = ("users",) + rows[-1][:3] if len(rows) == limit else ("follows", "", "")
            return decoded(row[-1] for row in rows), more
        if stage == "follows":
            rows = self.db.execute(
                "SELECT follower, followee, following, time_us, update_id FROM follows"
                " WHERE (follower, followee) > (?, ?) ORDER BY follower, followee LIMIT ?",
                (after[1], after[2], limit)).fetchall()
            more = ("follows",) + rows[-1][:2] if len(rows) == limit else ("marks", "")
            return [register(*row) for row in rows], more
        rows = self.db.execute(
            "SELECT user, body FROM marks JOIN record USING (origin, seq) WHERE user > ?"
            " ORDER BY user LIMIT ?", (after[1], limit)).fetchall()
        more = ("marks", rows[-1][0]) if len(rows) == limit else None
        return decoded(row[-1] for row in rows), more

    def registers(self, pairs):
        """
        The follow registers of the (follower, followee) C{pairs}, as
        L{statePage} gives them (a pair without one: none), an index seek
        each.
        """
        found = []
        for pair in pairs:
            row = self.db.execute(
                "SELECT follower, followee, following, time_us, update_id FROM follows"
                " WHERE follower = ? AND followee = ?", pair).fetchone()
            if row is not None:
                found.append(register(*row))
        return found


def register(follower, followee, following, time_us, updateId):
    """A row of C{follows} as L{Index.statePage} gives it."""
    origin, _, seq = updateId.rpartition("/")
    return (follower, followee, time_us, origin, int(seq), bool(following))
