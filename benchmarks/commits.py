"""
The store's commits, alone on this machine (no gRPC, no other process).

``--batch N``: what one batch's commit to the record costs: a fresh data
directory, then for SECONDS batches of N posts by N different authors (of
AUTHORS in all) written as the store's disk thread writes them
(``Disk.write``: the record's transaction, its fsync, the post files'
appends), and the time of each.

    python benchmarks/commits.py --batch 30 --authors 100
    python benchmarks/commits.py --batch 30 --authors 100 --busy
    python benchmarks/commits.py --batch 30 --authors 100 --sqlite-checkpoints

--busy runs a thread beside it that holds the interpreter 1 ms out of every
2, as a reactor half busy does: the disk thread waits for the interpreter
after each blocking call.  --sqlite-checkpoints lets the commits checkpoint
the WAL as SQLite does by default (inside a commit, past 1,000 pages);
without it they leave that to the store's checkpointer (storage/checkpoint.py),
which this program does not run.
"""

import argparse
import json
import os
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


def busy(stop):
    while not stop.is_set():
        until = time.perf_counter() + 0.001
        while time.perf_counter() < until:
            pass
        time.sleep(0.001)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=30, metavar="N",
                        help="time one Disk.write of N posts at a time")
    parser.add_argument("--authors", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--busy", action="store_true")
    parser.add_argument("--sqlite-checkpoints", action="store_true",
                        help="let the commits checkpoint at SQLite's 1,000 pages, as before"
                             " storage/checkpoint.py")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="sns-commit-")
    stop = threading.Event()
    try:
        disk = Disk(work)
        disk.open(HOT_POSTS)
        if not args.sqlite_checkpoints:
            boundWal(disk.db)
        if args.busy:
            threading.Thread(target=busy, args=(stop,), daemon=True).start()
        seq, times = 0, []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            batch = []
            for _ in range(args.batch):
                seq += 1
                post = Post(id="vm1.a/%d" % (seq,), author="user%d" % (seq % args.authors,),
                            time_us=1_700_000_000_000_000 + seq, text="x" * 100)
                batch.append(Update(origin="vm1.a", seq=seq, time_us=post.time_us,
                                    request_id=uuid.uuid4().hex, post=post))
            t0 = time.perf_counter()
            disk.write(batch)
            times.append(1000 * (time.perf_counter() - t0))
        stop.set()
        times.sort()
        print(json.dumps({
            "page_size": disk.db.execute("PRAGMA page_size").fetchone()[0],
            "posts_per_batch": args.batch, "busy": args.busy, "batches": len(times),
            "ms_p50": round(times[len(times) // 2], 2),
            "ms_p90": round(times[len(times) * 9 // 10], 2),
            "ms_p99": round(times[len(times) * 99 // 100], 2), "ms_max": round(times[-1], 2),
            "load": os.getloadavg()}))
        disk.close()
    finally:
        stop.set()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
