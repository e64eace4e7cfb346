"""
A snapshot of a VM's state (users, passwords, read marks, follow registers)
in one file, DATA/state.snapshot, so that a start reads one file and the
changes made since it, not a row per user and per follow (docs/design.md
section 4).

The file is what the record's tables held at one version vector (its
C{covers}), read in one transaction: C{MAGIC}, a header (format version,
number of parts, payload length, CRC-32 of the payload and of them), then
the payload: parts, each a length and a marshal'd tuple, written as they
are built (L{write}): the users, passwords, read marks, follow registers
and followers by the names' numbers, in parts of at most L{snapshotparts.PART_ITEMS}
items; then the names, each once; last what the snapshot covers (its
version vector, the origins its keys were packed with, the latest time in
it, the byte order, how many parts of names).  A start takes the names
first, then the rest, each part in a reactor turn of its own
(L{snstwist.core.stateload}).  A part of follow registers holds its
followees' numbers as 4-byte ints and its keys as little-endian ints of
one width, each as bytes: read in one call, and held so until their
follower is used (L{snstwist.core.follows}).

A start uses the snapshot only if the record holds everything it covers;
then the state is the snapshot plus the state updates of the record that
it does not cover (L{changes}), applied as any update is (the last writer
of each register wins), which is exactly what reading every row gives.  A
snapshot that is torn (a kill while it was written: it is written to a
temporary file, flushed, then renamed), damaged, of another format, or
ahead of the record (a data directory restored from a backup) is ignored,
with a log line, and the state read row by row.

Only a VM's writer writes it (L{snstwist.storage.snapshots}), on a thread
and a read-only connection of its own, when the state changed by
L{CHANGES} updates since the last one: a start then reads at most about that many updates besides
the file.  Nothing here runs on the reactor's thread.
"""

import itertools
import marshal
import mmap
import os
import struct
import sys
import zlib
from array import array

from google.protobuf.message import DecodeError
from twisted.logger import Logger

from snstwist.core.state import Seen, VersionVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.storage.index import Index, decoded
from snstwist.storage.postfile import fsync
from snstwist.storage.snapshotparts import Parts

log = Logger()

FILE = "state.snapshot"
MAGIC = b"SNSSTATE"
FORMAT = 4
_HEADER = struct.Struct("<IIQI")  # format, parts, payload bytes, CRC-32 of the payload
_LENGTH = struct.Struct("<I")
# A VM's writer writes a new snapshot once the record holds this many state
# updates it does not cover (or this many in all, with no snapshot): what a
# start reads besides the file, at some microseconds each.
CHANGES = 20000
# The kinds of state updates, in the order L{changes} reads them.
KINDS = ("follow", "password", "read", "user")


class StateSnapshot:
    """A snapshot read and checked: what it C{covers}, and its parts (decoded when asked)."""

    def __init__(self, meta, parts, close=lambda: None):
        _, self.byteorder, covers, self.origins, self.maxTime, self.count, _ = meta
        self.covers = VersionVector()
        for origin, contiguous, extra in covers:
            self.covers.origins[origin] = Seen(contiguous, set(extra))
        self._parts = parts
        self._close = close

    def parts(self):
        """
        The parts, the names first, each decoded as it is taken; the file
        (mapped, L{read}) is let go after the last.
        """
        parts, self._parts = self._parts, []
        while parts:
            raw = parts.pop(0)
            part = marshal.loads(raw)
            raw.release()
            yield part
        self._close()


def write(db, f, parts=None):
    """
    Write to the file C{f} a snapshot of what the connection C{db} holds,
    read in one transaction (so that the parts and the version vector
    agree), a part at a time as it is built (L{snapshotparts.Parts}, or
    C{parts} of C{db}); the names and the first part (L{parse}) go last,
    once every name is numbered.  Its size.
    """
    parts = parts if parts is not None else Parts(db)
    f.write(MAGIC + _HEADER.pack(FORMAT, 0, 0, 0))
    written = [0, 0, 0]  # parts, payload bytes, CRC-32 of the payload

    def put(part):
        raw = marshal.dumps(part)
        for chunk in (_LENGTH.pack(len(raw)), raw):
            f.write(chunk)
            written[1] += len(chunk)
            written[2] = zlib.crc32(chunk, written[2])
        written[0] += 1

    db.execute("BEGIN")
    try:
        covers = Index(db).readVersions()
        for part in itertools.chain(parts.users(), parts.follows()):
            put(part)
    finally:
        if db.in_transaction:
            db.execute("COMMIT")
    counted = 0
    for part in parts.names():
        put(part)
        counted += 1
    put((FORMAT, sys.byteorder, [(o, s.contiguous, sorted(s.extra))
                                 for o, s in sorted(covers.origins.items())],
         list(parts.keys.origins), parts.maxTime, parts.count, counted))
    nparts, size, crc = written
    f.seek(len(MAGIC))
    f.write(_HEADER.pack(FORMAT, nparts, size, _checksum(FORMAT, nparts, size, crc)))
    return len(MAGIC) + _HEADER.size + size


def _checksum(fmt, nparts, size, crc):
    """The CRC-32 of the payload (C{crc}) continued over the header's other fields."""
    return zlib.crc32(_HEADER.pack(fmt, nparts, size, 0), crc)


