"""
The chaos run (C{sns-chaos}): a cluster on several hosts (L{snstwist.testbed.netbed})
under load, with faults injected at random times, and a check at the end that
nothing acknowledged was lost.

For N minutes, posters post and follow/unfollow each other and readers sit in
timeline mode (all of them C{snstwist.client.client.Client}s in one worker process
on the clients' host), while at random times the run SIGKILLs the router, a
master, a slave or a whole VM (and restarts what does not restart itself),
SIGSTOPs and SIGCONTs a master or a slave, partitions two hosts, cuts a host
off from everyone, and adds latency, jitter and loss (where the bed has its
lag proxies).  The worker reports every acknowledged write and every post each
timeline showed.  At the end the run heals everything and checks:

- no acknowledged write lost: every acknowledged post is in its author's post
  file, and every follow relation is as its last answered command left it;
- every VM's post files byte-identical, its users, follows and log rows equal;
- each reader shown each acknowledged post of the users it follows exactly
  once (after catch-up), and no post it was shown is missing from the files;
- no process left in any host of the bed once the cluster stopped.

It prints a table: faults by kind, writes acknowledged, lost, duplicates on
screen, time to converge after the last heal.  It waits on events with
deadlines (processes ended, lines received, data equal), never on a sleep
that hides a race; the only sleeps are the random gaps between faults and
between a user's commands, which are the load itself.
"""

import json
import os
import signal
import random
import sys
import tempfile
import time

from twisted.internet import threads
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage

from snstwist import buddy
from snstwist.rpc import grpcbridge
from snstwist.testbed import netbed, netcluster
from snstwist.testbed.chaosworker import WorkerOptions, WorkerProcess, work
from snstwist.testbed.faults import Faults, cmdline
from snstwist.testbed.verdict import Record, Result, postsIn

log = Logger()


