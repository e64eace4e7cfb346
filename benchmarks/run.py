"""
The benchmark of docs/design.md section 10, on real processes on this machine.

    python benchmarks/run.py [--short | --full | --latency | --posting] [--out DIR]
                             [--profile [stream | unary]] [--profile-latency]

Starts a local cluster (``python -m snstwist.commands.cluster``) and, in one run:

1. throughput: acknowledged posts per second, each durable on two VMs
   (``WriteReply.copies >= 2``), under a closed loop of C concurrent clients
   (load processes of ``benchmarks/loadgen.py``), and beside it a bare
   ``grpc.aio`` unary echo (``benchmarks/echo.py``) at the same concurrency;
   the ratio of the two (target: >= 40%);
2. post -> follower's screen latency at a fixed offered rate, to a follower
   on the poster's VM and to one on another VM (p50/p99/max);
3. failover: SIGKILL of a client's master1 until its next command succeeds;
   of a master until its promoted slave answers a Login; of a slave until
   its replacement is registered with the router;
4. memory: a master's RSS idle and with 1,000 live timeline sessions;
5. scaling: 1 -> 10 -> 100 (-> 1,000 with --full) clients, and (with
   --full) 2 -> 4 VMs.

Writes ``results.json``, ``results.md`` and ``plot.png`` to --out (default
``bench-results/``).  Every process it starts, directly or through the
cluster, is stopped at the end and on Ctrl-C or SIGTERM, by PID.

A measurement, not a test: trial and CI never run it (``tox -e bench`` does).

This file is the program: its modes, the order of the phases and the
command line.  The phases, the processes, the cluster and the report are
modules of ``benchmarks/benchlib/``, which the other benchmark programs
(``failover.py``, ``memory.py``, ``history.py``) share.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time

from benchlib import failovers, latency, sessions, throughput
from benchlib.cluster import Cluster, useTLS
from benchlib.machine import machine
from benchlib.processes import ENV, ROOT, Child, killLeft, rssKB
from benchlib.report import markdown, plot

MODES = {
    "short": dict(
        levels=[1, 10, 100], seconds=3.0, warmup=0.5, workers=2,
        rates=[100, 1000], latencySeconds=4.0, posters=2,
        sessions=1000, sessionWorkers=4,
        failovers=3, vms=[2], vmLevels=[], profileSeconds=0,
        phases=["throughput", "latency", "memory", "failover"]),
    # Post -> screen alone, beside its yardstick: the echo's round trip with
    # one client (the throughput phase at one client), then the latency phase.
    "latency": dict(
        levels=[1], seconds=3.0, warmup=0.5, workers=2,
        rates=[100, 1000], latencySeconds=8.0, posters=2,
        failovers=0, vms=[2], vmLevels=[], profileSeconds=0,
        phases=["throughput", "latency"]),
    # The posting phase alone at 100 clients, three rounds beside the echo:
    # posts/s, CPU per post and the streams' messages per post.
    "posting": dict(
        levels=[100, 100, 100], seconds=3.0, warmup=0.5, workers=2,
        rates=[], failovers=0, vms=[2], vmLevels=[], profileSeconds=0,
        phases=["throughput"]),
    "full": dict(
        levels=[1, 10, 100, 1000], seconds=8.0, warmup=1.0, workers=2,
        rates=[100, 300, 1000], latencySeconds=8.0, posters=2,
        sessions=1000, sessionWorkers=4,
        failovers=15, vms=[2, 4], vmLevels=[10, 100], profileSeconds=0,
        phases=["throughput", "latency", "memory", "failover"]),
}


class Interrupted(Exception):
    pass


class Bench:
    """
    One run: its configuration (a mode of L{MODES}), where its logs go, and
    what it measured.  The phases (C{benchlib.throughput}, C{latency},
    C{sessions}, C{failovers}) are given this run and read C{cfg}, C{logdir},
    C{raw}, and call L{say} and L{name}.
    """

    def __init__(self, cfg, out, work, profile):
        self.cfg = cfg
        self.out = out
        self.work = work
        self.logdir = os.path.join(work, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.profile = profile
        self.results = {}
        self.raw = {}
        self.clusters = []
        self.echo = None
        self.runs = 0
        self.argv = None

    def say(self, text):
        sys.stdout.write("[%6.1fs] %s\n" % (time.monotonic() - self.t0, text))
        sys.stdout.flush()

    def name(self, what):
        """A unique name for a process of this run (its log file's name)."""
        self.runs += 1
        return "%02d-%s" % (self.runs, what)

    def run(self, mode):
        self.t0 = time.monotonic()
        cfg = self.cfg
        self.results["meta"] = machine(mode, self.argv)
        self.results["config"] = cfg
        for vms in cfg["vms"]:
            key = "%dvm" % (vms,)
            self.say("starting a %d-VM cluster" % (vms,))
            cluster = Cluster(os.path.join(self.work, "cluster-" + key), vms, self.logdir)
            self.clusters.append(cluster)
            cluster.start()
            self.say("cluster ready: router %s" % (cluster.router,))
            section = self.results.setdefault(key, {})
            last = "vm%d" % (vms,)
            if vms == cfg["vms"][0]:
                master = cluster.masterOf("vm1")
                rss0 = rssKB(master.pid)
                section["throughput"] = throughput.throughput(self, cluster, cfg["levels"], key)
                rss1 = rssKB(master.pid)
                posts = sum(r["sns"]["posts_per_s"] * cfg["seconds"] for r in section["throughput"])
                section["rss_growth"] = {"vm1_master_before_kb": rss0, "after_kb": rss1,
                                         "posts_acked_approx": int(posts)}
                if self.profile:
                    section["profile"] = throughput.profileServers(self, cluster, key,
                                                                   self.profile)
                section["latency"] = [latency.latency(self, cluster, rate, key, "vm1", last)
                                      for rate in cfg["rates"]]
                if "memory" in cfg["phases"]:
                    section["memory"] = sessions.memory(self, cluster)
                if "failover" in cfg["phases"]:
                    section["failover"] = failovers.failover(self, cluster)
            else:
                section["throughput"] = throughput.throughput(self, cluster, cfg["vmLevels"], key)
                section["latency"] = [latency.latency(self, cluster, rate, key, "vm1", last)
                                      for rate in cfg["rates"][-1:]]
            self.say("stopping the %d-VM cluster" % (vms,))
            left = cluster.stop()
            self.clusters.remove(cluster)
            section["left_running_after_stop"] = left
        self.results["meta"]["load_after"] = os.getloadavg()
        self.results["meta"]["seconds"] = round(time.monotonic() - self.t0, 1)

    def cleanup(self):
        Child.stopAll()
        for cluster in list(self.clusters):
            left = cluster.stop()
            if left:
                sys.stdout.write("killed %d processes left by the cluster: %s\n"
                                 % (len(left), left))
        left = killLeft(self.work)
        if left:
            sys.stdout.write("killed leftover processes: %s\n" % (left,))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--short", dest="mode", action="store_const", const="short",
                       help="about three minutes (default)")
    group.add_argument("--full", dest="mode", action="store_const", const="full",
                       help="more clients (1,000), 2 and 4 VMs, more kills")
    group.add_argument("--latency", dest="mode", action="store_const", const="latency",
                       help="post -> screen alone (8 s at 100/s and at 1,000/s) beside the"
                            " echo's round trip with one client (about a minute)")
    group.add_argument("--posting", dest="mode", action="store_const", const="posting",
                       help="the posting phase alone: 100 clients, three rounds, each beside"
                            " the echo (about a minute)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results"),
                        help="where results.json, results.md and plot.png go")
    parser.add_argument("--profile", nargs="?", const="stream", choices=throughput.FORMS,
                        help="also sample vm1's master and slave, vm2's master and a load"
                             " generator with py-spy under the posting load, its posts in"
                             " FORM (stream, the default, or unary: a Post call each)")
    parser.add_argument("--profile-latency", action="store_true",
                        help="also sample the poster, its master and the same VM's follower with"
                             " py-spy in each rate of the latency phase (its figures are then"
                             " those of profiled processes)")
    parser.add_argument("--keep", action="store_true", help="keep the clusters' data and logs")
    args = parser.parse_args(argv)
    mode = args.mode or "short"
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sns-bench-")
    useTLS(work, ENV)  # the processes' environment, and ours
    bench = Bench(MODES[mode], out, work, args.profile)
    bench.argv = sys.argv[1:] if argv is None else list(argv)
    bench.profileLatency = args.profile_latency

    def interrupted(signum, frame):
        raise Interrupted("signal %d" % (signum,))

    # SIGINT too, explicitly: a shell starts background jobs with SIGINT
    # ignored, and Ctrl-C must stop everything wherever we were started.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    status = 0
    try:
        bench.run(mode)
    except (KeyboardInterrupt, Interrupted) as e:
        sys.stdout.write("interrupted (%s): stopping everything\n" % (e or "Ctrl-C",))
        status = 130
    except Exception as e:
        sys.stdout.write("benchmark failed: %s\n" % (e,))
        import traceback
        traceback.print_exc()
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if bench.echo is not None:
            bench.echo[0].stop()
        bench.cleanup()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if status == 0:
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(bench.results, f, indent=1)
        text = markdown(bench.results)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(text + "\n")
        problem = plot(bench.results, bench.raw, os.path.join(out, "plot.png"))
        sys.stdout.write("\n" + text + "\n")
        sys.stdout.write((problem or "plot: %s" % (os.path.join(out, "plot.png"),)) + "\n")
        sys.stdout.write("results: %s\n" % (out,))
    if args.keep or status == 1:
        sys.stdout.write("logs and data kept in %s\n" % (work,))
    else:
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
