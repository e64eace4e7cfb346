"""
A cluster on several hosts for integration tests: L{snstwist.testbed.netbed}'s
router, VMs and clients in network namespaces of their own, started the way
C{sns-cluster} starts them, and undone in the test's cleanup whatever
happened (processes by pid, then namespaces, links and bridge).

Tests using it are skipped, with one line saying why, where namespaces can
not be made (not root, no C{ip}).
"""

import os
import sys

from twisted.internet import reactor, threads
from twisted.trial import unittest

from snstwist.rpc import grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.testbed import netbed, netcluster
from tests.processes import (
    DEADLINE,
    SECRET,
    Collector,
    childEnv,
    masterOf,
    routerStatus,
    stopChild,
    waitUntil,
)

_unavailable = []


def skipUnlessNamespaces():
    """Raise SkipTest, with the reason, where network namespaces can not be made."""
    if not _unavailable:
        _unavailable.append(netbed.unavailable())
    if _unavailable[0] is not None:
        raise unittest.SkipTest("no multi-host test bed here: %s" % (_unavailable[0],))


class Bed:
    """A router, C{vms} VMs and a clients' host, each in its own namespace."""

    def __init__(self, testCase, vms=2, hostEnv=None):
        self.testCase = testCase
        self.hostEnv = hostEnv
        self.vms = ["vm%d" % (i + 1,) for i in range(vms)]
        self.base = os.path.abspath(testCase.mktemp())
        self.net = None
        self.cluster = None
        self.channel = None

    async def start(self):
        skipUnlessNamespaces()
        self.net = netbed.NetBed(["router"] + self.vms + ["clients"])
        # Cleanups run last-in first-out: the bed goes last, after the
        # cluster stopped and every client was stopped.
        self.testCase.addCleanup(self.net.destroy)
        await self.net.create()
        self.cluster = netcluster.NetCluster(self.net, self.base, len(self.vms), secret=SECRET,
                                             hostEnv=self.hostEnv)
        self.cluster.startService()
        self.testCase.addCleanup(self.cluster.stopService)
        await self.cluster.whenReady.addTimeout(DEADLINE, reactor)
        self.channel = grpcbridge.channel(self.cluster.router, self.cluster.tls)
        self.testCase.addCleanup(lambda: grpcbridge.closeChannel(self.channel))
        return self

    @property
    def router(self):
        return self.cluster.router

    def client(self, user, stdin=None):
        """Start sns-client on the clients' host; with C{stdin}, write it and close."""
        child = Collector()
        self.net.spawn("clients", child, [sys.executable, "-m", "snstwist.commands.cli",
                                          "-r", self.router, "-u", user], env=childEnv())
        self.testCase.addCleanup(stopChild, child)
        if stdin is not None:
            child.write(stdin)
            child.closeStdin()
        return child

    async def run(self, user, stdin):
        child = self.client(user, stdin)
        await child.ended.addTimeout(DEADLINE, reactor)
        return child

    async def status(self):
        return await routerStatus(self.router, self.channel)

    async def masters(self):
        return {s.vm: s for s in (await self.status()).servers if s.role == pb.MASTER}

    async def masterOf(self, user):
        """The master that reports a live session of C{user}."""
        return await masterOf(self, user)

    async def signedIn(self, user):
        """An sns-client of C{user} that has answered a LIST (so it has a master)."""
        child = self.client(user)
        child.write("LIST\n")
        await child.waitFor("Followers:")
        return child

    def otherVM(self, vm):
        """The VM of a two-VM bed that is not C{vm}."""
        (other,) = [v for v in self.vms if v != vm]
        return other

    async def registered(self, vm, present=True):
        """
        Wait until the router counts a master of C{vm} (C{present=False}:
        until it dropped C{vm}).
        """
        async def there():
            return (vm in await self.masters()) == present

        await waitUntil(there, "the router to %s %s" % (
            "register" if present else "drop", vm))

    def data(self, vm):
        return os.path.join(self.base, vm, "data")

    async def snapshots(self):
        return {vm: await threads.deferToThread(netcluster.snapshot, self.data(vm))
                for vm in self.vms}

    async def converged(self, timeout=DEADLINE):
        """
        Wait until every VM holds the same post files, byte for byte, and the
        same rows; returns one VM's snapshot.
        """
        last = {}

        async def same():
            last["snapshots"] = snaps = await self.snapshots()
            first = snaps[self.vms[0]]
            return all(s == first for s in snaps.values()) and first

        try:
            return await waitUntil(same, "every VM to hold the same data", timeout, 0.2)
        except AssertionError:
            snaps = last.get("snapshots", {})
            raise AssertionError("VMs differ after %ss: %s" % (timeout, {
                vm: {"post files": {n: len(b) for n, b in s["posts"].items()},
                     "users": len(s["users"]), "follows": len(s["follows"]),
                     "record": len(s["record"])}
                for vm, s in snaps.items()}))
