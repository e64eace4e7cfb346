"""
sns-admin: export, import and backup of a data directory.  Export and import
on real directories; backup of a running VM under writes in
L{BackupOfARunningVMTests}, with real processes.
"""

import io
import json
import os
import signal

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.client.client import Client
from snstwist.commands import admin, compare
from snstwist.core.model import ReadMark, Update
from snstwist.core.state import Replica
from snstwist.rpc import grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.storage import admin as storeAdmin
from snstwist.storage import disk, importer, importlines, store
from tests.processes import (
    PASSWORD,
    SECRET,
    Cluster,
    childEnv,
    pidAlive,
    spawn,
    twistd,
    waitUntil,
)
from tests.strategies import followUpdate, postUpdate, userUpdate
from tests.test_integration import inlineAsync


def readBytes(path):
    with open(path, "rb") as f:
        return f.read()


def exported(path):
    return b"".join(storeAdmin.exportLines(path))


def jsonLines(*records):
    return [(json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in records]


def loadReplica(path):
    """The replica a server starting on C{path} would hold (read on a thread)."""
    s = store.SQLiteStore(path)
    d = s.open()

    def loaded(updates):
        replica = Replica()
        for u in updates:
            replica.apply(u)
        return s.close().addCallback(lambda _: replica)

    return d.addCallback(loaded)


HISTORY = [
    userUpdate("vm1.a", 1, 10, "alice"),
    userUpdate("vm2.a", 1, 11, "bob"),
    userUpdate("vm1.a", 2, 12, "carol"),
    followUpdate("vm1.a", 3, 13, "alice", "bob"),
    followUpdate("vm2.a", 2, 14, "bob", "alice"),
    followUpdate("vm1.a", 4, 15, "carol", "bob"),
    followUpdate("vm1.a", 5, 16, "carol", "bob", following=False),
    postUpdate("vm1.a", 6, 1_700_000_000_000_001, "alice", "héllo\nworld", requestId="r1"),
    postUpdate("vm2.a", 3, 1_700_000_000_000_000, "alice", "earlier, from vm2", requestId="r2"),
    postUpdate("vm2.a", 4, 1_700_000_000_000_002, "bob", "no request id"),
    Update(origin="vm1.a", seq=7, time_us=1_700_000_000_000_003,
           read=ReadMark("alice", 1_700_000_000_000_002, "vm2.a/4")),
]


class ExportImportTests(TestCase):
    def setUp(self):
        self.base = self.mktemp()
        os.makedirs(self.base)

    def dir(self, name):
        return os.path.join(self.base, name)

    async def stored(self, updates):
        path = self.dir("original")
        s = store.SQLiteStore(path)
        await s.open()
        await s.persist(updates)
        await s.close()
        return path

    def importLines(self, name, lines, origin="import-test"):
        return importer.Importer(self.dir(name), origin).run(lines)

    async def test_export_import_export_is_identical(self):
        """Export a VM, import that into a new directory, export again: the same bytes."""
        first = exported(await self.stored(HISTORY))
        self.importLines("copy", io.BytesIO(first))
        self.assertEqual(exported(self.dir("copy")), first)

    async def test_export_is_the_record_then_post_file_lines_then_the_vector(self):
        """
        The export is every user and follow update (an unfollow too), the
        winning read marks, every post file's lines as they are, and the
        version vector.
        """
        path = await self.stored(HISTORY)
        lines = exported(path).splitlines(keepends=True)
        records = [json.loads(line) for line in lines]
        self.assertEqual(
            ([r["user"] for r in records[:3]],
             [(r["follower"], r["followee"], r.get("following", True), r["id"])
              for r in records[3:7]],
             records[7], b"".join(lines[8:-1]), records[-1]),
            (["alice", "carol", "bob"],
             [("alice", "bob", True, "vm1.a/3"), ("carol", "bob", True, "vm1.a/4"),
              ("carol", "bob", False, "vm1.a/5"), ("bob", "alice", True, "vm2.a/2")],
             {"read": "alice", "time": "2023-11-14T22:13:20.000003Z", "id": "vm1.a/7",
              "post_time": "2023-11-14T22:13:20.000002Z", "post_id": "vm2.a/4"},
             readBytes(os.path.join(path, "posts", "alice.txt"))
             + readBytes(os.path.join(path, "posts", "bob.txt")),
             {"versions": [["vm1.a", 7, []], ["vm2.a", 4, []]]}))

    async def test_an_imported_directory_serves_what_was_exported(self):
        """A server starting on an imported directory holds the same users, follows and posts."""
        path = await self.stored(HISTORY)
        self.importLines("copy", io.BytesIO(exported(path)))
        original, copy = await loadReplica(path), await loadReplica(self.dir("copy"))
        self.assertEqual(
            (copy.users, {p: r.following for p, r in copy.follows.items() if r.following},
             copy.posts),
            (original.users,
             {p: r.following for p, r in original.follows.items() if r.following},
             original.posts))

    def test_lines_without_ids_get_ids_and_request_ids_of_the_origin(self):
        """Lines without ids get origin/1, /2, ... in line order; posts also a request id."""
        self.importLines("d", jsonLines(
            {"user": "alice"}, {"user": "bob"}, {"follower": "bob", "followee": "alice"},
            {"author": "alice", "time": "2026-11-29T18:26:21.986269Z", "text": "hi"}),
            origin="import-x")
        self.assertEqual(
            json.loads(readBytes(os.path.join(self.dir("d"), "posts", "alice.txt"))),
            {"time": "2026-11-29T18:26:21.986269Z", "id": "import-x/4", "author": "alice",
             "text": "hi", "request": "import-x/4"})

    def test_the_same_file_gives_every_vm_the_same_files(self):
        """Two imports of the same lines with the same origin hold the same bytes."""
        lines = jsonLines({"user": "alice"},
                          *({"author": "alice", "time": "2026-11-29T18:26:%02d.000000Z" % (s,),
                             "text": "post %d" % (s,)} for s in range(10)))
        self.importLines("a", lines)
        self.importLines("b", lines)
        self.assertEqual(exported(self.dir("a")), exported(self.dir("b")))

    def test_posts_out_of_order_are_stored_in_time_order(self):
        """A post file is ordered by (time, id) whatever the order of the import lines."""
        times = ["2026-11-29T18:26:%02d.000000Z" % (s,) for s in (5, 1, 9, 3)]
        self.importLines("d", jsonLines(
            {"user": "alice"}, *({"author": "alice", "time": t, "text": t} for t in times)))
        stored = [json.loads(line)["time"] for line in
                  readBytes(os.path.join(self.dir("d"), "posts", "alice.txt")).splitlines()]
        self.assertEqual(stored, sorted(times))

    def test_import_refuses_a_directory_that_holds_anything(self):
        """Import only fills a new or empty data directory."""
        os.makedirs(os.path.join(self.dir("d"), "posts"))
        error = self.assertRaises(storeAdmin.NotEmpty, self.importLines, "d",
                                  jsonLines({"user": "alice"}))
        self.assertIn("not empty", error.message)

    BAD = [
        (b"{not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"name": "x"}\n', "neither a user, a password, a follow"),
        (b'{"user": "a b"}\n', "invalid username"),
        (b'{"user": "alice"}\n', "user alice twice"),
        (b'{"user": "dave", "admin": true}\n', "unknown field admin"),
        (b'{"follower": "alice", "followee": "zed"}\n', "user zed is not on a user line"),
        (b'{"follower": "alice", "followee": "alice"}\n', "can not follow"),
        (b'{"follower": "alice", "followee": "bob"}\n', "alice follows bob twice"),
        (b'{"author": "alice", "text": "x"}\n', "a post line needs author, text, time"),
        (b'{"author": "alice", "time": "yesterday", "text": "x"}\n', "time must be a UTC time"),
        (b'{"author": "alice", "time": "2026-11-29T18:26:21.986269Z", "text": ""}\n',
         "a post is 1-1000 characters"),
        (b'{"author": "alice", "time": "2026-11-29T18:26:21.986269Z", "text": "x",'
         b' "id": "nonsense"}\n', "malformed update id"),
        (b'{"author": "alice", "time": "2026-11-29T18:26:21.986269Z", "text": "x",'
         b' "id": "vm1.a/1"}\n', "post id vm1.a/1 twice"),
        (b'{"author": "alice", "time": "2026-11-29T18:26:21.986269Z", "text": "x",'
         b' "request": "r1"}\n', "request id r1 of alice twice"),
        (b'{"author": "alice", "time": "2026-11-29T18:26:21.986269Z", "text": "x",'
         b' "request": "two words"}\n', "a request id is at most 64"),
        (b'{"author": "alice", "time": "2126-11-29T18:26:21.986269Z", "text": "x"}\n',
         "ahead of this server's clock"),
        (b'{"versions": [["vm1.a", 99999999999999999999999, []]]}\n',
         "a contiguous sequence number is 0-"),
        (b'{"versions": [["vm1.a", -1, []]]}\n', "a contiguous sequence number is 0-"),
        (b'{"versions": [["vm1.a", true, []]]}\n', "a contiguous sequence number is 0-"),
        (b'{"versions": [["vm1.a", 3, [-2]]]}\n', "a sequence number is 1-"),
        (b'{"versions": [["vm1.a", 3, [99999999999999999999999]]]}\n',
         "a sequence number is 1-"),
        (b'{"versions": [["vm1.a", 3, [true]]]}\n', "a sequence number is 1-"),
        (b'{"user": "dave", "hash": "not-a-hash"}\n', "an argon2id hash"),
        (b'{"password": "alice", "time": "2026-11-29T18:26:21.986269Z", "id": "vm1.a/9",'
         b' "hash": ""}\n', "an argon2id hash"),
        (b'{"password": "alice", "time": "2026-11-29T18:26:21.986269Z", "id": "vm1.a/9",'
         b' "hash": 7}\n', "an argon2id hash"),
    ]

    def test_a_bad_line_is_named_by_its_number_and_nothing_is_written(self):
        """Each kind of bad line stops the import with its line number; nothing is written."""
        good = jsonLines(
            {"user": "alice"}, {"user": "bob"}, {"follower": "alice", "followee": "bob"},
            {"author": "alice", "time": "2026-11-29T18:26:21.986269Z", "text": "x",
             "id": "vm1.a/1", "request": "r1"})
        outcomes = []
        for n, (bad, why) in enumerate(self.BAD):
            name = "bad%d" % (n,)
            try:
                self.importLines(name, good + [bad] + good[:1])
                outcomes.append((why, "imported"))
            except storeAdmin.BadLine as e:
                outcomes.append((why, e.lineno, why in e.message, os.listdir(self.dir(name))))
        self.assertEqual(outcomes, [(why, 5, True, []) for _, why in self.BAD])

    def test_a_duplicate_is_named_even_when_a_later_line_is_bad_too(self):
        """The first bad line is the one named, though duplicates are found a batch at a time."""
        lines = jsonLines(
            {"user": "alice"},
            {"author": "alice", "time": "2026-11-29T18:26:21.986269Z", "text": "x", "id": "o/1"},
            {"author": "alice", "time": "2026-11-29T18:26:22.986269Z", "text": "y", "id": "o/1"})
        error = self.assertRaises(storeAdmin.BadLine, self.importLines, "d",
                                  lines + [b"garbage\n"])
        self.assertEqual(error.lineno, 3)


    def test_no_server_takes_a_directory_being_imported_into(self):
        """
        An import holds the directory's writer lock, as a server does, until
        it is filled: a server starting on it meanwhile is refused, and the
        import's data is whole.
        """
        path = self.dir("d")
        tried = []

        def lines():
            yield from jsonLines({"user": "alice"})
            try:
                disk.Disk(path).lock()
                tried.append("locked")
            except disk.DataLocked as e:
                tried.append(e.message)
            yield from jsonLines(
                {"author": "alice", "time": "2026-11-29T18:26:21.986269Z", "text": "hi"})

        self.assertEqual(self.importLines("d", lines())["post"], 1)
        self.assertEqual((tried, sorted(os.listdir(path))),
                         (["another process is the writer of %s" % (path,)],
                          ["lock", "posts", "sns.sqlite3"]))

    def test_an_interrupted_imports_leftovers_are_removed_before_the_next(self):
        """
        An import killed part-way leaves C{.importing} and the lock file: the
        next import into that directory removes them and runs, as into an
        empty one.
        """
        path = self.dir("d")
        os.makedirs(os.path.join(path, ".importing", "posts"))
        with open(os.path.join(path, ".importing", "sns.sqlite3"), "wb") as f:
            f.write(b"half a database")
        with open(os.path.join(path, "lock"), "wb") as f:
            f.write(b"12345\n")
        self.assertEqual(self.importLines("d", jsonLines({"user": "alice"}))["user"], 1)
        self.assertEqual(sorted(os.listdir(path)), ["lock", "posts", "sns.sqlite3"])

    def test_a_running_imports_directory_is_left_to_it(self):
        """While an import fills a directory, another gets DataLocked and removes nothing."""
        path = self.dir("d")
        os.makedirs(os.path.join(path, ".importing"))
        held = disk.holdLock(path)
        self.addCleanup(os.close, held)
        self.assertRaises(disk.DataLocked, self.importLines, "d", jsonLines({"user": "alice"}))
        self.assertEqual(sorted(os.listdir(path)), [".importing", "lock"])

    def test_a_directory_with_more_than_leftovers_is_not_emptied(self):
        """Leftovers beside anything else: the directory is not empty, and nothing is removed."""
        path = self.dir("d")
        os.makedirs(os.path.join(path, ".importing"))
        os.makedirs(os.path.join(path, "posts"))
        self.assertRaises(storeAdmin.NotEmpty, self.importLines, "d", jsonLines({"user": "alice"}))
        self.assertEqual(sorted(os.listdir(path)), [".importing", "posts"])

    def test_a_directory_a_server_holds_is_not_imported_into(self):
        """An import refuses a directory whose writer lock a server holds: nothing is written."""
        path = self.dir("d")
        held = disk.Disk(path)
        held.lock()
        self.addCleanup(held.close)
        self.assertRaises((disk.DataLocked, storeAdmin.NotEmpty), self.importLines, "d",
                          jsonLines({"user": "alice"}))
        self.assertEqual(sorted(os.listdir(path)), ["lock", "posts"])

    def test_a_version_vector_past_the_wires_bounds_is_refused(self):
        """A vector line holds no more origins, nor out-of-order numbers, than a peer may send."""
        self.patch(importer, "MAX_ORIGINS", 2)
        self.patch(importer, "MAX_EXTRA", 2)
        many = {"versions": [["o1", 1, []], ["o2", 1, []], ["o3", 1, []]]}
        gaps = {"versions": [["o1", 1, [3, 5, 7]]]}
        for name, line, why in [("many", many, "at most 2 origins"),
                                ("gaps", gaps, "at most 2 out-of-order")]:
            error = self.assertRaises(storeAdmin.BadLine, self.importLines, name,
                                      jsonLines({"user": "alice"}, line))
            self.assertEqual((error.lineno, why in error.message, os.listdir(self.dir(name))),
                             (2, True, []), error.message)

    def test_a_line_past_the_bound_is_refused_by_its_number_after_the_lines_before_it(self):
        """
        A line longer than the bound is refused by its number, and is never
        read whole; a bad line before it in the same batch is named first.
        """
        self.patch(importlines, "MAX_IMPORT_LINE_BYTES", 100)
        long = b'{"user": "' + b"x" * 1000 + b'"}\n'
        fine = jsonLines({"user": "alice"}, {"user": "bob"})
        reads = []

        class Source(io.BytesIO):
            def readline(self, limit=-1):
                line = io.BytesIO.readline(self, limit)
                reads.append(len(line))
                return line

        error = self.assertRaises(storeAdmin.BadLine, self.importLines, "long",
                                  importlines.fileLines(Source(b"".join(fine + [long] + fine))))
        self.assertEqual((error.lineno, "longer than 100 bytes" in error.message,
                          os.listdir(self.dir("long")), max(reads)), (3, True, [], 101))
        error = self.assertRaises(storeAdmin.BadLine, self.importLines, "first",
                                  importlines.fileLines(io.BytesIO(b"".join(
                                      fine + [b"garbage\n", long]))))
        self.assertEqual((error.lineno, "not JSON" in error.message), (3, True))

    def test_a_batch_holds_a_bounded_number_of_bytes(self):
        """Lines are parsed a batch at a time, and a batch of long lines is cut short."""
        self.patch(importlines, "PARSE_BYTES", 1000)
        lines = [b"x" * 300 + b"\n"] * 10
        sizes = [sum(map(len, batch)) for _, batch in importlines.batches(lines)]
        self.assertEqual(sizes, [1204, 1204, 602])

    def test_users_past_the_clusters_maximum_are_refused_and_nothing_is_written(self):
        """A data set with more users than a cluster holds is not imported, by line number."""
        self.patch(importer, "MAX_USERS", 2)
        again = {"user": "bob", "time": "2026-11-29T18:26:21.986269Z", "id": "vm2.b/1"}
        lines = jsonLines({"user": "alice"}, {"user": "bob"}, again, {"user": "carol"})
        error = self.assertRaises(storeAdmin.BadLine, self.importLines, "many", lines)
        self.assertEqual((error.lineno, "more than 2 users" in error.message,
                          os.listdir(self.dir("many"))), (4, True, []))

    def test_follows_past_one_users_maximum_are_refused_and_nothing_is_written(self):
        """
        A data set in which one user follows more than one may is not
        imported, by line number; a relation imported as unfollowed does
        not count.
        """
        self.patch(importer, "MAX_FOLLOWS", 2)
        users = [{"user": name} for name in ("alice", "bob", "carol", "dave")]
        fine = users + [{"follower": "alice", "followee": "bob"},
                        {"follower": "alice", "followee": "carol", "following": False},
                        {"follower": "alice", "followee": "dave"},
                        {"follower": "bob", "followee": "alice"}]
        self.assertEqual(self.importLines("fine", jsonLines(*fine))["follow"], 4)
        over = users + [{"follower": "alice", "followee": "bob"},
                        {"follower": "alice", "followee": "carol"},
                        {"follower": "bob", "followee": "carol"},
                        {"follower": "alice", "followee": "dave"}]
        error = self.assertRaises(storeAdmin.BadLine, self.importLines, "over", jsonLines(*over))
        self.assertEqual((error.lineno, "alice follows more than 2 users" in error.message,
                          os.listdir(self.dir("over"))), (8, True, []))


class AdminCommandTests(SynchronousTestCase):
    def setUp(self):
        self.base = self.mktemp()
        os.makedirs(self.base)
        self.file = os.path.join(self.base, "in.jsonl")
        with open(self.file, "wb") as f:
            f.writelines(jsonLines(
                {"user": "alice"}, {"user": "bob"}, {"follower": "bob", "followee": "alice"},
                {"author": "alice", "time": "2026-11-29T18:26:21.986269Z", "text": "hi"}))

    def command(self, *argv):
        out, err = io.BytesIO(), io.StringIO()
        code = admin.main(list(argv), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def test_import_then_export_on_the_command_line(self):
        """sns-admin import fills a directory, says what it did; export writes the lines."""
        data = os.path.join(self.base, "data")
        code, _, err = self.command("import", "--data", data, self.file)
        self.assertEqual((code, err.startswith("imported 2 users, 1 follows, 1 posts")),
                         (0, True), err)
        code, out, _ = self.command("export", "--data", data)
        origin = admin.fileOrigin(self.file)
        self.assertEqual((code, out.splitlines()[-2:]), (0, [json.dumps({
            "time": "2026-11-29T18:26:21.986269Z", "id": origin + "/4", "author": "alice",
            "text": "hi", "request": origin + "/4"}).encode(),
            json.dumps({"versions": [[origin, 4, []]]}).encode()]))

    def test_a_bad_line_exits_1_with_its_number(self):
        """A bad import line is one line on stderr, with its number, and exit status 1."""
        with open(self.file, "ab") as f:
            f.write(b'{"user": "no spaces allowed"}\n')
        code, _, err = self.command("import", "--data", os.path.join(self.base, "data"), self.file)
        self.assertEqual((code, err.splitlines()[0].startswith("sns-admin import: line 5: ")),
                         (1, True), err)

    def test_a_line_past_the_bound_exits_1_with_its_number(self):
        """A line longer than the bound is one line on stderr, with its number, and exit 1."""
        self.patch(importlines, "MAX_IMPORT_LINE_BYTES", 100)
        with open(self.file, "ab") as f:
            f.write(b'{"author": "alice", "time": "2026-11-29T18:26:21.986269Z", "text": "'
                    + b"x" * 1000)
        data = os.path.join(self.base, "data")
        code, _, err = self.command("import", "--data", data, self.file)
        self.assertEqual((code, err, os.listdir(data)),
                         (1, "sns-admin import: line 5: longer than 100 bytes, the most a line"
                             " may be\n", []))

    def test_export_of_a_directory_without_data_says_so(self):
        """Exporting a directory that is not a data directory is an error, not an empty export."""
        code, out, err = self.command("export", "--data", self.base)
        self.assertEqual((code, out, "not a data directory" in err), (1, b"", True))

    def test_backup_refuses_an_existing_target(self):
        """backup writes only into a new (or empty) directory."""
        data = os.path.join(self.base, "data")
        self.command("import", "--data", data, self.file)
        code, _, err = self.command("backup", "--data", data, "--to", self.base)
        self.assertEqual((code, "not empty" in err), (1, True))

    def test_backup_refuses_a_target_inside_the_data_directory(self):
        """A backup into the VM's own directory (its posts/ say) is refused: nothing is made."""
        data = os.path.join(self.base, "data")
        self.command("import", "--data", data, self.file)
        for inside in ("posts/copy", "copy"):
            code, _, err = self.command("backup", "--data", data, "--to",
                                        os.path.join(data, inside))
            self.assertEqual((code, "is inside" in err, sorted(os.listdir(data))),
                             (1, True, ["lock", "posts", "sns.sqlite3"]), err)
        self.assertEqual(os.listdir(os.path.join(data, "posts")), ["alice.txt"])

    def test_a_missing_subcommand_is_a_usage_error(self):
        """Without export, import, backup or certs, sns-admin prints its usage and exits 2."""
        code, _, err = self.command()
        self.assertEqual((code, "say export, import, backup or certs" in err), (2, True))


class BackupTests(TestCase):
    async def test_a_backup_copies_whole_lines_and_the_database(self):
        """A backup holds every post file up to its last whole line, and a database that opens."""
        base = self.mktemp()
        path = os.path.join(base, "vm")
        s = store.SQLiteStore(path)
        await s.open()
        await s.persist(HISTORY)
        await s.close()
        with open(os.path.join(path, "posts", "bob.txt"), "ab") as f:
            f.write(b'{"time": "2026-11-29T18:2')  # an append in progress
        storeAdmin.backup(path, os.path.join(base, "copy"))
        self.assertEqual(exported(os.path.join(base, "copy")), exported(path))
        original, copy = await loadReplica(path), await loadReplica(os.path.join(base, "copy"))
        self.assertEqual(copy.snapshot(), original.snapshot())


class BackupOfARunningVMTests(TestCase):
    timeout = 180

    @inlineAsync
    async def test_backup_under_writes_restores_to_a_vm_that_serves_and_agrees(self):
        """
        vm1 is backed up while clients post; vm1 is then SIGKILLed, its data
        replaced by the backup and its server started again: it serves a
        login, and once caught up every VM agrees (sns-compare).
        """
        cluster = await Cluster(self, vms=2).start()
        clients = []
        for i in range(3):
            c = Client([cluster.router], "writer%d" % (i,), PASSWORD, clock=reactor)
            await c.connect()
            self.addCleanup(c.close)
            clients.append(c)
        stop = []

        async def write(c):
            n = 0
            while not stop:
                await c.post("%s post %d" % (c.user, n))
                n += 1

        writers = [defer.ensureDeferred(write(c)) for c in clients]
        copy = os.path.join(cluster.base, "vm1-backup")
        await waitUntil(lambda: len(os.listdir(os.path.join(cluster.data("vm1"), "posts"))) == 3,
                        "every writer to have posted on vm1")
        backup = spawn(self, ["-m", "snstwist.commands.admin", "backup",
                              "--data", cluster.data("vm1"), "--to", copy])
        self.assertEqual(await backup.ended, 0, backup.err)
        stop.append(True)
        await defer.gatherResults(writers)

        vm1 = [s for s in (await cluster.status()).servers if s.vm == "vm1"]
        for s in vm1:
            os.kill(s.pid, signal.SIGKILL)
        await waitUntil(lambda: not any(pidAlive(s.pid) for s in vm1),
                        "vm1's processes to be gone")
        restored = os.path.join(cluster.base, "vm1-restored")
        os.rename(copy, restored)
        spawn(self, twistd("sns-server", "--router", cluster.routerPeer, "--vm", "vm1",
                           "--listen", "127.0.0.2:0", "--data", restored,
                           "--secret-file", os.path.join(cluster.base, "secret"),
                           logfile=os.path.join(cluster.base, "restored.log")),
              env=childEnv())

        async def vm1Serves():
            masters = await cluster.masters()
            return "vm1" in masters and masters["vm1"].pid not in {s.pid for s in vm1}

        await waitUntil(vm1Serves, "the restored vm1 to register")
        channel = grpcbridge.channel((await cluster.masters())["vm1"].address)
        self.addCleanup(grpcbridge.closeChannel, channel)
        reply = await grpcbridge.call(pbg.SNSStub(channel).Login,
                                      pb.LoginRequest(user="reader", password=PASSWORD),
                                      timeout=10)
        self.assertTrue(reply.created)

        async def agreeing():
            replies = await compare.digests(cluster.router, SECRET)
            await cluster.status()
            return len(replies) == 2 and not compare.differences(replies)

        await waitUntil(agreeing, "the restored vm1 and vm2 to agree", timeout=60, interval=0.2)
