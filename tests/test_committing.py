"""
L{IStore.committing}: the reactor may hear that a batch it handed to an
idle writer has started its commit (its fsync), so that what it does next
runs while the disk syncs (storage/groupcommit.py).
"""

import os
import sqlite3
import threading

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.core.state import HOT_POSTS
from snstwist.storage import store
from snstwist.storage.disk import Disk
from snstwist.storage.memory import MemoryStore
from tests.strategies import postUpdate


class Statements:
    """Stands in front of a SQLite connection and lists the statements run on it."""

    def __init__(self, db, seen):
        self.db = db
        self.seen = seen

    def execute(self, sql, *args):
        self.seen.append(sql.split()[0])
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


class FullTable(Statements):
    """Its inserts fail as on a full disk, while C{full}."""

    full = True

    def execute(self, sql, *args):
        if self.full and sql.startswith("INSERT"):
            e = sqlite3.OperationalError("database or disk is full")
            e.sqlite_errorname = "SQLITE_FULL"
            raise e
        return Statements.execute(self, sql, *args)


class BeforeCommitTests(SynchronousTestCase):
    def test_it_is_called_after_the_statements_just_before_the_commit(self):
        path = self.mktemp()
        os.makedirs(path)
        disk = Disk(path)
        disk.open(HOT_POSTS)
        self.addCleanup(disk.close)
        seen = []
        disk.db = Statements(disk.db, seen)
        disk.write([postUpdate("vm1.a", 1, 1, "alice")],
                   beforeCommit=lambda: seen.append("before commit"))
        self.assertEqual(seen[-2:], ["before commit", "COMMIT"])
        self.assertIn("INSERT", seen[:-2])

    def test_memory_has_no_writer_to_wait_for(self):
        s = MemoryStore()
        s.persist([postUpdate("vm1.a", 1, 1, "alice")])
        self.assertIsNone(s.committing())


class CommittingTests(TestCase):
    async def openStore(self):
        """
        An open store on a directory of our own; C{self.calls} lists the
        calls its disk thread makes into the reactor, as they are made.
        """
        path = self.mktemp()
        os.makedirs(path)
        self.clock = Clock()
        s = store.SQLiteStore(path, reactor=reactor, clock=self.clock)
        self.calls = []
        answer = s._thread.callFromThread

        def counting(f, *args):
            if "sns-store" in threading.current_thread().name:
                self.calls.append(f)
            return answer(f, *args)

        s._thread.callFromThread = counting
        self.addCleanup(s.close)
        await s.open()
        return s

    async def test_the_reactor_hears_of_the_commit_before_the_batch_is_durable(self):
        s = await self.openStore()
        order = []
        durable = s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        durable.addCallback(lambda _: order.append("durable"))
        committing = s.committing()
        committing.addCallback(lambda result: order.append(("committing", result)))
        await durable
        self.assertEqual(order, [("committing", None), "durable"])

    async def test_asking_takes_it(self):
        s = await self.openStore()
        d = s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        self.assertIsNotNone(s.committing())
        self.assertIsNone(s.committing())
        await d

    async def test_a_write_taken_by_a_run_under_way_gives_none(self):
        """Only a persist that wakes the idle writer starts a run to hear of."""
        s = await self.openStore()
        first = s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        second = s.persist([postUpdate("vm1.a", 2, 20, "alice")])
        self.assertIsNone(s.committing())
        await defer.gatherResults([first, second])
        nothing = s.persist([postUpdate("vm1.a", 2, 20, "alice")])  # stored already
        self.assertIsNone(s.committing())
        await nothing

    async def test_a_run_nobody_asked_about_calls_the_reactor_once(self):
        """Asked, the run makes one call more into the reactor, before its commit."""
        s = await self.openStore()
        del self.calls[:]
        await s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        self.assertEqual(len(self.calls), 1)
        del self.calls[:]
        d = s.persist([postUpdate("vm1.a", 2, 20, "alice")])
        s.committing()
        await d
        self.assertEqual(len(self.calls), 2)

    async def test_a_first_batch_that_fails_before_committing_still_fires_it(self):
        """
        A batch the disk refuses before its commit (a full disk) is kept
        for its retry, not durable; the reactor hears, once, that the run
        ended without a commit.
        """
        s = await self.openStore()
        full = s._disk.db = FullTable(s._disk.db, [])
        refused = defer.Deferred()
        s.onProblem = lambda problem: refused.called or refused.callback(problem)
        durable = s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        fired = []
        s.committing().addCallback(fired.append)
        await refused
        self.assertEqual(fired, [None])
        self.assertFalse(durable.called)
        self.assertNotIn("COMMIT", full.seen)
        full.full = False
        self.clock.advance(s.maxRetryDelay)
        await durable
        self.assertEqual(fired, [None])
