"""
The record of a data directory (snstwist.storage.index) on a real SQLite
file, asked through L{SQLiteStore}: what a peer lacks, the copy of a
request, pages of posts, the stored version vector; and what a crash
between the record's commit and the post files leaves, repaired on open.
"""

import json
import os
import shutil
import sqlite3
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.core.model import ReadMark, Update, updateId
from snstwist.core.state import Replica, VersionVector
from snstwist.storage import admin, disk
from snstwist.storage.postfile import postLine
from snstwist.storage.store import MemoryStore, SQLiteStore
from tests.strategies import followUpdate, names, postUpdate, updateLists, userUpdate


def vector(*held):
    vv = VersionVector()
    for origin, seq in held:
        vv.add(origin, seq)
    return vv


def readLines(path):
    with open(path, "rb") as f:
        return f.read().splitlines()


class IndexQueryTests(TestCase):
    async def setUp(self):
        self.path = self.mktemp()
        os.makedirs(self.path)
        self.store = SQLiteStore(self.path)
        self.addCleanup(self.store.close)
        await self.store.open()
        self.ups = [userUpdate("vm1.a", 1, 100, "alice"),
                    postUpdate("vm1.a", 2, 200, "alice", "a1", requestId="r1"),
                    postUpdate("vm1.a", 3, 300, "bob", "b1"),
                    followUpdate("vm1.a", 4, 400, "bob", "alice"),
                    postUpdate("vm2.b", 1, 250, "alice", "a2"),
                    postUpdate("vm2.b", 2, 500, "alice", "a1 again", requestId="r1"),
                    postUpdate("vm2.b", 3, 600, "bob", "b2")]
        await self.store.persist(self.ups, hidden={"vm2.b/2"})

    async def test_missing_is_what_the_remote_vector_lacks_in_origin_seq_order(self):
        """Past the remote's contiguous range and its out-of-order ones: hidden copies too."""
        missing = await self.store.missing(vector(("vm1.a", 1), ("vm1.a", 2), ("vm1.a", 4)),
                                           limit=100)
        self.assertEqual([u.id for u in missing],
                         ["vm1.a/3", "vm2.b/1", "vm2.b/2", "vm2.b/3"])

    async def test_missing_comes_in_pages_after_a_position(self):
        """limit cuts a page; after=(origin, seq) starts the next one where it ended."""
        first = await self.store.missing(VersionVector(), limit=3)
        second = await self.store.missing(VersionVector(), limit=3,
                                          after=(first[-1].origin, first[-1].seq))
        third = await self.store.missing(VersionVector(), limit=3,
                                         after=(second[-1].origin, second[-1].seq))
        self.assertEqual([[u.id for u in page] for page in (first, second, third)],
                         [["vm1.a/1", "vm1.a/2", "vm1.a/3"], ["vm1.a/4", "vm2.b/1", "vm2.b/2"],
                          ["vm2.b/3"]])

    async def test_nothing_is_missing_for_a_peer_holding_everything(self):
        held = vector(*[(u.origin, u.seq) for u in self.ups])
        self.assertEqual(await self.store.missing(held, limit=100), [])

    async def test_a_request_is_answered_by_its_earliest_copy(self):
        """Of the two copies of alice's r1, the earlier by (time, id); unknown ones are absent."""
        found = await self.store.byRequests([("alice", "r1"), ("bob", "r1")])
        self.assertEqual({key: u.id for key, u in found.items()}, {("alice", "r1"): "vm1.a/2"})

    async def test_a_page_holds_the_shown_posts_after_the_cursor_oldest_first(self):
        """The hidden copy is left out; the cursor itself only when inclusive."""
        after = await self.store.page(["alice", "bob"], (200, "vm1.a/2"), limit=10)
        inclusive = await self.store.page(["alice"], (200, "vm1.a/2"), limit=10,
                                          inclusive=True)
        limited = await self.store.page(["alice", "bob"], (0, ""), limit=2)
        self.assertEqual(([u.id for u in after], [u.id for u in inclusive],
                          [u.id for u in limited]),
                         (["vm2.b/1", "vm1.a/3", "vm2.b/3"], ["vm1.a/2", "vm2.b/1"],
                          ["vm1.a/2", "vm2.b/1"]))

    async def test_a_start_reads_no_post_and_each_authors_newest_key(self):
        """
        open and read with posts false, on SQLite and in memory alike: no
        update (the state is read in pages: statePage gives the users and
        follows, a page at a time), and each author's newest stored post
        key, a hidden copy's too (memory claims to hold no post up to it).
        """
        await self.store.close()
        reopened = SQLiteStore(self.path)
        self.addCleanup(reopened.close)
        memory = MemoryStore()
        memory.persist(self.ups, hidden={"vm2.b/2"})
        floors = {"alice": (500, "vm2.b/2"), "bob": (600, "vm2.b/3")}
        state = ["vm1.a/1", "vm1.a/4"]
        for store, read in ((reopened, reopened.read), (reopened, reopened.open),
                            (memory, memory.open)):
            updates = await read(posts=False)
            paged, after = [], None
            while True:
                page, after = await store.statePage(after, 1)
                paged += page
                if after is None:
                    break
            # A follow may come as its pair's register (follower, followee,
            # time_us, origin, seq, following): the id of its last writer.
            ids = sorted(updateId(*u[3:5]) if type(u) is tuple else u.id for u in paged)
            self.assertEqual((updates, ids, store.floors()), ([], state, floors))
        # A start that reads the windows needs no floor.
        await memory.open()
        self.assertEqual(memory.floors(), {})

    async def test_the_version_vector_is_stored_with_the_record(self):
        """A reopened store knows what it holds without counting the record."""
        await self.store.close()
        reopened = SQLiteStore(self.path)
        self.addCleanup(reopened.close)
        await reopened.open()
        db = sqlite3.connect(os.path.join(self.path, "sns.sqlite3"))
        self.addCleanup(db.close)
        stored = {o: (c, json.loads(e)) for o, c, e
                  in db.execute("SELECT origin, contiguous, extra FROM versions")}
        self.assertEqual((stored, reopened._stored.count()),
                         ({"vm1.a": (4, []), "vm2.b": (3, [])}, len(self.ups)))


