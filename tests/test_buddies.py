"""
Buddies with real processes and real signals: a master spawns its slave, the
slave takes over from a killed or hung master, a killed slave is replaced,
an orderly stop respawns nothing, and a buddy that dies at start-up is given
up on.

Every wait has a deadline and waits on an event (a status answered, a pid
gone), never a fixed sleep; every pid seen is killed in cleanup.
"""

import os
import signal
import sys

from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from snstwist import buddy
from snstwist.core import errors
from snstwist.rpc import grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from tests.processes import (
    TWISTD,
    Cluster,
    childEnv,
    heldAddress,
    killIfStill,
    killServersUsing,
    liveProcesses,
    pidAlive,
    routerStatus,
    serversUsing,
    spawn,
    waitUntil,
)
from tests.test_integration import inlineAsync, posts


def byRole(status, vm="vm1"):
    """{MASTER: [ServerInfo], SLAVE: [ServerInfo]} of C{vm} in a router status."""
    out = {pb.MASTER: [], pb.SLAVE: []}
    for server in status.servers:
        if server.vm == vm:
            out[server.role].append(server)
    return out


async def statusOf(cluster):
    """
    The router's status, or None when it did not answer in time: a loaded
    machine may make one call time out, which is not what these tests test.
    """
    try:
        return await cluster.status()
    except errors.RemoteError:
        return None


async def pair(cluster, vm="vm1", timeout=10):
    """
    Wait until C{vm} has exactly one master and one slave registered; returns
    (master, slave) as ServerInfo.
    """
    async def ready():
        status = await statusOf(cluster)
        if status is None:
            return None
        roles = byRole(status, vm)
        if len(roles[pb.MASTER]) == 1 and len(roles[pb.SLAVE]) == 1:
            return roles[pb.MASTER][0], roles[pb.SLAVE][0]
        return None

    return await waitUntil(ready, "%s to have one master and one slave" % (vm,),
                           timeout=timeout)


async def assertBecomesMaster(cluster, pid, vm="vm1", timeout=10):
    """Wait until the router has C{pid} as the (only) master of C{vm}."""
    async def check():
        status = await statusOf(cluster)
        return status is not None and [s.pid for s in byRole(status, vm)[pb.MASTER]] == [pid]

    await waitUntil(check, "pid %d to be the master of %s" % (pid, vm), timeout=timeout)


async def slaveOtherThan(cluster, pids, vm="vm1", timeout=10):
    """Wait until a slave of C{vm} whose pid is not in C{pids} is registered."""
    async def check():
        status = await statusOf(cluster)
        slaves = [s for s in byRole(status, vm)[pb.SLAVE]
                  if s.pid not in pids] if status is not None else []
        return slaves[0] if slaves else None

    return await waitUntil(check, "a new slave of %s" % (vm,), timeout=timeout)


async def askRouter(router, times):
    """C{times} answers of the router's Onetime_c_to_r, as a client asks it."""
    channel = grpcbridge.channel(router)
    stub = pbg.RouterStub(channel)

    async def ask(user):
        try:
            return await grpcbridge.call(stub.Onetime_c_to_r, pb.MasterRequest(user=user),
                                         timeout=2)
        except errors.RemoteError as e:
            if e.status not in (errors.Status.UNAVAILABLE, errors.Status.DEADLINE_EXCEEDED):
                raise
            return None

    try:
        return [await waitUntil(lambda user=user: ask(user), "Onetime_c_to_r to answer",
                                timeout=10)
                for user in ("u%d" % i for i in range(times))]
    finally:
        await grpcbridge.closeChannel(channel)


async def startCluster(testCase, vms):
    """
    Start a Cluster.  Cleanup kills by pid, last of all, every server still
    running on its data, even one spawned after the last status was taken.
    """
    cluster = Cluster(testCase, vms=vms)
    testCase.addCleanup(killServersUsing, cluster.base)
    return await cluster.start()


