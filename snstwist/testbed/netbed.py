"""
A multi-host test bed on one Linux machine: the router, each VM and the
clients each in a network namespace of their own (C{ip netns}), joined by
veth pairs to one bridge, so that every host has its own address and
interface, and a network that can fail between any two of them.

Faults:

- L{NetBed.partition}: hosts A and B no longer reach each other (a
  blackhole route to the other on each side; every other path stays up);
- L{NetBed.isolate}: a host is cut from everyone (its link to the bridge
  goes down);
- L{NetBed.heal}: every partition and cut is undone;
- latency, jitter and loss: this kernel has no C{netem} qdisc, so they come
  from L{snstwist.testbed.lagproxy}, a userspace TCP proxy that the bed puts in the
  path of every connection into a host when it is made with C{lag=True}.

An C{sns-cluster} whose router and VMs run in the bed's hosts is
L{snstwist.testbed.netcluster.NetCluster}.

The bridge lives in the namespace that creates the bed (it gets the
subnet's first address), so the process that drives the bed (a test, the
chaos run) reaches every host directly.  Each bed takes a /24 of 10.213.0.0/16
that no other bed holds (a claim file under L{STATE}) and unique names, so
parallel runs do not collide; a bed whose owner died is swept by the next one
made.  Every bed is destroyed by its owner (namespaces, links, bridge, and
the processes started in it, by pid), whatever happened.

It must never touch a namespace, link or address it did not make: every
name it makes carries its token.  Needs root and the C{ip} command.
"""

import errno
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys

import attrs
from twisted.internet import defer, protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger

from snstwist import buddy
from snstwist.buddy.processes import pidAlive
from snstwist.testbed.lagproxy import Lag

log = Logger()

STATE = "/run/snstwist-netbed"
SUBNETS = "10.213.%d"
IP = shutil.which("ip") or "/usr/sbin/ip"
IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"
LAG_PORT = 7999  # below the ephemeral range, so no server's port


class BedError(Exception):
    """An C{ip} command of the bed failed."""


def unavailable():
    """
    Why namespaces can not be made here (a sentence), or None when they can.
    Tries for real: makes a namespace and removes it.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    if not os.path.exists(IP):
        return "the ip command (iproute2) is not installed"
    probe = "snsprobe-%d-%s" % (os.getpid(), secrets.token_hex(3))
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return "cannot make a network namespace: %s" % (made.stderr.strip(),)
    subprocess.run([IP, "netns", "del", probe], capture_output=True)
    return None


def lagUnavailable():
    """Why the bed can not add latency here (a sentence), or None."""
    if not os.path.exists(IPTABLES):
        return "no iptables command (apt-get install iptables) for the lag proxies' REDIRECT"
    return None


class _LagProcess(protocol.ProcessProtocol):
    """A host's lag proxy, as the bed sees it."""

    def __init__(self):
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        self.out = b""

    @property
    def pid(self):
        return self.transport.pid

    def outReceived(self, data):
        self.out += data
        if b"ready\n" in self.out and not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(BedError("the lag proxy ended: %s" % (reason.getErrorMessage(),)))
        self.ended.callback(None)

    def set(self, lag):
        self.transport.write((json.dumps(attrs.asdict(lag)) + "\n").encode())


@attrs.frozen
class Host:
    """One host of the bed: its namespace, address and link to the bridge."""

    name: str
    netns: str
    address: str
    link: str  # the bridge's end of its veth pair, in the bed's namespace


