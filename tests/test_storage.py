"""
A disk that fails under a VM: full (ENOSPC), out of file descriptors
(EMFILE), a full SQLite database; injected in this process under the real
L{SQLiteStore} and L{Node}.  The retry timer runs on a Clock; the disk work
on the store's real thread.

What must hold: the client gets a status naming the cause; a write refused
is never applied later; a write in flight when the disk failed is kept and
stored once (its outcome was unknown; the client's retry with the same
request id gets it); when space returns the VM stores and serves again
without a restart, and no post line is torn or written twice.
"""

import errno
import os
import sqlite3

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from snstwist.core import errors
from snstwist.rpc import sns_pb2 as pb
from snstwist.core.node import Node
from snstwist.storage.postfile import parsePostLine
from snstwist.storage.store import SQLiteStore
from tests.fakes import session
from tests.servers import serverParts
from tests.strategies import postUpdate


def appendTo(path, data):
    """Append C{data} to the file at C{path}, as the store does, with no file held open."""
    with open(path, "ab") as f:
        f.write(data)


class FailingDisk:
    """
    Appends to the post files as the store asks, or fails: with C{error}
    (an errno) before writing anything, or, if C{torn}, after writing half
    of what it was given.
    """

    def __init__(self):
        self.error = None
        self.torn = False

    def append(self, path, data):
        if self.error is not None and not self.torn:
            raise OSError(self.error, os.strerror(self.error), path)
        if self.error is None:
            return appendTo(path, data)
        appendTo(path, data[:len(data) // 2])
        raise OSError(self.error, os.strerror(self.error), path)


class FullDatabase:
    """Stands in front of the store's SQLite connection: COMMIT fails as on a full disk."""

    def __init__(self, db):
        self.db = db
        self.full = True

    def execute(self, sql, *args):
        if self.full and sql == "COMMIT":
            e = sqlite3.OperationalError("database or disk is full")
            e.sqlite_errorname = "SQLITE_FULL"
            raise e
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


class StorageTestCase(TestCase):
    timeout = 30

    async def makeNode(self):
        """A loaded Node of VM vm2 on a SQLiteStore whose post files a FailingDisk opens."""
        self.clock = Clock()
        self.path = self.mktemp()
        self.store = SQLiteStore(self.path, name="vm2", clock=self.clock)
        self.disk = FailingDisk()
        self.store._disk.append = self.disk.append
        self.addCleanup(self.store.close)
        self.written = []
        self.node = Node("vm2", "vm2.t", self.store, self.clock)
        self.node.addDurableObserver(self.written.extend)
        await self.node.load()
        return self.node

    async def failingPost(self, text, requestId):
        """A post accepted as the disk fails: its flush fails with StorageFailed."""
        update = self.node.post("alice", text, requestId)
        try:
            await self.node.durable(update)
        except errors.StorageFailed as e:
            return update, e
        self.fail("the post was stored on a failing disk")

    async def recover(self):
        """The disk takes writes again: the store's next retry writes what waited."""
        self.disk.error = None
        if isinstance(self.store._disk.db, FullDatabase):
            self.store._disk.db.full = False
        stored = defer.Deferred()
        before = len(self.written)
        self.node.addDurableObserver(lambda updates: stored.called or stored.callback(None))
        self.clock.advance(self.store.maxRetryDelay)
        await stored
        return self.written[before:]

    def postLines(self, user="alice"):
        path = os.path.join(self.path, "posts", user + ".txt")
        if not os.path.exists(path):
            return []
        with open(path, "rb") as f:
            data = f.read()
        self.assertTrue(data == b"" or data.endswith(b"\n"), "a torn last line")
        return [parsePostLine(line.decode("utf-8")).post.text for line in data.splitlines()]


class FullDiskTests(StorageTestCase):
    async def test_a_full_disk_fails_the_write_with_unavailable_naming_the_cause(self):
        """ENOSPC on the post file: StorageFailed, UNAVAILABLE, 'disk full on vm2'."""
        await self.makeNode()
        self.disk.error = errno.ENOSPC
        _, e = await self.failingPost("hello", "r1")
        code, message = errors.statusFor(e)
        self.assertEqual(code, errors.Status.UNAVAILABLE)
        self.assertIn("disk full on vm2", message)
        self.assertIn("No space left on device", message)

    async def test_no_file_descriptors_left_is_named(self):
        """EMFILE: the message says no file descriptors are left."""
        await self.makeNode()
        self.disk.error = errno.EMFILE
        _, e = await self.failingPost("hello", "r1")
        self.assertIn("no file descriptors left on vm2", e.message)

    async def test_a_full_database_is_named(self):
        """SQLite's 'database or disk is full' (a new user's row): 'disk full on vm2'."""
        await self.makeNode()
        self.store._disk.db = FullDatabase(self.store._disk.db)
        update = self.node.login("bob")
        with self.assertRaises(errors.StorageFailed) as caught:
            await self.node.durable(update)
        self.assertIn("disk full on vm2", caught.exception.message)

    async def test_while_the_disk_is_full_new_writes_are_refused_and_never_applied(self):
        """
        After a failed flush every new write is refused at once, before it
        is applied: nothing of it is in memory, nor stored after recovery.
        """
        await self.makeNode()
        self.disk.error = errno.ENOSPC
        await self.failingPost("in flight", "r1")
        seq = self.node.seq
        self.assertRaises(errors.StorageFailed, self.node.post, "alice", "refused", "r2")
        self.assertRaises(errors.StorageFailed, self.node.login, "newcomer")
        self.assertEqual(self.node.seq, seq)
        self.assertEqual([p.text for p in self.node.replica.postsBy("alice")], ["in flight"])
        self.assertNotIn("newcomer", self.node.replica.users)
        await self.recover()
        self.assertEqual(self.postLines(), ["in flight"])

    async def test_when_space_returns_the_kept_write_is_stored_once_without_a_restart(self):
        """The write in flight is written by the retry, once; then writes are accepted."""
        await self.makeNode()
        self.disk.error = errno.ENOSPC
        update, _ = await self.failingPost("kept", "r1")
        stored = await self.recover()
        self.assertEqual([u.id for u in stored], [update.id])
        self.assertIsNone(self.store.problem)
        later = self.node.post("alice", "after", "r2")
        await self.node.durable(later)
        self.assertEqual(self.postLines(), ["kept", "after"])

    async def test_a_half_written_line_is_taken_back(self):
        """ENOSPC in the middle of an append: no torn line, and each post once after."""
        await self.makeNode()
        first = self.node.post("alice", "before", "r0")
        await self.node.durable(first)
        self.disk.error, self.disk.torn = errno.ENOSPC, True
        await self.failingPost("x" * 900, "r1")
        self.assertEqual(self.postLines(), ["before"])
        await self.recover()
        self.assertEqual(self.postLines(), ["before", "x" * 900])

    async def test_a_failed_new_file_is_removed(self):
        """A post file created by a failed append does not stay (empty) behind."""
        await self.makeNode()
        self.disk.error, self.disk.torn = errno.ENOSPC, True
        await self.failingPost("first ever", "r1")
        self.assertFalse(os.path.exists(os.path.join(self.path, "posts", "alice.txt")))
        await self.recover()
        self.assertEqual(self.postLines(), ["first ever"])

    async def test_retrying_with_the_same_request_id_applies_it_once(self):
        """
        The server's write path: the client is told UNAVAILABLE; its retry
        (same request id) is refused while the disk is full, and answered
        with the one stored post once space returns.
        """
        await self.makeNode()
        service = serverParts(self, "master", "s" * 16, clock=self.clock, node=self.node)
        alice = session(service.admission.loginReply("alice").token)
        self.disk.error = errno.ENOSPC
        request = pb.PostRequest(text="once", request_id="same")
        with self.assertRaises(errors.StorageFailed):
            await service.api.post(request, alice)
        with self.assertRaises(errors.StorageFailed):
            await service.api.post(request, alice)
        await self.recover()
        reply = await service.api.post(request, alice)
        self.assertEqual(reply.post.text, "once")
        self.assertEqual(self.postLines(), ["once"])
        self.assertEqual(service.writes.writing, 0)

    async def test_updates_from_a_peer_are_not_applied_while_the_disk_is_full(self):
        """A peer's updates are refused (not applied, so sent again later), then taken."""
        await self.makeNode()
        self.disk.error = errno.ENOSPC
        await self.failingPost("mine", "r1")
        theirs = postUpdate("vm1.x", 1, 5, "bob", "theirs")
        with self.assertRaises(errors.StorageFailed):
            await self.node.receive([theirs])
        self.assertFalse(self.node.replica.has(theirs))
        await self.recover()
        await self.node.receive([theirs])
        self.assertEqual(self.postLines("bob"), ["theirs"])


class DamagedDatabaseTests(TestCase):
    timeout = 60

    async def test_a_damaged_sqlite_file_stops_the_server_with_one_sentence(self):
        """
        A master whose sns.sqlite3 is not a database exits non-zero, and its
        log says in one line which file is damaged and what to do.
        """
        from tests.processes import DEADLINE, childEnv, heldAddress, spawn, twistd

        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        damaged = os.path.join(data, "sns.sqlite3")
        with open(damaged, "wb") as f:
            f.write(b"this is not a database, it was overwritten" * 100)
        server = spawn(self, twistd("sns-server",
                                    "--router", heldAddress(self),
                                    "--vm", "vmd", "--listen", "127.0.0.6:0", "--data", data),
                       env=childEnv(SNS_SECRET="damaged-data-secret"))
        status = await server.ended.addTimeout(DEADLINE, reactor)
        self.assertNotEqual(status, 0)
        critical = [line for line in server.lines if "#critical]" in line]
        self.assertEqual(len(critical), 1, server.text)
        self.assertIn(damaged + " is damaged", critical[0])
        self.assertIn("restore it from a backup", critical[0])
        self.assertNotIn("Traceback", server.text)


def mountTmpfs(testCase, path, size):
    """
    Mount a tmpfs of C{size} at C{path} (unmounted at the very end of the
    test), or skip the test with one line when this machine does not let us.
    """
    import subprocess

    from twisted.trial.unittest import SkipTest
    os.makedirs(path)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % (size,), "tmpfs", path],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SkipTest("cannot mount a small tmpfs to fill (needs root): %s"
                       % (result.stderr.strip() or result.returncode,))
    testCase.addCleanup(subprocess.run, ["umount", "-l", path], capture_output=True)


def fill(directory):
    """Fill the filesystem of C{directory}: returns the filler file's path."""
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
        try:
            # What a last partial block may still take.
            while True:
                f.write(b"\0")
        except OSError:
            pass
    return filler


class FullDiskProcessTests(TestCase):
    timeout = 180

    async def test_a_vm_whose_disk_fills_answers_unavailable_and_converges_when_space_returns(self):
        """
        vm2's data lives on a 16 MB tmpfs that is then filled.  A post there
        is answered UNAVAILABLE naming 'disk full on vm2'; a later one is
        refused and never stored anywhere; the master logs the cause.  Once
        the filler is removed vm2 takes posts again and both VMs agree,
        without a restart, with each post once.
        """
        from snstwist.commands import compare
        from snstwist.rpc import auth, grpcbridge
        from snstwist.rpc import sns_pb2_grpc as pbg
        from tests.processes import SECRET, Cluster, waitUntil

        cluster = Cluster(self, vms=2)
        mountTmpfs(self, cluster.data("vm2"), "16m")
        await cluster.start()
        masters = await cluster.masters()
        channel = grpcbridge.channel(masters["vm2"].address)
        self.addCleanup(grpcbridge.closeChannel, channel)
        stub = pbg.SNSStub(channel)
        login = await grpcbridge.call(stub.Login, pb.LoginRequest(user="alice", password="pw"),
                                      timeout=10)
        token = auth.sessionMetadata(login.token)

        def post(text, requestId):
            return grpcbridge.call(stub.Post, pb.PostRequest(text=text, request_id=requestId),
                                   timeout=10, metadata=token)

        await post("before", "r0")
        filler = fill(cluster.data("vm2"))
        outcomes = []
        for n in range(50):
            try:
                await post("maybe %d" % (n,), "m%d" % (n,))
            except errors.RemoteError as e:
                outcomes.append((e.status, e.message))
                break
        self.assertTrue(outcomes, "no post failed on a full disk")
        code, details = outcomes[0]
        self.assertEqual(code, errors.Status.UNAVAILABLE, details)
        self.assertIn("disk full on vm2", details)
        with self.assertRaises(errors.RemoteError) as refused:
            await post("refused", "r-refused")
        self.assertEqual(refused.exception.status, errors.Status.UNAVAILABLE)

        os.remove(filler)

        async def accepted():
            try:
                await post("after", "r-after")
                return True
            except errors.RemoteError as e:
                if e.status != errors.Status.UNAVAILABLE:
                    raise
                return False

        await waitUntil(accepted, "vm2 to take posts again", timeout=30)

        async def agree():
            replies = await compare.digests(cluster.router, SECRET)
            return len(replies) == 2 and not compare.differences(replies)

        await waitUntil(agree, "both VMs to agree", timeout=30)
        for vm in ("vm1", "vm2"):
            lines = cluster.postFiles(vm)["alice.txt"].decode("utf-8").splitlines()
            texts = [parsePostLine(line).post.text for line in lines]
            self.assertEqual(len(texts), len(set(texts)), vm)
            self.assertIn("before", texts)
            self.assertIn("after", texts)
            self.assertNotIn("refused", texts)
        with open(os.path.join(cluster.base, "vm2", "server.log"), encoding="utf-8") as f:
            log = f.read()
        self.assertIn("disk full on vm2", log)
