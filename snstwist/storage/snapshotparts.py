"""
The parts of a state snapshot (L{snstwist.storage.snapshot}), built from one
read transaction of a record's connection a page of rows at a time.

The writer holds a page of rows (L{PAGE}) and the part made of them (of
several pages, up to about L{PART_ITEMS} items), written and let go as it
goes: what it holds grows with the number of names (a number each, about
100 bytes a name), not with the follows.  What must
be sorted or merged across pages is left to SQLite: the followers by
followee (its sorter, which spills to temporary files) and each user's
password register (a temporary table, one row a user, last writer wins as
L{registers.Keys.newer} decides).  A page is about a millisecond of the
thread's CPU, a few Python calls a row at most, and no call over a page
holds the interpreter long from the reactor.

A writer asked to stop (C{stopping}, a L{threading.Event}) stops at the
next page with L{Aborted}; C{pause} seconds between pages leave the
interpreter to the process's other threads (a gentler writer).  Nothing
here runs on the reactor's thread.
"""

import bisect
import threading
from array import array
from collections import Counter
from itertools import compress, repeat
from operator import itemgetter

from snstwist.core.registers import Keys
from snstwist.storage.index import decoded

# Items (names, registers, followers) in one part: each part is decoded and
# applied in one reactor turn at a start (a few milliseconds).
PART_ITEMS = 10000
# Rows the writer reads at a time and makes a piece of a part of.  SQLite
# lets go of the interpreter for each row it steps to, but the work on a
# page does not: the reactor's thread, woken meanwhile, waits for the end
# of it.  256 rows are about 0.2 ms of it; pages of 2,000 held a woken
# thread 0.5-1.5 ms at the median (docs/benchmarks.md), for the same CPU.
PAGE = 256

_ACCOUNTS = (
    "CREATE TEMP TABLE snapshot_accounts (user TEXT PRIMARY KEY, isuser INTEGER NOT NULL,"
    " time_us INTEGER NOT NULL, uid TEXT NOT NULL, origin TEXT NOT NULL, seq INTEGER NOT NULL,"
    " hash TEXT NOT NULL) WITHOUT ROWID")
# One row a user: whether a user update named it, and its password register,
# the newest by (time, update id) winning, as Keys.newer decides (update
# ids compare as strings; SQLite compares text by its UTF-8 bytes, in the
# same order).
_NEWER = "(excluded.time_us, excluded.uid) > (time_us, uid)"
_ACCOUNT = (
    "INSERT INTO snapshot_accounts VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user) DO UPDATE"
    " SET isuser = max(isuser, excluded.isuser), "
    + ", ".join("%s = CASE WHEN %s THEN excluded.%s ELSE %s END" % (c, _NEWER, c, c)
                for c in ("time_us", "uid", "origin", "seq", "hash")))


def _runs(rows):
    """The values of the first column of C{rows} (sorted by it) and how many rows each has."""
    counted = Counter(map(itemgetter(0), rows))
    return list(counted), list(counted.values())


def _joined(chunks, items):
    """
    The tuples of columns C{chunks} (lists or arrays) joined column by
    column until their column C{items} holds L{PART_ITEMS} or more.
    """
    joined = None
    for chunk in chunks:
        if joined is None:
            joined = chunk
        else:
            for column, more in zip(joined, chunk):
                column.extend(more)
        if len(joined[items]) >= PART_ITEMS:
            yield joined
            joined = None
    if joined is not None:
        yield joined


class Aborted(Exception):
    """The writing of a snapshot was stopped (its writer is stopping)."""


def _account(u):
    """The row of L{_ACCOUNT} of the user or password update C{u}."""
    if u.user is not None:
        return (u.user, 1, u.time_us, u.id, u.origin, u.seq, u.hash)
    return (u.password.user, 0, u.time_us, u.id, u.origin, u.seq, u.password.hash)


