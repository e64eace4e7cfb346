"""
The state snapshot (snstwist.storage.snapshot, snapshots; core.stateload):
a start that reads the snapshot and the changes since it holds exactly the
state that reading every row gives, whatever was written after it; a torn,
damaged or too new snapshot is ignored; the VM's writer and sns-admin
import write one when it is due.
"""

import itertools
import os
import shutil
import sqlite3
import tempfile
import types

import attrs
from hypothesis import given
from hypothesis import strategies as st
from sortedcontainers import SortedSet
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.core.follows import SORTED_FOLLOWERS
from snstwist.core.limits import MAX_REQUEST_ID
from snstwist.core.history import readState
from snstwist.core.model import PasswordChange, ReadMark, Update
from snstwist.core.node import HybridClock
from snstwist.core.state import Replica
from snstwist.core.stateload import Rebuild, sortedSet
from snstwist.storage import disk, snapshot, snapshotparts
from snstwist.storage.index import Index, decoded
from snstwist.storage.importer import Importer
from snstwist.storage.store import SQLiteStore
from tests.strategies import followChanges, followUpdate, names, updateLists, userUpdate


class IndexStore:
    """The state reads of L{IStore} answered at once from a record's L{Index} (synchronous)."""

    def __init__(self, index, path, snapshots=True):
        self.index, self.path, self.snapshots = index, path, snapshots

    def held(self):
        return self.index.readVersions()

    def statePage(self, after, limit):
        return defer.succeed(self.index.statePage(after, limit))

    def stateSnapshot(self):
        found = snapshot.read(self.path, self.held()) if self.snapshots else None
        return defer.succeed(found)

    def stateSince(self, covers, after, limit):
        return defer.succeed(snapshot.changes(self.index.db, covers, after, limit))


def started(store):
    """The replica and clock of a node that read C{store}'s state (readState), and the count."""
    clock = Clock()
    node = types.SimpleNamespace(clock=clock, hlc=HybridClock(clock), replica=Replica())
    d = defer.ensureDeferred(readState(node, store, 0))
    while not d.called:
        clock.advance(0)
    return node, d.result


def seen(node):
    """What a start leaves in memory: the state, each user's followers and count, the clock."""
    replica = node.replica
    everyone = set(replica.users) | {n for pair in replica.follows for n in pair}
    return (replica.snapshot(), list(replica.users),
            {u: (replica.followers(u), replica.follows.count(u)) for u in everyone},
            node.hlc.last)


@st.composite
def stateUpdates(draw):
    """Users, follows, posts, password changes and read marks from several origins."""
    updates = draw(updateLists(max_size=40))
    for i, (user, mark) in enumerate(draw(st.lists(st.tuples(names(), st.booleans()),
                                                   max_size=6)), 1):
        time_us = draw(st.integers(1, 50))
        change = (dict(read=ReadMark(user, time_us, "vm1.a/%d" % (i,))) if mark
                  else dict(password=PasswordChange(user, "hash-%d" % (i,))))
        updates.append(Update(origin="m.z", seq=i, time_us=time_us, **change))
    return updates


class Record:
    """A data directory's record on a real SQLite file, written a batch at a time."""

    def __init__(self, case, path=None):
        if path is None:
            path = tempfile.mkdtemp()
            case.addCleanup(shutil.rmtree, path)
        self.path = path
        self.disk = disk.Disk(self.path)
        self.disk.openRecord()
        case.addCleanup(lambda: self.disk.close())

    def write(self, updates):
        for u in updates:
            self.disk.index.write([(u, True)])

    def reopen(self):
        """A kill and a new start: what was committed is what there is."""
        self.disk.close()
        self.disk = disk.Disk(self.path)
        self.disk.openRecord()

    def save(self, parts=None):
        return snapshot.save(self.path, self.disk.index.db, parts)

    def loaded(self, snapshots=True):
        return started(IndexStore(self.disk.index, self.path, snapshots))


