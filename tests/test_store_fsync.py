"""
When the store's Deferred fires, and what is flushed by then.

A batch is durable once its SQLite commit is: the Deferred fires after the
COMMIT, and without waiting for the post files' flush, which follows off
the acknowledgement's path (the sync thread), and after which their authors
leave the record's C{unsynced} table.  A fake C{os.fsync} (which still
flushes) and a connection that marks its COMMITs record the order of
events; a process killed before its files are flushed (tests/crashwriter.py)
shows that nothing acknowledged is lost and that every VM's files end up
byte-identical.
"""

import os
import signal
import threading

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from snstwist.storage import store
from snstwist.storage.filesync import Flusher
from snstwist.storage.rounds import AfterBatches
from tests import crashwriter
from tests.diskhelpers import batchHandled, openDisk, postFiles, roundWithWrite, unsynced
from tests.processes import spawn
from tests.strategies import followUpdate, postUpdate, userUpdate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FsyncRecorder:
    """Replaces os.fsync: records the path of each flushed descriptor."""

    def __init__(self, test):
        self.events = []
        self.lock = threading.Lock()
        self.realFsync = os.fsync
        test.patch(os, "fsync", self.fsync)

    def fsync(self, fd):
        self.realFsync(fd)
        path = os.readlink("/proc/self/fd/%d" % (fd,))
        with self.lock:
            self.events.append(("fsync", path))

    def mark(self, what):
        with self.lock:
            self.events.append((what, None))

    def kinds(self):
        with self.lock:
            return [kind for kind, _ in self.events]

    def flushedBefore(self, what):
        """The paths flushed before the event C{what}."""
        out = []
        with self.lock:
            events = list(self.events)
        for kind, path in events:
            if kind == what:
                return out
            out.append(path)
        raise AssertionError("%s never happened: %r" % (what, events))


class MarkedCommits:
    """Stands in front of the store's connection: each COMMIT done is an event."""

    def __init__(self, db, recorder):
        self.db = db
        self.recorder = recorder

    def execute(self, sql, *args):
        result = self.db.execute(sql, *args)
        if sql == "COMMIT":
            self.recorder.mark("commit")
        return result

    def __getattr__(self, name):
        return getattr(self.db, name)


