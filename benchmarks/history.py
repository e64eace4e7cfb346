"""
History does not cost (docs/design.md, the targets): a VM's start, a
promotion, a new standby and a catch-up, with N posts already stored, on
real processes on this machine.

    python benchmarks/history.py --posts 1000000 [--work DIR] [--promotions K]

Builds an import file (``benchmarks/dataset.py``: 1,000 users, 10 follows
each, N posts of about 100 characters), imports it once (``sns-admin
import``, kept in WORK/imported-N) and copies that to the data directories
of two VMs: the same file gives every VM the same data.
Then, with a router:

1. start: vm1's master is started; time until it answers a Login (with a
   password: a new user, so its hash and its first durable write are
   part of it), until its slave is registered and holds every update (a
   ready standby); the same for vm2; RSS of each master and slave once warm;
2. promotions, K of them, from vm1 and vm2 in turn: SIGKILL of a VM's
   master; time until its promoted slave answers a Login (with the token
   the first Login gave, as a client failing over sends it, on a TLS
   connection opened before the kill), and until the new slave holds every
   update; then SIGKILL of that new slave, and the time until the one
   respawned in its place holds every update; with --writing, 20 of the
   imported users post on the master (200 a second) for 0.5 s before and during the kill, so
   that the promoted slave repairs the post files the master left unflushed;
3. catch-up: every process of vm2 (master, slave and their spares) is SIGKILLed,
   M posts are written on vm1, vm2's master is started again; time until it answers a Login and
   until it holds every update of vm1.

Every server runs with $SNS_LOOP_LAG_MS=20 (L{benchlib.looplags}): for each
phase the latest timer (of any server) is reported with the process, and
the most CPU the reactor thread spent in one such gap (a long turn, as
opposed to waiting for the CPU of a loaded machine).  The figures are of a
shared machine: the load average before and after is in the results.
A measurement, not a test.
"""

import argparse
import os
import sys
import time

from benchlib.cluster import until, useTLS
from benchlib.historydata import copyTo, imported, saveResults
from benchlib.looplags import lagEvents, lagsByPhase
from benchlib.machine import machine
from benchlib.processes import ENV, rssKB
from benchlib.stats import ms, summarize
from benchlib.vms import VMs
from benchlib.writing import Writing

