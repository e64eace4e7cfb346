"""
What a batch's commit writes to the record's WAL (storage/writes.py): every
page it changes is a frame that its fsync has to carry to the disk, so a
row kept by key (the version vector's, a file's flushed end) is changed in
place, where an C{INSERT OR REPLACE} would delete it and insert it again
and change the page of the key's index too.
"""

import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from snstwist.core.state import HOT_POSTS
from snstwist.storage.checkpoint import walCommits
from snstwist.storage.disk import Disk
from tests.strategies import postUpdate


class CommitPagesTests(SynchronousTestCase):
    def setUp(self):
        self.path = self.mktemp()
        os.makedirs(self.path)
        self.disk = Disk(self.path)
        self.disk.open(HOT_POSTS)
        self.addCleanup(self.disk.close)
        self.wal = self.disk.dbPath + "-wal"

    def lastCommitWrote(self):
        """The tables and indexes whose pages the last commit wrote."""
        pages = walCommits(self.wal)[-1]
        db = sqlite3.connect(self.disk.dbPath)
        try:
            names = dict((pageno, name) for name, pageno in db.execute(
                "SELECT name, pageno FROM dbstat"))
        finally:
            db.close()
        return sorted({names.get(page, "page %d" % (page,)) for page in pages})

    def stored(self, sql):
        db = sqlite3.connect(self.disk.dbPath)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def test_a_post_writes_its_row_its_two_indexes_and_the_version_vectors_row(self):
        """
        A one-post batch of an origin stored before writes four pages: the
        record's, its indexes of posts and of requests, and the vector's
        row, not the page of the vector's index (its key did not change).
        """
        self.disk.write([postUpdate("vm1.a", 1, 1, "alice", requestId="r1")])
        self.disk.write([postUpdate("vm1.a", 2, 2, "alice", requestId="r2")])
        self.assertEqual(self.lastCommitWrote(),
                         ["record", "record_posts", "record_requests", "versions"])
        self.assertEqual(self.stored("SELECT origin, contiguous, extra FROM versions"),
                         [("vm1.a", 2, "[]")])

    def test_the_version_vectors_rows_of_several_origins_are_each_kept(self):
        """
        A batch of three origins (one statement of four rows, its last
        repeated) changes each origin's row, new or stored, once.
        """
        self.disk.write([postUpdate("vm1.a", 1, 1, "alice"), postUpdate("vm2.b", 3, 2, "bob")])
        self.disk.write([postUpdate("vm1.a", 2, 3, "alice"), postUpdate("vm2.b", 1, 4, "bob"),
                         postUpdate("vm3.c", 1, 5, "carol")])
        self.assertEqual(
            self.stored("SELECT origin, contiguous, extra FROM versions ORDER BY origin"),
            [("vm1.a", 2, "[]"), ("vm2.b", 1, "[3]"), ("vm3.c", 1, "[]")])

    def test_a_files_flushed_end_is_changed_in_place(self):
        self.disk.index.write([], flushed={"alice": (10, (1, "vm1.a/1"))})
        self.disk.index.write([], flushed={"alice": (20, (2, "vm1.a/2"))})
        self.assertEqual(self.lastCommitWrote(), ["flushed"])
        self.assertEqual(self.stored("SELECT author, size, time_us, uid FROM flushed"),
                         [("alice", 20, 2, "vm1.a/2")])