async def slaveLogOnceExited(slavePid, data):
    """The slave's log (DATA/buddies.log), read once the slave has exited."""
    await waitUntil(lambda: not pidAlive(slavePid), "slave %d to exit" % (slavePid,),
                    timeout=10)
    with open(os.path.join(data, "buddies.log"), encoding="utf-8") as f:
        return f.read()


def startByHand(testCase):
    """
    Start a router, and a master of VM vmx against it, by hand (as an
    operator would); returns (router address, the master's Collector, its
    data directory).  Cleanup stops both and kills any server left on the
    data.
    """
    router = heldAddress(testCase)
    env = childEnv()
    peer = heldAddress(testCase)
    spawn(testCase, TWISTD + ["sns-router", "--listen", router, "--peer-listen", peer], env=env)
    data = os.path.abspath(testCase.mktemp())
    testCase.addCleanup(killServersUsing, data)
    server = spawn(testCase, TWISTD + ["sns-server", "--router", peer, "--vm", "vmx",
                                       "--listen", "127.0.0.5:0", "--data", data], env=env)
    return router, server, data


async def registered(router, vm="vmx"):
    """{MASTER: [...], SLAVE: [...]} of C{vm} at C{router}, or None if it did not answer."""
    try:
        return byRole(await routerStatus(router), vm)
    except errors.RemoteError:
        return None


class MasterSpawnsSlaveTests(unittest.TestCase):
    timeout = 120

    @inlineAsync
    async def test_master_spawns_its_slave_which_registers(self):
        """
        Once the master is registered, it spawns its slave, which registers
        as a process of its own.  How fast is the benchmark's business
        (benchmarks/failover.py), not a test's: the deadline here only stops
        a test that would otherwise wait forever.
        """
        router, server, data = startByHand(self)

        async def masterUp():
            roles = await registered(router)
            return roles is not None and roles[pb.MASTER]

        async def slaveUp():
            roles = await registered(router)
            return roles is not None and roles[pb.SLAVE]

        await waitUntil(masterUp, "the master to register", timeout=15)
        (slave,) = await waitUntil(slaveUp, "its slave to register", timeout=15)
        self.assertNotEqual(slave.pid, server.pid)

    @inlineAsync
    async def test_master_and_slave_register_with_their_roles_pids_and_addresses(self):
        """The router knows one master and one slave of the VM, as two processes."""
        cluster = await startCluster(self, 1)
        master, slave = await pair(cluster)
        self.assertNotEqual(master.pid, slave.pid)
        self.assertNotEqual(master.address, slave.address)

    @inlineAsync
    async def test_router_never_hands_a_client_a_slave(self):
        """Onetime_c_to_r answers only with masters, never a slave's address."""
        cluster = await startCluster(self, 2)
        pairs = [await pair(cluster, vm) for vm in ("vm1", "vm2")]
        masters = {master.address for master, slave in pairs}
        slaves = {slave.address for master, slave in pairs}
        given = set()
        for reply in await askRouter(cluster.router, 20):
            given.update({reply.master1.address, reply.master2.address})
        self.assertEqual((given, given & slaves), (masters, set()))


