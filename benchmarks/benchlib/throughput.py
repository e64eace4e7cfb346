"""
Phases 1 and 5 of C{benchmarks/run.py}: acknowledged posts per second under a
closed loop of C concurrent clients, beside a bare C{grpc.aio} echo at the
same concurrency (the yardstick, C{benchmarks/echo.py}); and the same load
with py-spy on vm1's master (C{--profile}).

Posts are measured in two forms, one after the other at each level: as a
user in timeline mode posts (the timeline open, each post a message on the
session's stream: the headline, since every line typed in timeline mode is
a post), and as a script without a session posts (C{--unary}: a Post call
each).

Each function takes the run (C{run.py}'s C{Bench}: its C{cfg}, C{logdir},
C{say}, C{name} and C{raw}) and a started L{benchlib.cluster.Cluster}.
"""

import os
import time

from benchlib.processes import HERE, PY, Child, CpuMeter, loadgen, stopEach
from benchlib.pyspy import startProfile, topFunctions
from benchlib.stats import split, summarize


def echoServer(bench):
    if bench.echo is None:
        child = Child("echo-server", [PY, os.path.join(HERE, "echo.py"), "server",
                                      "--listen", "127.0.0.1:0"], bench.logdir)
        bench.echo = (child, child.expect("ready", 30)["address"])
    return bench.echo


def echoLoad(bench, clients, rate=None, seconds=None):
    """
    The echo under C{clients} callers, back to back, or each paced at
    C{rate} calls a second (the processes idle between calls, as they do
    under the latency phase's posters), for C{seconds} (the run's default).
    """
    server, address = echoServer(bench)
    cfg = bench.cfg
    seconds = seconds or cfg["seconds"]
    paced = ["--rate", str(rate)] if rate else []
    workers = [Child(bench.name("echo-c%d%s-w%d" % (clients, "-r%d" % rate if rate else "", i)), [
        PY, os.path.join(HERE, "echo.py"), "client", "--target", address,
        "--clients", str(n)] + paced, bench.logdir)
        for i, n in enumerate(split(clients, min(clients, cfg["workers"])))]
    for w in workers:
        w.expect("ready", 60)
    meter = CpuMeter({"echo server": [server.pid], "load generators": [w.pid for w in workers]})
    for w in workers:
        w.send("go %s %s" % (seconds, cfg["warmup"]))
    results = [w.expect("result", seconds + cfg["warmup"] + 60) for w in workers]
    cpu = meter.percent()
    stopEach(workers)
    lat = [x for r in results for x in r["lat"]]
    return {"clients": clients, "calls_per_s": round(len(lat) / seconds, 1),
            "errors": sum(r["errors"] for r in results), "latency_ms": summarize(lat),
            "cpu_percent": cpu}, lat


# The routers show a server's counts as of its last heartbeat (every 0.5 s).
HEARTBEATS = 1.2

_COUNTS = ("acknowledged", "sent_updates", "sent_messages", "acked_updates", "ack_messages",
           "fed_updates", "fed_calls")


def streamCounts(cluster):
    """{vm: {count: n}}: what each master acknowledged and its streams carried."""
    from snstwist.rpc import sns_pb2 as pb
    out = {}
    for s in cluster.status().servers:
        if s.role == pb.MASTER:
            c = out[s.vm] = dict.fromkeys(_COUNTS, 0)
            c.update(acknowledged=s.acknowledged, fed_updates=s.fed_updates,
                     fed_calls=s.fed_calls)
            for p in s.peers:
                for k in _COUNTS[1:5]:
                    c[k] += getattr(p, k)
    return out


def streamTraffic(before, after):
    """
    Per master, from two L{streamCounts}: the posts it acknowledged, and per
    acknowledged post the replication messages it sent (updates) and got
    back (acks) and the calls feeding its slave; updates (ids) per message.
    """
    out = {}
    for vm, a in sorted(after.items()):
        b = before.get(vm, dict.fromkeys(_COUNTS, 0))
        d = {k: a[k] - b[k] for k in _COUNTS}
        posts = d["acknowledged"] or None

        def ratio(x, y):
            return round(x / y, 2) if y else None

        out[vm] = {"acknowledged": d["acknowledged"],
                   "updates_per_message": ratio(d["sent_updates"], d["sent_messages"]),
                   "acks_per_message": ratio(d["acked_updates"], d["ack_messages"]),
                   "update_messages_per_post": ratio(d["sent_messages"], posts),
                   "ack_messages_per_post": ratio(d["ack_messages"], posts),
                   "updates_per_feed_call": ratio(d["fed_updates"], d["fed_calls"]),
                   "feed_calls_per_post": ratio(d["fed_calls"], posts)}
    return out


def describeTraffic(traffic):
    return "; ".join(
        "%s: %d acked, %s updates/msg, %s acks/msg, msgs/post %s out + %s back, feed %s/call"
        % (vm, t["acknowledged"], t["updates_per_message"], t["acks_per_message"],
           t["update_messages_per_post"], t["ack_messages_per_post"],
           t["updates_per_feed_call"]) for vm, t in traffic.items())


def cpuPerPost(cpu, postsPerSecond):
    """CPU ms per acknowledged post of each process group (from % of a core)."""
    if not postsPerSecond:
        return {}
    return {k: round(10 * v / postsPerSecond, 3) for k, v in cpu.items()}


FORMS = ("stream", "unary")


