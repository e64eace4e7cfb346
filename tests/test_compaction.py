"""
The record keeps only the read mark that wins per user
(snstwist.storage.compaction), on a real SQLite file: superseded marks are
deleted (or never written) while the version vector still counts them; a
peer that lacks one is sent a void, applies nothing, and its version vector
advances, so two VMs end equal; a record of the layout that kept every
mark is compacted when it is opened.  (The Hypothesis model of
tests/test_convergence runs the same rule on MemoryStores.)
"""

import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.core.model import ReadMark, Update
from snstwist.core.state import Replica, VersionVector
from snstwist.storage import compaction, disk
from snstwist.storage import index as _index
from snstwist.storage import writes
from snstwist.storage.store import SQLiteStore
from tests.strategies import userUpdate


def mark(origin, seq, time_us, user, post_time, post_id):
    return Update(origin=origin, seq=seq, time_us=time_us,
                  read=ReadMark(user, post_time, post_id))


ALICE = userUpdate("vm1.a", 1, 10, "alice")
M1 = mark("vm1.a", 2, 20, "alice", 100, "vm1.a/90")
M2 = mark("vm1.a", 3, 30, "alice", 200, "vm1.a/91")
# Written later, at another VM, marking an older post: superseded on arrival.
M3 = mark("vm2.b", 1, 40, "alice", 150, "vm1.a/92")


def rows(path, sql):
    db = sqlite3.connect(os.path.join(path, "sns.sqlite3"))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def ids(updates):
    return [(u.id, "void" if compaction.marksNothing(u) else "kept") for u in updates]


class CompactedRecordTests(TestCase):
    async def store(self, *batches):
        path = self.mktemp()
        os.makedirs(path)
        store = SQLiteStore(path)
        self.addCleanup(store.close)
        await store.open()
        for batch in batches:
            await store.persist(batch)
        return path, store

    async def test_the_record_keeps_the_winning_mark_and_counts_them_all(self):
        """Three marks of alice in two batches: one row, the winner; three in the vector."""
        path, store = await self.store([ALICE, M1], [M2, M3])
        self.assertEqual(
            (rows(path, "SELECT origin, seq FROM record WHERE kind = 'read'"),
             rows(path, "SELECT user, time_us, post_id, origin, seq FROM marks"),
             sorted(rows(path, "SELECT origin, contiguous FROM versions"))),
            ([("vm1.a", 3)], [("alice", 200, "vm1.a/91", "vm1.a", 3)],
             [("vm1.a", 3), ("vm2.b", 1)]))

    async def test_a_mark_superseded_in_its_own_batch_is_not_written(self):
        path, _ = await self.store([ALICE, M1, M2, M3])
        self.assertEqual(rows(path, "SELECT origin, seq FROM record WHERE kind = 'read'"),
                         [("vm1.a", 3)])

    async def test_a_peer_lacking_superseded_marks_gets_voids_and_ends_equal(self):
        """
        A peer with nothing is sent the user, a void for M1, M2, and a void
        for M3, in (origin, seq) order, in pages; applied and stored there,
        both VMs hold the same vector, the same winning mark, and lack
        nothing of each other.
        """
        _, here = await self.store([ALICE, M1], [M2, M3])
        pages, after = [], None
        while True:
            page = await here.missing(VersionVector(), 1, after)
            if not page:
                break
            pages += page
            after = (page[-1].origin, page[-1].seq)
        replica = Replica()
        for u in pages:
            replica.apply(u)
        therePath, there = await self.store(pages)
        self.assertEqual(
            (ids(pages), replica.readUpTo("alice"), replica.seen.toProto(),
             rows(therePath, "SELECT origin, seq FROM record WHERE kind = 'read'"),
             rows(therePath, "SELECT user, time_us, post_id FROM marks"),
             ids(await here.missing(there.held(), 100)),
             ids(await there.missing(here.held(), 100))),
            ([("vm1.a/1", "kept"), ("vm1.a/2", "void"), ("vm1.a/3", "kept"),
              ("vm2.b/1", "void")], (200, "vm1.a/91"), here.held().toProto(),
             [("vm1.a", 3)], [("alice", 200, "vm1.a/91")], [], []))

    async def test_a_peer_holding_the_winner_gets_only_voids_for_what_it_lacks(self):
        """The peer holds the user and M2: it is sent voids for M1 and M3 only."""
        _, here = await self.store([ALICE, M1], [M2, M3])
        theirs = VersionVector()
        for u in (ALICE, M2):
            theirs.add(u.origin, u.seq)
        self.assertEqual(ids(await here.missing(theirs, 100)),
                         [("vm1.a/2", "void"), ("vm2.b/1", "void")])

    async def test_a_record_of_the_old_layout_is_compacted_on_open(self):
        """Every mark written as the record kept them before: opened, only the winner stays."""
        path = self.mktemp()
        os.makedirs(path)
        db = sqlite3.connect(os.path.join(path, "sns.sqlite3"), isolation_level=None)
        db.executescript(_index.SCHEMA)
        for u in (ALICE, M1, M2, M3):
            db.execute(writes.INSERT_RECORD, writes.recordRow(u))
        db.executemany(writes.UPSERT_MARK, [writes.markRow(u) for u in (M1, M2, M3)])
        index = _index.Index(db)
        index.writeVersions(index.countVersions().origins)
        db.close()
        d = disk.Disk(path)
        d.openRecord()
        held = d.index.readVersions().toProto()
        d.close()
        self.assertEqual(
            (rows(path, "SELECT origin, seq FROM record ORDER BY origin, seq"), held),
            ([("vm1.a", 1), ("vm1.a", 3)], VersionVector.fromProto(held).toProto()))
        self.assertEqual(sorted((r.origin, r.contiguous) for r in held.origins),
                         [("vm1.a", 3), ("vm2.b", 1)])


class VoidTests(SynchronousTestCase):
    def test_a_void_changes_nothing_but_the_version_vector(self):
        replica = Replica()
        for u in (ALICE, M2):
            replica.apply(u)
        before = replica.snapshot()
        self.assertEqual((replica.apply(compaction.void("vm1.a", 2)), replica.snapshot(),
                          replica.seen.has("vm1.a", 2)), (True, before, True))

    def test_a_void_survives_the_wire(self):
        """A peer's bounds accept a void: it travels as any read mark does."""
        void = compaction.void("vm9.z", 7)
        self.assertEqual(Update.fromProto(void.toProto()), void)
