"""
Helpers for the tests of a data directory's record and post files
(L{snstwist.storage.disk.Disk}), shared by test_store_fsync and test_repair.
"""

import os
import sqlite3


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
