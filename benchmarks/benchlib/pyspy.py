"""
Profiling a server under load with py-spy: start a recording of a pid, and
read py-spy's raw output into the busiest functions of each thread.
"""

import os
import shutil
import subprocess

from benchlib.processes import PY


def startProfile(say, pid, seconds, path, rate=100):
    """
    Record C{pid} with py-spy for C{seconds} into C{path} (raw format),
    C{rate} samples a second; the recorder's Popen, or None (said) when
    py-spy is not installed.
    """
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy")
    if not os.path.exists(spy):
        say("py-spy not installed: no profile (pip install py-spy)")
        return None
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--rate", str(rate), "--idle", "--threads", "--format", "raw", "--output", path,
         "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=open(path + ".log", "w"))


IDLE_LEAVES = {"EpollSelector.select", "Condition.wait", "Thread.run", "Queue.get",
               "_worker",  # a concurrent.futures worker waiting for work
               "DiskThread._work"}  # a store's thread asleep on its lock (storage/threads.py)
FRAMEWORK = ("<module>", "run", "runApp", "ApplicationRunner.", "UnixApplicationRunner.",
             "runReactorWithLogging", "AsyncioSelectorReactor.run", "BaseEventLoop.run_forever",
             "BaseEventLoop._run_once", "Handle._run", "Thread._bootstrap", "Thread.run",
             "ThreadWorker.", "Team.", "ThreadPool.", "ThreadedContextTracker.",
             "ContextTracker.", "thread (")


def _top(counts, total, n):
    return [(k, round(100.0 * v / total, 1))
            for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:n]]


def topFunctions(path, n=12):
    """
    Per thread, from py-spy's raw output (recorded with --idle --threads):
    how busy it was, and the functions with the largest self and inclusive
    shares of its busy samples (the event loop and thread-pool frames that
    every sample has are left out of the inclusive list).
    """
    threads = {}
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            count = int(count)
            frames = stack.split(";")
            name = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
            t = threads.setdefault(name, {"samples": 0, "idle": 0, "self": {}, "incl": {}})
            t["samples"] += count
            names = ["%s (%s)" % (fr.split(" (")[0], fr.split(" (")[-1].rsplit(":", 1)[0])
                     if " (" in fr else fr for fr in frames[1:]]
            if not names or names[-1].split(" (")[0] in IDLE_LEAVES:
                t["idle"] += count
                continue
            t["self"][names[-1]] = t["self"].get(names[-1], 0) + count
            for fr in set(names):
                if not fr.startswith(FRAMEWORK):
                    t["incl"][fr] = t["incl"].get(fr, 0) + count
    out = []
    for name, t in sorted(threads.items(), key=lambda kv: -(kv[1]["samples"] - kv[1]["idle"])):
        busy = t["samples"] - t["idle"]
        if not busy:
            continue

        out.append({"thread": name, "samples": t["samples"],
                    "busy_percent": round(100.0 * busy / t["samples"], 1),
                    "self": _top(t["self"], busy, n), "inclusive": _top(t["incl"], busy, n)})
    return out
