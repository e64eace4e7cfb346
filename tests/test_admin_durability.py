"""
sns-admin's backup and import, as durable writers: a backup copies whole
post lines only (however the copy is chunked), leaves out what is not a
post file, flushes what it wrote and closes it; an import flushes its files
and directories, counts what it read and holds request ids to their bound.
"""

import io
import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors
from snstwist.storage import admin as storeAdmin
from snstwist.storage import importer
from tests.test_admin import jsonLines
from tests.test_store_fsync import FsyncRecorder, openFiles


def writeBytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def readBytes(path):
    with open(path, "rb") as f:
        return f.read()


class CopyWholeLinesTests(SynchronousTestCase):
    def copy(self, data, chunk):
        base = self.mktemp()
        os.makedirs(base)
        source, target = os.path.join(base, "in.txt"), os.path.join(base, "out.txt")
        writeBytes(source, data)
        size = storeAdmin._copyWholeLines(source, target, chunk=chunk)
        return readBytes(target), size

    def test_a_torn_last_line_is_left_out_whatever_the_chunk(self):
        data = b"one\ntwo two\nthree three three\nfour (torn"
        for chunk in (1, 3, 4, 7, 1024):
            copied, size = self.copy(data, chunk)
            self.assertEqual(copied, b"one\ntwo two\nthree three three\n", chunk)
            self.assertEqual(size, len(copied))

    def test_whole_lines_are_copied_exactly(self):
        data = b"".join(b"line %d\n" % (i,) for i in range(100))
        for chunk in (5, 64, 1 << 20):
            self.assertEqual(self.copy(data, chunk)[0], data)

    def test_a_file_without_a_whole_line_copies_nothing(self):
        self.assertEqual(self.copy(b"partial", 4), (b"", 0))


class BackupTests(SynchronousTestCase):
    def vm(self):
        base = self.mktemp()
        path = os.path.join(base, "vm")
        os.makedirs(os.path.join(path, "posts"))
        line = jsonLines({"time": "2026-11-29T18:00:00.000001Z", "id": "vm1.a/1",
                          "author": "alice", "text": "hi"})[0]
        writeBytes(os.path.join(path, "posts", "alice.txt"), line)
        writeBytes(os.path.join(path, "posts", "alice.txt.tmp"), line + line)
        sqlite3.connect(os.path.join(path, "sns.sqlite3")).close()
        return base, path, line

    def test_only_post_files_are_copied(self):
        base, path, line = self.vm()
        files, size = storeAdmin.backup(path, os.path.join(base, "copy"))
        self.assertEqual(os.listdir(os.path.join(base, "copy", "posts")), ["alice.txt"])
        self.assertEqual((files, size), (1, len(line)))

    def test_the_copy_is_flushed_and_closed(self):
        base, path, line = self.vm()
        recorder = FsyncRecorder(self)
        copy = os.path.realpath(os.path.join(base, "copy"))
        storeAdmin.backup(path, copy)
        flushed = [p for kind, p in recorder.events]
        for needed in (os.path.join(copy, "posts", "alice.txt"),
                       os.path.join(copy, "sns.sqlite3"), os.path.join(copy, "posts"), copy):
            self.assertIn(needed, flushed)
        self.assertEqual(openFiles(copy), [])


class ImportTests(SynchronousTestCase):
    def lines(self, request="r1"):
        return jsonLines(
            {"user": "alice"}, {"user": "bob"},
            {"follower": "alice", "followee": "bob"},
            {"time": "2026-11-29T18:00:00.000001Z", "author": "alice", "text": "hi",
             "request": request},
            {"time": "2026-11-29T18:00:01.000001Z", "author": "bob", "text": "yo"})

    def test_an_import_counts_what_it_read(self):
        made = importer.Importer(self.mktemp(), "import-test")
        made.run(io.BytesIO(b"".join(self.lines())))
        self.assertEqual(made.counts, {"user": 2, "follow": 1, "post": 2})

    def test_an_import_is_flushed_and_closed_when_it_returns(self):
        path = os.path.realpath(self.mktemp())
        recorder = FsyncRecorder(self)
        importer.Importer(path, "import-test").run(self.lines())
        flushed = [p for kind, p in recorder.events]
        self.assertIn(path, flushed)
        self.assertEqual(openFiles(path), [])

    def test_request_ids_are_bounded_like_a_clients(self):
        importer.Importer(self.mktemp(), "import-test").run(self.lines("r" * 64))
        e = self.assertRaises(errors.SNSError, importer.Importer(self.mktemp(), "import-test").run,
                              self.lines("r" * 65))
        self.assertIn("line 4", str(e))
