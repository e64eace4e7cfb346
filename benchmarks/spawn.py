"""
What a master's spawn of its slave costs its reactor thread.

A process that imports what a server imports and holds ``--mb`` megabytes of
small objects (a master's size at 1M posts is about 100 MB), on the asyncio
reactor, spawns ``--spawns`` children one after the other as a master spawns
its slave (``snstwist.buddy.spawn``: a ``WatchedProcess``, the master's
environment) and times each ``spawn`` call: wall time and the reactor
thread's CPU.  The child is an interpreter that exits at once: the parent
waits only until it has exec'd, whatever it runs next.

``--fork`` makes Twisted fork and exec instead of its posix_spawnp path
(what a ``path``, ``uid``, ``gid`` or pty would make it do), to compare.

    python benchmarks/spawn.py --mb 100
    python benchmarks/spawn.py --mb 100 --fork

Prints one JSON line.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def rssKb():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--spawns", type=int, default=10)
    parser.add_argument("--fork", action="store_true")
    args = parser.parse_args()

    from twisted.internet import asyncioreactor
    asyncioreactor.install()
    from twisted.internet import defer, reactor

    import snstwist.commands.tap  # noqa: F401 (a server's imports)
    import snstwist.server.service  # noqa: F401
    from snstwist import buddy

    held = [b"%1000d" % (i,) for i in range(args.mb * 1000)]
    if args.fork:
        reactor._neverUseSpawn = True
    command = buddy.BuddyCommand(sys.executable, (sys.executable, "-c", "pass"),
                                 dict(os.environ))
    result = {"mb_held": args.mb, "fork": args.fork, "spawns": []}

    @defer.inlineCallbacks
    def run():
        result["rss_kb"] = rssKb()
        result["load_before"] = os.getloadavg()
        for _ in range(args.spawns):
            wall, cpu = time.perf_counter(), time.thread_time()
            process = buddy.spawn(reactor, "child", command)
            result["spawns"].append({"wall_ms": round((time.perf_counter() - wall) * 1e3, 2),
                                     "cpu_ms": round((time.thread_time() - cpu) * 1e3, 2)})
            yield process.ended
        result["load_after"] = os.getloadavg()
        reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    del held
    for key in ("wall_ms", "cpu_ms"):
        values = sorted(s[key] for s in result["spawns"])
        result[key + "_p50_max"] = (values[len(values) // 2], values[-1])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