class SnapshotStartTests(SynchronousTestCase):
    @given(st.data())
    def test_a_start_from_the_snapshot_holds_what_reading_every_row_holds(self, data):
        """
        Whatever was written before the snapshot and after it, with a kill
        (and a new start) after it or not, the snapshot plus the changes
        since it give the same users, passwords, read marks, follow
        registers, followers, counts and clock as reading every row; in
        parts of any size.
        """
        self.patch(snapshotparts, "PART_ITEMS", data.draw(st.integers(1, 4)))
        self.patch(snapshotparts, "PAGE", data.draw(st.integers(1, 4)))
        updates = data.draw(stateUpdates())
        cut = data.draw(st.integers(0, len(updates)))
        record = Record(self)
        record.write(updates[:cut])
        record.save()
        record.write(updates[cut:])
        if data.draw(st.booleans()):
            record.reopen()
        fromSnapshot, fromRows = record.loaded()[0], record.loaded(snapshots=False)[0]
        # The registers kept frozen answer and change as those read row by row.
        later = [followUpdate("later.z", i, t, f.follower, f.followee, f.following)
                 for i, (t, f) in enumerate(data.draw(st.lists(
                     st.tuples(st.integers(1, 60), followChanges()), max_size=8)), 1)]
        answers = []
        for node in (fromSnapshot, fromRows):
            replica = node.replica
            answers.append([(replica.isFollowing(u.follow.follower, u.follow.followee),
                             replica.following(u.follow.follower), replica.apply(u))
                            for u in later] + [seen(node)])
        self.assertEqual(answers[0], answers[1])

    @given(st.data())
    def test_a_stored_follow_that_breaks_a_bound_is_held_as_reading_every_row_holds_it(
            self, data):
        """
        A follow stored before a bound it breaks existed (here a request id
        longer than one may be) is in the record and its pair's register:
        a start from the snapshot holds its pair as reading every row does,
        whether it came before the snapshot or after.
        """
        updates = data.draw(stateUpdates())
        bad = [attrs.evolve(followUpdate("old.v", i, t, f.follower, f.followee, f.following),
                            request_id="r" * (MAX_REQUEST_ID + 1))
               for i, (t, f) in enumerate(data.draw(st.lists(
                   st.tuples(st.integers(1, 60), followChanges()), min_size=1, max_size=4)), 1)]
        self.assertEqual(decoded([u.toProto().SerializeToString() for u in bad]), [])
        updates = data.draw(st.permutations(updates + bad))
        cut = data.draw(st.integers(0, len(updates)))
        record = Record(self)
        record.write(updates[:cut])
        record.save()
        record.write(updates[cut:])
        self.assertEqual(seen(record.loaded()[0]), seen(record.loaded(snapshots=False)[0]))

    @given(st.data())
    def test_a_torn_or_damaged_snapshot_is_ignored(self, data):
        """
        A snapshot cut short anywhere (a kill while it was written) or with
        any byte changed is not used: the start reads every row.
        """
        record = Record(self)
        record.write(data.draw(stateUpdates().filter(bool)))
        record.save()
        path = os.path.join(record.path, snapshot.FILE)
        with open(path, "rb") as f:
            whole = f.read()
        at = data.draw(st.integers(0, len(whole) - 1))
        damaged = (whole[:at] if data.draw(st.booleans())
                   else whole[:at] + bytes([whole[at] ^ data.draw(st.integers(1, 255))])
                   + whole[at + 1:])
        with open(path, "wb") as f:
            f.write(damaged)
        self.assertIsNone(snapshot.read(record.path, record.disk.index.readVersions()))
        self.assertEqual(seen(record.loaded()[0]), seen(record.loaded(snapshots=False)[0]))

    def test_a_damaged_header_is_caught_by_the_checksum(self):
        """Each byte of the header's fields (format, parts, size) is checked with the payload."""
        record = Record(self)
        record.write([userUpdate("vm1.a", 1, 10, "alice")])
        record.save()
        path = os.path.join(record.path, snapshot.FILE)
        with open(path, "rb") as f:
            whole = f.read()
        held, ignored = record.disk.index.readVersions(), []
        for at in range(len(snapshot.MAGIC), len(snapshot.MAGIC) + snapshot._HEADER.size):
            with open(path, "wb") as f:
                f.write(whole[:at] + bytes([whole[at] ^ 1]) + whole[at + 1:])
            ignored.append(snapshot.read(record.path, held) is None)
        self.assertEqual(ignored, [True] * snapshot._HEADER.size)

    def test_a_snapshot_that_does_not_read_is_left_for_every_row(self):
        """
        A part that the checksum passes but that does not build (written by
        code that erred) leaves nothing half-applied: the start reads every row.
        """
        record = Record(self)
        record.write([userUpdate("vm1.a", 1, 10, "alice"),
                      followUpdate("vm1.a", 2, 20, "bob", "alice")])
        users = snapshotparts.Parts.users
        self.patch(snapshotparts.Parts, "users",
                   lambda parts: itertools.chain(users(parts), [("bogus",)]))
        record.save()
        node, _ = record.loaded()
        self.assertEqual(seen(node), seen(record.loaded(snapshots=False)[0]))
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)

    def test_a_snapshot_covering_what_the_record_lacks_is_ignored(self):
        """A data directory restored from an older backup lacks what the snapshot holds."""
        older, newer = Record(self), Record(self)
        first = [userUpdate("vm1.a", 1, 10, "alice"), followUpdate("vm1.a", 2, 20, "bob", "alice")]
        older.write(first)
        newer.write(first + [followUpdate("vm1.a", 3, 30, "bob", "alice", False)])
        newer.save()
        shutil.copy(os.path.join(newer.path, snapshot.FILE), older.path)
        self.assertIsNone(snapshot.read(older.path, older.disk.index.readVersions()))
        node, _ = older.loaded()
        self.assertEqual(node.replica.followers("alice"), ["bob"])

    def test_no_snapshot_reads_every_row(self):
        record = Record(self)
        record.write([userUpdate("vm1.a", 1, 10, "alice")])
        self.assertIsNone(snapshot.read(record.path, record.disk.index.readVersions()))
        node, fresh = record.loaded()
        self.assertEqual((list(node.replica.users), fresh), (["alice"], 1))

    def test_what_was_applied_while_it_was_read_is_kept(self):
        """
        Registers a replica took during the read (a standby fed meanwhile)
        are merged in as their keys say, newer or older than the snapshot's.
        """
        record = Record(self)
        record.write([userUpdate("vm1.a", 1, 10, "alice"),
                      followUpdate("vm1.a", 2, 20, "bob", "alice"),
                      followUpdate("vm1.a", 3, 20, "carol", "alice"),
                      Update(origin="vm1.a", seq=4, time_us=20,
                             read=ReadMark("bob", 15, "vm1.a/9"))])
        record.save()
        found = snapshot.read(record.path, record.disk.index.readVersions())
        meanwhile = [followUpdate("vm2.b", 1, 30, "bob", "alice", False),  # newer: wins
                     followUpdate("vm2.b", 2, 5, "carol", "alice", False),  # older: loses
                     followUpdate("vm2.b", 3, 5, "dave", "alice"),
                     userUpdate("vm2.b", 4, 40, "erin"),
                     Update(origin="vm2.b", seq=5, time_us=41,
                            read=ReadMark("bob", 12, "vm1.a/8"))]
        replica, rebuild = Replica(), Rebuild(found.origins)
        for part in found.parts():
            rebuild.apply(part)
        for u in meanwhile:
            replica.apply(u)
        rebuild.install(replica)
        self.assertEqual((list(replica.users), replica.followers("alice"),
                          replica.follows.count("bob"), replica.readUpTo("bob"),
                          replica.password("erin").key),
                         (["alice", "erin"], ["carol", "dave"], 0, (15, "vm1.a/9"),
                          (40, "vm2.b/4")))

    def test_many_followers_become_a_sorted_set(self):
        """A user followed by as many as a sorted set's bound is held in one after a start too."""
        self.patch(snapshotparts, "PART_ITEMS", 100)
        record = Record(self)
        fans = ["f%04d" % (i,) for i in range(SORTED_FOLLOWERS)]
        record.write([followUpdate("vm1.a", i, i, fan, "star") for i, fan in enumerate(fans, 1)])
        record.save()
        node, _ = record.loaded()
        self.assertIsInstance(node.replica.follows.followers("star"), SortedSet)
        self.assertEqual(seen(node), seen(record.loaded(snapshots=False)[0]))

    def test_sorted_set_of_sorted_names_is_the_sorted_set(self):
        made = sortedSet(["a", "b", "c", "d"])
        made.add("bb")
        made.discard("a")
        self.assertEqual((list(made), list(made.irange("b", "c")), "c" in made),
                         (["b", "bb", "c", "d"], ["b", "bb", "c"], True))


