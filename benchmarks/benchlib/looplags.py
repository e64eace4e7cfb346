"""
The loop lag of each phase of a run, from the servers' logs: every server
of C{history.py} runs with $SNS_LOOP_LAG_MS, and logs each timer that fired
later than that (L{snstwist.core.looplag}) with the time and the CPU its
reactor thread used meanwhile, and how much of that went to collecting
garbage.
"""

import glob
import os
import re

LAG = re.compile(r"\[(\S+) (\S+) pid=(\d+) .*loop lag: a timer fired ([\d.]+) ms late"
                 r" at ([\d.]+), the reactor thread busy ([\d.]+) ms"
                 r"(?: of it, ([\d.]+) ms collecting garbage)?")


def lagEvents(work):
    """Every late timer the servers of C{work} logged."""
    events = []
    # twistd rotates its log file every megabyte: read vmN.log.* too.
    for path in glob.glob(os.path.join(work, "vm[12].log*")):
        with open(path, errors="replace") as f:
            for line in f:
                m = LAG.search(line)
                if m:
                    events.append({"vm": m.group(1), "role": m.group(2),
                                   "pid": int(m.group(3)), "ms": float(m.group(4)),
                                   "at": float(m.group(5)), "busy": float(m.group(6)),
                                   "collecting": float(m.group(7) or 0)})
    return events


def lagsByPhase(events, windows):
    """
    For each name of C{windows} ((name, start, end), a name maybe more than
    once): how many timers were late within its windows, the latest (and in
    which process) and the longest busy reactor turn.
    """
    out = {}
    for name in dict.fromkeys(name for name, _, _ in windows):
        spans = [(start, end) for n, start, end in windows if n == name]
        inside = [e for e in events if any(start <= e["at"] <= end for start, end in spans)]
        worst = max(inside, key=lambda e: e["ms"], default=None)
        busiest = max(inside, key=lambda e: e["busy"], default=None)
        out[name] = {"turns_over_20ms": len(inside),
                     "max_ms": worst["ms"] if worst else None,
                     "max_busy_ms": busiest["busy"] if busiest else None,
                     "busiest_collecting_ms": busiest["collecting"] if busiest else None,
                     "where": "%s %s %d" % (worst["vm"], worst["role"], worst["pid"])
                     if worst else None,
                     "busiest_where": "%s %s %d" % (busiest["vm"], busiest["role"],
                                                    busiest["pid"]) if busiest else None}
    return out
