"""
sns-admin export then import (snstwist.storage.admin, importer) into an
empty directory gives the same data: post files byte for byte, users,
follows, read marks, the record's rows (hidden copies, password changes,
unfollows and original ids included) and the version vector (superseded
read marks included); and both stream in constant memory.
"""

import io
import os
import sqlite3
import tracemalloc

from twisted.trial.unittest import TestCase

from snstwist.core.model import PasswordChange, ReadMark, Update
from snstwist.storage import admin, bulk, disk, importer, importlines
from snstwist.storage.store import SQLiteStore
from tests.strategies import followUpdate, postUpdate, userUpdate

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


def mark(origin, seq, time_us, user, post_time, post_id, requestId=""):
    return Update(origin=origin, seq=seq, time_us=time_us, request_id=requestId,
                  read=ReadMark(user, post_time, post_id))


T = 1_700_000_000_000_000
FIRST = postUpdate("vm1.a", 10, T + 10, "alice", "retried", requestId="r-1")
RETRY = postUpdate("vm2.b", 5, T + 20, "alice", "retried", requestId="r-1")
# Arrives after a later copy of its request was shown: it is shown, that one hidden.
EARLIER = postUpdate("vm3.c", 1, T + 5, "bob", "twice", requestId="r-9")
LATER = postUpdate("vm1.a", 11, T + 30, "bob", "twice", requestId="r-9")
BATCHES = [
    [Update(origin="vm1.a", seq=1, time_us=T, user="alice", hash=HASH),
     Update(origin="vm1.a", seq=2, time_us=T + 1, user="bob", hash=HASH),
     userUpdate("vm2.b", 1, T + 2, "carol"),
     Update(origin="vm2.b", seq=2, time_us=T + 3, request_id="pw-1",
            password=PasswordChange("alice", HASH.replace("aGFz", "bmV3"))),
     followUpdate("vm1.a", 3, T + 4, "alice", "bob"),
     followUpdate("vm1.a", 4, T + 5, "carol", "bob"),
     followUpdate("vm2.b", 3, T + 6, "carol", "bob", following=False),
     postUpdate("vm1.a", 5, T + 7, "alice", "héllo \"world\"\nnew line \U0001f600"),
     postUpdate("vm2.b", 4, T + 8, "carol", "\\ back slash", requestId='q"uote'),
     mark("vm1.a", 6, T + 9, "alice", T + 8, "vm2.b/4"),
     FIRST, LATER],
    [RETRY, mark("vm2.b", 6, T + 21, "alice", T + 10, "vm1.a/10", requestId="m-1"),
     mark("vm1.a", 12, T + 22, "bob", T + 7, "vm1.a/5")],
    [EARLIER, mark("vm3.c", 2, T + 23, "alice", T + 9, "vm1.a/5")],
]


def everything(path):
    """The tables and post files of a data directory, as they are."""
    db = sqlite3.connect(os.path.join(path, "sns.sqlite3"))
    try:
        tables = {table: db.execute("SELECT * FROM %s ORDER BY 1, 2" % (table,)).fetchall()
                  for table in ("record", "versions", "users", "follows", "marks")}
    finally:
        db.close()
    postsDir = os.path.join(path, "posts")
    files = {}
    for name in sorted(os.listdir(postsDir)):
        with open(os.path.join(postsDir, name), "rb") as f:
            files[name] = f.read()
    d = disk.Disk(path)
    d.openRecord()
    try:
        digest = d.digest()
    finally:
        d.close()
    return tables, files, digest


class RoundTripTests(TestCase):
    async def source(self, batches=BATCHES):
        path = os.path.join(self.mktemp(), "vm")
        store = SQLiteStore(path)
        await store.open()
        for batch in batches:
            hidden = {RETRY.id} if RETRY in batch else ()
            displaced = [LATER] if EARLIER in batch else ()
            await store.persist(batch, hidden=hidden, displaced=displaced)
        await store.close()
        return path

    async def test_export_then_import_holds_the_same_data(self):
        """
        Hidden copies, a displaced post, password changes, an unfollow,
        superseded read marks (compacted: the vector still counts them),
        request ids with quotes: all the same after the round trip.
        """
        path = await self.source()
        lines = b"".join(admin.exportLines(path))
        copy = os.path.join(self.mktemp(), "copy")
        importer.Importer(copy, "import-test").run(io.BytesIO(lines))
        original, restored = everything(path), everything(copy)
        self.assertEqual(restored, original)
        # The record keeps alice's winning mark only, and the vector counts all.
        self.assertEqual(([r[:2] for r in original[0]["record"] if r[4] == "read"],
                          original[0]["versions"]),
                         ([("vm1.a", 12), ("vm2.b", 6)],
                          [("vm1.a", 6, "[10, 11, 12]"), ("vm2.b", 6, "[]"),
                           ("vm3.c", 2, "[]")]))
        self.assertEqual(b"".join(admin.exportLines(copy)), lines)

    async def test_export_streams_in_constant_memory(self):
        """Exporting 6 MB of posts holds well under 1 MB of them at any time."""
        posts = [postUpdate("vm1.a", 1 + n, T + n, "alice", "%d %s" % (n, "x" * 990))
                 for n in range(6000)]
        path = await self.source([[userUpdate("vm1.a", 10**6, T, "alice")] + posts])
        del posts
        tracemalloc.start()
        try:
            size = sum(len(line) for line in admin.exportLines(path))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertEqual((size > 6_000_000, peak < 1_000_000), (True, True), peak)

    def test_import_streams_in_constant_memory(self):
        """
        In batches of 200 lines parsed and 500 rows written, importing 12 MB
        of post lines holds no more than importing 3 MB does.
        """
        self.patch(bulk, "FLUSH_ROWS", 500)
        self.patch(importlines, "PARSE_LINES", 200)

        def lines(n):
            yield b'{"user": "alice"}\n'
            for i in range(n):
                yield (b'{"author": "alice", "time": "2026-11-29T18:26:21.%06dZ", "text":'
                       b' "%d %s"}\n' % (i, i, b"x" * 990))

        peaks = []
        for n in (3000, 12000):
            tracemalloc.start()
            try:
                importer.Importer(self.mktemp(), "import-test").run(lines(n))
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        self.assertEqual((peaks[1] < 1.2 * peaks[0], peaks[1] < 4_000_000), (True, True), peaks)
