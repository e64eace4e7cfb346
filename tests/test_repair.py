"""
The repair of a data directory after a crash (snstwist.storage.repair): only
the files of the record's unsynced authors are looked at, each from the end
the record says was flushed (its C{flushed} row) on; and the ends the record
keeps are true (the file's first C{size} bytes hold exactly the author's
shown posts up to the end's post key) whatever the order of batches, late
posts, dropped posts and flush rounds.
"""

import os
import shutil
import sqlite3
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from snstwist.storage import repair
from snstwist.storage.disk import Disk
from snstwist.storage.index import Index
from snstwist.storage.postfile import postLine
from tests.crashwriter import cutShort
from tests.diskhelpers import postFiles, roundWithWrite, unsynced
from tests.strategies import postUpdate

AUTHORS = ("alice", "bob", "carol")


def written(path, batches, flush=True):
    """A writer of C{path} writes C{batches} ([[update]]), flushes them (if C{flush}), closes."""
    disk = Disk(path)
    disk.openRecord()
    for batch in batches:
        disk.write(batch)
    if flush:
        disk.settle()
    disk.close()


def reference(updates):
    """The post files of a VM given C{updates} one by one, newest first."""
    path = tempfile.mkdtemp()
    try:
        written(path, [[u] for u in sorted(updates, key=lambda u: u.post.key, reverse=True)])
        return postFiles(path)
    finally:
        shutil.rmtree(path)


def flushedEnds(disk):
    """Every row of the record's flushed table: {author: (size, post key)}."""
    return {a: (size, (t, uid)) for a, size, t, uid in disk.index.db.execute(
        "SELECT author, size, time_us, uid FROM flushed")}


def olderRecord(path):
    """Make the record of C{path} one of the layout before its unsynced table."""
    db = sqlite3.connect(os.path.join(path, "sns.sqlite3"))
    db.executescript("DROP TABLE unsynced; DROP TABLE flushed;")
    db.close()


def assertEndsTrue(test, disk):
    """Every end in the record: its file's first bytes are its shown posts up to its key."""
    for author, (size, key) in flushedEnds(disk).items():
        with open(disk.files.path(author), "rb") as f:
            head = f.read(size)
        want = "".join(postLine(u) for u in disk.index.shownPosts(author) if u.post.key <= key)
        test.assertEqual((author, head), (author, want.encode("utf-8")))


class Spy:
    """Records the arguments of the calls of C{owner.name} (but a method's self), and results."""

    def __init__(self, test, owner, name, method=False):
        self.calls = []
        real = getattr(owner, name)

        def spy(*args):
            result = real(*args)
            self.calls.append((args[1:] if method else args, result))
            return result

        test.patch(owner, name, spy)


