"""
The memory of the hot window (snstwist.core.window) filled with the largest
posts: AUTHORS authors each write 20 posts of CHARS 4-byte characters into
one Replica, and the process's resident memory is read before and after.

    python benchmarks/window.py --authors 8000 --chars 1000
    python benchmarks/window.py --authors 8000 --chars 1000 --unbounded

--unbounded gives the window no byte budget (as before it had one: the 20
newest posts of each author, whatever their size).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from snstwist.core.model import Post, Update  # noqa: E402
from snstwist.core.state import Replica  # noqa: E402


def rssKB():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--authors", type=int, default=8000)
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--chars", type=int, default=1000)
    parser.add_argument("--unbounded", action="store_true")
    args = parser.parse_args()
    budget = {} if not args.unbounded else {"authorBytes": 10**12, "windowBytes": 10**12}
    before = rssKB()
    replica = Replica(**budget)
    started = time.process_time()
    seq = 0
    body = "\U0001f600" * args.chars
    for _ in range(args.posts):
        for a in range(args.authors):
            seq += 1
            author = "user%05d" % (a,)
            text = ("%d " % (seq,) + body)[:args.chars]
            post = Post(id="vm1.a/%d" % (seq,), author=author, time_us=seq, text=text)
            replica.apply(Update(origin="vm1.a", seq=seq, time_us=seq, post=post))
    cpu = time.process_time() - started
    held = sum(len(p) for p in replica.windows.posts.values())
    print(json.dumps({
        "authors": args.authors, "posts": seq, "chars": args.chars,
        "budget": "unbounded" if args.unbounded else "default",
        "window_bytes_limit": replica.windows.windowBytes,
        "held_posts": held, "held_bytes_estimate": replica.windows.heldBytes,
        "rss_growth_mb": round((rssKB() - before) / 1024, 1),
        "cpu_s": round(cpu, 2)}))


if __name__ == "__main__":
    main()