class FsyncOrderTests(TestCase):
    def setUp(self):
        self.path = os.path.realpath(self.mktemp())
        os.makedirs(self.path)
        self.posts = os.path.join(self.path, "posts")

    async def openStore(self, recorder=None):
        s = store.SQLiteStore(self.path)
        self.addCleanup(s.close)
        await s.open()
        if recorder is not None:
            s._disk.db = MarkedCommits(s._disk.db, recorder)
        return s

    def holdFlushes(self, s, recorder):
        """The sync thread waits until the returned Event is set."""
        release = threading.Event()
        flush = s._disk.unflushed.sync

        def held():
            release.wait()
            result = flush()
            recorder.mark("flushed")
            return result

        s._disk.unflushed.sync = held
        self.addCleanup(release.set)  # before the store's close (cleanups run last first)
        return release

    async def persist(self, s, recorder, updates, name, **kw):
        d = s.persist(updates, **kw)
        d.addCallback(lambda _: recorder.mark(name))
        await d
        return recorder.flushedBefore(name)

    def postFile(self, user):
        return os.path.join(self.posts, user + ".txt")

    async def test_the_ack_follows_the_commit_of_the_record(self):
        """The Deferred fires after the batch's COMMIT, never before."""
        recorder = FsyncRecorder(self)
        s = await self.openStore(recorder)
        await self.persist(s, recorder, [postUpdate("vm1.a", 1, 10, "alice"),
                                         userUpdate("vm1.a", 2, 11, "bob")], "ack")
        kinds = recorder.kinds()
        self.assertIn("commit", kinds)
        self.assertLess(kinds.index("commit"), kinds.index("ack"))

    async def test_the_ack_does_not_wait_for_the_post_files_flush(self):
        """
        With the sync thread held, the post is acknowledged, its line is in
        the file (appended, unflushed) and its author is unsynced; once the
        flush runs, the file and the new directory entry are flushed.
        """
        recorder = FsyncRecorder(self)
        s = await self.openStore(recorder)
        release = self.holdFlushes(s, recorder)
        flushed = await self.persist(s, recorder, [postUpdate("vm1.a", 1, 10, "alice")], "ack")
        self.assertNotIn(self.postFile("alice"), flushed)
        with open(self.postFile("alice"), "rb") as f:
            self.assertEqual(f.read().count(b"\n"), 1)
        self.assertEqual(unsynced(self.path), ["alice"])
        release.set()
        await s.synced()
        flushed = recorder.flushedBefore("flushed")
        self.assertIn(self.postFile("alice"), flushed)
        self.assertIn(self.posts, flushed)
        self.assertGreater(flushed.index(self.posts), flushed.index(self.postFile("alice")))

    async def test_flushed_authors_leave_unsynced_with_the_next_batch(self):
        """Once alice's file is flushed, the next batch's transaction takes her out."""
        recorder = FsyncRecorder(self)
        s = await self.openStore(recorder)
        await s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        await s.synced()
        self.assertEqual(unsynced(self.path), ["alice"])
        await s.persist([postUpdate("vm1.a", 2, 20, "bob")])
        self.assertEqual(unsynced(self.path), ["bob"])
        await s.synced()
        await s.close()
        self.assertEqual(unsynced(self.path), [], "a clean close leaves nothing unsynced")

    async def test_every_file_of_a_batch_is_flushed_in_one_round(self):
        recorder = FsyncRecorder(self)
        s = await self.openStore(recorder)
        release = self.holdFlushes(s, recorder)
        await s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        await s.persist([postUpdate("vm1.a", i, 10 + i, user)
                         for i, user in enumerate(("alice", "bob", "carol"), 2)])
        rounds = s._flusher.rounds
        release.set()
        await s.synced()
        flushed = recorder.flushedBefore("flushed")
        for user in ("alice", "bob", "carol"):
            self.assertIn(self.postFile(user), flushed, user)
        self.assertIn(self.posts, flushed)
        self.assertLessEqual(s._flusher.rounds - rounds, 1, "one round took the batches waiting")

    async def test_the_batches_of_a_flush_delay_are_flushed_in_one_round(self):
        """
        A round of flushes starts Flusher.delay after a batch (with no batch
        after that, a grace later) and takes the files of every batch
        committed by then.
        """
        clock = Clock()
        s = store.SQLiteStore(self.path, clock=clock)
        self.addCleanup(s.close)
        await s.open()
        for i, user in enumerate(("alice", "bob", "carol"), 1):
            await s.persist([postUpdate("vm1.a", i, 10 * i, user)])
        self.assertEqual((s._flusher.rounds, unsynced(self.path)),
                         (0, ["alice", "bob", "carol"]))
        clock.advance(Flusher.delay + AfterBatches.grace)
        await s.synced()
        self.assertEqual((s._flusher.rounds, s._flusher.files), (1, 3))
        await s.persist([postUpdate("vm1.a", 4, 40, "dave")])
        self.assertEqual(unsynced(self.path), ["dave"])

    async def test_a_due_round_starts_at_the_end_of_the_next_batch(self):
        """
        Once Flusher.delay has passed, the round starts as the next batch is
        handed back, not at a timer's moment between two batches.
        """
        clock = Clock()
        s = store.SQLiteStore(self.path, clock=clock)
        self.addCleanup(s.close)
        await s.open()
        await s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        await batchHandled()
        clock.advance(Flusher.delay)
        self.assertEqual(s._flusher.rounds, 0, "due, and no batch since")
        await s.persist([postUpdate("vm1.a", 2, 20, "bob")])
        await batchHandled()
        self.assertEqual(s._flusher.rounds, 1, "started by the batch, no clock moved")
        await s.synced()
        self.assertEqual(s._flusher.files, 2)

    async def test_a_round_starts_at_once_when_most_files_wait(self):
        """
        Files appended to wait for a round at most Flusher.delay (and a
        grace, when no batch follows), and no more than Flusher.most of
        them: the repair after a crash is bounded by files, not by time.
        """
        clock = Clock()
        s = store.SQLiteStore(self.path, clock=clock)
        self.addCleanup(s.close)
        await s.open()
        s._flusher.most = 3
        await s.persist([postUpdate("vm1.a", 1, 10, "alice"), postUpdate("vm1.a", 2, 20, "bob")])
        self.assertEqual(s._flusher.rounds, 0)
        await s.persist([postUpdate("vm1.a", 3, 30, "carol")])
        await batchHandled()
        self.assertEqual(s._flusher.rounds, 1, "the third file started a round, no clock moved")
        await s.synced()
        self.assertEqual((s._flusher.files, unsynced(self.path)), (3, ["alice", "bob", "carol"]))
        await s.persist([postUpdate("vm1.a", 4, 40, "dave")])
        await batchHandled()
        self.assertEqual((s._flusher.rounds, unsynced(self.path)), (1, ["dave"]))
        clock.advance(Flusher.delay + AfterBatches.grace)
        self.assertEqual(s._flusher.rounds, 2, "dave's file flushed Flusher.delay later")
        await s.synced()

    async def test_a_rewritten_file_and_its_rename_are_flushed_before_the_ack(self):
        """A late post rewrites the file (a new file renamed over it): both flushed at once."""
        recorder = FsyncRecorder(self)
        s = await self.openStore(recorder)
        await s.persist([postUpdate("vm1.a", 2, 20, "alice", "b")])
        await s.synced()
        recorder.events.clear()
        flushed = await self.persist(s, recorder, [postUpdate("vm2.a", 1, 10, "alice", "a")],
                                     "late")
        tmp = self.postFile("alice") + ".tmp"
        self.assertIn(tmp, flushed)
        self.assertIn(self.posts, flushed)
        self.assertGreater(flushed.index(self.posts), flushed.index(tmp),
                           "the rename is flushed after the new file's contents")

    async def test_a_displaced_post_is_removed_durably_before_the_ack(self):
        """A copy hidden by an earlier copy of its request: the rewrite is flushed."""
        recorder = FsyncRecorder(self)
        s = await self.openStore(recorder)
        later = postUpdate("vm2.a", 1, 20, "alice", "hi", requestId="r")
        await s.persist([later])
        await s.synced()
        recorder.events.clear()
        earlier = postUpdate("vm1.a", 1, 10, "alice", "hi", requestId="r")
        flushed = await self.persist(s, recorder, [earlier], "swap", displaced=[later])
        self.assertIn(self.postFile("alice") + ".tmp", flushed)
        self.assertIn(self.posts, flushed)

    async def test_a_torn_line_is_repaired_on_open_and_flushed_by_the_first_round(self):
        """
        The repair of a crash's partial line does not wait for a flush
        before the store is open: the first round flushes it (a tenth of a
        second later, with no batch needed), and only then does its author
        leave unsynced.
        """
        s = await self.openStore()
        await s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        await s.close()
        crashwriter.cutShort(self.path, [postUpdate("vm1.a", 2, 20, "alice")],
                             lambda path, size: os.truncate(path, size + 7))
        recorder = FsyncRecorder(self)
        clock = Clock()
        s = store.SQLiteStore(self.path, clock=clock)
        self.addCleanup(s.close)
        d = s.open()
        d.addCallback(lambda _: recorder.mark("open"))
        await d
        self.assertEqual((self.postFile("alice") in recorder.flushedBefore("open"),
                          unsynced(self.path)), (False, ["alice"]))
        with open(self.postFile("alice"), "rb") as f:
            self.assertEqual(f.read().count(b"\n"), 2, "the torn line written whole")
        clock.advance(Flusher.delay + AfterBatches.grace)
        await s.synced()
        recorder.mark("round")
        self.assertIn(self.postFile("alice"), recorder.flushedBefore("round"))
        await s.persist([postUpdate("vm1.a", 3, 30, "bob")])
        self.assertEqual(unsynced(self.path), ["bob"])

    async def test_updates_without_posts_need_no_post_file_flush(self):
        """Users and follows go to SQLite (flushed by its own commit), no post file."""
        recorder = FsyncRecorder(self)
        s = await self.openStore(recorder)
        await self.persist(s, recorder, [
            userUpdate("vm1.a", 1, 1, "alice"), userUpdate("vm1.a", 2, 2, "bob"),
            followUpdate("vm1.a", 3, 3, "alice", "bob")], "ack")
        await s.synced()
        self.assertEqual([p for _, p in recorder.events if p and p.startswith(self.posts)], [])
        self.assertEqual(os.listdir(self.posts), [])


