"""
The store's commits, alone on this machine (no gRPC, no other process).

``--batch N``: what one batch's commit to the record costs: a fresh data
directory, then for SECONDS batches of N posts by N different authors (of
AUTHORS in all) written as the store's disk thread writes them
(``Disk.write``: the record's transaction, its fsync, the post files'
appends), and the time of each.

``--rate R``: the store's commit group as a master runs it: writes offered
at R a second, open loop, one post each, to a ``SQLiteStore`` on the
asyncio reactor, and how long each waits from ``persist`` until it is
durable (its Deferred fires): what the post -> screen path spends between
the accept and the push, with nothing else measured with it.

    python benchmarks/commits.py --batch 30 --authors 100
    python benchmarks/commits.py --batch 30 --authors 100 --busy
    python benchmarks/commits.py --batch 30 --authors 100 --sqlite-checkpoints
    python benchmarks/commits.py --rate 1000 --authors 20 --seconds 8
    python benchmarks/commits.py --syncs --rounds 400

``--syncs``: what a commit's fsync costs on this disk, and why.  Round
after round, each of a few kinds of durable write in turn (so that all
share the machine's moments), with ``--pace`` seconds idle after each, as
at 100 posts a second: ``fdatasync`` of a file with nothing written since
the last; a write of 512 B, 4 KB or a one-post commit's WAL frames
(L{FRAMES} pages with their headers) in place, in a file written whole
before; the same appended (the file grows: a size change, and a block
newly allocated, for the sync to write too); into a file
``posix_fallocate``'d (unwritten extents, which the write converts); and
``fsync`` against ``fdatasync``.  Beside them, a one-post batch written
as the disk thread writes it (``Disk.write``) with its WAL checkpointed
(PASSIVE) every ``--checkpoint-every`` batches, so that the WAL starts
over and its frames overwrite what an earlier commit wrote, and on a
second data directory whose WAL is never checkpointed (it grows, as
after a start): the ``COMMIT`` statement alone and the whole write, the
WAL frames each commit wrote, and how often the WAL grew.  To see
SQLite's own calls per commit (one ``fdatasync`` of the WAL; no sync of
the directory or of the ``-shm``), run ``--batch 1 --authors 1`` under
``strace -f -e trace=fsync,fdatasync,pwrite64,write -T``.

--busy runs a thread beside it that holds the interpreter 1 ms out of every
2, as a reactor half busy does: the disk thread waits for the interpreter
after each blocking call.  --sqlite-checkpoints lets the commits checkpoint
the WAL as SQLite does by default (inside a commit, past 1,000 pages);
without it they leave that to the store's checkpointer (storage/checkpoint.py),
which --batch does not run.  Each prints one JSON line.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from snstwist.core.model import Post, Update  # noqa: E402
from snstwist.core.state import HOT_POSTS  # noqa: E402
from snstwist.storage.checkpoint import boundWal, walCommits  # noqa: E402
from snstwist.storage.disk import Disk  # noqa: E402


def postUpdate(seq, authors, time_us):
    """The seq-th post (100 characters), by one of C{authors} users in turn."""
    post = Post(id="vm1.a/%d" % (seq,), author="user%d" % (seq % authors,),
                time_us=time_us, text="x" * 100)
    return Update(origin="vm1.a", seq=seq, time_us=time_us, request_id=uuid.uuid4().hex,
                  post=post)


def percentiles(times):
    """p50, p90, p99 and max of C{times} (ms), as the JSON line gives them."""
    times = sorted(times)
    return {"ms_p50": round(times[len(times) // 2], 2),
            "ms_p90": round(times[len(times) * 9 // 10], 2),
            "ms_p99": round(times[len(times) * 99 // 100], 2), "ms_max": round(times[-1], 2)}


def busy(stop):
    while not stop.is_set():
        until = time.perf_counter() + 0.001
        while time.perf_counter() < until:
            pass
        time.sleep(0.001)


def batches(args, work):
    """--batch N: one Disk.write of N posts at a time, each timed."""
    stop = threading.Event()
    try:
        disk = Disk(work)
        disk.open(HOT_POSTS)
        if not args.sqlite_checkpoints:
            boundWal(disk.db)
        if args.busy:
            threading.Thread(target=busy, args=(stop,), daemon=True).start()
        seq, times, cpu = 0, [], []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            batch = []
            for _ in range(args.batch):
                seq += 1
                batch.append(postUpdate(seq, args.authors, 1_700_000_000_000_000 + seq))
            t0, c0 = time.perf_counter(), time.thread_time()
            disk.write(batch)
            times.append(1000 * (time.perf_counter() - t0))
            cpu.append(1000 * (time.thread_time() - c0))
        out = {"page_size": disk.db.execute("PRAGMA page_size").fetchone()[0],
               "posts_per_batch": args.batch, "busy": args.busy, "batches": len(times)}
        out.update(percentiles(times))
        # The disk thread's own CPU (the system's included) a batch: what
        # the load of the machine changes least.
        out["cpu_ms_mean"] = round(sum(cpu) / len(cpu), 3)
        disk.close()
        return out
    finally:
        stop.set()


# A one-post batch's WAL frames (4 KB pages): the record's row, its indexes
# of posts by author and by request, the version vector's row.
FRAMES = 4
_FRAME = 24 + 4096


class TimedCommits:
    """A connection whose C{COMMIT}s are timed (ms, in C{times}); the rest passes through."""

    def __init__(self, db):
        self._db = db
        self.times = []

    def execute(self, sql, *args):
        if sql != "COMMIT":
            return self._db.execute(sql, *args)
        t0 = time.perf_counter()
        try:
            return self._db.execute(sql, *args)
        finally:
            self.times.append(1000 * (time.perf_counter() - t0))

    def __getattr__(self, name):
        return getattr(self._db, name)


class Committing:
    """
    One-post batches to the data directory C{path}, checkpointed (PASSIVE,
    on a second connection, as L{checkpoint.Checkpointer} does) every
    C{every} batches, or never (C{every} 0: the WAL grows).
    """

    def __init__(self, path, every):
        os.makedirs(path)
        self.disk = Disk(path)
        self.disk.open(HOT_POSTS)
        boundWal(self.disk.db)
        self.timed = self.disk.db = TimedCommits(self.disk.db)
        self.wal = self.disk.dbPath + "-wal"
        self.every = every
        self.checkpoints = None
        if every:
            import sqlite3
            self.checkpoints = sqlite3.connect(self.disk.dbPath, isolation_level=None)
        self.seq = self.counted = 0
        self.frames = []
        self.writes = []
        self.grew = 0

    def __call__(self):
        self.seq += 1
        before = os.path.getsize(self.wal) if os.path.exists(self.wal) else 0
        update = postUpdate(self.seq, 1, 1_700_000_000_000_000 + self.seq)
        t0 = time.perf_counter()
        self.disk.write([update])
        self.writes.append(1000 * (time.perf_counter() - t0))
        self.grew += os.path.getsize(self.wal) > before
        if self.every and self.seq % self.every == 0:
            self.countFrames()
            self.checkpoints.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def countFrames(self):
        """
        The frames of each commit since the WAL last started over (read
        from the WAL once a generation, not between two commits, so that
        the reading does not take the commits' caches).
        """
        uncounted = self.seq - self.counted
        if uncounted:
            self.frames.extend(len(pages) for pages in walCommits(self.wal)[-uncounted:])
        self.counted = self.seq

    def close(self):
        if self.checkpoints is not None:
            self.checkpoints.close()
        self.disk.close()


def syncs(args, work):
    """--syncs: kinds of durable writes, interleaved round by round, each timed."""
    n = args.rounds
    kinds = {}

    def raw(name, size, prepare, sync=os.fdatasync):
        path = os.path.join(work, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if prepare == "written":
            os.pwrite(fd, b"\1" * (n * max(size, 1) + 65536), 0)
        elif prepare == "fallocated":
            os.posix_fallocate(fd, 0, n * size + 65536)
        os.fsync(fd)
        data = b"x" * size
        at = [0]

        def write():
            if data:
                os.pwrite(fd, data, at[0])
                at[0] += len(data)
            sync(fd)

        kinds[name] = (write, [])

    frames = FRAMES * _FRAME
    raw("fdatasync, nothing written", 0, "written")
    raw("512 B in place", 512, "written")
    raw("4 KB in place", 4096, "written")
    raw("%d frames in place" % FRAMES, frames, "written")
    raw("4 KB appended", 4096, "")
    raw("%d frames appended" % FRAMES, frames, "")
    raw("%d frames appended, fsync" % FRAMES, frames, "", os.fsync)
    raw("%d frames in place, fsync" % FRAMES, frames, "written", os.fsync)
    raw("%d frames, fallocated" % FRAMES, frames, "fallocated")
    reused = Committing(os.path.join(work, "reused"), args.checkpoint_every)
    growing = Committing(os.path.join(work, "growing"), 0)
    kinds["commit, WAL reused"] = (reused, [])
    kinds["commit, WAL growing"] = (growing, [])
    try:
        for _ in range(n):
            for write, times in kinds.values():
                t0 = time.perf_counter()
                write()
                times.append(1000 * (time.perf_counter() - t0))
                time.sleep(args.pace)
        out = {"rounds": n, "pace_s": args.pace, "checkpoint_every": args.checkpoint_every}
        for name, (_, times) in kinds.items():
            out[name] = percentiles(times)
        for name, c in (("commit, WAL reused", reused), ("commit, WAL growing", growing)):
            c.countFrames()
            # The batch's write alone (the times above have the WAL's frames counted too).
            out[name].update(percentiles(c.writes))
            out[name]["COMMIT"] = percentiles(c.timed.times)
            out[name]["frames_p50"] = sorted(c.frames)[len(c.frames) // 2]
            out[name]["frames_max"] = max(c.frames)
            out[name]["wal_grew"] = c.grew
        return out
    finally:
        reused.close()
        growing.close()


def offered(args, work):
    """--rate R: persist -> durable through SQLiteStore, writes offered open loop."""
    from snstwist.commands.commandline import installReactor
    installReactor()
    from twisted.internet import defer, reactor, task

    from snstwist.storage.store import SQLiteStore

    async def measure():
        store = SQLiteStore(work, reactor)
        try:
            if args.flush_delay is not None:
                store._flusher.delay = args.flush_delay
            await store.open()
            times, sent = [], [0]
            start = time.perf_counter()
            used = resource.getrusage(resource.RUSAGE_SELF)

            def durable(_, t0):
                times.append(1000 * (time.perf_counter() - t0))

            def tick():
                now = time.perf_counter()
                if now - start >= args.seconds:
                    ticker.stop()
                    return
                for _ in range(int(args.rate * (now - start)) - sent[0]):
                    sent[0] += 1
                    t0 = time.perf_counter()
                    update = postUpdate(sent[0], args.authors, int(time.time() * 1e6))
                    store.persist([update]).addCallback(durable, t0)
                    if args.after:
                        # The rest of a post's turn on a master's reactor
                        # (replication, the slave's feed, the reply):
                        # Python holding the interpreter.
                        until = time.perf_counter() + args.after / 1000
                        while time.perf_counter() < until:
                            pass

            ticker = task.LoopingCall(tick)
            ticker.clock = reactor
            await ticker.start(0.001)
            while len(times) < sent[0]:
                await task.deferLater(reactor, 0.01, lambda: None)
            now = resource.getrusage(resource.RUSAGE_SELF)
            cpu = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
            out = {"rate": args.rate, "after_ms": args.after,
                   "switch_ms": round(sys.getswitchinterval() * 1000, 3),
                   "offered": sent[0], "durable": len(times),
                   "batches": store.batches, "flush_delay": store._flusher.delay,
                   "flush_rounds": store._flusher.rounds,
                   "files_flushed": store._flusher.files,
                   # The process's CPU (every thread, the system's included) a
                   # write, the offering loop's too.
                   "cpu_ms_per_write": round(1000 * cpu / max(1, len(times)), 3)}
            out.update(percentiles(times))
            return out
        finally:
            # Its threads would keep the process (and the bench lock) alive.
            await store.close()

    result = []

    def run():
        d = defer.ensureDeferred(measure())
        d.addCallback(result.append)
        d.addErrback(lambda f: sys.stderr.write(f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    if not result:
        raise SystemExit(1)
    return result[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--batch", type=int, default=30, metavar="N",
                      help="time one Disk.write of N posts at a time (the default mode)")
    mode.add_argument("--syncs", action="store_true",
                      help="time kinds of durable writes (fdatasync of an overwrite, of an"
                           " append, fsync, a one-post commit with its WAL reused or growing),"
                           " interleaved")
    mode.add_argument("--rate", type=float, default=None, metavar="R",
                      help="offer R writes a second to a SQLiteStore, open loop, and time"
                           " each from persist until durable")
    parser.add_argument("--authors", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=400,
                        help="(--syncs) rounds of every kind of write")
    parser.add_argument("--pace", type=float, default=0.01, metavar="S",
                        help="(--syncs) seconds idle after each write, as at 100 posts/s")
    parser.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                        help="(--syncs) checkpoint the reused WAL every N commits (the"
                             " store's 0.5 s at 100/s)")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--busy", action="store_true")
    parser.add_argument("--after", type=float, default=0.0, metavar="MS",
                        help="(--rate) hold the interpreter MS ms on the reactor after each"
                             " persist, as the rest of a post's turn on a master does")
    parser.add_argument("--switch", type=float, default=None, metavar="S",
                        help="sys.setswitchinterval(S): how long a thread waiting for the"
                             " interpreter waits before it asks the holder to let go")
    parser.add_argument("--flush-delay", type=float, default=None, metavar="S",
                        help="start a round of post file flushes S seconds after a batch"
                             " (--rate; the store's own delay by default)")
    parser.add_argument("--sqlite-checkpoints", action="store_true",
                        help="let the commits checkpoint at SQLite's 1,000 pages, as before"
                             " storage/checkpoint.py (--batch)")
    args = parser.parse_args()
    if args.switch is not None:
        sys.setswitchinterval(args.switch)
    work = tempfile.mkdtemp(prefix="sns-commit-")
    try:
        if args.syncs:
            out = syncs(args, work)
        else:
            out = offered(args, work) if args.rate else batches(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["load"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
