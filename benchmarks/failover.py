"""
Failover figures of docs/design.md section 10, measured on real processes.

Starts a 2-VM cluster (``python -m snstwist.commands.cluster``) in a temporary
directory and, N times:

(a) SIGKILLs vm1's master and measures the time until the promoted master
    (vm1's master in the router's Status, not the killed pid) answers a
    client RPC (Login), polling every 5 ms;
(b) SIGKILLs vm1's slave and measures the time until its replacement is
    registered with the router, polling Status every 5 ms.

Along the way it also notes (c): master SIGKILL -> the promoted master's new
slave registered, i.e. the VM is a full pair again.  Each kill waits until
the pair has been up for more than the supervisor's threshold, so every
respawn is immediate, not backed off.

Prints median and max of each, then stops the cluster with SIGTERM and
checks that no server it saw is left running.

With C{--last}, it times instead how long vm1 is without a master when its
last server dies with nobody to take over from it but a spare: (d) the
master SIGKILLed, then the promoted slave as soon as the router lists it as
master (before it tells its spare to go on, a quarter of a second later);
(e) master and slave SIGKILLed together.  Each until a new master of vm1
answers Login.

With C{--client}, it runs C{run.py}'s failover phase instead
(C{benchlib.failovers}): a client (C{loadgen.py failover}, the client
library) SIGKILLs its own master1 and times its next post (durable on two
VMs) and LIST until they succeed, the design's client failover; then the
promoted master's Login, the pair again and the slave's replacement as above;
and how many VMs held each of those posts when it was acknowledged (its
reply's copies).

Usage: python benchmarks/failover.py [-n 10] [--keep] [--client | --last]

A measurement, not a test: it is not run by trial or CI.
"""

import argparse
import os
import shutil
import signal
import statistics
import tempfile
import time

import grpc

from benchlib.cluster import SETTLE, Cluster, until, useTLS
from benchlib.processes import ENV

from snstwist.rpc import sns_pb2 as pb


def pair(cluster, vm="vm1"):
    """Wait for one master and one slave of C{vm}; returns them."""
    def check():
        masters, slaves = cluster.servers(vm, pb.MASTER), cluster.servers(vm, pb.SLAVE)
        return (masters[0], slaves[0]) if len(masters) == 1 and len(slaves) == 1 else None

    return until("a master and a slave of %s" % (vm,), check)


def killMaster(cluster):
    """(a) and (c) for one SIGKILL of vm1's master, in seconds."""
    master, slave = pair(cluster)
    start = time.monotonic()
    os.kill(master.pid, signal.SIGKILL)
    newMasterAnswers(cluster, {master.pid})
    served = time.monotonic() - start
    until("a new slave", lambda: [s for s in cluster.servers("vm1", pb.SLAVE)
                                  if s.pid not in (master.pid, slave.pid)])
    return served, time.monotonic() - start


def killSlave(cluster):
    """(b) for one SIGKILL of vm1's slave, in seconds."""
    master, slave = pair(cluster)
    start = time.monotonic()
    os.kill(slave.pid, signal.SIGKILL)
    until("the slave's replacement", lambda: [s for s in cluster.servers("vm1", pb.SLAVE)
                                             if s.pid != slave.pid])
    return time.monotonic() - start


def newMasterAnswers(cluster, dead):
    """Wait until a master of vm1 whose pid is not in C{dead} answers Login."""
    def answers():
        for m in cluster.servers("vm1", pb.MASTER):
            if m.pid not in dead:
                try:
                    cluster.login(m.address)
                    return True
                except grpc.RpcError:
                    return False
        return False

    until("a new master of vm1 to answer", answers)


def killPromoted(cluster):
    """(d): the promoted master killed as soon as it is listed; seconds until vm1 serves."""
    master, slave = pair(cluster)
    os.kill(master.pid, signal.SIGKILL)
    until("the slave to be listed as master",
          lambda: [m for m in cluster.servers("vm1", pb.MASTER) if m.pid == slave.pid],
          interval=0.001)
    start = time.monotonic()
    os.kill(slave.pid, signal.SIGKILL)
    newMasterAnswers(cluster, {master.pid, slave.pid})
    return time.monotonic() - start


def killBoth(cluster):
    """(e): master and slave killed together; seconds until vm1 serves."""
    master, slave = pair(cluster)
    start = time.monotonic()
    os.kill(slave.pid, signal.SIGKILL)
    os.kill(master.pid, signal.SIGKILL)
    newMasterAnswers(cluster, {master.pid, slave.pid})
    return time.monotonic() - start