class MasterKilledTests(unittest.TestCase):
    timeout = 120

    async def killMaster(self):
        """A cluster whose vm1 master was just SIGKILLed; returns (cluster, master, slave)."""
        cluster = await startCluster(self, 1)
        master, slave = await pair(cluster)
        os.kill(master.pid, signal.SIGKILL)
        return cluster, master, slave

    @inlineAsync
    async def test_slave_becomes_master_when_master_is_killed(self):
        """SIGKILL the master: its slave (same pid) registers as the VM's master."""
        cluster, master, slave = await self.killMaster()
        await assertBecomesMaster(cluster, slave.pid)
        self.assertFalse(pidAlive(master.pid, running=cluster.base.encode()))

    @inlineAsync
    async def test_promoted_slave_spawns_a_new_slave(self):
        """The promoted slave spawns a slave of its own (a new pid)."""
        cluster, master, slave = await self.killMaster()
        await assertBecomesMaster(cluster, slave.pid)
        new = await slaveOtherThan(cluster, {master.pid, slave.pid})
        self.assertTrue(pidAlive(new.pid))

    @inlineAsync
    async def test_posts_made_before_the_kill_are_served_by_the_new_master(self):
        """A post acknowledged by the old master is in the new master's timeline."""
        cluster = await startCluster(self, 1)
        master, slave = await pair(cluster)
        before = await cluster.run("alice", "TIMELINE\nbefore the kill\n")
        self.assertEqual(before.exitCode, 0, before.err)
        os.kill(master.pid, signal.SIGKILL)
        await assertBecomesMaster(cluster, slave.pid)
        after = await cluster.run("alice", "TIMELINE\n")
        self.assertEqual(after.exitCode, 0, after.err)
        self.assertEqual(after.lines[0], "Now you are in the timeline")
        self.assertEqual(posts(after.lines), [("alice", "before the kill")])

    @inlineAsync
    async def test_new_post_succeeds_on_the_new_master(self):
        """After the take-over, a new post is acknowledged and shown."""
        cluster, master, slave = await self.killMaster()
        await assertBecomesMaster(cluster, slave.pid)
        bob = await cluster.run("bob", "TIMELINE\nafter the kill\n")
        self.assertEqual(bob.exitCode, 0, bob.err)
        again = await cluster.run("bob", "TIMELINE\n")
        self.assertEqual((again.exitCode, posts(again.lines)),
                         (0, [("bob", "after the kill")]), again.err)


class SlaveKilledTests(unittest.TestCase):
    timeout = 120

    @inlineAsync
    async def test_killed_slave_is_replaced_by_a_new_one(self):
        """SIGKILL the slave: the master spawns a new slave, which registers."""
        cluster = await startCluster(self, 1)
        master, slave = await pair(cluster)
        os.kill(slave.pid, signal.SIGKILL)
        new = await slaveOtherThan(cluster, {slave.pid})
        self.assertEqual([s.pid for s in await pair(cluster)], [master.pid, new.pid])

    @inlineAsync
    async def test_stopped_slave_is_killed_and_replaced(self):
        """SIGSTOP the slave: the master kills the hung slave and spawns a new one."""
        cluster = await startCluster(self, 1)
        master, slave = await pair(cluster)

        def neverResume():
            killIfStill(slave.pid, cluster.base)
            killIfStill(slave.pid, cluster.base, signal.SIGCONT)

        self.addCleanup(neverResume)
        os.kill(slave.pid, signal.SIGSTOP)
        await slaveOtherThan(cluster, {slave.pid})
        await waitUntil(lambda: not pidAlive(slave.pid),
                        "hung slave %d to be killed" % (slave.pid,), timeout=5)


class MasterHungTests(unittest.TestCase):
    timeout = 120

    async def stopMaster(self):
        """SIGSTOP the vm1 master of a new cluster; returns (cluster, master, slave)."""
        cluster = await startCluster(self, 1)
        master, slave = await pair(cluster)

        def neverResume():
            # KILL before CONT: a stopped process resumed by cleanup must not
            # run on (and write) for even a moment.
            killIfStill(master.pid, cluster.base)
            killIfStill(master.pid, cluster.base, signal.SIGCONT)

        self.addCleanup(neverResume)
        os.kill(master.pid, signal.SIGSTOP)
        return cluster, master, slave

    @inlineAsync
    async def test_slave_takes_over_from_a_stopped_master_within_seconds(self):
        """SIGSTOP the master: within a few seconds its slave is the master."""
        cluster, master, slave = await self.stopMaster()
        await assertBecomesMaster(cluster, slave.pid, timeout=5)

    @inlineAsync
    async def test_stopped_master_is_fenced(self):
        """The slave kills the hung old master when it takes over."""
        cluster, master, slave = await self.stopMaster()
        await assertBecomesMaster(cluster, slave.pid, timeout=5)
        await waitUntil(lambda: not pidAlive(master.pid),
                        "pid %d to be fenced" % (master.pid,), timeout=2)


