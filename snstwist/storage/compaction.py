"""
What the record keeps of the read marks, and how a VM answers for what it
no longer keeps (docs/design.md section 4, "Compaction").

A read mark is a last-writer-wins register per user: only the newest mark
of a user (by its post key) matters.  So the record keeps, of each user,
the mark that wins; a mark that a newer one supersedes is deleted from the
record when the newer one is written, and a mark that arrives already
superseded is not written at all.  The version vector still counts every
one: it says what a VM has seen, and the record holds all of it that is
not superseded.

A sequence number that the version vector holds and the record does not
is therefore a superseded update, and a peer that lacks it is answered
with a I{void}: a read mark of nothing (the key (0, "") of L{VOID_USER}),
which a replica applies as nothing (no mark is older) and stores as
nothing, but whose (origin, seq) its version vector takes.  Whoever lacks
a superseded mark either holds the mark that superseded it or is sent it
in the same catch-up (the record keeps it), so replicas still converge;
and the version vectors still become equal, so a catch-up ends.
"""

from snstwist.core.model import ReadMark, Update
from snstwist.core.state import Seen

# The user of a void: any valid name does, as a mark of nothing changes no one's.
VOID_USER = "-"
_NOTHING = (0, "")


def void(origin, seq):
    """The void that answers for the superseded update (origin, seq)."""
    return Update(origin=origin, seq=seq, time_us=0, read=ReadMark(VOID_USER, 0, ""))


def marksNothing(update):
    """Is C{update} a read mark of nothing (a void): never stored, as no mark is older?"""
    return update.read is not None and update.read.key == _NOTHING


class Marks:
    """
    The winning read mark of each user as the record holds it: C{lookup(user)}
    gives (post key, (origin, seq)) of the stored one, or None.
    """

    def __init__(self, lookup=lambda user: None):
        self.lookup = lookup
        self.current = {}

    def supersede(self, update):
        """
        Whether the read mark C{update} is to be stored, and the (origin, seq)
        of the stored mark it supersedes (to delete), or None.
        """
        if marksNothing(update):
            return False, None
        user = update.read.user
        if user not in self.current:
            self.current[user] = self.lookup(user)
        stored = self.current[user]
        if stored is not None and update.read.key <= stored[0]:
            return False, None
        self.current[user] = (update.read.key, (update.origin, update.seq))
        return True, stored[1] if stored is not None else None


def compactRows(db, rows):
    """
    Of C{rows} ([(update, shown)]) to write to the record on the connection
    C{db} (in its transaction), those to store (a read mark only if it
    wins), and the (origin, seq) of the stored marks they supersede.
    """
    def stored(user):
        row = db.execute("SELECT time_us, post_id, origin, seq FROM marks WHERE user = ?",
                         (user,)).fetchone()
        return ((row[0], row[1]), (row[2], row[3])) if row is not None else None

    marks = Marks(stored)
    kept, superseded = [], []
    for u, shown in rows:
        if u.read is not None:
            store, old = marks.supersede(u)
            if old is not None:
                superseded.append(old)
            if not store:
                continue
        kept.append((u, shown))
    if superseded:
        # A mark of this batch superseded by a later one of it is not stored either.
        gone = set(superseded)
        kept = [(u, shown) for u, shown in kept if (u.origin, u.seq) not in gone]
    return kept, superseded


def compactRecord(db):
    """
    Delete the read marks superseded before the record was compacted (a data
    directory of the layout that kept them all): once, cheaply after.
    """
    db.execute("DELETE FROM record WHERE kind = 'read' AND author IS NULL AND NOT EXISTS"
               " (SELECT 1 FROM marks WHERE marks.origin = record.origin"
               " AND marks.seq = record.seq)")


def missingPage(held, remote, rows, limit, after=None):
    """
    At most C{limit} (None: no limit) updates that the version vector
    C{held} (what a VM has seen) holds and C{remote} lacks, in (origin, seq)
    order, after the (origin, seq) C{after}: the stored ones as stored, the
    superseded ones as voids.  C{rows(origin, start)} iterates the stored
    (seq, update) of C{origin} after C{start}, in order.
    """
    out = []
    for origin in sorted(held.origins):
        if after is not None and origin < after[0]:
            continue
        mine = held.origins[origin]
        theirs = remote.origins.get(origin) or Seen()
        start = theirs.contiguous
        if after is not None and origin == after[0]:
            start = max(start, after[1])
        if mine.top <= start:
            continue
        stored = rows(origin, start)
        row = next(stored, None)
        for seq in _held(mine, start):
            if theirs.has(seq):
                continue
            while row is not None and row[0] < seq:
                row = next(stored, None)  # stored beyond what held says: sent next time
            if row is not None and row[0] == seq:
                out.append(row[1])
            else:
                out.append(void(origin, seq))
            if limit is not None and len(out) >= limit:
                return out
    return out


def _held(seen, start):
    """The sequence numbers of C{seen} after C{start}, in order."""
    yield from range(start + 1, seen.contiguous + 1)
    yield from sorted(s for s in seen.extra if s > start)


def keep(durable, superseded, marks, update):
    """
    Store C{update} in the in-memory record C{durable} ({(origin, seq):
    update}) unless held already, compacting read marks as the real record
    does (C{superseded}: the (origin, seq) held and not stored; C{marks}: a
    L{Marks} over C{durable}).
    """
    key = (update.origin, update.seq)
    if key in durable or key in superseded:
        return
    if update.read is not None:
        store, old = marks.supersede(update)
        if old is not None:
            superseded.add(old)
            durable.pop(old, None)
        if not store:
            superseded.add(key)
            return
    durable[key] = update
