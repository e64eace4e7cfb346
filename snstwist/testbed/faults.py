"""
The faults of a chaos run (L{snstwist.testbed.chaos}): what it does to the
cluster and the network at random times, and how it undoes all of it.

L{Faults} knows what is down (killed and not yet restarted) and what is
stopped (SIGSTOPped and not yet continued), so that a fault never picks a
victim that is already out, and L{Faults.healAll} can bring everything
back before the checks.  Processes are found through the router's status
(which server is the master of which VM) and the bed (what runs in a host);
they are signalled by pid, never by name, and a pid remembered from
earlier only while it is still a server on its VM's data (L{kill}).
"""

import os
import signal

from twisted.internet import defer
from twisted.internet.task import deferLater

from snstwist.buddy.processes import isServer, pidAlive, signalChild, signalIfStill
from snstwist.core.errors import RemoteError
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.testbed.lagproxy import Lag
from snstwist.testbed.verdict import FAULTS


class Faults:
    """
    Injects one fault at a time into C{cluster} (a
    L{snstwist.testbed.netcluster.NetCluster}) on bed C{net}, choosing with
    C{random}; C{say} reports each (a format and its arguments).
    C{counts} is how many of each kind were really applied.
    """

    def __init__(self, reactor, net, cluster, channel, vmNames, random, say, lag):
        self.reactor = reactor
        self.net = net
        self.cluster = cluster
        self.channel = channel
        self.vmNames = vmNames
        self.random = random
        self.say = say
        self.lag = lag
        self.counts = {}
        self.down = set()      # "router" or VM names killed and not yet restarted
        self.stopped = {}      # {pid: data directory} SIGSTOPped and not yet continued

    def _later(self, seconds):
        return deferLater(self.reactor, max(0.0, seconds), lambda: None)

    def data(self, vm):
        """The data directory of VM C{vm} (as C{sns-cluster} lays it out)."""
        return os.path.join(self.cluster.base, vm, "data")

    async def _status(self):
        try:
            return await grpcbridge.call(pbg.RouterStub(self.channel).Status,
                                         pb.StatusRequest(), timeout=2,
                                         metadata=auth.secretMetadata(self.cluster.secret))
        except (RemoteError, defer.CancelledError, defer.TimeoutError):
            return None

    async def _server(self, role):
        """A live server of C{role} (a pb role) on a VM that is up, or None."""
        status = await self._status()
        if status is None:
            return None
        servers = [s for s in status.servers if s.role == role and s.vm not in self.down
                   and s.pid not in self.stopped and pidAlive(s.pid)]
        return self.random.choice(servers) if servers else None

    async def inject(self, duration):
        """
        One fault of a kind chosen at random, held C{duration} seconds and
        undone (a killed process restarted, a stopped one continued, the
        network mended).  A kind with nothing to apply it to is said and
        skipped.
        """
        kinds = [k for k in FAULTS if k != "latency" or self.lag]
        kind = self.random.choice(kinds)
        hosts = ["router"] + self.vmNames + ["clients"]
        done = False
        if kind == "kill-router" and "router" not in self.down:
            self.say("SIGKILL the router; restart in %.1fs", duration)
            signalChild(self.cluster.children["router"], signal.SIGKILL)
            self.down.add("router")
            await self._later(duration)
            await self.restart("router")
            done = True
        elif kind in ("kill-master", "kill-slave", "stop-master", "stop-slave"):
            done = await self._signalServer(kind, duration)
        elif kind == "kill-vm":
            vm = self.random.choice(self.vmNames)
            if vm not in self.down:
                self.say("SIGKILL every process of %s; restart in %.1fs", vm, duration)
                await self.net.kill(vm)
                self.down.add(vm)
                await self._later(duration)
                await self.restart(vm)
                done = True
        elif kind == "partition":
            a, b = self.random.sample(hosts, 2)
            self.say("partition %s | %s for %.1fs", a, b, duration)
            await self.net.partition(a, b)
            await self._later(duration)
            await self.net.unpartition(a, b)
            done = True
        elif kind == "isolate":
            host = self.random.choice(hosts)
            self.say("cut %s off from everyone for %.1fs", host, duration)
            await self.net.isolate(host)
            await self._later(duration)
            await self.net.reconnect(host)
            done = True
        elif kind == "latency":
            host = self.random.choice(hosts)
            lag = Lag(delay=self.random.choice([0.005, 0.02, 0.05, 0.2]),
                      jitter=self.random.choice([0.0, 0.01, 0.05]),
                      loss=self.random.choice([0.0, 0.01, 0.05]))
            self.say("slow %s down (%s) for %.1fs", host, lag, duration)
            await self.net.slow(host, lag)
            await self._later(duration)
            await self.net.slow(host, None)
            done = True
        if done:
            self.counts[kind] = self.counts.get(kind, 0) + 1
        else:
            self.say("(no %s now: nothing to apply it to)", kind)

    async def _signalServer(self, kind, duration):
        """SIGKILL, or SIGSTOP for C{duration}, a master or a slave; False if none."""
        server = await self._server(pb.MASTER if kind.endswith("master") else pb.SLAVE)
        if server is None:
            return False
        data = self.data(server.vm)
        if kind.startswith("kill"):
            self.say("SIGKILL the %s of %s (pid %d)", kind[5:], server.vm, server.pid)
            kill(server.pid, signal.SIGKILL, data)
        else:
            self.say("SIGSTOP the %s of %s (pid %d) for %.1fs", kind[5:], server.vm,
                     server.pid, duration)
            kill(server.pid, signal.SIGSTOP, data)
            self.stopped[server.pid] = data
            await self._later(duration)
            kill(server.pid, signal.SIGCONT, data)
            self.stopped.pop(server.pid, None)
        return True

    async def restart(self, name):
        """Start the router or a VM again once none of its processes is left."""
        await self.net.kill(name)

        async def gone():
            return not await self.net.pids(name)

        await waitUntil(self.reactor, gone, "%s's processes to be gone" % (name,), 30)
        if name == "router":
            self.cluster.startRouter()
        else:
            self.cluster.startVM(self.vmNames.index(name))
        self.down.discard(name)
        self.say("%s started again", name)

    async def healAll(self):
        """Continue, mend and restart everything; returns when it was done."""
        for pid, data in list(self.stopped.items()):
            kill(pid, signal.SIGCONT, data)
        self.stopped.clear()
        await self.net.heal()
        for name in sorted(self.down):
            await self.restart(name)
        return self.reactor.seconds()


def cmdline(pid):
    """What C{pid} runs, for a report; C{?} when it is gone."""
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")[:200]
    except OSError:
        return "?"


def kill(pid, signum, data):
    """
    Send C{signum} to C{pid}, a server on the data directory C{data} seen
    in the router's status, only while it is still that: it may have
    ended since (a SIGSTOP held for seconds, a heal at the end), and its
    pid may be another program's by now.
    """
    signalIfStill(pid, signum, lambda p: isServer(p, data))


async def waitUntil(reactor, predicate, what, timeout):
    """Poll the async C{predicate} until it holds; RuntimeError after C{timeout}."""
    deadline = reactor.seconds() + timeout
    while not await predicate():
        if reactor.seconds() > deadline:
            raise RuntimeError("timed out after %ss waiting for %s" % (timeout, what))
        await deferLater(reactor, 0.05, lambda: None)
