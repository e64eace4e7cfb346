"""
The state snapshot's writer (snstwist.storage.snapshotparts, snapshots):
it holds a page of rows at a time, a stop at any page leaves the last
snapshot in place and no temporary file, a store's stop does not wait for
a snapshot being written, its settings come from the environment, and a
real master writes one, stops in order in the middle of one, and is killed
in the middle of another, a start after each holding what reading every
row holds.
"""

import os
import threading

import attrs
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.core.model import PasswordChange, ReadMark, Update
from snstwist.storage import snapshot, snapshotparts, snapshots
from snstwist.storage.snapshotparts import Aborted, Parts
from tests.processes import (DEADLINE, childEnv, heldAddress, killServersUsing, serversUsing,
                             spawn, twistd, waitUntil)
from tests.strategies import followUpdate, userUpdate
from tests.test_integration import inlineAsync
from tests.test_snapshot import Record, openWriter, seen


def state(origin, first, users, followsEach=3):
    """
    State updates of origin C{origin}, seqs from C{first}: C{users} users,
    each following the next C{followsEach}, a password change and a read
    mark each, the last follow of each undone.
    """
    names = ["u%03d" % (i,) for i in range(users)]
    updates = [userUpdate(origin, 0, 10, n) for n in names]
    for i, n in enumerate(names):
        for j in range(1, followsEach + 1):
            updates.append(followUpdate(origin, 0, 20 + j, n, names[(i + j) % users]))
        updates.append(followUpdate(origin, 0, 30, n, names[(i + followsEach) % users], False))
        updates.append(Update(origin=origin, seq=0, time_us=40,
                              password=PasswordChange(n, "hash-%d" % (i,))))
        updates.append(Update(origin=origin, seq=0, time_us=50,
                              read=ReadMark(n, 45, "%s/%d" % (origin, i + 1))))
    return [attrs.evolve(u, seq=first + k) for k, u in enumerate(updates)]


class StopsAfter(threading.Event):
    """An event that says it is set from its C{n}+1th look on."""

    def __init__(self, n):
        threading.Event.__init__(self)
        self.looks = n

    def is_set(self):
        self.looks -= 1
        return self.looks < 0


def temporary(path):
    return os.path.join(path, snapshot.FILE + ".tmp")


def snapshotBytes(path):
    with open(os.path.join(path, snapshot.FILE), "rb") as f:
        return f.read()


class WriterTests(SynchronousTestCase):
    def record(self):
        """A record holding a snapshot of some state, and as much state written after it."""
        self.patch(snapshotparts, "PART_ITEMS", 5)
        self.patch(snapshotparts, "PAGE", 3)
        record = Record(self)
        record.write(state("vm1.a", 1, 6))
        record.save()
        record.write(state("vm1.b", 1, 7))
        return record

    def test_a_stop_at_any_page_keeps_the_last_snapshot(self):
        """
        However far a snapshot got, a stop leaves no temporary file, the last
        snapshot as it was, and a start from it holding what every row holds.
        """
        record = self.record()
        old = snapshotBytes(record.path)
        whole = seen(record.loaded(snapshots=False)[0])
        db = record.disk.index.db
        stops = 0
        while True:
            try:
                record.save(Parts(db, StopsAfter(stops)))
            except Aborted:
                stops += 1
                self.assertEqual((os.path.exists(temporary(record.path)),
                                  snapshotBytes(record.path), seen(record.loaded()[0])),
                                 (False, old, whole))
                continue
            break
        self.assertGreater(stops, 10)  # a look at each page, each a few rows
        self.assertNotEqual(snapshotBytes(record.path), old)
        self.assertEqual(seen(record.loaded()[0]), whole)

    def test_the_writer_decodes_a_page_of_updates_at_a_time(self):
        """
        The users', passwords' and read marks' updates are decoded a page at
        a time, not all at once: what the writer holds does not grow with them.
        """
        record = self.record()
        batches = []
        decoded = snapshotparts.decoded

        def counted(bodies):
            found = decoded(bodies)
            batches.append(len(found))
            return found

        self.patch(snapshotparts, "decoded", counted)
        record.save()
        # Users, passwords, and the one read mark of each user that is kept.
        self.assertEqual((max(batches), sum(batches)), (3, 2 * (6 + 7) + 7))

    def test_a_part_joins_pages_up_to_its_items(self):
        """
        Pages of a few rows make parts of at least PART_ITEMS registers (or
        followers) each but the last, whole followers (followees) each.
        """
        record = self.record()
        db = record.disk.index.db
        db.execute("BEGIN")
        self.addCleanup(db.execute, "COMMIT")
        parts = list(Parts(db).follows())
        sizes = {kind: [len(part[4]) // 4 if kind == "follows" else len(part[3]) // 4
                        for part in parts if part[0] == kind]
                 for kind in ("follows", "followers")}
        for kind, found in sizes.items():
            self.assertTrue(all(n >= 5 for n in found[:-1]), (kind, found))
        self.assertEqual((sum(sizes["follows"]), sum(sizes["followers"])), db.execute(
            "SELECT count(*), sum(following) FROM follows").fetchone())

    def test_settings_come_from_the_environment(self):
        made = snapshots.Snapshots(reactor, reactor, "p", "p/db", environ={
            "SNS_SNAPSHOT_CHANGES": "50", "SNS_SNAPSHOT_EVERY": "0.5",
            "SNS_SNAPSHOT_PAUSE": "0.25"})
        default = snapshots.Snapshots(reactor, reactor, "p", "p/db", environ={})
        self.assertEqual([(s.changes, s.checkEvery, s.pause) for s in (made, default)],
                         [(50, 0.5, 0.25), (None, snapshots.CHECK_EVERY, 0.0)])
        for name, value in (("CHANGES", "0"), ("CHANGES", "1.5"), ("EVERY", "soon"),
                            ("PAUSE", "-1")):
            e = self.assertRaises(ValueError, snapshots.settings,
                                  {"SNS_SNAPSHOT_" + name: value})
            self.assertIn("$SNS_SNAPSHOT_" + name, str(e))


