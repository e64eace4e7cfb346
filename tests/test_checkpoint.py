"""
The record's WAL checkpoints run off the commits (storage/checkpoint.py):
the writer's commits leave them to the checkpointer until the WAL reaches its
bound, and the checkpointer's PASSIVE checkpoint copies what is committed, so
that the writer starts the WAL over.
"""

import os
import sqlite3

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from snstwist.storage import checkpoint, store
from snstwist.storage.checkpoint import Checkpointer
from snstwist.storage.rounds import AfterBatches
from tests.diskhelpers import batchHandled
from tests.strategies import postUpdate

TEXT = "x" * 1000


def batches(count, size, first=1):
    """C{count} lists of C{size} posts of 1,000 characters, by ten authors."""
    seq = first
    out = []
    for _ in range(count):
        batch = []
        for _ in range(size):
            batch.append(postUpdate("vm1.a", seq, seq, "user%d" % (seq % 10), TEXT))
            seq += 1
        out.append(batch)
    return out


class CheckpointTests(TestCase):
    def setUp(self):
        self.path = self.mktemp()
        os.makedirs(self.path)
        self.dbPath = os.path.join(self.path, "sns.sqlite3")

    async def openStore(self, clock):
        s = store.SQLiteStore(self.path, clock=clock)
        self.addCleanup(s.close)
        await s.open()
        return s

    def walPages(self):
        """Pages the WAL holds now (a PASSIVE checkpoint's count, from a connection of ours)."""
        db = sqlite3.connect(self.dbPath)
        try:
            return db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        finally:
            db.close()

    def walBytes(self):
        return os.path.getsize(self.dbPath + "-wal")

    async def test_commits_leave_the_checkpoint_to_the_checkpointer(self):
        """
        Past SQLite's 1,000 pages the writer has not checkpointed; the
        checkpointer's round copies every page, and the WAL starts over.
        """
        s = await self.openStore(Clock())
        for batch in batches(5, 400):
            await s.persist(batch)
        self.assertEqual(s._checkpointer.rounds, 0, "no round before its delay")
        busy, pages, copied = await s._checkpointer.checkpoint()
        self.assertGreater(pages, 1000)
        self.assertEqual((busy, copied), (0, pages))
        await s.persist(batches(1, 1, first=2001)[0])
        self.assertLess(self.walPages(), 100, "the writer started the WAL over")

    async def test_with_no_batch_after_its_delay_a_round_follows_a_grace_later(self):
        clock = Clock()
        s = await self.openStore(clock)
        await s.persist(batches(1, 10)[0])
        await batchHandled()
        clock.advance(Checkpointer.delay + AfterBatches.grace - 0.01)
        self.assertEqual(s._checkpointer.rounds, 0)
        clock.advance(0.01)
        self.assertEqual(s._checkpointer.rounds, 1)
        busy, pages, copied = await s._checkpointer.checkpoint()
        self.assertEqual((busy, copied), (0, pages))

    async def test_a_due_round_starts_at_the_end_of_the_next_batch(self):
        """
        Once its delay has passed, the checkpoint starts as the next batch
        is handed back, not at a timer's moment a commit may meet it.
        """
        clock = Clock()
        s = await self.openStore(clock)
        first, second = batches(2, 10)
        await s.persist(first)
        await batchHandled()
        clock.advance(Checkpointer.delay)
        self.assertEqual(s._checkpointer.rounds, 0, "due, and no batch since")
        await s.persist(second)
        await batchHandled()
        self.assertEqual(s._checkpointer.rounds, 1, "started by the batch, no clock moved")
        busy, pages, copied = await s._checkpointer.checkpoint()
        self.assertEqual((busy, copied), (0, pages))

    async def test_the_writer_checkpoints_past_the_bound(self):
        """With no checkpointer round (its clock stands still), the WAL stays near its bound."""
        self.patch(checkpoint, "WAL_BOUND_BYTES", 400 * 1024)
        s = await self.openStore(Clock())
        for batch in batches(30, 40):
            await s.persist(batch)
        self.assertEqual(s._checkpointer.rounds, 0)
        self.assertLess(self.walBytes(), 1600 * 1024)

    async def test_the_record_reopens_whole_after_checkpoints(self):
        s = await self.openStore(Clock())
        written = [u for batch in batches(3, 50) for u in batch]
        for i in range(0, len(written), 50):
            await s.persist(written[i:i + 50])
            await s._checkpointer.checkpoint()
        await s.close()
        again = store.SQLiteStore(self.path)
        self.addCleanup(again.close)
        await again.open()
        self.assertEqual(again.held().count(), len(written))

