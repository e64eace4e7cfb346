"""
Durable storage: L{SQLiteStore} on a real directory and the real reactor (its
disk work runs on a thread), L{MemoryStore} for the tests of other modules,
and the time format of the post files.
"""

import datetime
import json
import os
import sqlite3
import threading
import time

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.storage import postfile, store
from tests.strategies import LAST_US, followUpdate, microseconds, postUpdate, userUpdate
from tests.test_repair import olderRecord


def readBytes(path):
    with open(path, "rb") as f:
        return f.read()


def byId(updates):
    return sorted(updates, key=lambda u: u.id)


def holdWrite(s, seq):
    """
    Hold the batch that begins with C{seq} on C{s}'s disk thread until the
    returned C{release} is set; C{held} is set once it got there.  Other
    batches are written as they come, and C{others} is set when one is.
    """
    held, release, others = threading.Event(), threading.Event(), threading.Event()
    write = s._disk.write

    def writing(updates, *rest):
        if updates[0].seq == seq:
            held.set()
            release.wait(30)
        else:
            others.set()
        return write(updates, *rest)

    s._disk.write = writing
    return held, release, others


class SQLiteStoreTests(TestCase):
    def setUp(self):
        self.path = self.mktemp()
        os.makedirs(self.path)

    async def openStore(self, path=None):
        """An open store on C{path} (ours by default), closed at cleanup."""
        s = store.SQLiteStore(path or self.path)
        self.addCleanup(s.close)
        await s.open()
        return s

    async def reopen(self):
        """The updates a fresh store finds in our directory (it is closed again)."""
        s = store.SQLiteStore(self.path)
        self.addCleanup(s.close)
        loaded = await s.open()
        await s.close()
        return loaded

    async def storeAndClose(self, updates, path=None):
        s = await self.openStore(path)
        await s.persist(updates)
        await s.close()

    def postsFile(self, user, path=None):
        return os.path.join(path or self.path, "posts", user + ".txt")

    async def test_open_on_an_empty_dir_creates_database_and_posts_dir(self):
        """Opening an empty directory creates sns.sqlite3 and posts/, and loads nothing."""
        loaded = await self.reopen()
        self.assertEqual(
            (loaded, os.path.isfile(os.path.join(self.path, "sns.sqlite3")),
             os.path.isdir(os.path.join(self.path, "posts"))),
            ([], True, True))

    async def test_reopen_returns_stored_users_follows_and_posts(self):
        """A new store on the same directory loads every update persisted."""
        updates = [userUpdate("vm1.a", 1, 10, "alice"),
                   userUpdate("vm1.a", 2, 11, "bob"),
                   followUpdate("vm1.a", 3, 12, "alice", "bob"),
                   postUpdate("vm1.a", 4, 13, "bob", "hi", requestId="r-4"),
                   postUpdate("vm2.a", 1, 14, "alice", "hey")]
        await self.storeAndClose(updates)
        self.assertEqual(byId(await self.reopen()), byId(updates))

    async def test_a_post_is_one_json_line_with_time_id_author_text(self):
        """posts/<author>.txt holds one JSON object per post, readable as it is."""
        await self.storeAndClose([postUpdate("vm1.a", 1, 1_500_000, "alice", "héllo")])
        self.assertEqual(
            readBytes(self.postsFile("alice")).decode("utf-8").splitlines(),
            [json.dumps({"time": "1970-01-01T00:00:01.500000Z", "id": "vm1.a/1",
                         "author": "alice", "text": "héllo"}, ensure_ascii=False)])

    async def test_a_post_with_a_newline_stays_one_line(self):
        """A newline in a post's text never splits its line."""
        await self.storeAndClose([postUpdate("vm1.a", 1, 10, "alice", "two\nlines\r\n")])
        lines = readBytes(self.postsFile("alice")).split(b"\n")
        self.assertEqual((len(lines), lines[-1]), (2, b""))

    async def test_a_late_post_rewrites_the_file_in_time_order(self):
        """A post older than those stored is put in its (time, id) place."""
        s = await self.openStore()
        await s.persist([postUpdate("vm1.a", 1, 30, "alice")])
        await s.persist([postUpdate("vm2.a", 1, 10, "alice"),
                         postUpdate("vm1.a", 2, 30, "alice")])
        lines = readBytes(self.postsFile("alice")).splitlines()
        self.assertEqual([json.loads(line)["id"] for line in lines],
                         ["vm2.a/1", "vm1.a/1", "vm1.a/2"])

    async def test_a_late_post_after_a_reopen_is_put_in_order(self):
        """A reopened store knows its files' newest posts and still orders a late one."""
        await self.storeAndClose([postUpdate("vm1.a", 1, 30, "alice")])
        await self.storeAndClose([postUpdate("vm2.a", 1, 10, "alice")])
        lines = readBytes(self.postsFile("alice")).splitlines()
        self.assertEqual([json.loads(line)["id"] for line in lines], ["vm2.a/1", "vm1.a/1"])

    async def test_same_posts_in_any_order_give_identical_files(self):
        """Two stores fed the same posts in different orders write the same bytes."""
        posts = [postUpdate("vm1.a", seq, t, "alice", "post %d" % seq)
                 for seq, t in ((1, 40), (2, 10), (3, 30), (4, 10), (5, 20))]
        other = self.mktemp()
        for path, order in ((self.path, posts), (other, posts[::-1])):
            s = await self.openStore(path)
            for u in order:
                await s.persist([u])
            await s.close()
        self.assertEqual(readBytes(self.postsFile("alice")),
                         readBytes(self.postsFile("alice", other)))

    async def test_a_torn_last_line_of_an_older_record_is_cut_off_on_open(self):
        """
        A record older than its unsynced table does not say which files a
        crash may have torn: a partial last line (a crash mid-append) is
        found and truncated; good lines stay.
        """
        posts = [postUpdate("vm1.a", 1, 10, "alice"), postUpdate("vm1.a", 2, 20, "alice")]
        await self.storeAndClose(posts)
        good = readBytes(self.postsFile("alice"))
        olderRecord(self.path)
        with open(self.postsFile("alice"), "ab") as f:
            f.write(b'{"time": "1970-01-01T00:00:00.0000')
        self.assertEqual(
            (byId(await self.reopen()), readBytes(self.postsFile("alice"))),
            (posts, good))

    async def test_a_second_store_on_an_open_dir_is_refused(self):
        """While one store holds the directory, opening another fails with DataLocked."""
        await self.openStore()
        with self.assertRaises(store.DataLocked):
            await self.openStore()

    async def test_the_lock_is_released_on_close(self):
        """After close(), another store can open the directory."""
        await self.storeAndClose([userUpdate("vm1.a", 1, 10, "alice")])
        self.assertEqual(len(await self.reopen()), 1)

    async def test_persisting_stored_updates_again_writes_nothing(self):
        """persist() of updates already stored fires at once without a batch."""
        s = await self.openStore()
        updates = [userUpdate("vm1.a", 1, 10, "alice"), postUpdate("vm1.a", 2, 11, "alice")]
        await s.persist(updates)
        batches = s.batches
        await s.persist(updates)
        self.assertEqual(s.batches, batches)

    async def test_updates_stored_before_a_reopen_are_not_written_again(self):
        """After a reopen, persisting what was loaded leaves the files unchanged."""
        posts = [postUpdate("vm1.a", 1, 10, "alice"), postUpdate("vm1.a", 2, 20, "alice")]
        await self.storeAndClose(posts)
        before = readBytes(self.postsFile("alice"))
        s = await self.openStore()
        await s.persist(posts[::-1])
        self.assertEqual((s.batches, readBytes(self.postsFile("alice"))), (0, before))

    async def test_an_update_repeated_in_one_call_is_written_once(self):
        """The same post twice in one persist() is one line."""
        u = postUpdate("vm1.a", 1, 10, "alice")
        await self.storeAndClose([u, u])
        self.assertEqual(len(readBytes(self.postsFile("alice")).splitlines()), 1)

    async def test_persists_in_one_turn_are_group_committed(self):
        """Many persist() calls in one reactor turn are written in fewer batches."""
        s = await self.openStore()
        calls = [s.persist([postUpdate("vm1.a", seq, seq, "alice")]) for seq in range(1, 21)]
        await defer.gatherResults(calls)
        self.assertLess(s.batches, len(calls))

    async def test_the_disk_thread_takes_the_next_batch_without_the_reactor(self):
        """
        A write that comes while a batch is being written is written as soon
        as that batch is, by the disk thread, without waiting for the
        reactor to hear of the first: here the reactor is held (this test
        blocks it) from before the first batch ends until the second starts.
        """
        s = await self.openStore()
        first, release, second = holdWrite(s, 1)
        one = s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        self.assertTrue(first.wait(30), "the first batch never reached the disk")
        two = s.persist([postUpdate("vm1.a", 2, 20, "alice")])
        release.set()
        started = second.wait(30)  # the reactor stays held meanwhile
        await defer.gatherResults([one, two])
        self.assertTrue(started, "the second batch waited for the reactor")
        self.assertEqual(len(readBytes(self.postsFile("alice")).splitlines()), 2)

    async def test_a_batch_alone_wakes_the_reactor_once(self):
        """
        A run of the disk thread that writes one batch (every run, at a low
        rate) hands the batch back with the run's end, in one call into the
        reactor from the disk thread, not one for the batch and one for
        the end; a run of two batches makes two.
        """
        from twisted.internet import reactor

        calls = []
        s = store.SQLiteStore(self.path, reactor=reactor)
        answer = s._thread.callFromThread

        def counting(f, *args):
            if "sns-store" in threading.current_thread().name:
                calls.append(f)
            return answer(f, *args)

        s._thread.callFromThread = counting
        self.addCleanup(s.close)
        await s.open()
        del calls[:]
        await s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        self.assertEqual(len(calls), 1)
        # Two batches in one run: the second comes while the first is written.
        held, release, _ = holdWrite(s, 2)
        del calls[:]
        two = s.persist([postUpdate("vm1.a", 2, 20, "alice")])
        self.assertTrue(held.wait(30), "the batch never reached the disk")
        three = s.persist([postUpdate("vm1.a", 3, 30, "alice")])
        release.set()
        await defer.gatherResults([two, three])
        self.assertEqual(len(calls), 2)
        self.assertEqual(s.batches, 3)
        self.assertEqual(len(readBytes(self.postsFile("alice")).splitlines()), 3)

    async def test_a_round_due_starts_after_the_batchs_writers_are_answered(self):
        """
        A checkpoint due when a batch is written starts once the batch's
        writers have had their answer: a round wakes a thread of its own,
        which would take the interpreter from the posts' pushes.
        """
        from twisted.internet import reactor, task

        s = await self.openStore()
        s._checkpointer.delay = 0  # due at every batch
        rounds = []
        d = s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        d.addCallback(lambda _: rounds.append(s._checkpointer.rounds))
        await d
        await task.deferLater(reactor, 0, lambda: None)
        self.assertEqual((rounds, s._checkpointer.rounds), ([0], 1))

    async def test_a_write_after_the_disk_thread_stopped_is_in_flight_until_written(self):
        """
        The disk thread found nothing more and stopped; a write comes before
        the reactor hears that it stopped, and starts the next run: the
        store counts that write in flight until it is written (close waits
        for it), even once the reactor hears that the first run stopped.
        """
        s = await self.openStore()
        held, release, _ = holdWrite(s, 2)
        first = s.persist([postUpdate("vm1.a", 1, 10, "alice")])
        run = s._writing
        second = []

        def written(_):
            # The first run stops once it finds nothing more: wait for that
            # here, holding the reactor, then write again.
            deadline = time.monotonic() + 30
            while s._draining and time.monotonic() < deadline:
                time.sleep(0.001)
            second.append(s.persist([postUpdate("vm1.a", 2, 20, "alice")]))

        first.addCallback(written)
        await first
        ended = defer.Deferred()
        run.addBoth(lambda result: ended.callback(None))
        await ended
        self.assertTrue(held.wait(30), "the second write never reached the disk")
        inFlight = s._writing is not None
        release.set()
        await second[0]
        self.assertTrue(inFlight, "the second write was not counted in flight")

    async def test_group_committed_posts_are_all_stored(self):
        """Every post of a group commit is in the file, in order."""
        s = await self.openStore()
        await defer.gatherResults(
            [s.persist([postUpdate("vm1.a", seq, seq, "alice")]) for seq in range(1, 21)])
        lines = readBytes(self.postsFile("alice")).splitlines()
        self.assertEqual([json.loads(line)["id"] for line in lines],
                         ["vm1.a/%d" % seq for seq in range(1, 21)])

    async def test_request_lookups_asked_meanwhile_go_together(self):
        """
        The copies of requests asked for while a lookup is on the query
        thread are looked up together, in one more: each caller gets its own.
        """
        s = await self.openStore()
        await s.persist([postUpdate("vm1.a", seq, seq, "alice", requestId="r%d" % (seq,))
                         for seq in range(1, 6)])
        asked = [[("alice", "r1")], [("alice", "r2"), ("alice", "nope")], [("alice", "r5")],
                 [("alice", "r2")]]
        found = await defer.gatherResults([s.byRequests(keys) for keys in asked])
        self.assertEqual([sorted(u.seq for u in f.values()) for f in found], [[1], [2], [5], [2]])
        self.assertEqual(sorted(found[1]), [("alice", "r2")])
        self.assertEqual(s._queries.lookups, 2, "the first alone, then the three asked meanwhile")

    async def test_follows_table_holds_the_last_writer(self):
        """An older follow change arriving later does not overwrite a newer one."""
        await self.storeAndClose([followUpdate("vm2.a", 1, 20, "alice", "bob", False)])
        await self.storeAndClose([followUpdate("vm1.a", 1, 10, "alice", "bob", True),
                                  followUpdate("vm1.a", 2, 5, "carol", "bob", True)])
        db = sqlite3.connect(os.path.join(self.path, "sns.sqlite3"))
        self.addCleanup(db.close)
        rows = db.execute("SELECT follower, followee, following, time_us, update_id"
                          " FROM follows ORDER BY follower").fetchall()
        self.assertEqual(rows, [("alice", "bob", 0, 20, "vm2.a/1"),
                                ("carol", "bob", 1, 5, "vm1.a/2")])


