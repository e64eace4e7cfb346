"""
Phase 2 of C{benchmarks/run.py}: post -> follower's screen at a fixed offered
rate, to a follower on the poster's VM and to one on another VM, with the
part after the master accepted the post shown apart.  Posts are sent as a
user in timeline mode sends them (the only mode in which the CLI posts):
each poster process is one user with its timeline open, each post a message
on its session's stream, and the followers follow every poster (see
L{posterForm}).

Takes the run (C{run.py}'s C{Bench}) and a started L{benchlib.cluster.Cluster}.
"""

import math
import os
import time

from benchlib.processes import CpuMeter, loadgen, stopEach
from benchlib.pyspy import startProfile, topFunctions
from benchlib.stats import summarize
from benchlib.throughput import echoLoad


# The most posts a second one poster process is asked to offer.
POSTER_RATE = 500
# py-spy's samples a second with --profile-latency: a post's path on a
# process is a millisecond or less.
PROFILE_RATE = 500


def posterCount(rate, most):
    """
    How many poster processes offer C{rate} posts a second (at most C{most}):
    as few as can.  Posts are spaced evenly only within one process: two,
    each started by its own command, post at the same pace with a phase
    between them that is random and fixed for the run (0-5 ms in one run
    at 100/s, so the posts came in pairs), and the second of each pair waited
    for the master to finish with the first.  The paced echo beside it
    spaces its calls evenly; one poster at 100/s does the same.
    """
    return max(1, min(most, math.ceil(rate / POSTER_RATE)))


def posterUsers(count):
    """The users of C{count} poster processes, one each."""
    return ["poster"] + ["poster-%d" % (i + 1,) for i in range(1, count)]


def posterForm():
    """
    The poster processes' arguments, and how they post: each one client of
    a user of its own (L{posterUsers}), its timeline open, each post on its
    session's stream, as timeline mode posts.

    Not several clients of one user, nor Post calls: sessions of one user
    are each pushed every post of the others (at 1,000/s, thousands of
    pushes a second no user asked for: the posters' CPU a post doubled),
    and a Post call costs the master and the poster more than a message on
    a stream, so that at 1,000/s the run measured the posters' way of
    posting more than the path of a post (2.66 ms of every process's CPU a
    post at 1,000/s by calls, on two cores: 680-850/s held).  One
    session takes L{POSTER_RATE} a second with room for its posts in flight
    (MAX_SESSION_POSTS, 100: 0.2 s of them).
    """
    return ["--clients", 1, "--timeline"], "session streams"


