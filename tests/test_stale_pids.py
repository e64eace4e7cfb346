"""
A pid seen earlier is signalled only while it is still the process it was.

The kernel hands pids out again once its counter wraps: on the team's
machine (pid_max 32768, threads taking pids too, 60-70 a second under the
team's load) every few minutes.  A cleanup or a last-resort kill that
SIGKILLs a remembered pid blindly then kills another run's process: a
test's master, its spare, another suite's trial (each of which then
failed "under load only", passing alone).  The same holds for a slave's fence
of its old master and for the chaos bed's faults.
"""

import os
import signal

from twisted.internet import reactor
from twisted.trial import unittest

from snstwist import buddy
from snstwist.commands.cluster import ClusterService
from snstwist.testbed import faults
from tests.processes import Cluster, killPid, pidAlive, spawn, waitUntil
from tests.test_integration import inlineAsync

SLEEP = "import time; time.sleep(60)"


async def sleeper(test, *marks):
    """
    A process of ours that sleeps, its command line holding C{marks}, once
    it runs that command: until its exec, a spawned child's command line
    may still be ours.
    """
    child = spawn(test, ["-c", SLEEP] + list(marks))
    await waitUntil(lambda: pidAlive(child.pid, running=SLEEP.encode()),
                    "the sleeper %d to run" % (child.pid,), interval=0.01)
    return child


async def endedBy(child, signum=None):
    """
    The signal C{child} ended by, once it has: C{signum} sent now, if
    given.  (A SIGKILL sent before wins over any signal after it.)
    """
    if signum is not None:
        killPid(child.pid, signum)
    return -(await child.ended)


class StalePidTests(unittest.TestCase):
    timeout = 60

    @inlineAsync
    async def test_a_clusters_cleanup_spares_a_pid_that_is_another_programs_now(self):
        """
        A pid the cluster's status once showed, now another program's: the
        test's last-resort cleanup leaves it alone.
        """
        other = await sleeper(self)
        cluster = Cluster(self)
        cluster.pids.add(other.pid)
        cluster.killAll()
        self.assertEqual(await endedBy(other, signal.SIGTERM), signal.SIGTERM)

    @inlineAsync
    async def test_a_clusters_cleanup_kills_its_own_servers(self):
        cluster = Cluster(self)
        server = await sleeper(self, "sns-server", "--data", cluster.base + "/vm1/data")
        cluster.pids.add(server.pid)
        cluster.killAll()
        self.assertEqual(await endedBy(server), signal.SIGKILL)

    @inlineAsync
    async def test_sns_cluster_stops_only_its_own_servers(self):
        """
        sns-cluster finds the servers it did not start (a promoted slave)
        by their pid files; a file left by a server that died names a pid
        another run's server may hold now: that one is not signalled, not
        even by the last SIGKILL after the grace.
        """
        service = ClusterService(self.mktemp(), vms=1, routerListen="127.0.0.1:0",
                                 reactor=reactor)
        service.killTime = 0
        data = os.path.join(service.base, "vm1", "data")
        ours = await sleeper(self, "sns-server", "--data", data)
        other = await sleeper(self, "sns-server", "--data", data + "-of-another-run")
        for child in (ours, other):
            buddy.Pidfile(os.path.join(data, "run"), child.pid).write()
        self.assertEqual(service.serverPids(), {ours.pid: data})
        await service._waitGone({ours.pid: data, other.pid: data})
        self.assertEqual(await endedBy(ours), signal.SIGKILL)
        self.assertEqual(await endedBy(other, signal.SIGTERM), signal.SIGTERM)


class FenceAndFaultsTests(unittest.TestCase):
    """
    A slave's fence of its old master, and the chaos bed's signals to the
    servers it saw in the router's status, go to a pid only while it is
    still a server on that VM's data (L{buddy.isServer}).
    """

    timeout = 60

    def data(self):
        return os.path.abspath(self.mktemp())

    @inlineAsync
    async def test_a_fence_spares_a_pid_that_is_another_programs_now(self):
        data = self.data()
        other = await sleeper(self, "sns-server", "--data", data + "-of-another-run")
        plain = await sleeper(self)
        self.assertEqual((buddy.fence(other.pid, data), buddy.fence(plain.pid, data)),
                         (False, False))
        self.assertEqual(await endedBy(other, signal.SIGTERM), signal.SIGTERM)
        self.assertEqual(await endedBy(plain, signal.SIGTERM), signal.SIGTERM)

    @inlineAsync
    async def test_a_fence_kills_the_old_master_on_the_data_stopped_or_not(self):
        data = self.data()
        running = await sleeper(self, "sns-server", "--data", data)
        typed = await sleeper(self, "sns-server", "--data=" + data)
        stopped = await sleeper(self, "sns-server", "--data", data)
        killPid(stopped.pid, signal.SIGSTOP)
        self.assertEqual([buddy.fence(c.pid, data) for c in (running, typed, stopped)],
                         [True, True, True])
        for child in (running, typed, stopped):
            self.assertEqual(await endedBy(child), signal.SIGKILL)

    @inlineAsync
    async def test_the_chaos_faults_signal_only_the_server_they_saw(self):
        data = self.data()
        ours = await sleeper(self, "sns-server", "--data", data)
        other = await sleeper(self, "sns-server", "--data", data + "2")
        for child in (ours, other):
            faults.kill(child.pid, signal.SIGKILL, data)
        self.assertEqual(await endedBy(ours), signal.SIGKILL)
        self.assertEqual(await endedBy(other, signal.SIGTERM), signal.SIGTERM)

    @inlineAsync
    async def test_a_pid_gone_is_signalled_nothing(self):
        child = await sleeper(self, "sns-server")
        pid = child.pid
        killPid(pid, signal.SIGKILL)
        await child.ended
        self.assertFalse(buddy.signalIfStill(pid, signal.SIGKILL, lambda pid: True))