class MemoryStoreTests(SynchronousTestCase):
    def setUp(self):
        self.update = userUpdate("vm1.a", 1, 10, "alice")

    def test_writes_are_durable_at_once_by_default(self):
        """Without manual mode, persist() is durable and fired on return."""
        s = store.MemoryStore()
        self.successResultOf(s.persist([self.update]))
        self.assertEqual(s.durable, {("vm1.a", 1): self.update})

    def test_manual_mode_holds_writes_until_flush(self):
        """In manual mode, persist() neither stores nor fires before flush()."""
        s = store.MemoryStore(manual=True)
        d = s.persist([self.update])
        self.assertNoResult(d)
        self.assertEqual(s.durable, {})

    def test_flush_makes_pending_writes_durable(self):
        """flush() stores the pending writes and fires their Deferreds."""
        s = store.MemoryStore(manual=True)
        d = s.persist([self.update])
        s.flush()
        self.successResultOf(d)
        self.assertEqual(s.durable, {("vm1.a", 1): self.update})

    def test_crash_loses_unflushed_writes(self):
        """After crash(), what was not flushed is gone, and stays gone on flush."""
        s = store.MemoryStore(manual=True)
        s.persist([self.update])
        s.flush()
        later = userUpdate("vm1.a", 2, 11, "bob")
        d = s.persist([later])
        s.crash()
        s.flush()
        self.assertNoResult(d)
        self.assertEqual(self.successResultOf(s.open()), [self.update])