class FlushRaceTests(TestCase):
    """L{Disk} alone, on this thread: a file appended to while it is being flushed."""

    def test_an_author_appended_to_during_a_flush_stays_unsynced(self):
        disk = openDisk(self)
        disk.write([postUpdate("vm1.a", 1, 10, "alice")])
        roundWithWrite(disk, lambda: disk.write([postUpdate("vm1.a", 2, 20, "alice")]))
        disk.write([postUpdate("vm1.a", 3, 30, "bob")])
        self.assertEqual(disk.index.unsyncedAuthors(), ["alice", "bob"],
                         "alice's second line was not in the round that flushed her first")
        disk.unflushed.sync()
        disk.write([postUpdate("vm1.a", 4, 40, "carol")])
        self.assertEqual(disk.index.unsyncedAuthors(), ["carol"])


class FlusherStopTests(TestCase):
    """L{Flusher.stop} leaves nothing behind, whatever a round under way does."""

    async def test_a_round_that_ends_during_the_stop_schedules_nothing(self):
        """
        The round under way when stop() is called finds files appended
        meanwhile: the next round it would schedule is not left behind
        (trial's clean-reactor check saw it as a DelayedCall of Flusher.flush).
        """
        disk = openDisk(self)
        disk.write([postUpdate("vm1.a", 1, 10, "alice")])
        inRound, release = threading.Event(), threading.Event()
        flush = disk.files.sync

        def slowRound(authors, created):
            inRound.set()
            release.wait(10)
            flush(authors, created)
            # Appended while the round flushed: the next round's files.
            disk.write([postUpdate("vm1.a", 2, 20, "bob")])

        disk.files.sync = slowRound
        clock = Clock()
        flusher = Flusher(reactor, clock, disk, "vm1", lambda: False, lambda n: 1.0)
        flusher.flush()
        await deferToThread(inRound.wait, 10)
        stopped = flusher.stop()
        release.set()
        await stopped
        self.assertEqual(clock.getDelayedCalls(), [])