class Chaos:
    """
    One chaos run: the bed, the cluster, the worker, the faults
    (L{snstwist.testbed.faults}), the checks (L{snstwist.testbed.verdict}).
    """

    convergeTimeout = 180.0

    def __init__(self, reactor, minutes, vms=3, posters=4, readers=3, seed=None,
                 base=None, lag=True, out=None, pause=0.2):
        self.reactor = reactor
        self.minutes = minutes
        self.vmNames = ["vm%d" % (i + 1,) for i in range(vms)]
        self.posters = ["poster%d" % (i + 1,) for i in range(posters)]
        self.readers = ["reader%d" % (i + 1,) for i in range(readers)]
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.random = random.Random(self.seed)
        self.base = base or tempfile.mkdtemp(prefix="sns-chaos-")
        self.lag = lag
        self.out = out or (lambda line: print(line, flush=True))
        self.pause = pause
        self.faults = None
        self.record = Record()
        self.net = None
        self.cluster = None
        self.channel = None
        self.worker = None
        self.events = None
        self.stuck = {}
        self.stragglers = []
        self.follows = {r: self.random.sample(self.posters, min(2, len(self.posters)))
                        for r in self.readers}

    def say(self, text, *args):
        line = "[%7.1fs] %s" % (self.reactor.seconds() - self.started, text % args)
        self.out(line)
        if self.events is not None:
            self.events.write(json.dumps({"ev": "controller", "line": line}) + "\n")

    async def run(self):
        self.started = self.reactor.seconds()
        self.net = netbed.NetBed(["router"] + self.vmNames + ["clients"], self.reactor,
                                 lag=self.lag)
        try:
            await self.net.create()
            try:
                return await self._run()
            finally:
                await self._teardown()
        finally:
            await self.net.destroy()

    async def _run(self):
        self.say("seed %d; data and logs in %s; hosts %s", self.seed, self.base,
                 ", ".join("%s %s" % (h.name, h.address) for h in self.net.hosts.values()))
        self.cluster = netcluster.NetCluster(self.net, self.base, len(self.vmNames))
        self.cluster.startService()
        await self.cluster.whenReady.addTimeout(60, self.reactor)
        self.channel = grpcbridge.channel(self.cluster.router, self.cluster.tls)
        self.faults = Faults(self.reactor, self.net, self.cluster, self.channel, self.vmNames,
                             self.random, self.say, self.lag)
        self.events = open(os.path.join(self.base, "events.jsonl"), "w")
        self.worker = WorkerProcess(self._event)
        ready = self.worker.waitFor("ready", self.reactor, 120)
        self.net.spawn("clients", self.worker, [
            sys.executable, "-m", "snstwist.testbed.chaos", "worker",
            "--router", self.cluster.router,
            "--posters", ",".join(self.posters), "--readers", ",".join(self.readers),
            "--follows", ";".join("%s:%s" % (r, ",".join(f)) for r, f in self.follows.items()),
            "--seed", str(self.seed), "--pause", str(self.pause),
            "--log", os.path.join(self.base, "worker.log")],
            env=dict(os.environ, GRPC_VERBOSITY="ERROR", GRPC_ENABLE_FORK_SUPPORT="0",
                     PYTHONUNBUFFERED="1", SNS_TLS_CA=self.cluster.tlsFiles[0]))
        await ready
        self.say("cluster ready, %d posters and %d readers connected; faults for %.1f min",
                 len(self.posters), len(self.readers), self.minutes)
        end = self.reactor.seconds() + self.minutes * 60
        while True:
            await self._later(self.random.uniform(0.5, 3.0))
            left = end - self.reactor.seconds()
            if left < 0.5:
                break
            await self.faults.inject(min(left, self.random.uniform(1.0, 8.0)))
        healed = await self.faults.healAll()
        self.say("everything healed; stopping the writers")
        done = self.worker.waitFor("writes-done", self.reactor, 120)
        self.worker.send("stop")
        self.stuck = (await done)["stuck"]
        if self.stuck:
            self.say("writers still waiting for an answer: %s", self.stuck)
        converge = await self._converge(healed)
        self.say("converged %.1f s after the last heal" % (converge,) if converge >= 0
                 else "did NOT converge within %ds" % (self.convergeTimeout,))
        return await self._check(converge)

    def _event(self, event):
        event["at"] = round(self.reactor.seconds() - self.started, 3)
        self.events.write(json.dumps(event) + "\n")
        self.record.event(event)

    def _later(self, seconds):
        return deferLater(self.reactor, max(0.0, seconds), lambda: None)

    # -- the end

    async def _converge(self, healed):
        """Seconds from C{healed} until every VM and every reader agree, or -1."""
        deadline = healed + self.convergeTimeout
        while True:
            self.snapshots = await self._snapshots()
            first = self.snapshots[self.vmNames[0]]
            if (all(s == first for s in self.snapshots.values())
                    and not self.record.lost(postsIn(first))
                    and not self.record.missing(self.follows)):
                return self.reactor.seconds() - healed
            if self.reactor.seconds() > deadline:
                return -1.0
            await self._later(0.25)

    async def _snapshots(self):
        out = {}
        for vm in self.vmNames:
            out[vm] = await threads.deferToThread(
                netcluster.snapshot, os.path.join(self.base, vm, "data"))
        return out

    async def _check(self, converge):
        snapshots = self.snapshots
        first = snapshots[self.vmNames[0]]
        posts = postsIn(first)
        self.worker.send("quit")
        await self.worker.ended.addTimeout(60, self.reactor)
        leaked = await self._stopEverything()
        acked = self.record.acked
        return Result(
            faults=dict(self.faults.counts),
            acked=len(acked),
            ackedOneCopy=len([a for a in acked if a["copies"] == 1]),
            failed=len(self.record.failed),
            lost=self.record.lost(posts),
            followsWrong=self.record.followsWrong(first),
            duplicates=self.record.duplicates(),
            missing=self.record.missing(self.follows),
            phantoms=self.record.phantoms(posts),
            vmsDiffer=[vm for vm, s in snapshots.items() if s != first],
            leaked=leaked,
            converge=converge,
            reconnects=self.record.reconnects,
            gaveUp=self.record.gaveUp,
            errors=self.record.errors,
            stuck=self.stuck,
            stragglers=self.stragglers,
            shown=len(self.record.shown),
            minutes=self.minutes)

    leakGrace = 10.0

    async def _stopEverything(self):
        """
        Stop the cluster as sns-cluster stops.  A process still in a host
        when that returns is a straggler (noted, with what it is); one still
        there L{leakGrace} seconds later leaked.
        """
        if self.cluster is not None and self.cluster.running:
            await self.cluster.stopService()
        self.stragglers = await self._left()
        deadline = self.reactor.seconds() + self.leakGrace
        left = self.stragglers
        while left and self.reactor.seconds() < deadline:
            await self._later(0.1)
            left = await self._left()
        if self.stragglers:
            self.say("still running when the cluster's stop returned: %s", self.stragglers)
        return left

    async def _left(self):
        left = []
        for host in self.net.hosts.values():
            for pid in await self.net.pids(host.name):
                if buddy.pidAlive(pid):
                    left.append((host.name, pid, cmdline(pid)))
        return left

    async def _teardown(self):
        if self.events is not None:
            self.events.close()
            self.events = None
        if self.worker is not None and not self.worker.ended.called:
            buddy.signalChild(self.worker, signal.SIGKILL)
        if self.cluster is not None and self.cluster.running:
            await self.cluster.stopService()
        if self.channel is not None:
            await grpcbridge.closeChannel(self.channel)