class OrderlyStopTests(unittest.TestCase):
    timeout = 120

    async def stopByHand(self):
        """
        Start a router and a master by hand, wait for its slave, SIGTERM the
        master, and wait for it to exit; returns (router, slave pid, data
        directory).
        """
        router, server, data = startByHand(self)

        async def paired():
            roles = await registered(router)
            if roles is not None and len(roles[pb.MASTER]) == len(roles[pb.SLAVE]) == 1:
                return roles[pb.MASTER][0].pid, roles[pb.SLAVE][0].pid
            return None

        masterPid, slavePid = await waitUntil(paired, "vmx master and slave", timeout=15)
        self.assertEqual(masterPid, server.pid)
        os.kill(masterPid, signal.SIGTERM)
        await server.ended.addTimeout(15, reactor)
        return router, slavePid, data

    @inlineAsync
    async def test_sigterm_to_the_master_stops_its_slave_too(self):
        """SIGTERM the master: the master exits, and so does its slave."""
        router, slavePid, data = await self.stopByHand()
        await waitUntil(lambda: not pidAlive(slavePid), "slave %d to exit" % (slavePid,),
                        timeout=10)

    @inlineAsync
    async def test_sigterm_to_the_master_respawns_nothing(self):
        """After an orderly stop no server runs on the data and none is registered."""
        router, slavePid, data = await self.stopByHand()
        await waitUntil(lambda: not pidAlive(slavePid), "slave %d to exit" % (slavePid,),
                        timeout=10)
        self.assertEqual(serversUsing(data), [])

        async def nobodyRegistered():
            try:
                return list((await routerStatus(router)).servers) == []
            except errors.RemoteError:
                return False

        await waitUntil(nobodyRegistered, "the router to have no server", timeout=5)

    @inlineAsync
    async def test_sigterm_to_the_master_logs_nothing_critical_in_the_slave(self):
        """
        The slave's log (DATA/buddies.log) after an orderly stop says it
        stopped, with no critical line (no ReactorNotRunning traceback: the
        master's stopping notice and its SIGTERM both reach the slave).
        """
        router, slavePid, data = await self.stopByHand()
        log = await slaveLogOnceExited(slavePid, data)
        self.assertIn("Server Shut Down", log)
        self.assertNotIn("#critical", log)
        self.assertNotIn("ReactorNotRunning", log)

    @inlineAsync
    async def test_a_second_sigterm_while_stopping_logs_nothing_critical(self):
        """
        A slave signalled again while it stops (as when sns-cluster and its
        master both stop it) stops once, logging nothing critical.
        """
        router, server, data = startByHand(self)

        async def slave():
            roles = await registered(router)
            return roles[pb.SLAVE][0].pid if roles and len(roles[pb.SLAVE]) == 1 else None

        slavePid = await waitUntil(slave, "vmx's slave", timeout=15)
        logPath = os.path.join(data, "buddies.log")
        os.kill(slavePid, signal.SIGTERM)

        def received():
            with open(logPath, encoding="utf-8") as f:
                return "Received SIGTERM" in f.read()

        await waitUntil(received, "the slave to log the first SIGTERM", interval=0.001)
        if pidAlive(slavePid):
            os.kill(slavePid, signal.SIGTERM)
        log = await slaveLogOnceExited(slavePid, data)
        self.assertIn("Server Shut Down", log)
        self.assertNotIn("#critical", log)

    @inlineAsync
    async def test_sigterm_to_the_master_leaves_no_pid_file(self):
        """Both buddies remove their pid files from the data's run/ directory."""
        router, slavePid, data = await self.stopByHand()
        run = os.path.join(data, "run")
        await waitUntil(lambda: os.listdir(run) == [], "%s to be empty" % (run,), timeout=10)