def lastServers(args):
    """C{--last}: (d) and (e), C{args.n} times each."""
    base = tempfile.mkdtemp(prefix="sns-failover-")
    useTLS(base, os.environ)
    cluster = Cluster(base, 2, base)
    promoted, both = [], []
    try:
        cluster.start()
        until("the first login", lambda: cluster.login(pair(cluster)[0].address) or True)
        for i in range(args.n):
            # Both spares of vm1 up (a second after the pair is complete).
            time.sleep(SETTLE)
            promoted.append(killPromoted(cluster))
            time.sleep(SETTLE)
            both.append(killBoth(cluster))
            print("run %2d: promoted master killed at once -> vm1 serves %6.1f ms;"
                  " master and slave killed together -> %6.1f ms"
                  % (i + 1, promoted[-1] * 1000, both[-1] * 1000), flush=True)
    finally:
        finish(cluster, base, args.keep)
    print()
    summary("(d) promoted master SIGKILL at once -> vm1's master answers", promoted)
    summary("(e) master + slave SIGKILL -> vm1's master answers", both)


def finish(cluster, base, keep):
    """Stop C{cluster}, say whether any server was left, and remove C{base} unless C{keep}."""
    left = cluster.stop()
    print("WARNING: servers left running (killed): %s" % (sorted(left),) if left
          else "cluster stopped; no server left running")
    if keep:
        print("data and logs in %s" % (base,))
    else:
        shutil.rmtree(base, ignore_errors=True)


def summary(name, seconds):
    ms = sorted(s * 1000 for s in seconds)
    print("%-58s median %7.1f ms   max %7.1f ms   (n=%d)"
          % (name, statistics.median(ms), ms[-1], len(ms)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10, help="kills of each kind (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's directory")
    parser.add_argument("--client", action="store_true",
                        help="time a client's next post and LIST after the kill of its master1")
    parser.add_argument("--last", action="store_true",
                        help="time vm1 without a master when its last server dies")
    args = parser.parse_args()
    if args.client:
        return clientFailovers(args)
    if args.last:
        return lastServers(args)

    base = tempfile.mkdtemp(prefix="sns-failover-")
    useTLS(base, os.environ)
    cluster = Cluster(base, 2, base)
    served, paired, replaced = [], [], []
    try:
        cluster.start()
        until("the first login", lambda: cluster.login(pair(cluster)[0].address) or True)
        for i in range(args.n):
            time.sleep(SETTLE)
            a, c = killMaster(cluster)
            served.append(a)
            paired.append(c)
            time.sleep(SETTLE)
            replaced.append(killSlave(cluster))
            print("run %2d: master kill -> served %6.1f ms, pair again %6.1f ms;"
                  " slave kill -> replacement registered %6.1f ms"
                  % (i + 1, a * 1000, c * 1000, replaced[-1] * 1000), flush=True)
    finally:
        left = cluster.stop()
        if left:
            print("WARNING: servers left running after the cluster stopped (killed): %s"
                  % (sorted(left),))
        else:
            print("cluster stopped; no server left running (%d pids seen)"
                  % (len(cluster.firstSeen),))
        if args.keep:
            print("data and logs in %s" % (base,))
        else:
            shutil.rmtree(base, ignore_errors=True)
    print()
    summary("(a) master SIGKILL -> promoted master answers Login", served)
    summary("(b) slave SIGKILL -> replacement registered with router", replaced)
    summary("(c) master SIGKILL -> new slave registered (pair again)", paired)


class _Run:
    """What C{benchlib.failovers} needs of C{run.py}'s run: its settings, names and log."""

    def __init__(self, n, logdir):
        self.cfg = {"failovers": n}
        self.logdir = logdir
        self.count = 0
        self.t0 = time.monotonic()

    def name(self, what):
        self.count += 1
        return "%02d-%s" % (self.count, what)

    def say(self, text):
        print("[%6.1fs] %s" % (time.monotonic() - self.t0, text), flush=True)


def clientFailovers(args):
    from benchlib.failovers import failover

    base = tempfile.mkdtemp(prefix="sns-failover-")
    useTLS(base, ENV)  # the processes' environment (the client's too), and ours
    cluster = Cluster(base, 2, base)
    try:
        cluster.start()
        result = failover(_Run(args.n, base), cluster)
    finally:
        finish(cluster, base, args.keep)
    print()
    for key, what in (("client_post_ms", "master1 SIGKILL -> the client's next post acked"),
                      ("client_list_ms", "master1 SIGKILL -> the client's LIST answered"),
                      ("promoted_login_ms", "master SIGKILL -> promoted master answers Login"),
                      ("pair_again_ms", "master SIGKILL -> new slave registered"),
                      ("slave_replaced_ms", "slave SIGKILL -> replacement registered")):
        stat = result[key]
        print("%-52s p50 %7.1f ms   p99 %7.1f ms   max %7.1f ms   (n=%d, failed %d)"
              % (what, stat["p50"] or 0, stat["p99"] or 0, stat["max"] or 0, stat["n"],
                 stat["failed"]))
    # The VMs holding the post acknowledged after each kill, as its reply said.
    copies = [r.get("post_copies") for r in result["runs"]]
    print("%-52s %s (on two VMs: %d of %d)"
          % ("copies of the client's next post after each kill", copies,
             copies.count(2), len(copies)))


if __name__ == "__main__":
    main()