class TimeFormatTests(SynchronousTestCase):
    def test_time_is_written_as_utc_with_microseconds(self):
        """formatTime() writes ISO 8601 UTC with six fractional digits."""
        self.assertEqual(postfile.formatTime(1_700_000_000_000_001),
                         "2023-11-14T22:13:20.000001Z")

    @given(microseconds())
    def test_parse_time_reads_back_what_format_time_wrote(self, time_us):
        """parseTime(formatTime(t)) == t for any t from 1970 to 9999."""
        self.assertEqual(postfile.parseTime(postfile.formatTime(time_us)), time_us)

    @given(st.lists(microseconds(), min_size=1, max_size=5),
           st.lists(st.integers(0, 2_000_000), max_size=5))
    def test_times_formatted_one_after_another_are_each_their_own(self, starts, steps):
        """The second formatted last is kept for the next: never for another second."""
        for start in starts:
            for time_us in [start] + [min(start + step, LAST_US) for step in steps]:
                moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=time_us)
                self.assertEqual(postfile.formatTime(time_us),
                                 moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


class RetriedRequestTests(TestCase):
    """A post accepted twice (a retry on another VM) is stored twice, shown once."""

    def setUp(self):
        # The first VM's copy (earlier) and the retry's copy on a second VM.
        self.first = postUpdate("vm1.a", 1, 1000, "alice", "hi", requestId="req-1")
        self.retry = postUpdate("vm2.b", 1, 2000, "alice", "hi", requestId="req-1")

    async def feed(self, path, order):
        """Feed C{order} to a Node-like replica and a store, as Node._persist does."""
        from snstwist.core.state import Replica
        replica = Replica()
        s = store.SQLiteStore(path)
        self.addCleanup(s.close)
        await s.open()
        for u in order:
            displaced = []
            replica.apply(u, displaced)
            hidden = {u.id} if not replica.shows(u) else set()
            await s.persist([u], hidden, displaced)
        await s.close()
        return replica

    async def test_either_order_gives_the_same_file_showing_the_first_copy(self):
        """Whichever copy arrives first, both VMs end with one line: the earlier copy."""
        paths = [self.mktemp(), self.mktemp()]
        for path in paths:
            os.makedirs(path)
        await self.feed(paths[0], [self.first, self.retry])
        await self.feed(paths[1], [self.retry, self.first])
        files = [readBytes(os.path.join(p, "posts", "alice.txt")) for p in paths]
        self.assertEqual(files[0], files[1])
        self.assertEqual(len(files[0].splitlines()), 1)
        self.assertIn(b'"id": "vm1.a/1"', files[0])

    async def test_the_hidden_copy_is_still_held_after_a_reopen(self):
        """After a reopen both copies are held (the version vector is whole), one shown."""
        from snstwist.core.state import Replica
        path = self.mktemp()
        os.makedirs(path)
        await self.feed(path, [self.retry, self.first])
        s = store.SQLiteStore(path)
        self.addCleanup(s.close)
        loaded = await s.open()
        held = s.held()
        await s.close()
        replica = Replica()
        for u in loaded:
            replica.apply(u)
        self.assertEqual(([held.has("vm1.a", 1), held.has("vm2.b", 1)],
                          [p.id for p in replica.postsBy("alice")]),
                         ([True, True], ["vm1.a/1"]))


class WarmOpenTests(TestCase):
    """open(known): a promoted slave reads only what its mirror lacks."""

    async def stored(self):
        path = self.mktemp()
        os.makedirs(path)
        s = store.SQLiteStore(path)
        self.addCleanup(s.close)
        await s.open()
        self.ups = [postUpdate("vm1.a", 1, 1000, "alice", "a1"),
                    postUpdate("vm1.a", 2, 3000, "alice", "a2"),
                    postUpdate("vm1.a", 3, 2000, "bob", "b1"),
                    followUpdate("vm1.a", 4, 4000, "bob", "alice"),
                    userUpdate("vm1.a", 5, 5000, "carol")]
        await s.persist(self.ups)
        await s.close()
        return path

    async def test_only_what_the_mirror_lacks_is_read(self):
        """With alice's posts and the follow known, bob's post and carol are loaded."""
        from snstwist.core.state import VersionVector
        path = await self.stored()
        known = VersionVector()
        for seq in (1, 2, 4):
            known.add("vm1.a", seq)
        s = store.SQLiteStore(path)
        self.addCleanup(s.close)
        loaded = await s.open(known)
        self.assertEqual(sorted(u.seq for u in loaded), [3, 5])

    async def test_writes_after_a_warm_open_keep_the_files_in_order(self):
        """An older post for a file that was not read still lands in (time, id) order."""
        from snstwist.core.state import VersionVector
        path = await self.stored()
        known = VersionVector()
        for seq in range(1, 6):
            known.add("vm1.a", seq)
        s = store.SQLiteStore(path)
        self.addCleanup(s.close)
        self.assertEqual(await s.open(known), [])
        await s.persist([postUpdate("vm2.b", 1, 2000, "alice", "late"),
                         postUpdate("vm2.b", 2, 9000, "alice", "newest")])
        await s.persist([postUpdate("vm1.a", 1, 1000, "alice", "a1")])  # known: not again
        await s.close()
        texts = [json.loads(line)["text"] for line in
                 readBytes(os.path.join(path, "posts", "alice.txt")).decode().splitlines()]
        self.assertEqual(texts, ["a1", "late", "a2", "newest"])