class TailRepairTests(SynchronousTestCase):
    """A crash after a batch's commit, before its flush, on a file with a flushed end."""

    FLUSHED = 20

    def setUp(self):
        self.path = self.mktemp()
        os.makedirs(self.path)
        self.old = [postUpdate("vm1.a", seq, 10 * seq, "alice", "old %d" % (seq,))
                    for seq in range(1, self.FLUSHED + 1)]
        self.new = [postUpdate("vm1.a", seq, 10 * seq, "alice", "new %d" % (seq,))
                    for seq in range(self.FLUSHED + 1, self.FLUSHED + 3)]
        written(self.path, [self.old[:10], self.old[10:]])
        self.alice = os.path.join(self.path, "posts", "alice.txt")
        self.before = os.path.getsize(self.alice)

    def reopened(self):
        written(self.path, [])
        self.assertEqual(unsynced(self.path), [])
        return postFiles(self.path)

    def test_a_torn_tail_is_completed_from_the_record(self):
        cutShort(self.path, self.new, lambda path, size: os.truncate(path, size + 9))
        self.assertEqual(self.reopened(), reference(self.old + self.new))

    def test_a_lost_tail_is_written_again(self):
        cutShort(self.path, self.new, os.truncate)
        self.assertEqual(self.reopened(), reference(self.old + self.new))

    def test_a_crash_before_the_first_round_after_a_repair_is_repaired_again(self):
        """
        The open leaves alice unsynced until its first round flushes her
        repaired file; the machine dies first and loses it all but the
        flushed end: the next open repairs it again.
        """
        cutShort(self.path, self.new, lambda path, size: os.truncate(path, size + 9))
        disk = Disk(self.path)
        disk.openRecord()
        disk.close()
        self.assertEqual(unsynced(self.path), ["alice"])
        os.truncate(self.alice, self.before)
        self.assertEqual(self.reopened(), reference(self.old + self.new))

    def test_a_file_longer_than_the_record_says_is_cut_back(self):
        """A whole line after the flushed end that the record lacks is not a post: gone."""
        cutShort(self.path, self.new, lambda path, size: None)
        stray = postUpdate("vm9.z", 1, 10 * (self.FLUSHED + 9), "alice", "never stored")
        with open(self.alice, "ab") as f:
            f.write(postLine(stray).encode("utf-8"))
        self.assertEqual(self.reopened(), reference(self.old + self.new))

    def test_only_the_tail_after_the_flushed_end_is_read_from_the_record(self):
        """The repair decodes the two posts after the flushed end, not alice's history."""
        cutShort(self.path, self.new, lambda path, size: os.truncate(path, size + 9))
        asked = Spy(self, Index, "shownPosts", method=True)
        self.reopened()
        self.assertEqual([(args, len(posts)) for args, posts in asked.calls],
                         [(("alice", self.old[-1].post.key), 2)])

    def test_a_file_shorter_than_its_flushed_end_is_repaired_whole(self):
        """Lines before the flushed end are gone (not a crash's doing): the record rewrites them."""
        cutShort(self.path, self.new, lambda path, size: None)
        os.truncate(self.alice, self.before // 2)
        self.assertEqual(self.reopened(), reference(self.old + self.new))

    def test_a_flushed_end_not_at_the_end_of_a_line_is_repaired_whole(self):
        cutShort(self.path, self.new, lambda path, size: None)
        with open(self.alice, "r+b") as f:
            f.seek(self.before - 1)
            f.write(b"x")
        self.assertEqual(self.reopened(), reference(self.old + self.new))

    def test_a_missing_file_is_written_whole(self):
        cutShort(self.path, self.new, lambda path, size: os.unlink(path))
        self.assertEqual(self.reopened(), reference(self.old + self.new))

    def test_only_unsynced_files_are_looked_at(self):
        """bob's file, flushed, is neither checked for a torn line nor read from the record."""
        written(self.path, [[postUpdate("vm1.b", 1, 5, "bob")]])
        cutShort(self.path, self.new, lambda path, size: None)
        torn = Spy(self, repair, "_endsTorn")
        asked = Spy(self, Index, "shownPosts", method=True)
        self.reopened()
        self.assertEqual(([args for args, _ in torn.calls], [args[0] for args, _ in asked.calls]),
                         ([], ["alice"]))

    def test_a_record_older_than_its_unsynced_table_has_every_file_looked_at(self):
        written(self.path, [[postUpdate("vm1.b", 1, 5, "bob")]])
        olderRecord(self.path)
        torn = Spy(self, repair, "_endsTorn")
        self.reopened()
        self.assertEqual(sorted(os.path.basename(args[0]) for args, _ in torn.calls),
                         ["alice.txt", "bob.txt"])


class FlushedEndTests(SynchronousTestCase):
    """The ends the record keeps, through flush rounds and rewrites."""

    def setUp(self):
        path = self.mktemp()
        os.makedirs(path)
        self.disk = Disk(path)
        self.addCleanup(self.disk.close)
        self.disk.openRecord()

    def assertEndsTrue(self):
        assertEndsTrue(self, self.disk)

    def test_a_round_ends_each_file_where_it_was_when_the_round_took_it(self):
        disk = self.disk
        disk.write([postUpdate("vm1.a", 1, 10, "alice")])
        disk.unflushed.sync()
        disk.write([postUpdate("vm1.a", 2, 20, "bob")])
        size = os.path.getsize(disk.files.path("alice"))
        self.assertEqual(flushedEnds(disk)["alice"], (size, (10, "vm1.a/1")))
        self.assertEndsTrue()

    def test_a_rewrite_during_a_round_voids_the_end_the_round_took(self):
        """
        The round took alice's end after post 3; a late post (time 15) is
        written and rewrites her file before the round ends: that end is
        not kept (the file's first bytes are no longer posts up to 3).
        """
        disk = self.disk
        disk.write([postUpdate("vm1.a", 1, 10, "alice"), postUpdate("vm1.a", 2, 20, "alice")])
        disk.unflushed.sync()
        disk.write([postUpdate("vm1.a", 3, 30, "alice")])
        roundWithWrite(disk, lambda: disk.write([postUpdate("vm2.a", 1, 15, "alice")]))
        disk.write([postUpdate("vm1.a", 4, 40, "bob")])
        self.assertEndsTrue()
        self.assertEqual(flushedEnds(disk)["alice"][1], (30, "vm1.a/3"),
                         "the rewrite's own end, after every post")

    def test_a_late_post_takes_back_an_end_after_it_in_its_commit(self):
        disk = self.disk
        disk.write([postUpdate("vm1.a", 1, 10, "alice"), postUpdate("vm1.a", 2, 20, "alice")])
        disk.unflushed.sync()
        disk.write([postUpdate("vm1.a", 3, 30, "bob")])
        self.assertIn("alice", flushedEnds(disk))
        disk.write([postUpdate("vm2.a", 1, 15, "alice")])
        self.assertNotIn("alice", flushedEnds(disk))

    def test_a_dropped_post_takes_back_an_end_after_it_in_its_commit(self):
        disk = self.disk
        later = postUpdate("vm2.a", 1, 20, "alice", "hi", requestId="r")
        disk.write([postUpdate("vm1.a", 1, 10, "alice"), later])
        disk.unflushed.sync()
        disk.write([postUpdate("vm1.a", 2, 30, "bob")])
        earlier = postUpdate("vm1.a", 3, 5, "alice", "hi", requestId="r")
        disk.write([earlier], displaced=[later])
        self.assertNotIn("alice", flushedEnds(disk))
        disk.write([postUpdate("vm1.a", 4, 40, "bob")])
        self.assertEndsTrue()


# One step of a writer: a batch of posts (author, time), a flush round, or a
# flush round during which a batch is written.
_posts = st.lists(st.tuples(st.sampled_from(AUTHORS), st.integers(1, 40)),
                  min_size=1, max_size=3)
_steps = st.lists(st.one_of(
    st.tuples(st.just("batch"), _posts),
    st.tuples(st.just("round"), st.none()),
    st.tuples(st.just("round with"), _posts)), min_size=1, max_size=12)


class CrashModelTests(SynchronousTestCase):
    @given(_steps, st.lists(st.floats(0, 1), min_size=3, max_size=3))
    def test_any_crash_is_repaired_to_the_files_of_the_record(self, steps, cuts):
        """
        After any steps, the ends in the record are true; then, whatever
        the machine lost of the unsynced files (cut anywhere), a reopen
        makes the files those of a VM given the same posts cleanly.
        """
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path)
        disk = Disk(path)
        disk.openRecord()
        posts = []

        def batch(pairs):
            ups = [postUpdate("vm1.a", len(posts) + i + 1, t, a, "p%d" % (len(posts) + i,))
                   for i, (a, t) in enumerate(pairs)]
            posts.extend(ups)
            disk.write(ups)

        for kind, pairs in steps:
            if kind == "batch":
                batch(pairs)
            elif kind == "round":
                disk.unflushed.sync()
            else:
                roundWithWrite(disk, lambda pairs=pairs: batch(pairs))
            assertEndsTrue(self, disk)
            # The writer keeps the table's authors in memory and writes only what changes.
            self.assertEqual(sorted(disk.index.unsyncedAuthors()), sorted(disk.unsynced))
        left = disk.index.unsyncedAuthors()
        disk.close()
        for author, cut in zip(AUTHORS, cuts):
            name = os.path.join(path, "posts", author + ".txt")
            if author in left and os.path.exists(name):
                os.truncate(name, int(os.path.getsize(name) * cut))
        written(path, [])
        self.assertEqual(postFiles(path), reference(posts))