async def openWriter(case, path):
    """A store of the data directory C{path} (made if new), opened as the VM's writer."""
    os.makedirs(path, exist_ok=True)
    store = SQLiteStore(path, clock=Clock())
    case.addCleanup(store.close)
    await store.open(posts=False)
    return store


class WrittenWhenDueTests(TestCase):
    def fill(self, path, n):
        """A data directory holding C{n} users, imported."""
        source = os.path.join(self.mktemp())
        with open(source, "w") as f:
            for i in range(n):
                f.write('{"user": "u%d"}\n' % (i,))
        with open(source, "rb") as f:
            Importer(path, "import.1").run(f)

    def writer(self, path):
        return openWriter(self, path)

    def test_import_writes_one_when_a_start_would_want_it(self):
        self.patch(snapshot, "CHANGES", 5)
        few, many = self.mktemp(), self.mktemp()
        self.fill(few, 4)
        self.fill(many, 5)
        self.assertEqual((os.path.exists(os.path.join(few, snapshot.FILE)),
                          os.path.exists(os.path.join(many, snapshot.FILE))), (False, True))

    async def test_the_writer_writes_one_once_enough_changed_since_the_last(self):
        """Every check, once the record holds CHANGES state updates the last one lacks."""
        self.patch(snapshot, "CHANGES", 3)
        store = await self.writer(self.mktemp())
        snapshots = store._queries.snapshots
        await store.persist([userUpdate("vm1.a", i, i, "u%d" % (i,)) for i in (1, 2)])
        self.assertEqual((await snapshots.refresh(), await store.stateSnapshot()), (None, None))
        await store.persist([userUpdate("vm1.a", 3, 3, "u3")])
        self.assertIsNotNone(await snapshots.refresh())
        first = await store.stateSnapshot()
        self.assertEqual((first.covers.count(), first.count), (3, 3))
        await store.persist([userUpdate("vm1.a", i, i, "u%d" % (i,)) for i in (4, 5)])
        self.assertIsNone(await snapshots.refresh())
        await store.persist([userUpdate("vm1.a", 6, 6, "u6")])
        await snapshots.refresh()
        self.assertEqual((await store.stateSnapshot()).covers.count(), 6)
        updates, after = await store.stateSince(first.covers, None, 10)
        self.assertEqual(([u.id for u in updates], after),
                         (["vm1.a/4", "vm1.a/5", "vm1.a/6"], None))
        self.assertEqual(snapshots.written, 2)

    async def test_writes_committed_while_it_is_written_are_left_for_the_next(self):
        """
        A write committed between the writer's look at the record and its
        snapshot's transaction (a busy master) is in the snapshot or after
        it, and the next look counts only what came after.
        """
        self.patch(snapshot, "CHANGES", 2)
        path = self.mktemp()
        store = await self.writer(path)
        await store.persist([userUpdate("vm1.a", i, i, "u%d" % (i,)) for i in (1, 2)])
        # Another connection writing the record, as the store's batches do.
        other = Index(sqlite3.connect(os.path.join(path, "sns.sqlite3"), isolation_level=None,
                                      check_same_thread=False))
        self.addCleanup(other.db.close)
        other.create()
        count = snapshot.countChanges

        def meanwhile(db, covers):
            found = count(db, covers)
            other.write([(userUpdate("vm1.a", 3, 3, "u3"), True)])
            return found

        self.patch(snapshot, "countChanges", meanwhile)
        snapshots = store._queries.snapshots
        self.assertIsNotNone(await snapshots.refresh())
        self.patch(snapshot, "countChanges", count)
        covered = snapshot.read(path, other.readVersions()).covers.count()
        self.assertEqual((covered, await snapshots.refresh(), snapshots.written), (3, None, 1))

    async def test_an_imported_directory_starts_from_its_snapshot(self):
        """What import wrote covers everything imported."""
        self.patch(snapshot, "CHANGES", 1)
        path = self.mktemp()
        self.fill(path, 3)
        store = await self.writer(path)
        found = await store.stateSnapshot()
        self.assertEqual((found.covers.origins, found.count),
                         (store.held().origins, 3))