class CrashBeforeFlushTests(TestCase):
    """
    A real process acknowledges posts and is SIGKILLed before it flushes
    their post files; the machine may lose the unflushed lines, or a part of
    one.  On open the files hold every acknowledged post, byte-identical to
    those of a VM that stored the same posts in another order and stopped
    cleanly, and nothing is left unsynced.
    """

    timeout = 60
    FLUSHED = 6  # posts written and flushed before the crashing run
    LAST = 30

    async def crashedDir(self, cut):
        """A data directory after the crash; C{cut(path, size)} is what the machine loses."""
        path = os.path.realpath(self.mktemp())
        os.makedirs(path)
        s = store.SQLiteStore(path)
        await s.open()
        await s.persist(crashwriter.updates("vm1.c", 1, self.FLUSHED))
        await s.close()
        posts = os.path.join(path, "posts")
        sizes = {n: os.path.getsize(os.path.join(posts, n)) for n in os.listdir(posts)}
        child = spawn(self, ["-m", "tests.crashwriter", path, "vm1.c", str(self.FLUSHED + 1),
                             str(self.LAST)], path=ROOT)
        await child.waitFor("done")
        os.kill(child.pid, signal.SIGKILL)
        await child.ended
        acked = [int(line.split()[1]) for line in child.lines if line.startswith("acked ")]
        self.assertEqual(sorted(acked), list(range(self.FLUSHED + 1, self.LAST + 1)))
        self.assertEqual(unsynced(path), ["alice", "bob", "carol"])
        for name in os.listdir(posts):
            cut(os.path.join(posts, name), sizes.get(name))
        return path

    async def referenceFiles(self):
        """The post files of a VM given the same posts one by one, newest first."""
        path = self.mktemp()
        s = store.SQLiteStore(path)
        await s.open()
        for u in reversed(crashwriter.updates("vm1.c", 1, self.LAST)):
            await s.persist([u])
        await s.close()
        return postFiles(path)

    async def reopened(self, path):
        s = store.SQLiteStore(path)
        await s.open()
        await s.close()
        self.assertEqual(unsynced(path), [])
        return postFiles(path)

    async def check(self, cut):
        path = await self.crashedDir(cut)
        files = await self.reopened(path)
        self.assertEqual(files, await self.referenceFiles())
        texts = b"".join(files.values())
        for seq in range(1, self.LAST + 1):
            self.assertIn(b'"post %d"' % (seq,), texts)

    def test_the_process_dies_and_the_unflushed_lines_survive(self):
        return defer.ensureDeferred(self.check(lambda path, size: None))

    def test_the_machine_loses_every_unflushed_line(self):
        def lose(path, size):
            if size is None:
                os.unlink(path)
            else:
                os.truncate(path, size)

        return defer.ensureDeferred(self.check(lose))

    def test_the_machine_keeps_part_of_an_unflushed_line(self):
        return defer.ensureDeferred(self.check(
            lambda path, size: os.truncate(path, (size or 0) + 7)))