def postLoad(bench, cluster, clients, tag, profile=None, form="stream"):
    """
    One closed-loop posting run of C{clients}, posting in C{form} (L{FORMS});
    with C{profile} ({"pids": {name: pid}, "seconds", "dir"}) py-spy samples
    each of those processes while it runs (into C{dir}/profile-NAME.txt).
    """
    cfg = bench.cfg
    counts = split(clients, min(clients, cfg["workers"]))
    unary = ["--unary"] if form == "unary" else []
    workers = [loadgen(bench.name("post-%s-c%d-w%d" % (form, clients, i)), "post",
                       bench.logdir, "--router", cluster.router,
                       "--prefix", "%s%dw%d_" % (tag, clients, i), "--clients", n, *unary)
               for i, n in enumerate(counts)]
    vms = {}
    for w in workers:
        for vm, n in w.expect("ready", 60 + clients / 5)["vms"].items():
            vms[vm] = vms.get(vm, 0) + n
    procs = cluster.processes()
    procs["load generators"] = [w.pid for w in workers]
    time.sleep(HEARTBEATS)
    counts = streamCounts(cluster)
    meter = CpuMeter(procs)
    spies = []
    seconds = cfg["seconds"]
    if profile:
        seconds = profile["seconds"]
        # And the first load process: the client library's own CPU per post.
        profile["pids"]["load generator"] = workers[0].pid
        for name, pid in profile["pids"].items():
            path = os.path.join(profile["dir"], "profile-%s.txt" % (name.replace(" ", "-"),))
            spies.append(startProfile(bench.say, pid, seconds, path))
    for w in workers:
        w.send("go %s %s" % (seconds, cfg["warmup"]))
    results = [w.expect("result", seconds + cfg["warmup"] + 60) for w in workers]
    cpu = meter.percent()
    stopEach(workers)
    time.sleep(HEARTBEATS)
    traffic = streamTraffic(counts, streamCounts(cluster))
    for spy in spies:
        if spy is not None:
            spy.wait(60)
    lat = [x for r in results for x in r["lat"]]
    out = {"clients": clients, "form": form, "posts_per_s": round(len(lat) / seconds, 1),
           "acked_one_copy": sum(r["ok1"] for r in results),
           "errors": sum(r["errors"] for r in results), "latency_ms": summarize(lat),
           "masters_used": vms, "cpu_percent": cpu,
           "cpu_ms_per_post": cpuPerPost(cpu, len(lat) / seconds), "streams": traffic}
    return out, lat


def throughput(bench, cluster, levels, key):
    """
    At each level of clients: the echo, then posts in each of L{FORMS}.  A
    row's C{sns} is the stream form (the headline), C{unary} the other.
    """
    rows = []
    for clients in levels:
        echo, echoLat = echoLoad(bench, clients)
        bench.say("echo    %4d clients: %8.1f calls/s  p50 %.2f ms p99 %.2f ms"
                  % (clients, echo["calls_per_s"], echo["latency_ms"]["p50"] or 0,
                     echo["latency_ms"]["p99"] or 0))
        row = {"clients": clients, "echo": echo}
        for form in FORMS:
            sns, snsLat = postLoad(bench, cluster, clients, "t%s" % (key,), form=form)
            ratio = sns["posts_per_s"] / echo["calls_per_s"] if echo["calls_per_s"] else None
            bench.say("snstwist %4d clients, %s: %8.1f posts/s (copies>=2) p50 %.2f ms"
                      " p99 %.2f ms; ratio %.0f%%; cpu %s"
                      % (clients, form, sns["posts_per_s"], sns["latency_ms"]["p50"] or 0,
                         sns["latency_ms"]["p99"] or 0, 100 * (ratio or 0),
                         sns["cpu_percent"]))
            bench.say("         CPU ms per post %s" % (sns["cpu_ms_per_post"],))
            bench.say("         streams %s" % (describeTraffic(sns["streams"]),))
            ratio = round(ratio, 3) if ratio is not None else None
            if form == FORMS[0]:
                row.update(sns=sns, ratio=ratio)
                bench.raw.setdefault("throughput-%s" % (key,), {})[clients] = (echoLat, snsLat)
            else:
                row.update({form: sns, "ratio_" + form: ratio})
        rows.append(row)
    return rows


def profileServers(bench, cluster, key, form=FORMS[0]):
    """
    py-spy on vm1's master and slave, vm2's master and one load generator
    at once, under the posting load of the last level (at most 100 clients),
    its posts in C{form} (L{FORMS}).
    """
    procs = cluster.processes()
    names = ("vm1 master", "vm1 slave", "vm2 master")
    pids = {name: procs[name][0] for name in names if procs.get(name)}
    clients = min(bench.cfg["levels"][-1], 100)
    seconds = max(5, bench.cfg.get("profileSeconds") or 8)
    bench.say("profiling %s with py-spy for %ds under %d posting clients (%s)"
              % (", ".join("%s (pid %d)" % kv for kv in pids.items()), seconds, clients, form))
    sns, _ = postLoad(bench, cluster, clients, "p%s" % (key,), form=form,
                      profile={"pids": pids, "seconds": seconds, "dir": bench.out})
    out = []
    for name, pid in pids.items():  # (with the load generator postLoad added)
        path = os.path.join(bench.out, "profile-%s.txt" % (name.replace(" ", "-"),))
        out.append({"name": name, "pid": pid, "raw": path,
                    "top": topFunctions(path) if os.path.exists(path) else None})
    return {"clients": clients, "seconds": seconds, "form": form,
            "posts_per_s_while_profiled": sns["posts_per_s"], "processes": out}
