"""
Phase 4 of C{benchmarks/run.py}: a master's memory and CPU idle and with N
live timeline sessions (C{cfg["sessions"]}), opened by load processes pinned
to its VM, and after they closed.

Takes the run (C{run.py}'s C{Bench}) and a started L{benchlib.cluster.Cluster}.
"""

import statistics
import time

from benchlib.processes import CpuMeter, loadgen, rssKB, stopEach
from benchlib.stats import split


def memory(bench, cluster, vm="vm1"):
    cfg = bench.cfg
    n = cfg["sessions"]
    master = cluster.masterOf(vm)

    def openSessions(timeline):
        args = ["--router", cluster.router, "--pin", vm]
        if timeline:
            args.append("--timeline")
        workers = [loadgen(bench.name("sessions-%s-w%d" % ("tl" if timeline else "users", i)),
                           "sessions" if timeline else "users", bench.logdir,
                           "--prefix", "m%d_" % (i,), "--clients", k, *args)
                   for i, k in enumerate(split(n, cfg["sessionWorkers"]))]
        vms = {}
        for w in workers:
            for v, k in w.expect("ready", 180)["vms"].items():
                vms[v] = vms.get(v, 0) + k
        return workers, vms

    def sample(count=5, gap=0.4):
        values = []
        for _ in range(count):
            values.append(rssKB(master.pid))
            time.sleep(gap)
        return int(statistics.median(values))

    t = time.monotonic()
    # The users first, by Login alone: a new user is not a session's cost.
    workers, _ = openSessions(False)
    stopEach(workers)
    time.sleep(1.5)
    idle = sample()
    meter = CpuMeter({"master": [master.pid]})
    time.sleep(1.0)
    idleCpu = meter.percent()["master"]
    workers, vms = openSessions(True)
    opened = time.monotonic() - t
    time.sleep(1.0)  # heartbeats both ways on every session
    meter = CpuMeter({"master": [master.pid]})
    live = sample(6, 0.5)
    liveCpu = meter.percent()["master"]
    clients = {s.pid: s.clients for s in cluster.status().servers}.get(master.pid)
    stopEach(workers)
    time.sleep(2.0)
    after = sample(3)
    out = {"vm": vm, "pid": master.pid, "sessions": n, "sessions_on_master": vms.get(vm, 0),
           "router_reported_clients": clients, "rss_idle_kb": idle,
           "rss_sessions_kb": live, "rss_after_close_kb": after,
           "kb_per_session": round((live - idle) / max(1, vms.get(vm, 0)), 1),
           "master_cpu_percent_idle": idleCpu, "master_cpu_percent_with_sessions": liveCpu,
           "open_seconds": round(opened, 1)}
    bench.say("memory: master %s RSS %d KB idle, %d KB with %d timeline sessions"
              " (%.1f KB each), %d KB after they closed; master CPU %d%% idle, %d%% holding"
              " the idle sessions"
              % (vm, idle, live, out["sessions_on_master"], out["kb_per_session"], after,
                 idleCpu, liveCpu))
    return out