class CrashRepairTests(TestCase):
    """A batch committed to the record whose post files were not (all) written."""

    def setUp(self):
        self.path = self.mktemp()
        os.makedirs(self.path)

    def commitOnly(self, rows, authors):
        """Commit C{rows} to the record as a batch does, and stop before the files."""
        d = disk.Disk(self.path)
        d.openRecord()
        d.index.write(rows, authors=authors)
        d.close()

    async def test_posts_committed_but_not_in_their_file_are_written_on_open(self):
        first = postUpdate("vm1.a", 1, 100, "alice", "one")
        s = SQLiteStore(self.path)
        await s.open()
        await s.persist([first])
        await s.close()
        second = postUpdate("vm1.a", 2, 200, "alice", "two")
        self.commitOnly([(second, True)], ["alice"])
        with open(os.path.join(self.path, "posts", "alice.txt"), "ab") as f:
            f.write(postLine(second).encode("utf-8")[:10])  # torn, mid-append
        s = SQLiteStore(self.path)
        self.addCleanup(s.close)
        loaded = await s.open()
        self.assertEqual(
            (sorted(u.id for u in loaded),
             readLines(os.path.join(self.path, "posts", "alice.txt"))),
            (["vm1.a/1", "vm1.a/2"],
             [postLine(first).encode().rstrip(), postLine(second).encode().rstrip()]))

    async def test_a_backup_copies_posts_its_snapshot_holds_beyond_the_files(self):
        """The copy's files are completed from the copy's record."""
        post = postUpdate("vm1.a", 1, 100, "alice", "one")
        self.commitOnly([(userUpdate("vm1.a", 2, 50, "alice"), True), (post, True)],
                        ["alice"])
        copy = os.path.join(self.mktemp(), "copy")
        admin.backup(self.path, copy)
        self.assertEqual(readLines(os.path.join(copy, "posts", "alice.txt")),
                         [postLine(post).encode().rstrip()])