class StopTests(TestCase):
    async def test_a_stop_does_not_wait_for_a_snapshot_being_written(self):
        """
        A store stopping while its writer writes a snapshot (resting an hour
        after each page) stops at once: the temporary file removed, the last
        snapshot in place.
        """
        path = self.mktemp()
        store = await openWriter(self, path)
        writer = store._queries.snapshots
        writer.changes = 1
        await store.persist(state("vm1.a", 1, 4))
        await writer.refresh()
        old = snapshotBytes(path)
        await store.persist(state("vm1.b", 1, 4))
        writer.pause = 3600.0
        writing = writer.refresh()
        await waitUntil(lambda: os.path.exists(temporary(path)), "the writer to begin a snapshot")
        await writer.stop()
        self.assertEqual((writing.called, os.path.exists(temporary(path)), snapshotBytes(path),
                          writer.written), (True, False, old, 1))


class RealMasterTests(TestCase):
    timeout = 240

    def server(self, data, **settings):
        """A real master of the VM whose data directory is C{data}, with these writer settings."""
        env = childEnv(SNS_SECRET="snapshot-writer-secret",
                       **{"SNS_SNAPSHOT_" + k.upper(): str(v) for k, v in settings.items()})
        return spawn(self, twistd("sns-server", "--router",
                                  heldAddress(self), "--vm", "vms",
                                  "--listen", "127.0.0.7:0", "--data", data), env=env)

    async def writing(self, data, base):
        """A master that has begun a snapshot (it rests a second after each page)."""
        server = self.server(data, changes=20, every=0.05, pause=1)
        await waitUntil(lambda: os.path.exists(temporary(data)), "the master to begin a snapshot",
                        timeout=60)
        return server

    def assertStartsAsEveryRow(self, record, old):
        """The last snapshot is C{old}, and a start holds what reading every row holds."""
        record.reopen()
        self.assertEqual((snapshotBytes(record.path), seen(record.loaded()[0])),
                         (old, seen(record.loaded(snapshots=False)[0])))
        record.disk.close()

    @inlineAsync
    async def test_a_master_stopped_or_killed_while_it_writes_keeps_the_last_snapshot(self):
        """
        A real master on a record with more state updates than
        $SNS_SNAPSHOT_CHANGES not covered begins a snapshot.  SIGTERMed
        then, it stops without finishing it: no temporary file, the last
        snapshot in place.  SIGKILLed during the next, the temporary file
        stays behind and the last snapshot in place.  A start from either
        holds what reading every row holds; the next master writes its
        snapshot over the leftover.
        """
        base = os.path.abspath(self.mktemp())
        data = os.path.join(base, "data")
        os.makedirs(data)
        self.addCleanup(killServersUsing, base)
        record = Record(self, data)
        record.write(state("vm0.a", 1, 10))
        record.save()
        old = snapshotBytes(data)
        record.write(state("vm0.b", 1, 12))
        record.disk.close()

        stopped = await self.writing(data, base)
        stopped.transport.signalProcess("TERM")
        await stopped.ended.addTimeout(DEADLINE, reactor)
        await waitUntil(lambda: not serversUsing(base), "the slave to stop with its master")
        self.assertIn("stopped writing the state snapshot", stopped.text)
        self.assertFalse(os.path.exists(temporary(data)))
        self.assertStartsAsEveryRow(record, old)

        killed = await self.writing(data, base)
        killServersUsing(base)
        await killed.ended.addTimeout(DEADLINE, reactor)
        await waitUntil(lambda: not serversUsing(base), "the VM's processes to die")
        self.assertTrue(os.path.exists(temporary(data)))
        self.assertStartsAsEveryRow(record, old)

        last = self.server(data, changes=20, every=0.05)
        await last.waitFor("wrote the state snapshot", timeout=60)
        last.transport.signalProcess("TERM")
        await last.ended.addTimeout(DEADLINE, reactor)
        await waitUntil(lambda: not serversUsing(base), "the slave to stop with its master")
        record.reopen()
        written = snapshot.read(data, record.disk.index.readVersions())
        self.assertEqual(written.covers.origins, record.disk.index.readVersions().origins)
        self.assertStartsAsEveryRow(record, snapshotBytes(data))
