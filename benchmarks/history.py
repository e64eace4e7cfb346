"""
History does not cost (docs/design.md, the targets): a VM's start, a
promotion, a new standby and a catch-up, with N posts already stored, on
real processes on this machine.

    python benchmarks/history.py --posts 1000000 [--work DIR] [--out FILE]

Builds an import file (``benchmarks/dataset.py``: 1,000 users, 10 follows
each, N posts of about 100 characters), imports it once (``sns-admin
import``, kept in WORK/imported-N) and copies that to the data directories
of two VMs: the same file gives every VM the same data.
Then, with a router:

1. start: vm1's master is started; time until it answers a Login, until its
   slave is registered and holds every update (a ready standby); the same
   for vm2; RSS of each master and slave once warm;
2. promotion: SIGKILL of vm1's master; time until its promoted slave answers
   a Login, and until the new slave holds every update;
3. catch-up: both processes of vm2 are SIGKILLed, K posts are written on
   vm1, vm2's master is started again; time until it answers a Login and
   until it holds every update of vm1.

Every server runs with $SNS_LOOP_LAG_MS=20: each timer that fires more than
20 ms late is logged with the time and the CPU the reactor thread used
meanwhile; for each phase the latest timer (of any server) is reported with
the process, and the most CPU the reactor thread spent in one such gap (a
long turn, as opposed to waiting for the CPU of a loaded machine).  Run it with nice:
it measures on a machine other people use, and says what the load was.
A measurement, not a test.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from benchlib.cluster import PASSWORD, fastChannel, until, useTLS
from benchlib.machine import machine
from benchlib.processes import ENV, PY, ROOT, killLeft, pidAlive, rssKB

from snstwist.buddy.processes import twistdArgs

SECRET = "history-benchmark-secret-0123456789"
LAG = re.compile(r"\[(\S+) (\S+) pid=(\d+) .*loop lag: a timer fired ([\d.]+) ms late"
                 r" at ([\d.]+), the reactor thread busy ([\d.]+) ms")


def freePort(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        self.env = dict(ENV, SNS_SECRET=SECRET, SNS_LOOP_LAG_MS="20")
        useTLS(self.work, self.env)
        self.procs = []
        self.channels = {}
        self.results = {"meta": machine("history", sys.argv), "posts": args.posts,
                        "phases": {}}
        self.windows = []

    def say(self, text):
        sys.stdout.write("[%7.1fs] %s\n" % (time.monotonic() - self.t0, text))
        sys.stdout.flush()

    # -- data

    def build(self):
        os.makedirs(self.work, exist_ok=True)
        source = os.path.join(self.work, "posts-%d.jsonl" % (self.args.posts,))
        if not os.path.exists(source):
            self.say("writing %s" % (source,))
            with open(source + ".tmp", "w") as f:
                subprocess.run([PY, os.path.join(ROOT, "benchmarks", "dataset.py"),
                                "--posts", str(self.args.posts)], stdout=f, check=True)
            os.rename(source + ".tmp", source)
        # Imported once per N (the same file gives the same data on every
        # VM), then copied for each VM of each run.
        pristine = os.path.join(self.work, "imported-%d" % (self.args.posts,))
        if not os.path.exists(pristine):
            started = time.monotonic()
            out = subprocess.run([PY, "-m", "snstwist.commands.admin", "import", "--data",
                                  pristine + ".tmp", source],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            os.rename(pristine + ".tmp", pristine)
            self.results["import"] = {"seconds": round(time.monotonic() - started, 1),
                                      "said": out.stderr.strip()}
            self.say(out.stderr.strip())
        for vm in ("vm1", "vm2"):
            shutil.rmtree(os.path.dirname(self.data(vm)), ignore_errors=True)
            shutil.copytree(pristine, self.data(vm))
        self.results["data_bytes"] = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(self.data("vm1"))
            for f in fs)

    def data(self, vm):
        return os.path.join(self.work, vm, "data")

    # -- processes

    def spawn(self, name, args):
        log = open(os.path.join(self.work, name + ".out"), "ab")
        p = subprocess.Popen(twistdArgs("-", *args), env=self.env,
                             stdout=log, stderr=subprocess.STDOUT, cwd=self.work)
        self.procs.append(p)
        return p

    def startRouter(self):
        self.routerAddress = "127.0.0.1:%d" % (freePort("127.0.0.1"),)
        # Servers register at the router's cluster port (mutual TLS).
        self.routerPeer = "127.0.0.1:%d" % (freePort("127.0.0.1"),)
        self.spawn("router", ["--logfile=" + os.path.join(self.work, "router.log"),
                              "sns-router", "--listen", self.routerAddress,
                              "--peer-listen", self.routerPeer])
        until("the router", lambda: self.status() is not None, timeout=30)

    def startServer(self, vm):
        host = {"vm1": "127.0.0.2", "vm2": "127.0.0.3"}[vm]
        address = "%s:%d" % (host, freePort(host))
        p = self.spawn(vm, ["--logfile=" + os.path.join(self.work, vm + ".log"),
                            "sns-server", "--router", self.routerPeer, "--vm", vm,
                            "--listen", address, "--data", self.data(vm)])
        return p, address

    def channel(self, address):
        if address not in self.channels:
            self.channels[address] = fastChannel(address)
        return self.channels[address]

    def status(self):
        from snstwist.rpc import sns_pb2 as pb
        from snstwist.rpc import sns_pb2_grpc as pbg
        return pbg.RouterStub(self.channel(self.routerAddress)).Status(
            pb.StatusRequest(), timeout=2, metadata=(("x-sns-secret", SECRET),))

    def servers(self, vm, role=None):
        from snstwist.rpc import sns_pb2 as pb
        role = {"master": pb.MASTER, "slave": pb.SLAVE, None: None}[role]
        return [s for s in self.status().servers
                if s.vm == vm and (role is None or s.role == role)]

    def login(self, address, user="probe"):
        from snstwist.rpc import sns_pb2 as pb
        from snstwist.rpc import sns_pb2_grpc as pbg
        # The first Login of a user hashes its password (argon2): part of
        # the figure, as for a client's first command.
        return pbg.SNSStub(self.channel(address)).Login(
            pb.LoginRequest(user=user, password=PASSWORD), timeout=5)

    def loggedIn(self, address):
        self.login(address)
        return time.time()

    def readyStandby(self, vm, oldPids=()):
        """The time when vm has a master and a (new) slave holding as many updates, or None."""
        masters, slaves = self.servers(vm, "master"), self.servers(vm, "slave")
        slaves = [s for s in slaves if s.pid not in oldPids]
        if masters and slaves and slaves[0].updates == masters[0].updates > 0:
            return time.time()
        return None

    def pair(self, vm):
        return self.servers(vm, "master")[0], self.servers(vm, "slave")[0]

    # -- phases

    def window(self, name, start, end):
        self.windows.append((name, start, end + 1.0))

    def start(self, vm):
        t0 = time.time()
        _, address = self.startServer(vm)
        tLogin = until("%s to answer a Login" % (vm,), lambda: self.loggedIn(address),
                       timeout=600, interval=0.005)
        tReady = until("%s's standby to be warm" % (vm,), lambda: self.readyStandby(vm),
                       timeout=600, interval=0.01)
        self.window("start " + vm, t0, tReady)
        master, slave = self.pair(vm)
        out = {"start_to_login_s": round(tLogin - t0, 3),
               "start_to_ready_standby_s": round(tReady - t0, 3),
               "updates": master.updates}
        self.say("%s: start -> Login %.3f s, -> warm standby %.3f s (%d updates)"
                 % (vm, out["start_to_login_s"], out["start_to_ready_standby_s"], master.updates))
        return out

    def memory(self):
        out = {}
        for vm in ("vm1", "vm2"):
            master, slave = self.pair(vm)
            out[vm] = {"master_rss_kb": rssKB(master.pid), "slave_rss_kb": rssKB(slave.pid)}
        self.say("RSS: %s" % (out,))
        return out

    def promotion(self):
        master, slave = self.pair("vm1")
        t0 = time.time()
        os.kill(master.pid, signal.SIGKILL)

        def promoted():
            for m in self.servers("vm1", "master"):
                if m.pid != master.pid:
                    self.login(m.address)
                    return time.time()

        tLogin = until("vm1's promoted slave to answer", promoted, timeout=600, interval=0.005)
        tReady = until("vm1's new standby to be warm",
                       lambda: self.readyStandby("vm1", (master.pid, slave.pid)),
                       timeout=600, interval=0.01)
        self.window("promotion", t0, tReady)
        out = {"kill_to_login_s": round(tLogin - t0, 3),
               "kill_to_ready_standby_s": round(tReady - t0, 3)}
        self.say("promotion: SIGKILL -> Login %.3f s, -> new warm standby %.3f s"
                 % (out["kill_to_login_s"], out["kill_to_ready_standby_s"]))
        return out

    def catchUp(self, posts):
        from snstwist.rpc import sns_pb2 as pb
        from snstwist.rpc import sns_pb2_grpc as pbg
        for s in self.servers("vm2"):
            os.kill(s.pid, signal.SIGKILL)
        until("vm2 to be gone", lambda: not self.servers("vm2"), timeout=30)
        master = self.servers("vm1", "master")[0]
        stub = pbg.SNSStub(self.channel(master.address))
        # Posts are rate-limited per user (20 a second): 50 writers, two
        # posts each per tenth of a second.
        writers = [(("x-sns-session", self.login(master.address, "away%d" % (i,)).token),)
                   for i in range(50)]
        t0 = time.time()
        for start in range(0, posts, 100):
            began = time.monotonic()
            calls = [stub.Post.future(pb.PostRequest(text="while vm2 was away %d" % (n,),
                                                     request_id="away-%d" % (n,)),
                                      timeout=30, metadata=writers[n % len(writers)])
                     for n in range(start, min(posts, start + 100))]
            for c in calls:
                c.result()
            time.sleep(max(0.0, 0.1 - (time.monotonic() - began)))
        self.say("wrote %d posts on vm1 in %.1f s while vm2 was down"
                 % (posts, time.time() - t0))
        t1 = time.time()
        _, address = self.startServer("vm2")
        tLogin = until("vm2 to answer again", lambda: self.loggedIn(address),
                       timeout=600, interval=0.005)

        def caughtUp():
            m1, m2 = self.servers("vm1", "master"), self.servers("vm2", "master")
            if m1 and m2 and m2[0].updates >= m1[0].updates:
                return time.time()

        tCaught = until("vm2 to catch up", caughtUp, timeout=600, interval=0.01)
        until("vm2's standby to be warm", lambda: self.readyStandby("vm2"), timeout=600,
              interval=0.01)
        self.window("catch-up", t1, tCaught)
        out = {"posts_missed": posts, "start_to_login_s": round(tLogin - t1, 3),
               "start_to_caught_up_s": round(tCaught - t1, 3)}
        self.say("catch-up: vm2 start -> Login %.3f s, -> holds all of vm1 %.3f s"
                 % (out["start_to_login_s"], out["start_to_caught_up_s"]))
        return out

    def lags(self):
        events = []
        # twistd rotates its log file every megabyte: read vmN.log.* too.
        for path in glob.glob(os.path.join(self.work, "vm[12].log*")):
            with open(path, errors="replace") as f:
                for line in f:
                    m = LAG.search(line)
                    if m:
                        events.append({"vm": m.group(1), "role": m.group(2),
                                       "pid": int(m.group(3)), "ms": float(m.group(4)),
                                       "at": float(m.group(5)), "busy": float(m.group(6))})
        out = {}
        for name, start, end in self.windows:
            inside = [e for e in events if start <= e["at"] <= end]
            worst = max(inside, key=lambda e: e["ms"], default=None)
            busiest = max(inside, key=lambda e: e["busy"], default=None)
            out[name] = {"turns_over_20ms": len(inside),
                         "max_ms": worst["ms"] if worst else None,
                         "max_busy_ms": busiest["busy"] if busiest else None,
                         "where": "%s %s %d" % (worst["vm"], worst["role"], worst["pid"])
                         if worst else None}
        return out

    def run(self):
        self.t0 = time.monotonic()
        self.build()
        self.startRouter()
        phases = self.results["phases"]
        phases["start vm1"] = self.start("vm1")
        phases["start vm2"] = self.start("vm2")
        time.sleep(2.0)
        self.results["rss_kb"] = self.memory()
        phases["promotion"] = self.promotion()
        phases["catch-up"] = self.catchUp(self.args.missed)
        self.results["rss_kb_after"] = self.memory()
        self.results["loop_lag"] = self.lags()
        self.results["windows"] = self.windows
        self.results["meta"]["load_after"] = os.getloadavg()
        for name, lag in self.results["loop_lag"].items():
            self.say("loop lag, %s: %d timers over 20 ms late, latest %s ms (%s);"
                     " longest busy reactor thread %s ms"
                     % (name, lag["turns_over_20ms"], lag["max_ms"], lag["where"],
                        lag["max_busy_ms"]))

    def stop(self):
        """SIGTERM every server the router knows (promoted slaves too), then ours."""
        try:
            pids = [s.pid for s in self.status().servers]
        except Exception:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while any(pidAlive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        left = killLeft(self.work)
        if left:
            self.say("killed leftover processes: %s" % (left,))
        for ch in self.channels.values():
            ch.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=100000)
    parser.add_argument("--missed", type=int, default=2000,
                        help="posts written while vm2 is down (catch-up)")
    parser.add_argument("--work", default="/tmp/sns-history-bench")
    parser.add_argument("--out", default=None, help="results JSON (default WORK/results-N.json)")
    args = parser.parse_args()
    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.stop()
    out = args.out or os.path.join(bench.work, "results-%d.json" % (args.posts,))
    with open(out, "w") as f:
        json.dump(bench.results, f, indent=1)
    print("results in", out)


if __name__ == "__main__":
    main()
