"""
Helpers for the tests of a data directory's record and post files
(L{snstwist.storage.disk.Disk}), shared by test_store_fsync and test_repair.
"""

import os
import sqlite3

from twisted.internet import reactor, task

from snstwist.storage.disk import Disk


def batchHandled():
    """
    Fires once the store's reactor has finished with the batch whose
    writer's Deferred just fired: a due round of checkpoints or flushes
    starts in that same turn, after the batch's writers were answered.
    """
    return task.deferLater(reactor, 0, lambda: None)


def unsynced(path):
    """The authors in the record's unsynced table, read on a connection of our own."""
    db = sqlite3.connect(os.path.join(path, "sns.sqlite3"))
    try:
        return sorted(a for (a,) in db.execute("SELECT author FROM unsynced"))
    finally:
        db.close()


def roundWithWrite(disk, write):
    """
    One flush round of C{disk} during which C{write()} runs once the round
    has flushed its files: the disk thread committing and appending the next
    batch while the sync thread is still in its round.
    """
    flush = disk.files.sync

    def meanwhile(authors, created):
        flush(authors, created)
        write()

    disk.files.sync = meanwhile
    try:
        disk.unflushed.sync()
    finally:
        disk.files.sync = flush


def postFiles(path):
    """The post files of the data directory C{path}: {file name: bytes}."""
    posts = os.path.join(path, "posts")
    out = {}
    for name in sorted(os.listdir(posts)):
        with open(os.path.join(posts, name), "rb") as f:
            out[name] = f.read()
    return out


def openDisk(test):
    """A L{Disk} with its record open, in a fresh directory of C{test}, closed after it."""
    path = test.mktemp()
    os.makedirs(path)
    disk = Disk(path)
    test.addCleanup(disk.close)
    disk.openRecord()
    return disk