class FailingBuddyTests(unittest.TestCase):
    timeout = 120

    async def superviseFailingBuddy(self):
        """
        Supervise, on the real reactor, a buddy that exits 3 at once, until
        the supervisor gives up; returns the spawn times and the supervisor.
        """
        command = buddy.BuddyCommand(
            sys.executable, (sys.executable, "-c", "import sys; sys.exit(3)"), dict(os.environ))
        spawns = []
        supervisor = buddy.BuddySupervisor(command, reactor,
                                           onSpawn=lambda pid: spawns.append(reactor.seconds()),
                                           jitter=lambda: 0.0)
        supervisor.minRestartDelay = 0.2
        supervisor.maxRestartDelay = 2.0
        supervisor.intensity = 3
        supervisor.period = 30.0
        self.addCleanup(supervisor.stop)
        supervisor.start()
        await waitUntil(lambda: supervisor.gaveUp, "the supervisor to give up", timeout=20)
        return spawns, supervisor

    @inlineAsync
    async def test_buddy_dying_at_start_up_is_respawned_after_growing_delays(self):
        """
        The delays before respawns double: 0.2 s, 0.4 s, 0.8 s (no jitter
        here), and no spawn comes sooner than its delay.  The delays are read
        from the supervisor's log events, not from wall-clock gaps, which
        also hold each process's start-up time and so depend on the load.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        spawns, supervisor = await self.superviseFailingBuddy()
        delays = [e["delay"] for e in logged if "delay" in e and "lived" in e]
        self.assertEqual(delays, [0.2, 0.4, 0.8])
        gaps = [b - a for a, b in zip(spawns, spawns[1:])]
        for gap, delay in zip(gaps, delays):
            self.assertGreaterEqual(gap, delay, gaps)

    @inlineAsync
    async def test_buddy_dying_at_start_up_is_given_up_on(self):
        """After `intensity` restarts it stops: nothing runs and nothing is scheduled."""
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        spawns, supervisor = await self.superviseFailingBuddy()
        self.assertEqual((len(spawns), supervisor.pid, supervisor.state), (4, None, "gaveUp"))
        self.assertEqual(len([e for e in logged if e["log_level"] == LogLevel.critical]), 1)


# A parent that spawns the watcher (its stdout shared) and waits to be killed.
PARENT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1]])
time.sleep(120)
"""
# The watcher: says whether it watches its parent, then when it ended.
WATCHER = """
import os
from twisted.internet import asyncioreactor
asyncioreactor.install()
from twisted.internet import reactor
from snstwist.buddy import watchParent
def ended():
    print("parent ended", flush=True)
    reactor.stop()
print("watching %s %d" % (watchParent(os.getppid(), reactor.callFromThread, ended),
                          os.getpid()), flush=True)
reactor.run()
"""


class ParentDeathTests(unittest.TestCase):
    timeout = 60

    @inlineAsync
    async def test_a_child_hears_of_its_parents_sigkill_from_the_kernel(self):
        """No stream, no heartbeat: the signal alone tells the child its parent is gone."""
        parent = spawn(self, ["-c", PARENT, WATCHER])
        await parent.waitFor("watching ")
        line = [x for x in parent.lines if x.startswith("watching ")][0]
        self.addCleanup(killIfStill, int(line.split()[2]), "watchParent")
        self.assertEqual(line.split()[1], "True")
        os.kill(parent.pid, signal.SIGKILL)
        await parent.waitFor("parent ended")


