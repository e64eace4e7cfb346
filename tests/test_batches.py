"""
What a batch costs the store's disk thread, counted rather than timed: the
steps of SQLite it runs and the calls it makes to the file system.  In a
server each of them lets go of the interpreter and has to win it back from
a busy reactor, so a batch of posts is a few of them, whatever its size.
(How long a batch takes is measured by benchmarks/commits.py.)
"""

import errno
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.diskhelpers import openDisk, unsynced
from tests.strategies import postUpdate


class Steps:
    """Counts the statements a connection runs (each row of an executemany is one)."""

    def __init__(self, db):
        self.sql = []
        db.set_trace_callback(lambda sql: self.sql.append(sql))

    def taken(self):
        taken, self.sql = self.sql, []
        return taken


def posts(first, count, authors):
    """C{count} posts of vm1.a from seq C{first} on, by C{authors} in turn."""
    return [postUpdate("vm1.a", seq, 10 * seq, authors[seq % len(authors)])
            for seq in range(first, first + count)]


AUTHORS = ["user%d" % (i,) for i in range(30)]


class SQLiteStepTests(SynchronousTestCase):
    def setUp(self):
        self.disk = openDisk(self)
        self.steps = Steps(self.disk.db)

    def test_a_batch_of_posts_is_a_few_steps_whatever_its_size(self):
        """
        The record's rows go in one statement, the version vector in one,
        the new unsynced authors and their files' ends in one each.
        """
        self.disk.write(posts(1, 30, AUTHORS))
        self.assertEqual(len(self.steps.taken()), 6)
        self.disk.write(posts(31, 60, AUTHORS))
        self.assertEqual(len(self.steps.taken()), 4, "nothing new in unsynced")

    def test_authors_already_unsynced_are_not_written_again(self):
        self.disk.write(posts(1, 3, ["alice", "bob", "carol"]))
        self.steps.taken()
        self.disk.write(posts(4, 3, ["alice", "bob", "carol"]))
        self.assertFalse([sql for sql in self.steps.taken() if "unsynced" in sql])
        self.assertEqual(unsynced(self.disk.path), ["alice", "bob", "carol"])

    def test_an_author_flushed_and_appended_to_again_stays_unsynced_untouched(self):
        """
        Bob's file was flushed and he posts again: he stays in unsynced, and
        only alice, flushed and not appended to, leaves it.
        """
        self.disk.write(posts(1, 2, ["alice", "bob"]))
        self.disk.unflushed.sync()
        self.steps.taken()
        self.disk.write([postUpdate("vm1.a", 3, 30, "bob"), postUpdate("vm1.a", 4, 40, "dave")])
        changes = [sql for sql in self.steps.taken() if "unsynced" in sql]
        self.assertEqual(len(changes), 2, "alice leaves, dave joins, in a statement each")
        self.assertEqual(unsynced(self.disk.path), ["bob", "dave"])
        self.assertEqual(sorted(self.disk.unsynced), ["bob", "dave"])


class FileCallTests(SynchronousTestCase):
    def setUp(self):
        self.disk = openDisk(self)

    def assertSizesTrue(self, *authors):
        """The ends the writer keeps in memory are its files' sizes."""
        for author in authors:
            path = self.disk.files.path(author)
            size = os.path.getsize(path) if os.path.exists(path) else 0
            self.assertEqual(self.disk.files.end(author)[0], size, author)

    def test_a_batch_opens_each_file_once_and_asks_nothing_else(self):
        authors = ["alice", "bob", "carol"]
        self.disk.write(posts(1, 3, authors))
        calls = []
        real = {name: getattr(os, name) for name in ("stat", "lstat", "open")}
        for name in real:
            def counted(*args, name=name, **kwargs):
                calls.append(name)
                return real[name](*args, **kwargs)
            self.patch(os, name, counted)
        self.disk.write(posts(4, 6, authors))
        self.assertEqual(calls, ["open"] * 3)
        del calls[:]
        self.assertSizesTrue(*authors)

    def test_a_failed_append_leaves_the_size_known_true(self):
        self.disk.write(posts(1, 2, ["alice", "bob"]))
        append = self.disk.append

        def torn(path, data):
            append(path, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

        self.disk.append = torn
        self.assertRaises(OSError, self.disk.write, posts(3, 2, ["alice", "bob"]))
        self.disk.append = append
        self.assertSizesTrue("alice", "bob")
        self.disk.write(posts(5, 2, ["alice", "bob"]))
        self.assertSizesTrue("alice", "bob")

    def test_a_rewritten_file_has_its_size_known_true(self):
        self.disk.write([postUpdate("vm1.a", 1, 10, "alice"), postUpdate("vm1.a", 2, 30, "alice")])
        self.disk.write([postUpdate("vm2.a", 1, 20, "alice", "late")])
        self.assertSizesTrue("alice")
        self.disk.write([postUpdate("vm1.a", 3, 40, "alice")])
        self.assertSizesTrue("alice")
