"""
Memory per user, and LIST and sns-compare with many users (docs/benchmarks.md,
"Memory per user"): what sets limits.MAX_USERS.

    python benchmarks/users.py --users 100000 [--follows 10] [--work DIR] [--writer]

For 1 user (the probe) and for N: an import file of N users (the probe
and N - 1 others), each with an argon2id hash of the benchmark's password
(as an account has one), each of the others following F others, no
posts, imported once with ``sns-admin import`` (kept in WORK/imported-N-F)
and copied to two VMs' data directories; a router and both VMs started;
once each answers the probe's Login (the seconds from its start; a start
reads the state snapshot that import wrote, whose size is said) and has
a warm standby, and 2 s later, the RSS (and peak RSS) of each master and
slave.  The servers run with $SNS_LOOP_LAG_MS=20: the timers more than
20 ms late during the starts (from the spawn to the warm standby), the
latest, and the busiest reactor turn (L{benchlib.looplags}).  Then, at N, a
LIST from ``sns-client`` as one of the imported users (every page; the
number of names printed, and whether they are sorted and unique) and
``sns-compare`` (every digest page of both VMs), each timed, and the RSS
after them.  Memory per user is (RSS at N - RSS at 1) / (N - 1).  The figures
are of a shared machine: the load average before and after is in the
results.  A measurement, not a test.

With --writer, only the state snapshot's writer, at N: vm1 alone, on a copy
without the snapshot (so its master's writer finds every state update not
covered and writes one at its first look, $SNS_SNAPSHOT_EVERY=1 s after
the start, or 30 s for code that does not read it): the master's CPU while
the temporary file exists (the writer's work, on a process otherwise idle),
the write's seconds, its RSS just before and at most while it writes
(sampled every 10 ms), and after, and the timers more than 20 ms late in
the servers meanwhile (the writer's thread competes with the reactor for
the interpreter); then the same start again, SIGTERM to the
master as soon as the next write began: the seconds until the master is
gone, and whether the temporary file and a new snapshot are left.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from benchlib.cluster import PASSWORD, until, useTLS
from benchlib.historydata import copyTo, saveResults
from benchlib.looplags import lagEvents, lagsByPhase
from benchlib.machine import machine
from benchlib.processes import ENV, PY, ROOT
from snstwist.buddy.processes import pidAlive
from benchlib.vms import VMs

SECRET = "users-benchmark-secret-0123456789"


def peakKB(pid):
    """RSS now and at its peak (VmRSS, VmHWM) of C{pid}, in KB."""
    out = {}
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out["VmRSS"], out["VmHWM"]


def cpuSeconds(pid):
    """The CPU seconds (user and system) C{pid} has used."""
    with open("/proc/%d/stat" % (pid,)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshotBytes(path):
    """The size of the state snapshot that C{path} holds (sns-admin import writes one), or None."""
    try:
        return os.path.getsize(os.path.join(path, "state.snapshot"))
    except FileNotFoundError:
        return None


def name(i):
    return "u%07d" % (i,)


def writeLines(path, users, follows, hashed, seed=1):
    """
    C{users} users: C{users} - 1 named by L{name} and the benchmark's probe
    (which logs in to see that a VM serves: at the cap, a new name would
    be refused), each of the former following C{follows} others.
    """
    rng = random.Random(seed)
    named = users - 1
    with open(path, "w") as f:
        for user in [name(i) for i in range(named)] + ["probe"]:
            f.write(json.dumps({"user": user, "time": "2026-11-01T00:00:00.000000Z",
                                "hash": hashed}) + "\n")
        for i in range(named):
            for j in rng.sample(range(named - 1), min(follows, named - 1)):
                j += j >= i  # anyone but oneself
                f.write(json.dumps({"follower": name(i), "followee": name(j)}) + "\n")


def imported(work, users, follows, say):
    """WORK/imported-N-F, made first if missing; the seconds the import took, or None."""
    pristine = os.path.join(work, "imported-%d-%d" % (users, follows))
    if os.path.exists(pristine):
        return pristine, None
    from argon2 import PasswordHasher

    from snstwist.core import limits
    hashed = PasswordHasher(time_cost=limits.ARGON2_TIME_COST,
                            memory_cost=limits.ARGON2_MEMORY_KIB,
                            parallelism=limits.ARGON2_PARALLELISM).hash(PASSWORD)
    source = os.path.join(work, "users-%d-%d.jsonl" % (users, follows))
    writeLines(source, users, follows, hashed)
    shutil.rmtree(pristine + ".tmp", ignore_errors=True)
    started = time.monotonic()
    out = subprocess.run([PY, "-m", "snstwist.commands.admin", "import", "--data",
                          pristine + ".tmp", source],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    seconds = round(time.monotonic() - started, 1)
    os.rename(pristine + ".tmp", pristine)
    os.remove(source)
    say("imported %d users, %d follows each, in %.1f s: %s"
        % (users, follows, seconds, out.stderr.strip()))
    return pristine, seconds


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        os.makedirs(self.work, exist_ok=True)
        self.env = dict(ENV, SNS_SECRET=SECRET, SNS_LOOP_LAG_MS="20")
        useTLS(self.work, self.env)
        meta = machine("users", sys.argv)
        meta["command"] = " ".join(["python", "benchmarks/users.py"] + sys.argv[1:])
        self.results = {"meta": meta, "sizes": {}}
        self.t0 = time.monotonic()

    def say(self, text):
        sys.stdout.write("[%7.1fs] %s\n" % (time.monotonic() - self.t0, text))
        sys.stdout.flush()

    def memory(self, vms):
        out = {}
        for vm in ("vm1", "vm2"):
            master, slave = vms.pair(vm)
            for role, server in (("master", master), ("slave", slave)):
                rss, peak = peakKB(server.pid)
                out["%s %s" % (vm, role)] = {"rss_kb": rss, "peak_kb": peak}
        self.say("RSS (KB, now / peak): %s" % (
            ", ".join("%s %d / %d" % (k, v["rss_kb"], v["peak_kb"]) for k, v in out.items()),))
        return out

    def listed(self, vms, users):
        """LIST from sns-client as an imported user: (seconds, names, sorted and unique)."""
        env = dict(self.env, SNS_PASSWORD=PASSWORD)
        t = time.monotonic()
        out = subprocess.run([PY, "-m", "snstwist.commands.cli", "-r", vms.routerAddress,
                              "-u", name(0), "--tls-ca", env["SNS_TLS_CA"]],
                             input="LIST\n", capture_output=True, text=True, env=env,
                             check=True, cwd=ROOT)
        seconds = time.monotonic() - t
        line = next(x for x in out.stdout.splitlines() if x.startswith("All users:"))
        names = line[len("All users: "):].split(", ")
        return round(seconds, 2), len(names), names == sorted(set(names))

    def compared(self, vms):
        env = dict(self.env)
        t = time.monotonic()
        out = subprocess.run([PY, "-m", "snstwist.commands.compare", "-r", vms.routerAddress,
                              "--tls-ca", env["SNS_TLS_CA"], "--wait", "30"],
                             capture_output=True, text=True, env=env, cwd=ROOT)
        return round(time.monotonic() - t, 2), out.stdout.strip().splitlines()[-1]

    def start(self, vms, vm, windows):
        """Start C{vm}: seconds until it answers a Login, and until it has a warm standby."""
        t = time.time()
        _, address = vms.startServer(vm)
        login = until("%s to answer a Login" % (vm,), lambda: vms.loggedIn(address),
                      timeout=600, interval=0.05)
        ready = until("%s's standby" % (vm,), lambda: vms.readyStandby(vm), timeout=600,
                      interval=0.05)
        windows.append(("start", t, ready))
        return round(login - t, 2), round(ready - t, 2)

    def size(self, users):
        users = max(users, 1)
        work = os.path.join(self.work, "run-%d" % (users,))
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        pristine, seconds = imported(self.work, users, self.args.follows, self.say)
        vms = VMs(work, self.env, SECRET)
        out = {"import_s": seconds, "snapshot_bytes": snapshotBytes(pristine)}
        self.say("state snapshot in the data directory: %s bytes" % (out["snapshot_bytes"],))
        try:
            for vm in ("vm1", "vm2"):
                copyTo(pristine, vms.data(vm))
            vms.startRouter()
            windows = []
            for vm in ("vm1", "vm2"):
                login, ready = self.start(vms, vm, windows)
                out["%s_start_to_login_s" % (vm,)] = login
                out["%s_start_to_warm_standby_s" % (vm,)] = ready
                self.say("%s: start -> Login %.2f s, -> warm standby %.2f s" % (vm, login, ready))
            out["start_loop_lag"] = lag = lagsByPhase(lagEvents(work), windows)["start"]
            self.say("loop lag in the starts: %d timers over 20 ms late, latest %s ms (%s);"
                     " busiest turn %s ms (%s), %s ms of it collecting"
                     % (lag["turns_over_20ms"], lag["max_ms"], lag["where"], lag["max_busy_ms"],
                        lag["busiest_where"], lag["busiest_collecting_ms"]))
            time.sleep(2.0)
            out["memory"] = self.memory(vms)
            if users > 1:
                out["list_s"], out["listed"], out["list_sorted_unique"] = self.listed(vms, users)
                self.say("LIST: %d names in %.2f s, sorted and unique: %s"
                         % (out["listed"], out["list_s"], out["list_sorted_unique"]))
                out["compare_s"], out["compare_said"] = self.compared(vms)
                self.say("sns-compare: %r in %.2f s" % (out["compare_said"], out["compare_s"]))
                out["memory_after"] = self.memory(vms)
        finally:
            left = vms.stop()
            if left:
                self.say("killed leftover processes of this run: %s" % (left,))
            shutil.rmtree(work, ignore_errors=True)
        return out

    def master(self, vms):
        """Start vm1 and wait for its Login (not for its standby); the master's pid."""
        _, address = vms.startServer("vm1")
        until("vm1 to answer a Login", lambda: vms.loggedIn(address), timeout=600, interval=0.05)
        return until("vm1's master", lambda: [s.pid for s in vms.servers("vm1", "master")],
                     timeout=60, interval=0.05)[0]

    def writer(self):
        """The snapshot writer's CPU, memory and stop (see the module's docstring)."""
        users = self.args.users
        work = os.path.join(self.work, "writer-%d" % (users,))
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        pristine, _ = imported(self.work, users, self.args.follows, self.say)
        vms = VMs(work, dict(self.env, SNS_SNAPSHOT_EVERY="1"), SECRET)
        data = vms.data("vm1")
        snapshot, temporary = (os.path.join(data, "state.snapshot" + e) for e in ("", ".tmp"))
        out = self.results["writer"] = {}
        try:
            copyTo(pristine, data)
            os.remove(snapshot)
            vms.startRouter()
            pid = self.master(vms)
            until("the writer to begin", lambda: os.path.exists(temporary), timeout=600,
                  interval=0.01)
            cpu, t, began, before = cpuSeconds(pid), time.monotonic(), time.time(), peakKB(pid)[0]
            peak = before
            while os.path.exists(temporary):
                peak = max(peak, peakKB(pid)[0])
                time.sleep(0.01)
            writing = [("write", began, time.time())]
            out.update(write_s=round(time.monotonic() - t, 2),
                       writer_cpu_s=round(cpuSeconds(pid) - cpu, 2), rss_before_kb=before,
                       rss_peak_kb=peak, rss_after_kb=peakKB(pid)[0],
                       snapshot_bytes=snapshotBytes(data))
            self.say("writer: %(write_s).2f s, %(writer_cpu_s).2f s of the master's CPU; RSS"
                     " %(rss_before_kb)d KB before, %(rss_peak_kb)d at most while writing,"
                     " %(rss_after_kb)d after; %(snapshot_bytes)s bytes" % out)
            out["write_loop_lag"] = lag = lagsByPhase(lagEvents(work), writing)["write"]
            self.say("loop lag while it wrote: %d timers over 20 ms late, latest %s ms (%s)"
                     % (lag["turns_over_20ms"], lag["max_ms"], lag["where"]))
            vms.stop()
            os.remove(snapshot)
            vms.startRouter()
            pid = self.master(vms)
            until("the writer to begin again", lambda: os.path.exists(temporary), timeout=600,
                  interval=0.01)
            t = time.monotonic()
            os.kill(pid, signal.SIGTERM)
            until("the master to end", lambda: not pidAlive(pid), timeout=600, interval=0.01)
            out.update(stop_master_s=round(time.monotonic() - t, 2),
                       temporary_left=os.path.exists(temporary),
                       snapshot_written=os.path.exists(snapshot))
            self.say("SIGTERM during a write: the master gone in %(stop_master_s).2f s;"
                     " temporary file left: %(temporary_left)s, a snapshot written:"
                     " %(snapshot_written)s" % out)
        finally:
            left = vms.stop()
            if left:
                self.say("killed leftover processes of this run: %s" % (left,))
            shutil.rmtree(work, ignore_errors=True)
        self.results["meta"]["load_after"] = os.getloadavg()

    def run(self):
        sizes = self.results["sizes"]
        for users in (1, self.args.users):
            sizes[users] = self.size(users)
        base, full = sizes[1]["memory"], sizes[self.args.users]["memory"]
        per = {k: round((full[k]["rss_kb"] - base[k]["rss_kb"]) * 1024 / (self.args.users - 1))
               for k in base}
        self.results["bytes_per_user"] = per
        self.say("RSS per user (bytes): %s" % (per,))
        self.results["meta"]["load_after"] = os.getloadavg()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100000)
    parser.add_argument("--follows", type=int, default=10, help="follows of each user")
    parser.add_argument("--work", default="/tmp/sns-users-bench")
    parser.add_argument("--out", default=None, help="results JSON (default WORK/results-N.json)")
    parser.add_argument("--writer", action="store_true",
                        help="measure the state snapshot's writer only")
    args = parser.parse_args()
    bench = Bench(args)
    if args.writer:
        bench.writer()
    else:
        bench.run()
    saveResults(bench.results, bench.work, args.users, args.out)


if __name__ == "__main__":
    main()
