"""
A process whose store commits and acknowledges posts but never flushes their
post files: it prints C{acked SEQ} as each persist fires and C{done} at the
end, then waits to be SIGKILLed (tests/test_store_fsync.py).  What it
appended then holds until its files are cut back, as a machine's crash would.

    python -m tests.crashwriter DATA ORIGIN FIRST LAST

L{cutShort} leaves the same in this process, for one batch.
"""

import os
import sys
import threading

from twisted.internet import defer, reactor

from snstwist.storage.disk import Disk
from snstwist.storage.store import SQLiteStore
from tests.strategies import postUpdate

AUTHORS = ("alice", "bob", "carol")


def updates(origin, first, last):
    """The posts of this run: seq FIRST..LAST of ORIGIN, by three authors in turn."""
    return [postUpdate(origin, seq, 1000 * seq, AUTHORS[seq % len(AUTHORS)], "post %d" % (seq,))
            for seq in range(first, last + 1)]


def cutShort(path, updates, cut):
    """
    What a crash between a batch's commit and its flush leaves in the data
    directory C{path}: C{updates} committed and appended by a writer that
    then stops without flushing, and each post file the batch appended to
    cut by C{cut(file, its size before the batch)} (what the machine lost).
    """
    disk = Disk(path)
    disk.openRecord()
    sizes = {name: os.path.getsize(os.path.join(disk.postsDir, name))
             for name in disk.files.names()}
    disk.write(updates)
    disk.close()
    for author in {u.post.author for u in updates if u.post is not None}:
        name = author + ".txt"
        cut(os.path.join(disk.postsDir, name), sizes.get(name))


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run(path, origin, first, last):
    store = SQLiteStore(path)
    never = threading.Event()
    # The files are never flushed: the sync thread waits for ever.
    store._disk.unflushed.sync = never.wait
    await store.open()
    batches = []
    todo = updates(origin, first, last)
    for start in range(0, len(todo), 4):
        for u in todo[start:start + 4]:
            d = store.persist([u])
            d.addCallback(lambda _, seq=u.seq: say("acked %d" % (seq,)))
            batches.append(d)
        await defer.gatherResults(batches)
    say("done")


def main(argv):
    path, origin, first, last = argv[0], argv[1], int(argv[2]), int(argv[3])
    d = defer.ensureDeferred(run(path, origin, first, last))
    d.addErrback(lambda f: (say("failed %s" % (f.getTraceback(),)), reactor.stop()))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