def openFiles(under):
    """The files and directories under C{under} that this process has open."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except FileNotFoundError:
            continue  # the descriptor listdir itself used
        if target.startswith(under):
            out.append(target)
    return sorted(out)


class DescriptorTests(TestCase):
    async def test_writing_holds_open_only_the_files_last_appended_to(self):
        """
        Of the post files and their directory, only the files appended to
        last stay open (at most Appends.most of them: storage/appends.py);
        every other opened to be written, rewritten or flushed is closed
        again.
        """
        path = self.mktemp()
        os.makedirs(path)
        s = store.SQLiteStore(path)
        s._disk.files.held.most = 3
        self.addCleanup(s.close)
        await s.open()
        await s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        await s.synced()
        # The post files and their directory: the record's connections
        # (the checkpointer's opens 0.5 s after a batch) stay open.
        posts = os.path.join(os.path.realpath(path), "posts")
        self.assertEqual(openFiles(posts), [os.path.join(posts, "alice.txt")])
        for i in range(2, 12):
            await s.persist([postUpdate("vm1.a", 3 * i + n, 10 * i, user)
                             for n, user in enumerate(("alice", "bob", "u%d" % (i,)))])
        await s.synced()
        last = [os.path.join(posts, name) for name in ("alice.txt", "bob.txt", "u11.txt")]
        self.assertEqual(openFiles(posts), last)
        await s.persist([postUpdate("vm2.a", 1, 15, "alice")])  # a rewrite
        await s.synced()
        # alice's file was replaced by its rewrite, and let go; the file
        # the rewrite wrote is closed.
        held = set(openFiles(posts))
        self.assertTrue(held and held <= set(last[1:]), held)

    async def test_closing_releases_every_descriptor(self):
        """A closed store holds nothing open: the database, the lock, the files."""
        path = self.mktemp()
        os.makedirs(path)
        before = openFiles(os.path.realpath(path))
        s = store.SQLiteStore(path)
        await s.open()
        await s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        await s.close()
        self.assertEqual(openFiles(os.path.realpath(path)), before)