class OldLayoutTests(TestCase):
    """A data directory of the layout before the record (a log table and post files)."""

    async def test_its_files_and_log_are_indexed_on_open(self):
        """All three are held; open reads the user and the shown post (memory's part)."""
        path = self.mktemp()
        os.makedirs(os.path.join(path, "posts"))
        user = userUpdate("vm1.a", 1, 50, "alice")
        shown = postUpdate("vm1.a", 2, 100, "alice", "shown", requestId="r")
        hidden = postUpdate("vm2.b", 1, 200, "alice", "hidden", requestId="r")
        db = sqlite3.connect(os.path.join(path, "sns.sqlite3"))
        db.execute("CREATE TABLE log (origin TEXT NOT NULL, seq INTEGER NOT NULL,"
                   " time_us INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (origin, seq))")
        db.executemany("INSERT INTO log VALUES (?, ?, ?, ?)",
                       [(u.origin, u.seq, u.time_us, u.toProto().SerializeToString())
                        for u in (user, hidden)])
        db.commit()
        db.close()
        with open(os.path.join(path, "posts", "alice.txt"), "w") as f:
            f.write(postLine(shown))
        s = SQLiteStore(path)
        self.addCleanup(s.close)
        loaded = await s.open()
        byRequest = await s.byRequests([("alice", "r")])
        page = await s.page(["alice"], (0, ""), 10)
        tables = {name for (name,) in s._disk.db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        self.assertEqual(
            (sorted(u.id for u in loaded), s.held().count(), byRequest[("alice", "r")].id,
             [u.id for u in page], "log" in tables, {"record", "versions", "unsynced"} <= tables),
            (["vm1.a/1", "vm1.a/2"], 3, "vm1.a/2", ["vm1.a/2"], False, True))


class MissingPropertyTests(SynchronousTestCase):
    """What a peer lacks, from the record and from the memory store, is what a scan finds."""

    @settings(max_examples=30, deadline=None)
    @given(st.data())
    def test_pages_of_missing_are_every_update_the_remote_lacks_in_order(self, data):
        updates = data.draw(updateLists())
        theirs = data.draw(st.lists(st.sampled_from(updates))) if updates else []
        remote = vector(*[(u.origin, u.seq) for u in theirs])
        expected = sorted({(u.origin, u.seq) for u in updates if not remote.has(u.origin, u.seq)})
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path)
        d = disk.Disk(path)
        d.openRecord()
        self.addCleanup(d.close)
        d.index.write([(u, True) for u in {(u.origin, u.seq): u for u in updates}.values()])
        memory = MemoryStore()
        memory.persist(updates)
        pages, after = [], None
        while True:
            page = d.index.missing(remote, 3, after)
            pages.append([(u.origin, u.seq) for u in page])
            if len(page) < 3:
                break
            after = pages[-1][-1]
        fromMemory = self.successResultOf(memory.missing(remote, len(updates) + 1))
        self.assertEqual(([k for page in pages for k in page],
                          [(u.origin, u.seq) for u in fromMemory]), (expected, expected))

    @given(st.data())
    def test_pages_of_the_state_are_what_a_whole_read_holds_once_each(self, data):
        """
        statePage's pages, of any size, hold the state that a whole read
        (hot) holds, each piece once: the users' updates, each follow pair's
        last writer (its register, as the follows table keeps it) and each
        user's last read mark, no post; a replica given the pages holds
        what one given the whole read does.
        """
        updates = data.draw(updateLists())
        updates += [Update(origin="m.a", seq=i, time_us=10 * i,
                           read=ReadMark(user, 10 * i, "vm1.a/%d" % (i,)))
                    for i, user in enumerate(data.draw(st.lists(names(), max_size=4)), 1)]
        limit = data.draw(st.integers(1, 5))
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path)
        d = disk.Disk(path)
        d.openRecord()
        self.addCleanup(d.close)
        d.index.write([(u, True) for u in updates])
        paged, after, fromPages = [], None, Replica()
        while True:
            page, after = d.index.statePage(after, limit)
            self.assertLessEqual(len(page), limit)
            for item in page:
                if type(item) is tuple:
                    paged.append(item[:2])
                    fromPages.follows.apply(*item)
                else:
                    paged.append(item.id)
                    fromPages.applyState(item)
            if after is None:
                break
        whole, fromWhole = [u for u in d.index.hot(0) if u.post is None], Replica()
        for u in whole:
            fromWhole.applyState(u)
        pairs = {(u.follow.follower, u.follow.followee) for u in whole if u.follow is not None}
        self.assertEqual(
            (sorted(paged, key=str), fromPages.snapshot()),
            (sorted([u.id for u in whole if u.follow is None] + list(pairs), key=str),
             fromWhole.snapshot()))
