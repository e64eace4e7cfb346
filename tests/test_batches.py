"""
What a batch costs the store's disk thread, counted rather than timed: the
steps of SQLite it runs and the calls it makes to the file system.  In a
server each of them lets go of the interpreter and has to win it back from
a busy reactor, so a batch of posts is a few of them, whatever its size.
(How long a batch takes is measured by benchmarks/commits.py.)
"""

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