def parse(data, held, close=lambda: None):
    """
    The L{StateSnapshot} of the bytes C{data}, or None (with the reason
    logged) if they are not a whole snapshot of this format, or cover an
    update the version vector C{held} (the record's) lacks.  C{close} is
    called once its last part was taken.
    """
    start = len(MAGIC) + _HEADER.size
    if data[:len(MAGIC)] != MAGIC or len(data) < start:
        return _ignored("not a state snapshot")
    fmt, nparts, size, digest = _HEADER.unpack_from(data, len(MAGIC))
    if fmt != FORMAT:
        return _ignored("format %d, not %d" % (fmt, FORMAT))
    payload = memoryview(data)[start:]
    if len(payload) != size or _checksum(fmt, nparts, size, zlib.crc32(payload)) != digest:
        return _ignored("torn or damaged (its checksum does not match)")
    try:
        raws, at = [], 0
        for _ in range(nparts):
            (n,) = _LENGTH.unpack_from(payload, at)
            raws.append(payload[at + _LENGTH.size:at + _LENGTH.size + n])
            at += _LENGTH.size + n
        meta = marshal.loads(raws.pop())
        names = len(raws) - meta[-1]
        snapshot = StateSnapshot(meta, raws[names:] + raws[:names], close)
    except (ValueError, TypeError, EOFError, struct.error):
        return _ignored("damaged (its parts do not add up)")
    if snapshot.byteorder != sys.byteorder or array("I").itemsize != 4:
        return _ignored("written on a machine of another byte order")
    if snapshot.covers.lacking(held):
        return _ignored("it covers updates the record does not hold")
    return snapshot


def _ignored(why):
    log.warn("ignoring the state snapshot: {why}; reading the state row by row", why=why)
    return None


def read(path, held):
    """The L{StateSnapshot} of the data directory C{path} (L{parse}), or None if it has none."""
    try:
        with open(os.path.join(path, FILE), "rb") as f:
            # Mapped, not read into the heap: its pages go back with it
            # once the start took its last part.
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # ValueError: an empty file
        return _ignored("can not read it (%s)" % (e,))
    found = parse(data, held, lambda: _unmap(data))
    if found is None:
        _unmap(data)
    return found


def _unmap(data):
    try:
        data.close()
    except BufferError:
        pass  # a part still looked at: closed when that is let go


def save(path, db, parts=None):
    """
    Write the snapshot of the connection C{db} (of C{parts} of it, if
    given: L{write}) into the data directory C{path}: to a temporary file,
    flushed, then renamed over the last one.  A write that fails or is
    stopped (L{Aborted}) leaves no temporary file and the last one in place.
    """
    temporary = os.path.join(path, FILE + ".tmp")
    try:
        with open(temporary, "wb") as f:
            size = write(db, f, parts)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.remove(temporary)
        except FileNotFoundError:
            pass
        raise
    os.replace(temporary, os.path.join(path, FILE))
    fsync(path)
    return size


def _ranges(db, covers, kinds=KINDS):
    """((kind, origin), (what C{covers} holds of the origin)) to read, in order."""
    origins = sorted(Index(db).readVersions().origins)
    return [((kind, origin), covers.origins.get(origin) or Seen())
            for kind in kinds for origin in origins]


def changes(db, covers, after, limit):
    """
    At most C{limit} of the state updates C{db}'s record holds and the
    version vector C{covers} lacks, in (kind, origin, seq) order, from after
    the position C{after} (None: the first), and the next page's position
    (None: none).  An index seek per kind and origin, not a scan.  A follow
    comes as its pair's register (L{_registers}).
    """
    page, position = [], None
    for (kind, origin), seen in _ranges(db, covers):
        if after is not None and (kind, origin) < after[:2]:
            continue
        start = max(seen.contiguous, after[2] if after and (kind, origin) == after[:2] else 0)
        rows = db.execute("SELECT seq, body FROM record WHERE author IS NULL AND kind = ?"
                          " AND origin = ? AND seq > ? ORDER BY seq", (kind, origin, start))
        for seq, body in rows:
            if seq in seen.extra:
                continue
            page.append((kind, body))
            if len(page) == limit:
                position = (kind, origin, seq)
                break
        rows.close()
        if position is not None:
            break
    follows = [body for kind, body in page if kind == "follow"]
    return (_registers(db, follows)
            + decoded([body for kind, body in page if kind != "follow"])), position


def _registers(db, bodies):
    """
    The registers of the pairs the follow updates C{bodies} changed, as the
    record's C{follows} table holds them now: what reading every row applies
    (L{Index.statePage}), whatever the updates, one that breaks a bound of
    limits.py included (stored before the bound existed), so that a start
    from the snapshot holds what reading every row holds.
    """
    pairs = set()
    for body in bodies:
        try:
            follow = pb.Update.FromString(body).follow
        except DecodeError:
            log.warn("ignoring a stored follow that does not decode")
            continue
        pairs.add((follow.follower, follow.followee))
    return Index(db).registers(sorted(pairs))


def countChanges(db, covers):
    """How many state updates C{db}'s record holds that C{covers} lacks (about)."""
    n = 0
    for (kind, origin), seen in _ranges(db, covers):
        (count,) = db.execute("SELECT count(*) FROM record WHERE author IS NULL AND kind = ?"
                              " AND origin = ? AND seq > ?",
                              (kind, origin, seen.contiguous)).fetchone()
        n += count
    return n


def saveIfDue(path, db, covers=None, changes=None, parts=None):
    """
    Write the snapshot of C{db} (of C{parts} of it, if given) into C{path}
    (L{save}) if the record holds at least C{changes} (L{CHANGES} if None)
    state updates the version vector C{covers} (the last snapshot's; None:
    there is none) lacks; its size, or None.
    """
    due = countChanges(db, covers if covers is not None else VersionVector())
    if due < (CHANGES if changes is None else changes):
        return None
    size = save(path, db, parts)
    log.info("wrote the state snapshot: {size} bytes, {due} state updates since the last",
             size=size, due=due)
    return size