def followsPart(followers, counts, following, followees, packed):
    """
    A part of follow registers: the followees' name numbers as 4-byte
    ints, the keys as little-endian ints of one width, both as bytes (cheap
    to read, and held so until their follower is used: L{Follows.restore}).
    """
    width = max(1, (max(packed).bit_length() + 7) // 8)
    return ("follows", followers, counts, following, followees.tobytes(),
            b"".join([p.to_bytes(width, "little") for p in packed]), width)


class Parts:
    """
    The parts of a snapshot of what the connection C{db} holds, in the
    transaction it is in: L{users}, then L{follows}, then L{names} (every
    name the others numbered); C{keys} packed their registers, C{maxTime}
    and C{count} say what they held.
    """

    def __init__(self, db, stopping=None, pause=0.0):
        self.db = db
        self.stopping = stopping if stopping is not None else threading.Event()
        self.pause = pause
        self.numbers = {}
        self.keys = Keys()
        self.maxTime = 0
        self.count = 0

    def _number(self, name):
        n = self.numbers.get(name)
        if n is None:
            n = self.numbers[name] = len(self.numbers)
        return n

    def _numbered(self, names):
        """The numbers of the list C{names}, new ones numbered (a dict lookup each, in C)."""
        names = list(names)
        found = list(map(self.numbers.get, names))
        if None in found:
            found = list(map(self._number, names))
        return found

    def _check(self):
        """Rest C{pause} seconds; L{Aborted} if the writer is stopping."""
        if self.stopping.wait(self.pause) if self.pause else self.stopping.is_set():
            raise Aborted("the state snapshot's writer is stopping")

    def _pages(self, sql, args=()):
        """The rows of the query C{sql}, a page at a time; L{Aborted} once stopping."""
        rows = self.db.execute(sql, args)
        try:
            while True:
                self._check()
                page = rows.fetchmany(PAGE)
                if not page:
                    return
                yield page
        finally:
            rows.close()

    def _decoded(self, page):
        updates = decoded(body for (body,) in page)
        self.count += len(updates)
        self.maxTime = max([self.maxTime] + [u.time_us for u in updates])
        return updates

    def users(self):
        """
        The users, passwords and read marks, each part sorted by name, as
        a start that applies their updates holds them (L{Replica.applyState}).
        """
        db = self.db
        db.execute("DROP TABLE IF EXISTS temp.snapshot_accounts")
        db.execute(_ACCOUNTS)
        try:
            for page in self._pages("SELECT body FROM record WHERE author IS NULL"
                                    " AND kind IN ('password', 'user')"):
                db.executemany(_ACCOUNT, [_account(u) for u in self._decoded(page)])
            for page in self._pages("SELECT user FROM snapshot_accounts WHERE isuser"
                                    " ORDER BY user"):
                yield ("users", self._numbered(u for (u,) in page))
            pack = self.keys.pack
            for page in self._pages("SELECT user, hash, time_us, origin, seq"
                                    " FROM snapshot_accounts ORDER BY user"):
                yield ("passwords", self._numbered(map(itemgetter(0), page)),
                       [pack(t, o, s, True) for _, _, t, o, s in page],
                       list(map(itemgetter(1), page)))
        finally:
            db.execute("DROP TABLE IF EXISTS temp.snapshot_accounts")
        for page in self._pages("SELECT body FROM marks JOIN record USING (origin, seq)"
                                " ORDER BY user"):
            marks = [u.read for u in self._decoded(page) if u.read.key > (0, "")]
            if marks:
                yield ("reads", self._numbered(m.user for m in marks),
                       [m.time_us for m in marks], [m.post_id for m in marks])

    def follows(self):
        """The follow registers by follower, then the followers by followee (as names sort)."""
        for columns in _joined(self._registers(), 3):
            yield followsPart(*columns)
        for followees, counts, followers in _joined(self._followers(), 2):
            yield ("followers", followees, counts, followers.tobytes())

    def _registers(self):
        """The columns of a follows part (L{followsPart}) of each page's followers."""
        pack = self.keys.pack
        for rows in self._groups("SELECT follower, followee, following, time_us, update_id"
                                 " FROM follows ORDER BY follower, followee"):
            followers, counts = _runs(rows)
            followed = Counter(compress(map(itemgetter(0), rows), map(itemgetter(2), rows)))
            self.maxTime = max(self.maxTime, max(map(itemgetter(3), rows)))
            self.count += len(rows)
            yield (self._numbered(followers), counts,
                   list(map(followed.get, followers, repeat(0))),
                   array("I", self._numbered(map(itemgetter(1), rows))),
                   [pack(row[3], origin, int(seq), row[2])
                    for row in rows for origin, _, seq in (row[4].rpartition("/"),)])

    def _followers(self):
        """The followees, their counts and their followers of each page, by number."""
        numbers = self.numbers.__getitem__
        for rows in self._groups("SELECT followee, follower FROM follows WHERE following = 1"
                                 " ORDER BY followee, follower"):
            followees, counts = _runs(rows)
            yield (list(map(numbers, followees)), counts,
                   array("I", map(numbers, map(itemgetter(1), rows))))

    def _groups(self, sql):
        """
        The rows of the query C{sql}, ordered by their first column, in
        lists of whole runs of it: a page, less the run that may go on in
        the next page, plus the one the last page left.
        """
        left = []
        for page in self._pages(sql):
            rows = left + page
            last = bisect.bisect_left(list(map(itemgetter(0), rows)), rows[-1][0])
            rows, left = rows[:last], rows[last:]
            if rows:
                yield rows
        if left:
            yield left

    def names(self):
        """Every name numbered, in the order of their numbers, a part at a time."""
        names = list(self.numbers)
        for i in range(0, len(names), PART_ITEMS):
            yield ("names", names[i:i + PART_ITEMS])