SECRET = "history-benchmark-secret-0123456789"
# Seconds a pair is left alone before the next kill: more than
# BuddySupervisor.threshold (a respawn is immediate, not backed off), and
# more than buddylink.SPARE_DELAY plus a spare's start (0.35-0.5 s on a quiet
# machine): the killed process's replacement is the spare, as after any
# failure that does not follow another within seconds.
SETTLE = 2.5
WRITING = 0.5  # --writing: seconds of posts before the kill


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        os.makedirs(self.work, exist_ok=True)
        env = dict(ENV, SNS_SECRET=SECRET, SNS_LOOP_LAG_MS="20")
        useTLS(self.work, env)
        self.vms = VMs(self.work, env, SECRET)
        meta = machine("history", sys.argv)
        meta["command"] = " ".join(["python", "benchmarks/history.py"] + sys.argv[1:])
        self.results = {"meta": meta, "posts": args.posts, "phases": {}}
        self.windows = []

    def say(self, text):
        sys.stdout.write("[%7.1fs] %s\n" % (time.monotonic() - self.t0, text))
        sys.stdout.flush()

    def window(self, name, start, end):
        self.windows.append((name, start, end + 1.0))

    # -- phases

    def start(self, vm):
        vms = self.vms
        t0 = time.time()
        _, address = vms.startServer(vm)
        tLogin = until("%s to answer a Login" % (vm,), lambda: vms.loggedIn(address),
                       timeout=600, interval=0.005)
        tReady = until("%s's standby to be warm" % (vm,), lambda: vms.readyStandby(vm),
                       timeout=600, interval=0.01)
        self.window("start " + vm, t0, tReady)
        master, slave = vms.pair(vm)
        out = {"start_to_login_s": round(tLogin - t0, 3),
               "start_to_ready_standby_s": round(tReady - t0, 3),
               "updates": master.updates}
        self.say("%s: start -> Login %.3f s, -> warm standby %.3f s (%d updates)"
                 % (vm, out["start_to_login_s"], out["start_to_ready_standby_s"], master.updates))
        return out

    def memory(self):
        out = {}
        for vm in ("vm1", "vm2"):
            master, slave = self.vms.pair(vm)
            out[vm] = {"master_rss_kb": rssKB(master.pid), "slave_rss_kb": rssKB(slave.pid)}
        self.say("RSS: %s" % (out,))
        return out

    def promote(self, vm):
        """SIGKILL C{vm}'s master: (kill -> Login, kill -> new warm standby) in seconds."""
        vms = self.vms
        master, slave = vms.pair(vm)
        vms.connect(slave.address)
        writing = Writing(vms, master.address) if self.args.writing else None
        if writing is not None:
            writing.start()
            time.sleep(WRITING)
        t0 = time.time()
        vms.kill(master.pid)
        if writing is not None:
            writing.stop()

        def promoted():
            for m in vms.servers(vm, "master"):
                if m.pid != master.pid:
                    vms.renew(m.address)
                    return time.time()

        tLogin = until("%s's promoted slave to answer" % (vm,), promoted, timeout=600,
                       interval=0.002)
        tReady = until("%s's new standby to be warm" % (vm,),
                       lambda: vms.readyStandby(vm, (master.pid, slave.pid)),
                       timeout=600, interval=0.005)
        self.window("promotion", t0, tReady)
        if writing is not None:
            writing.join()
        return tLogin - t0, tReady - t0

    def respawn(self, vm):
        """SIGKILL C{vm}'s slave: seconds until the one respawned holds every update."""
        vms = self.vms
        _, slave = vms.pair(vm)
        t0 = time.time()
        vms.kill(slave.pid)
        tReady = until("%s's respawned standby to be warm" % (vm,),
                       lambda: vms.readyStandby(vm, (slave.pid,)), timeout=600, interval=0.005)
        self.window("new standby", t0, tReady)
        return tReady - t0

    def promotions(self, count):
        logins, standbys, respawns = [], [], []
        for i in range(count):
            vm = ("vm1", "vm2")[i % 2]
            login, ready = self.promote(vm)
            time.sleep(SETTLE)
            respawned = self.respawn(vm)
            time.sleep(SETTLE)
            logins.append(ms(login))
            standbys.append(ms(ready))
            respawns.append(ms(respawned))
            self.say("promotion %d (%s): SIGKILL -> Login %.1f ms, -> new warm standby"
                     " %.1f ms; slave SIGKILL -> respawned standby warm %.1f ms"
                     % (i + 1, vm, logins[-1], standbys[-1], respawns[-1]))
        out = {"kill_to_login_ms": summarize(logins), "kill_to_ready_standby_ms":
               summarize(standbys), "slave_kill_to_ready_standby_ms": summarize(respawns),
               "samples": {"login": logins, "standby": standbys, "respawn": respawns}}
        for key in ("kill_to_login_ms", "kill_to_ready_standby_ms",
                    "slave_kill_to_ready_standby_ms"):
            self.say("%s: %s" % (key, out[key]))
        return out

    def catchUp(self, posts):
        from snstwist.rpc import sns_pb2 as pb
        from snstwist.rpc import sns_pb2_grpc as pbg
        vms = self.vms
        vms.killVM("vm2")
        until("vm2 to be gone", lambda: not vms.servers("vm2"), timeout=30)
        master = vms.servers("vm1", "master")[0]
        stub = pbg.SNSStub(vms.channel(master.address))
        # Posts are rate-limited per user (20 a second): 50 writers, two
        # posts each per tenth of a second.
        writers = [(("x-sns-session", vms.login(master.address, "away%d" % (i,)).token),)
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
        _, address = vms.startServer("vm2")
        tLogin = until("vm2 to answer again", lambda: vms.loggedIn(address),
                       timeout=600, interval=0.005)

        def caughtUp():
            m1, m2 = vms.servers("vm1", "master"), vms.servers("vm2", "master")
            if m1 and m2 and m2[0].updates >= m1[0].updates:
                return time.time()

        tCaught = until("vm2 to catch up", caughtUp, timeout=600, interval=0.01)
        until("vm2's standby to be warm", lambda: vms.readyStandby("vm2"), timeout=600,
              interval=0.01)
        self.window("catch-up", t1, tCaught)
        out = {"posts_missed": posts, "start_to_login_s": round(tLogin - t1, 3),
               "start_to_caught_up_s": round(tCaught - t1, 3)}
        self.say("catch-up: vm2 start -> Login %.3f s, -> holds all of vm1 %.3f s"
                 % (out["start_to_login_s"], out["start_to_caught_up_s"]))
        return out

    def run(self):
        self.t0 = time.monotonic()
        pristine, said = imported(self.work, self.args.posts, self.say)
        if said is not None:
            self.results["import"] = said
        for vm in ("vm1", "vm2"):
            self.results["data_bytes"] = copyTo(pristine, self.vms.data(vm))
        self.vms.startRouter()
        phases = self.results["phases"]
        phases["start vm1"] = self.start("vm1")
        phases["start vm2"] = self.start("vm2")
        time.sleep(2.0)
        self.results["rss_kb"] = self.memory()
        phases["promotions"] = self.promotions(self.args.promotions)
        phases["catch-up"] = self.catchUp(self.args.missed)
        self.results["rss_kb_after"] = self.memory()
        lags = lagsByPhase(lagEvents(self.work), self.windows)
        self.results["loop_lag"] = lags
        self.results["windows"] = self.windows
        for name, lag in lags.items():
            self.say("loop lag, %s: %d timers over 20 ms late, latest %s ms (%s);"
                     " longest busy reactor thread %s ms (%s; %s ms of it collecting)"
                     % (name, lag["turns_over_20ms"], lag["max_ms"], lag["where"],
                        lag["max_busy_ms"], lag["busiest_where"],
                        lag["busiest_collecting_ms"]))

    def stop(self):
        left = self.vms.stop()
        self.results["meta"]["load_after"] = os.getloadavg()
        if left:
            self.say("killed leftover processes of this run: %s" % (left,))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=100000)
    parser.add_argument("--promotions", type=int, default=10,
                        help="masters SIGKILLed (and slaves after them), vm1 and vm2 in turn")
    parser.add_argument("--writing", action="store_true",
                        help="20 imported users post on the master (200/s) as it is killed,"
                             " so that its slave repairs the files of the last batches")
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
    saveResults(bench.results, bench.work, args.posts, args.out)


if __name__ == "__main__":
    main()
