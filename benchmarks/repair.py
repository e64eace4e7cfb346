"""
What opening a VM's data after a crash costs: the repair of its post files
(snstwist.storage.repair), which a promoted slave does before it answers.

A copy of an imported data directory (``history.py``'s WORK/imported-N) is
written to as a master killed while writing leaves it: a writer commits one
post by each of K authors, appends them and stops before its flush, and the
machine keeps half of each file's last line.  Then the next writer opens it
(``Disk.openRecord``: lock, record, repair), timed; ROUNDS times.

    python benchmarks/repair.py --data WORK/imported-1000000 --authors 50
    python benchmarks/repair.py --data WORK/imported-10000000 --copy DIR

With --copy DIR the copy is DIR, made when missing and kept (a 10M copy
takes minutes; the code of another checkout can then run on the same copy).
It runs the code of the checkout it is in.  A measurement, not a test.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from snstwist.core.model import Post, Update  # noqa: E402
from snstwist.storage.disk import Disk  # noqa: E402


def crash(path, authors, origin, first):
    """One post by each of C{authors} committed and appended, not flushed; last lines torn."""
    disk = Disk(path)
    disk.openRecord()
    now = int(time.time() * 1e6)
    updates = []
    for i, author in enumerate(authors):
        seq = first + i
        post = Post(id="%s/%d" % (origin, seq), author=author, time_us=now + i,
                    text="written as the master died %d" % (seq,))
        updates.append(Update(origin=origin, seq=seq, time_us=now + i, post=post))
    disk.write(updates)
    disk.close()
    for author in authors:
        name = os.path.join(path, "posts", author + ".txt")
        with open(name, "rb") as f:
            f.seek(-200, os.SEEK_END)
            tail = f.read()
        last = len(tail) - tail.rstrip(b"\n").rfind(b"\n") - 1
        os.truncate(name, os.path.getsize(name) - last // 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="an imported data directory (copied)")
    parser.add_argument("--authors", type=int, default=50, help="authors writing as it died")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tmp", default=None, help="where the copy goes")
    parser.add_argument("--copy", default=None, help="the copy to use (made if missing), kept")
    args = parser.parse_args()
    work = None if args.copy else tempfile.mkdtemp(prefix="sns-repair-", dir=args.tmp)
    path = args.copy or os.path.join(work, "data")
    try:
        if not os.path.exists(path):
            shutil.copytree(args.data, path)
        names = sorted(n[:-len(".txt")] for n in os.listdir(os.path.join(path, "posts")))
        chosen = random.Random(7).sample(names, min(args.authors, len(names)))
        opens = []
        for r in range(args.rounds):
            crash(path, chosen, "bench-repair-%d-%d" % (os.getpid(), r), 1)
            disk = Disk(path)
            began = time.perf_counter()
            disk.openRecord()
            opens.append(round((time.perf_counter() - began) * 1000, 1))
            disk.close()
            print("round %d: open after a crash with %d authors unsynced: %.1f ms"
                  % (r + 1, len(chosen), opens[-1]), flush=True)
        opens.sort()
        print(json.dumps({"authors": len(chosen), "files": len(names), "open_ms": opens,
                          "p50_ms": opens[len(opens) // 2], "load": os.getloadavg()}))
    finally:
        if work is not None:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
