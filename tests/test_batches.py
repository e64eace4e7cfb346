"""
What a batch costs the store's disk thread, counted rather than timed: the
steps of SQLite it runs and the calls it makes to the file system.  In a
server each of them lets go of the interpreter and has to win it back from
a busy reactor, so a batch of posts is a few of them, whatever its size.
(How long a batch takes is measured by benchmarks/commits.py.)
"""

import errno
import json
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

    def test_a_batch_opens_no_file_held_open_and_asks_nothing_else(self):
        """
        The files appended to by the batch before are held open: the next
        batch's appends are a write each (storage/appends.py).
        """
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
        self.assertEqual(calls, [])
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


def readLines(disk, author):
    with open(disk.files.path(author), "rb") as f:
        return [json.loads(line)["id"] for line in f.read().splitlines()]


class HeldFileTests(SynchronousTestCase):
    """The post files held open for appending (storage/appends.py)."""

    def setUp(self):
        self.disk = openDisk(self)

    def test_at_most_so_many_files_are_held_open_the_last_appended_to(self):
        self.disk.files.held.most = 2
        for seq, author in enumerate(["alice", "bob", "carol", "alice"], 1):
            self.disk.write([postUpdate("vm1.a", seq, 10 * seq, author)])
        held = [os.path.basename(p) for p in self.disk.files.held.held]
        self.assertEqual(held, ["carol.txt", "alice.txt"])
        self.disk.write([postUpdate("vm1.a", 5, 50, "bob")])  # (let go, opened again)
        self.assertEqual(readLines(self.disk, "alice"), ["vm1.a/1", "vm1.a/4"])
        self.assertEqual(readLines(self.disk, "bob"), ["vm1.a/2", "vm1.a/5"])

    def test_a_file_rewritten_is_appended_to_as_it_is_now(self):
        """
        A late post rewrites alice's file (a new file in its place): the
        next append goes to that file, not to the one held open before.
        """
        self.disk.write([postUpdate("vm1.a", 1, 10, "alice"), postUpdate("vm1.a", 2, 30, "alice")])
        self.disk.write([postUpdate("vm2.a", 1, 20, "alice", "late")])
        self.disk.write([postUpdate("vm1.a", 3, 40, "alice")])
        self.assertEqual(readLines(self.disk, "alice"),
                         ["vm1.a/1", "vm2.a/1", "vm1.a/2", "vm1.a/3"])
        self.assertNotIn(self.disk.files.path("alice") + ".tmp", self.disk.files.held.held)

    def test_an_append_taken_back_leaves_the_file_let_go_and_whole_after(self):
        self.disk.write(posts(1, 1, ["alice"]))
        append = self.disk.append

        def torn(path, data):
            append(path, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

        self.disk.append = torn
        self.assertRaises(OSError, self.disk.write, posts(2, 1, ["alice"]))
        self.disk.append = append
        # The torn line was cut off, and the file let go.
        self.assertEqual(self.disk.files.held.held, [])
        self.assertEqual(readLines(self.disk, "alice"), ["vm1.a/1"])
        self.disk.write(posts(2, 2, ["alice"]))
        self.assertEqual(readLines(self.disk, "alice"), ["vm1.a/1", "vm1.a/2", "vm1.a/3"])

    def test_closing_lets_go_of_every_file(self):
        self.disk.write(posts(1, 3, ["alice", "bob", "carol"]))
        fds = list(self.disk.files.held._open.values())
        self.assertEqual(len(fds), 3)
        self.disk.files.close()
        self.assertEqual(self.disk.files.held.held, [])
        for fd in fds:
            self.assertRaises(OSError, os.fstat, fd)