def latency(bench, cluster, rate, key, same="vm1", other="vm2"):
    cfg = bench.cfg
    count = posterCount(rate, cfg["posters"])
    form, postedOn = posterForm()
    tag = "L%s%d" % (key, int(rate))
    # The yardstick at this pace: one echo caller at the offered rate, for
    # the same time.  The echo of the throughput phase calls back to back,
    # every process busy; here each process idles between posts, and waking
    # it costs (about twice the back-to-back round trip on this machine).
    echo, _ = echoLoad(bench, 1, rate=rate, seconds=cfg["latencySeconds"])
    bench.say("echo paced at %d/s: p50 %s p99 %s ms" % (rate, echo["latency_ms"]["p50"],
                                                       echo["latency_ms"]["p99"]))
    users = posterUsers(count)
    posters = [loadgen(bench.name("poster-%d-w%d" % (rate, i)), "poster", bench.logdir,
                       "--router", cluster.router, "--user", user, "--pin", same,
                       "--rate", rate / count, "--tag", tag, *form)
               for i, user in enumerate(users)]
    posterVms = {}
    for p in posters:
        for vm, n in p.expect("ready", 60)["vms"].items():
            posterVms[vm] = posterVms.get(vm, 0) + n
    followers = {
        "same": loadgen(bench.name("follower-same-%d" % (rate,)), "follower", bench.logdir,
                        "--router", cluster.router, "--user", "fs_%s" % (tag,),
                        "--follow", ",".join(users), "--pin", same, "--tag", tag),
        "cross": loadgen(bench.name("follower-cross-%d" % (rate,)), "follower", bench.logdir,
                         "--router", cluster.router, "--user", "fc_%s" % (tag,),
                         "--follow", ",".join(users), "--pin", other, "--tag", tag),
    }
    where = {k: f.expect("ready", 60)["vm"] for k, f in followers.items()}
    procs = cluster.processes()
    procs["posters"] = [p.pid for p in posters]
    procs["followers"] = [f.pid for f in followers.values()]
    meter = CpuMeter(procs)
    profiled = {}
    if getattr(bench, "profileLatency", False):
        # The processes a post to the same VM's follower crosses.
        master = "%s master" % (same,)
        profiled = {"poster": posters[0].pid, master: procs[master][0],
                    "follower on %s" % (same,): followers["same"].pid}
        profiled = {name: (pid, os.path.join(bench.out, "profile-latency-%d-%s.txt"
                                              % (rate, name.replace(" ", "-"))))
                    for name, pid in profiled.items()}
        spies = [startProfile(bench.say, pid, cfg["latencySeconds"], path, PROFILE_RATE)
                 for pid, path in profiled.values()]
    for p in posters:
        p.send("go %s" % (cfg["latencySeconds"],))
    sent = [p.expect("result", cfg["latencySeconds"] + 60) for p in posters]
    used, wall = meter.seconds()
    if profiled:
        for spy in spies:
            if spy is not None:
                spy.wait(60)
    cpu = {k: round(100 * v / wall) for k, v in used.items()}
    time.sleep(1.0)  # the last posts reach the screens
    out = {"offered_per_s": rate, "seconds": cfg["latencySeconds"],
           "sent": sum(r["sent"] for r in sent), "acked": sum(r["acked"] for r in sent),
           "acked_one_copy": sum(r["ok1"] for r in sent),
           "dropped": sum(r["dropped"] for r in sent),
           "errors": sum(r["errors"] for r in sent),
           "poster_processes": count, "posted_on": postedOn, "poster_vms": posterVms,
           "follower_vms": where, "cpu_percent": cpu,
           "ack_ms": summarize([x for r in sent for x in r["lat"]]),
           "echo_paced_ms": echo["latency_ms"]}
    out["held_per_s"] = round(out["acked"] / cfg["latencySeconds"], 1)
    # What each acknowledged post cost each group of processes (a rate is
    # held only while the machine's two cores cover the sum).
    out["cpu_ms_per_post"] = {k: round(1000 * v / max(1, out["acked"]), 3)
                              for k, v in used.items()}
    out["cpu_ms_per_post"]["all"] = round(sum(out["cpu_ms_per_post"].values()), 3)
    lats = {}
    for k, f in followers.items():
        f.send("stop")
        result = f.expect("result", 30)
        lats[k] = result["lat"]
        out[k] = summarize(lats[k])
        # The part after the master accepted the post (durable, pushed,
        # shown); the rest is the poster's call reaching the master.
        out[k]["from_accept"] = summarize(result["fromAccept"])
        out[k]["received_fraction"] = round(len(lats[k]) / max(1, out["acked"]), 3)
    stopEach(list(followers.values()) + posters)
    bench.raw.setdefault("latency-%s" % (key,), {})[rate] = lats
    bench.say("post->screen at %d/s offered on %s (held %.0f/s acked, %d dropped): same VM"
              " (%s) p50 %s p99 %s max %s ms (after accept p50 %s); cross VM (%s) p50 %s p99 %s"
              " max %s ms (after accept p50 %s); cpu %s"
              % (rate, postedOn, out["held_per_s"], out["dropped"], where["same"],
                 out["same"]["p50"], out["same"]["p99"], out["same"]["max"],
                 out["same"]["from_accept"]["p50"], where["cross"],
                 out["cross"]["p50"], out["cross"]["p99"], out["cross"]["max"],
                 out["cross"]["from_accept"]["p50"], cpu))
    bench.say("CPU ms per acknowledged post at %d/s: %s" % (rate, out["cpu_ms_per_post"]))
    if profiled:
        out["profile"] = profileOf(bench, profiled)
    return out


def profileOf(bench, profiled):
    """What py-spy saw of each process (C{profiled}: name -> (pid, raw file)), said briefly."""
    out = []
    for name, (pid, path) in profiled.items():
        top = topFunctions(path) if os.path.exists(path) else None
        out.append({"name": name, "pid": pid, "raw": path, "top": top})
        for thread in top or ():
            bench.say("py-spy %s, thread %s: %.1f%% busy; inclusive %s"
                      % (name, thread["thread"], thread["busy_percent"], thread["inclusive"][:6]))
    return out