class ChaosOptions(usage.Options):
    synopsis = "[--minutes N] [--vms N] [--seed N] [--dir DIR]"
    optParameters = [
        ["minutes", "m", 2.0, "How long faults are injected.", float],
        ["vms", None, 3, "Number of VMs.", int],
        ["posters", None, 4, "Users who post and follow.", int],
        ["readers", None, 3, "Users in timeline mode.", int],
        ["pause", None, 0.2, "Mean pause between a poster's commands (s).", float],
        ["seed", None, None, "Random seed (default: random; printed).", int],
        ["dir", "d", None, "Directory for data and logs (default: a new temporary one)."],
    ]
    optFlags = [["no-lag", None, "No latency proxies (no latency faults)."]]
    subCommands = [["worker", None, WorkerOptions, "(internal) the clients of a run"]]

    def postOptions(self):
        from snstwist.commands.commandline import installReactor
        if not 2 <= self["vms"] <= 9:
            raise usage.UsageError("--vms must be between 2 and 9")
        installReactor()


async def chaos(reactor, options):
    if options.subCommand == "worker":
        return await work(reactor, options.subOptions)
    why = await threads.deferToThread(netbed.unavailable)
    if why is not None:
        print("sns-chaos: no multi-host test bed here: %s" % (why,))
        return 2
    lag = not options["no-lag"]
    if lag and netbed.lagUnavailable():
        print("sns-chaos: no latency faults: %s" % (netbed.lagUnavailable(),))
        lag = False
    run = Chaos(reactor, options["minutes"], options["vms"], options["posters"],
                options["readers"], options["seed"], options["dir"], lag=lag,
                pause=options["pause"])
    began = time.time()
    result = await run.run()
    print()
    print("sns-chaos: %.1f min of faults, seed %d, %d VMs, %d posters, %d readers (%.0f s in all)"
          % (options["minutes"], run.seed, options["vms"], options["posters"],
             options["readers"], time.time() - began))
    print(result.table())
    print(result.details())
    print("sns-chaos: %s" % ("PASSED" if result.ok else "FAILED"))
    return 0 if result.ok else 1


def main(argv=None):
    """The C{sns-chaos} command."""
    from snstwist.commands.commandline import runCommand
    return runCommand("sns-chaos", ChaosOptions(), argv, chaos)


if __name__ == "__main__":
    sys.exit(main())