class SpawnTests(unittest.TestCase):
    timeout = 60

    @inlineAsync
    async def test_a_buddy_is_spawned_without_forking_the_master(self):
        """
        L{buddy.spawn} takes Twisted's posix_spawnp path (no path, uid, gid
        or pty asked for): the master is never forked, which would copy its
        page tables on the reactor thread and, at 100 MB, take 4-7 ms where
        the spawn takes under one.  With os.fork failing, the child still
        runs, its output reaches our log and its end is heard.
        """
        def fork():
            raise AssertionError("the master forked")

        self.patch(os, "fork", fork)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        command = buddy.BuddyCommand(sys.executable, (sys.executable, "-c", "print('up')"),
                                     dict(os.environ))
        process = buddy.spawn(reactor, "child", command)
        self.addCleanup(buddy.signalChild, process, signal.SIGKILL)
        ended = await process.ended
        lines = [e["line"] for e in logged if e.get("name") == "child" and "line" in e]
        self.assertEqual((ended.exitCode, "up" in lines), (0, True), lines)


def sparesOf(parent):
    """
    Pids of live spares (sns-server --spare) that C{parent} spawned: a
    spare gone on as the slave keeps its command line, so its pid is here
    too.
    """
    return liveProcesses(lambda cmdline, ppid: b"--spare" in cmdline and ppid == parent)


async def spareOf(parent, besides=()):
    """Wait for the spare of the process C{parent}, not one of C{besides}; its pid."""
    (pid,) = await waitUntil(lambda: [p for p in sparesOf(parent) if p not in besides],
                             "the spare of %d" % (parent,))
    return pid


class SpareTests(unittest.TestCase):
    """
    Each server keeps a spare once its pair is complete: the master's
    becomes its next slave; the slave's becomes its slave once it is
    master.  Which process becomes the slave is what is tested (the pid);
    how fast it is ready is benchmarks/failover.py's business.
    """

    timeout = 120

    @inlineAsync
    async def test_a_killed_slave_is_replaced_by_the_masters_spare(self):
        cluster = await startCluster(self, 1)
        master, slave = await pair(cluster)
        spare = await spareOf(master.pid, besides={slave.pid})
        os.kill(slave.pid, signal.SIGKILL)
        new = await slaveOtherThan(cluster, {slave.pid})
        self.assertEqual(new.pid, spare)
        # And the master keeps a spare again, a new process.
        await spareOf(master.pid, besides={spare, slave.pid})

    @inlineAsync
    async def test_a_killed_master_leaves_the_promoted_slaves_spare_as_the_new_slave(self):
        """
        The promoted slave's spare becomes its slave; the killed master's
        spare, nobody's now, ends by itself (its stdin closed with the
        master's process).
        """
        cluster = await startCluster(self, 1)
        master, slave = await pair(cluster)
        mastersSpare, slavesSpare = (await spareOf(master.pid, besides={slave.pid}),
                                     await spareOf(slave.pid))
        os.kill(master.pid, signal.SIGKILL)
        await assertBecomesMaster(cluster, slave.pid)
        new = await slaveOtherThan(cluster, {master.pid, slave.pid})
        self.assertEqual(new.pid, slavesSpare)
        await waitUntil(lambda: not pidAlive(mastersSpare),
                        "the dead master's spare %d to end" % (mastersSpare,))

    @inlineAsync
    async def test_sigterm_to_sns_cluster_leaves_no_server_spares_included(self):
        cluster = await startCluster(self, 1)
        master, slave = await pair(cluster)
        spares = [await spareOf(master.pid, besides={slave.pid}), await spareOf(slave.pid)]
        os.kill(cluster.process.pid, signal.SIGTERM)
        await cluster.process.ended.addTimeout(30, reactor)
        self.assertEqual([p for p in spares + [master.pid, slave.pid] if pidAlive(p)], [])
        self.assertEqual(serversUsing(cluster.base), [])
        run = os.path.join(cluster.data("vm1"), "run")
        self.assertEqual(os.listdir(run), [])
