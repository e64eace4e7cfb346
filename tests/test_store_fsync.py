"""
The store's Deferred fires only after the files it wrote, and the directory
entries it made, are flushed to disk: a fake C{os.fsync} (which still
flushes) records what was flushed, and the acknowledgement is recorded in
the same list, so the order is what is checked.
"""

import os
import threading

from twisted.trial.unittest import TestCase

from snstwist.storage import store
from tests.strategies import followUpdate, postUpdate, userUpdate


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

    def flushedBefore(self, what):
        """The paths flushed before the event C{what}."""
        out = []
        for kind, path in self.events:
            if kind == what:
                return out
            out.append(path)
        raise AssertionError("%s never happened: %r" % (what, self.events))


class FsyncOrderTests(TestCase):
    def setUp(self):
        self.path = os.path.realpath(self.mktemp())
        os.makedirs(self.path)
        self.posts = os.path.join(self.path, "posts")

    async def openStore(self):
        s = store.SQLiteStore(self.path)
        self.addCleanup(s.close)
        await s.open()
        return s

    async def persist(self, s, recorder, updates, name, **kw):
        d = s.persist(updates, **kw)
        d.addCallback(lambda _: recorder.mark(name))
        await d
        return recorder.flushedBefore(name)

    def postFile(self, user):
        return os.path.join(self.posts, user + ".txt")

    async def test_a_new_post_file_and_its_directory_are_flushed_before_the_ack(self):
        s = await self.openStore()
        recorder = FsyncRecorder(self)
        flushed = await self.persist(s, recorder, [postUpdate("vm1.a", 1, 10, "alice")], "ack")
        self.assertIn(self.postFile("alice"), flushed)
        self.assertIn(self.posts, flushed)

    async def test_every_file_of_a_batch_is_flushed_before_the_ack(self):
        s = await self.openStore()
        recorder = FsyncRecorder(self)
        updates = [postUpdate("vm1.a", i, 10 + i, user)
                   for i, user in enumerate(("alice", "bob", "carol"), 1)]
        flushed = await self.persist(s, recorder, updates, "ack")
        for user in ("alice", "bob", "carol"):
            self.assertIn(self.postFile(user), flushed, user)
        self.assertIn(self.posts, flushed)

    async def test_an_append_to_an_existing_file_is_flushed_before_the_ack(self):
        s = await self.openStore()
        recorder = FsyncRecorder(self)
        await self.persist(s, recorder, [postUpdate("vm1.a", 1, 10, "alice")], "first")
        recorder.events.clear()
        flushed = await self.persist(s, recorder, [postUpdate("vm1.a", 2, 20, "alice", "b")],
                                     "second")
        self.assertIn(self.postFile("alice"), flushed)

    async def test_a_rewritten_file_and_its_rename_are_flushed_before_the_ack(self):
        """A late post rewrites the file (a new file renamed over it): both flushed."""
        s = await self.openStore()
        recorder = FsyncRecorder(self)
        await self.persist(s, recorder, [postUpdate("vm1.a", 2, 20, "alice", "b")], "first")
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
        s = await self.openStore()
        recorder = FsyncRecorder(self)
        later = postUpdate("vm2.a", 1, 20, "alice", "hi", requestId="r")
        await self.persist(s, recorder, [later], "first")
        recorder.events.clear()
        earlier = postUpdate("vm1.a", 1, 10, "alice", "hi", requestId="r")
        flushed = await self.persist(s, recorder, [earlier], "swap", displaced=[later])
        self.assertIn(self.postFile("alice") + ".tmp", flushed)
        self.assertIn(self.posts, flushed)

    async def test_a_torn_line_is_cut_off_durably_on_open(self):
        """The repair of a crash's partial line is flushed before the store is open."""
        s = await self.openStore()
        await s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        await s.close()
        with open(self.postFile("alice"), "ab") as f:
            f.write(b'{"time": "1970')
        recorder = FsyncRecorder(self)
        s = store.SQLiteStore(self.path)
        self.addCleanup(s.close)
        d = s.open()
        d.addCallback(lambda _: recorder.mark("open"))
        await d
        self.assertIn(self.postFile("alice"), recorder.flushedBefore("open"))

    async def test_updates_without_posts_need_no_post_file_flush(self):
        """Users and follows go to SQLite (flushed by its own commit), no post file."""
        s = await self.openStore()
        recorder = FsyncRecorder(self)
        flushed = await self.persist(s, recorder, [
            userUpdate("vm1.a", 1, 1, "alice"), userUpdate("vm1.a", 2, 2, "bob"),
            followUpdate("vm1.a", 3, 3, "alice", "bob")], "ack")
        self.assertEqual([p for p in flushed if p.startswith(self.posts)], [])
        self.assertEqual(os.listdir(self.posts), [])


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
    async def test_writing_leaves_no_descriptor_open(self):
        """Every file and directory opened to be written and flushed is closed again."""
        path = self.mktemp()
        os.makedirs(path)
        s = store.SQLiteStore(path)
        self.addCleanup(s.close)
        await s.open()
        await s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        before = openFiles(os.path.realpath(path))
        for i in range(2, 12):
            await s.persist([postUpdate("vm1.a", i, 10 * i, user)
                             for user in ("alice", "bob", "u%d" % (i,))])
        await s.persist([postUpdate("vm2.a", 1, 15, "alice")])  # a rewrite
        self.assertEqual(openFiles(os.path.realpath(path)), before)

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