class NetBed:
    """
    Hosts C{names} in namespaces of their own on one bridge.  Made by
    L{create}, undone by L{destroy}; every process started with L{spawn}
    is killed by L{destroy} if it is still there.
    """

    def __init__(self, names, reactor=None, lag=False):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.names = list(names)
        self.token = secrets.token_hex(3)
        self.hosts = {}
        self.subnet = None
        self.claim = None
        self.bridge = "snsb%s" % (self.token,)
        self.cuts = set()
        self.partitions = set()
        self.processes = []
        self.lag = lag
        self.proxies = {}
        self.slowed = set()

    # -- making and unmaking

    async def _ip(self, *args, netns=None, check=True):
        argv = (["-n", netns] if netns else []) + list(args)
        return await _run(IP, argv, check)

    def _claimSubnet(self):
        """Take a /24 no other live bed holds: the claim file is the lock."""
        os.makedirs(STATE, exist_ok=True)
        for n in range(256):
            path = os.path.join(STATE, "subnet-%d" % (n,))
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
                continue
            with os.fdopen(fd, "w") as f:
                f.write("%d %s\n" % (os.getpid(), self.token))
            self.claim = path
            return SUBNETS % (n,)
        raise BedError("every test-bed subnet is taken (see %s)" % (STATE,))

    async def sweep(self):
        """Undo the beds of owners that died without undoing them."""
        if not os.path.isdir(STATE):
            return
        for name in os.listdir(STATE):
            path = os.path.join(STATE, name)
            try:
                with open(path) as f:
                    pid, token = f.read().split()
            except (OSError, ValueError):
                continue
            if pidAlive(int(pid)):
                continue
            log.info("sweeping the test bed {token} of dead pid {pid}", token=token, pid=pid)
            await self._unmake(token)
            try:
                os.remove(path)
            except OSError:
                pass

    async def _unmake(self, token):
        for netns in (await self._ip("netns", "list")).split("\n"):
            netns = netns.split(" ")[0]
            if netns.startswith("snsbed-%s-" % (token,)):
                await killIn(netns)
                await self._ip("netns", "del", netns, check=False)
        # A namespace's own end of a veth goes when the kernel frees the
        # namespace, a little later: remove the pairs from our end now.
        for line in (await self._ip("-o", "link", "show")).split("\n"):
            fields = line.split(": ")
            if len(fields) > 1:
                link = fields[1].split("@")[0]
                if link in ("snsb" + token, ) or link.startswith("snsv" + token):
                    await self._ip("link", "del", link, check=False)

    async def create(self):
        await self.sweep()
        self.subnet = self._claimSubnet()
        try:
            await self._ip("link", "add", self.bridge, "type", "bridge")
            await self._ip("addr", "add", self.subnet + ".1/24", "dev", self.bridge)
            await self._ip("link", "set", self.bridge, "up")
            for i, name in enumerate(self.names):
                await self._addHost(i, name)
        except BaseException:
            await self.destroy()
            raise
        return self

    async def _addHost(self, index, name):
        host = Host(name, "snsbed-%s-%s" % (self.token, name),
                    "%s.%d" % (self.subnet, index + 2), "snsv%s%d" % (self.token, index))
        self.hosts[name] = host
        inside = "snsp%s%d" % (self.token, index)
        await self._ip("netns", "add", host.netns)
        await self._ip("link", "add", host.link, "type", "veth", "peer", "name", inside)
        await self._ip("link", "set", inside, "netns", host.netns)
        await self._ip("link", "set", host.link, "master", self.bridge)
        await self._ip("link", "set", host.link, "up")
        await self._ip("link", "set", "lo", "up", netns=host.netns)
        await self._ip("link", "set", inside, "name", "eth0", netns=host.netns)
        await self._ip("addr", "add", host.address + "/24", "dev", "eth0", netns=host.netns)
        await self._ip("link", "set", "eth0", "up", netns=host.netns)
        if self.lag:
            await self._addLag(host)

    async def _addLag(self, host):
        """Put a lag proxy in the path of every TCP connection into C{host}."""
        why = lagUnavailable()
        if why is not None:
            raise BedError(why)
        proxy = self.proxies[host.name] = _LagProcess()
        self.spawn(host.name, proxy, [sys.executable, "-m", "snstwist.testbed.lagproxy",
                                      "--port", str(LAG_PORT)])
        await proxy.ready
        await _run(IP, ["netns", "exec", host.netns, IPTABLES, "-t", "nat", "-A", "PREROUTING",
                        "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(LAG_PORT)])

    async def destroy(self):
        """Kill what runs in the bed, remove its namespaces, links and claim."""
        for process in self.processes:
            if process.pid and not process.ended.called:
                buddy.signalChild(process, signal.SIGKILL)
        for host in self.hosts.values():
            # Processes the bed did not start itself (a VM's slave, a
            # promoted slave's new slave) are found by their namespace.
            await killIn(host.netns)
        await self._unmake(self.token)
        if self.claim is not None:
            try:
                os.remove(self.claim)
            except OSError:
                pass
            self.claim = None

    # -- running things in it

    def command(self, host, argv):
        """The argv that runs C{argv} in C{host}'s namespace."""
        return [IP, "netns", "exec", self.hosts[host].netns] + list(argv)

    def spawn(self, host, protocol, argv, env=None):
        """
        Start C{argv} in C{host} with C{protocol} (which must have an
        C{ended} Deferred, fired at processEnded).  C{ip netns exec}
        execs the command, so the pid is the command's own.
        """
        self.reactor.spawnProcess(protocol, IP, self.command(host, argv),
                                  env=env if env is not None else dict(os.environ))
        self.processes.append(protocol)
        return protocol

    def address(self, host):
        return self.hosts[host].address

    async def pids(self, host):
        """The processes in C{host}, but for the bed's own (its lag proxy)."""
        own = {p.pid for p in self.proxies.values()}
        return [pid for pid in await pidsIn(self.hosts[host].netns) if pid not in own]

    async def kill(self, host):
        """SIGKILL every process in C{host} but the bed's own: a host crash."""
        for pid in await self.pids(host):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- faults

    async def partition(self, a, b):
        """A and B no longer reach each other; both still reach everyone else."""
        pair = tuple(sorted((a, b)))
        if pair in self.partitions:
            return
        self.partitions.add(pair)
        await self._ip("route", "add", "blackhole", self.address(b) + "/32",
                       netns=self.hosts[a].netns)
        await self._ip("route", "add", "blackhole", self.address(a) + "/32",
                       netns=self.hosts[b].netns)

    async def unpartition(self, a, b):
        pair = tuple(sorted((a, b)))
        if pair not in self.partitions:
            return
        self.partitions.discard(pair)
        await self._ip("route", "del", "blackhole", self.address(b) + "/32",
                       netns=self.hosts[a].netns, check=False)
        await self._ip("route", "del", "blackhole", self.address(a) + "/32",
                       netns=self.hosts[b].netns, check=False)

    async def isolate(self, host):
        """Cut C{host} from every other host (its link goes down)."""
        self.cuts.add(host)
        await self._ip("link", "set", self.hosts[host].link, "down")

    async def reconnect(self, host):
        self.cuts.discard(host)
        await self._ip("link", "set", self.hosts[host].link, "up")

    async def slow(self, host, lag):
        """Add C{lag} (a L{Lag}; None for none) to every connection into C{host}."""
        if host not in self.proxies:
            raise BedError("this bed was made without lag proxies")
        if lag:
            self.slowed.add(host)
        else:
            self.slowed.discard(host)
        self.proxies[host].set(lag or Lag())

    async def heal(self):
        """Undo every partition, cut and slowness."""
        for a, b in sorted(self.partitions):
            await self.unpartition(a, b)
        for host in sorted(self.cuts):
            await self.reconnect(host)
        for host in sorted(self.slowed):
            await self.slow(host, None)


async def _run(executable, argv, check=True):
    out, err, code = await getProcessOutputAndValue(executable, argv, env=os.environ)
    if code != 0 and check:
        raise BedError("%s %s: %s" % (os.path.basename(executable), " ".join(argv),
                                      err.decode("utf-8", "replace").strip()))
    return out.decode("utf-8", "replace")


async def pidsIn(netns):
    """The pids of the processes in C{netns} (what C{ip netns pids} lists)."""
    out, err, code = await getProcessOutputAndValue(IP, ["netns", "pids", netns],
                                                    env=os.environ)
    return [int(pid) for pid in out.decode().split() if pid.isdigit()]


async def killIn(netns):
    """SIGKILL every process in C{netns}."""
    for pid in await pidsIn(netns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
