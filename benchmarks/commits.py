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
from snstwist.storage.checkpoint import boundWal  # noqa: E402
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
    mode.add_argument("--rate", type=float, default=None, metavar="R",
                      help="offer R writes a second to a SQLiteStore, open loop, and time"
                           " each from persist until durable")
    parser.add_argument("--authors", type=int, default=100)
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
        out = offered(args, work) if args.rate else batches(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["load"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
