"""
Writes an import file for C{sns-admin import}: USERS users, each following
FOLLOWS others, and POSTS posts of about 100 characters by random users, in
time order (one every millisecond up to now).  Deterministic (seeded).

    python benchmarks/dataset.py --users 1000 --posts 1000000 > data.jsonl
"""

import argparse
import datetime
import json
import random
import sys

TEXT = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()


def lines(users, follows, posts, seed=1):
    rng = random.Random(seed)
    names = ["user%05d" % (i,) for i in range(users)]
    start = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)
    for name in names:
        yield {"user": name, "time": start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    for name in names:
        for other in rng.sample(names, min(follows, users - 1) + 1):
            if other != name and follows:
                yield {"follower": name, "followee": other}
    step = datetime.timedelta(milliseconds=1)
    moment = start
    for n in range(posts):
        moment += step
        text = " ".join(rng.choice(TEXT) for _ in range(15))[:100]
        yield {"author": rng.choice(names), "time": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
               "text": "%d %s" % (n, text)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--follows", type=int, default=10)
    parser.add_argument("--posts", type=int, default=100000)
    args = parser.parse_args()
    out = sys.stdout
    for record in lines(args.users, args.follows, args.posts):
        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
