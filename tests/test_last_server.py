"""
A VM is never left without a server while one of its processes lives, with
real processes and real SIGKILLs at the bad moments (found by waiting on
the servers' log lines, not by sleeping):

- a promoted master killed before it told its spare to go on: a spare
  takes the VM over itself;
- a VM's master and slave killed together: one of their spares takes it
  over, the other stops;
- a master killed while its new slave (its spare, just told to go on) is
  still starting: that slave takes over at once, from the kernel's word
  that its master ended, not after dialling the dead master for 2 s.

Each then checks that the VM has a master serving again, that nothing
acknowledged before was lost, and that the two VMs converge.

And a VM's only live process, killed as soon as it has done the first
thing it does once alone (start a spare), leaves that spare the master:

- a master started by hand, killed as it starts (before it loads, or
  spawns its slave);
- a slave that takes over with no spare of its own yet (its master killed
  while the slave starts);
- spares that take a VM over, killed as they start their own.
"""

import os
import re
import signal

from twisted.trial import unittest

from snstwist.commands import compare
from snstwist.rpc import sns_pb2 as pb
from tests.processes import SECRET, killIfStill, pidAlive, waitUntil
from tests.test_buddies import (
    byRole,
    pair,
    registered,
    spareOf,
    startByHand,
    startCluster,
    statusOf,
)
from tests.test_integration import inlineAsync, posts


async def logged(path, needle, timeout=30):
    """
    Wait until C{needle} is in the log file C{path} (every server of a VM
    logs there), looking every 2 ms: the bad moment it marks lasts at
    least a quarter of a second.
    """
    def there():
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return needle in f.read()
        except OSError:
            return False

    await waitUntil(there, "%r in %s" % (needle, path), timeout=timeout, interval=0.002)


async def masterAmong(cluster, pids, vm="vm1", timeout=30):
    """
    Wait until the router lists one master of C{vm}, one of C{pids} (or of
    what C{pids()} says at each look); returns it.
    """
    among = pids if callable(pids) else lambda: pids

    async def check():
        status = await statusOf(cluster)
        masters = byRole(status, vm)[pb.MASTER] if status is not None else []
        return masters[0] if len(masters) == 1 and masters[0].pid in among() else None

    return await waitUntil(check, "a master of %s among %s" % (vm, sorted(among())),
                           timeout=timeout)


def sparesSpawnedBy(path, pids):
    """The pids of the spares that the processes C{pids} logged spawning in C{path}."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return {int(spare) for spawner, spare in re.findall(
        r"pid=(\d+) snstwist\.buddy\.supervisor#info\] spawned spare, pid (\d+)", text)
        if int(spawner) in pids}


def spawnedSpare(pid):
    """The log line's start of C{pid} spawning a spare."""
    return "pid=%d snstwist.buddy.supervisor#info] spawned spare, pid " % (pid,)


class LastServerTests(unittest.TestCase):
    timeout = 180

    async def start(self):
        """
        A 2-VM cluster with a post of alice acknowledged, vm1's pair up
        with both spares waiting: (cluster, master, slave, master's spare,
        slave's spare).
        """
        cluster = await startCluster(self, 2)
        before = await cluster.run("alice", "TIMELINE\nbefore the kills\n")
        self.assertEqual(before.exitCode, 0, before.err)
        master, slave = await pair(cluster)
        spares = await spareOf(master.pid, besides={slave.pid}), await spareOf(slave.pid)
        for pid in (master.pid, slave.pid) + spares:
            self.addCleanup(killIfStill, pid, cluster.base)
        for pid in spares:
            # Imported and reading their orders.
            await logged(self.log(cluster), "waiting for the order to go on (pid %d)" % (pid,))
        return (cluster, master, slave) + spares

    def log(self, cluster):
        return os.path.join(cluster.base, "vm1", "server.log")

    async def servingAgain(self, cluster, master):
        """
        vm1's new C{master} serves: alice's post from before is on her
        timeline and a new one is acknowledged; then the VMs agree, and
        both posts are in vm1's files.
        """
        after = await cluster.run("alice", "TIMELINE\nafter the kills\n")
        self.assertEqual(after.exitCode, 0, after.err)
        self.assertEqual(posts(after.lines)[0], ("alice", "before the kills"))

        async def agreeing():
            replies = await compare.digests(cluster.router, SECRET)
            return len(replies) == 2 and not compare.differences(replies)

        await waitUntil(agreeing, "the two VMs to agree", timeout=60, interval=0.2)
        files = cluster.postFiles("vm1")
        self.assertIn(b"before the kills", files["alice.txt"])
        self.assertIn(b"after the kills", files["alice.txt"])
        self.assertEqual(files, cluster.postFiles("vm2"))

    @inlineAsync
    async def test_a_promoted_master_killed_at_once_leaves_its_spare_the_master(self):
        """
        SIGKILL the master, then its slave as soon as it says it takes
        over (before it tells its spare to go on, a quarter of a second
        after it serves): the spares, which used to stop with their
        spawners, take the VM over (the slave's, told nobody would, or the
        master's, whose named successor is dead too: whichever takes the
        writer lock first), and the other stops.
        """
        cluster, master, slave, mastersSpare, slavesSpare = await self.start()
        os.kill(master.pid, signal.SIGKILL)
        await logged(self.log(cluster), "master %d of VM vm1 lost" % (master.pid,))
        os.kill(slave.pid, signal.SIGKILL)
        await self.oneSpareTakesOver(cluster, mastersSpare, slavesSpare)

    async def oneSpareTakesOver(self, cluster, *spares):
        """One of C{spares} becomes vm1's master and serves; the other ends."""
        new = await masterAmong(cluster, set(spares))
        other = (set(spares) - {new.pid}).pop()
        await waitUntil(lambda: not pidAlive(other), "the other spare %d to end" % (other,))
        await self.servingAgain(cluster, new)

    @inlineAsync
    async def test_a_master_and_its_slave_killed_together_leave_a_spare_the_master(self):
        """
        Both buddies SIGKILLed at once: each spare's spawner ended, and the
        server each was told would take over is dead too.  Both try; the
        one that takes the writer lock is the master, the other stops.
        """
        cluster, master, slave, mastersSpare, slavesSpare = await self.start()
        os.kill(slave.pid, signal.SIGKILL)
        os.kill(master.pid, signal.SIGKILL)
        await self.oneSpareTakesOver(cluster, mastersSpare, slavesSpare)

    @inlineAsync
    async def test_a_master_killed_while_its_new_slave_starts_is_taken_over_at_once(self):
        """
        SIGKILL the slave; the master tells its spare to go on as the new
        slave; SIGKILL the master right then, while that slave still
        starts (its master's death comes before it could watch for it):
        it takes over because its master ended, without first dialling it
        in vain for 2 s.  (On a loaded machine the dead slave's spare may
        hear of its spawner's end only once the master is dead too: then it
        takes the VM over itself, or the two race for the writer lock.)
        """
        cluster, master, slave, mastersSpare, slavesSpare = await self.start()
        os.kill(slave.pid, signal.SIGKILL)
        await logged(self.log(cluster), "spare %d told to go on as the buddy" % (mastersSpare,))
        os.kill(master.pid, signal.SIGKILL)
        new = await masterAmong(cluster, {mastersSpare, slavesSpare})
        if new.pid == mastersSpare:
            await logged(self.log(cluster), "pid=%d snstwist.server.lifecycle#warn] master %d of"
                         " VM vm1 lost (master process ended)" % (new.pid, master.pid))
        await self.servingAgain(cluster, new)

    @inlineAsync
    async def test_a_master_killed_as_it_starts_leaves_its_spare_the_master(self):
        """
        A master started by an operator, SIGKILLed as soon as it said it
        started its spare (the first thing it does, before it loads): the
        spare, told nobody would take over, is the VM's master.
        """
        router, server, data = startByHand(self)
        text = await server.waitFor("spawned spare, pid ")
        os.kill(server.pid, signal.SIGKILL)
        spare = int(re.search(r"spawned spare, pid (\d+)", text).group(1))
        self.addCleanup(killIfStill, spare, data)

        async def spareIsMaster():
            roles = await registered(router)
            return roles is not None and [m.pid for m in roles[pb.MASTER]] == [spare]

        await waitUntil(spareIsMaster, "spare %d to be vmx's master" % (spare,), timeout=60)

    @inlineAsync
    async def test_a_slave_alone_taking_over_starts_a_spare_that_takes_over_from_it(self):
        """
        The slave killed; the master's spare told to go on as the new slave;
        the master killed while that slave starts (it has no spare before
        it is a ready standby): it takes over alone, and starts a spare
        first; SIGKILLed right then, its spare is the VM's master.
        """
        cluster, master, slave, mastersSpare, slavesSpare = await self.start()
        os.kill(slave.pid, signal.SIGKILL)
        await logged(self.log(cluster), "spare %d told to go on as the buddy" % (mastersSpare,))
        # The dead slave's spare stops: its master lives.
        await waitUntil(lambda: not pidAlive(slavesSpare), "spare %d to stop" % (slavesSpare,))
        os.kill(master.pid, signal.SIGKILL)
        await logged(self.log(cluster), spawnedSpare(mastersSpare))
        os.kill(mastersSpare, signal.SIGKILL)
        (last,) = sparesSpawnedBy(self.log(cluster), {mastersSpare})
        self.addCleanup(killIfStill, last, cluster.base)
        new = await masterAmong(cluster, {last})
        await self.servingAgain(cluster, new)

    @inlineAsync
    async def test_spares_taking_a_vm_over_killed_leave_their_own_spare_the_master(self):
        """
        Master and slave SIGKILLed together: their spares take the VM over,
        each starting a spare first; SIGKILLed as soon as one did, a spare
        of theirs is the VM's master.
        """
        cluster, master, slave, mastersSpare, slavesSpare = await self.start()
        spares = {mastersSpare, slavesSpare}
        os.kill(slave.pid, signal.SIGKILL)
        os.kill(master.pid, signal.SIGKILL)

        def oneSpawned():
            return sparesSpawnedBy(self.log(cluster), spares)

        await waitUntil(oneSpawned, "a spare taking vm1 over to start its own", interval=0.002)
        for pid in spares:
            killIfStill(pid, cluster.base)
        # The other spare may have started its own between our look and its
        # kill, before it logged it: a master none of those killed is one
        # of theirs (nothing else runs for vm1).
        killed = spares | {master.pid, slave.pid}

        async def newMaster():
            status = await statusOf(cluster)
            masters = byRole(status, "vm1")[pb.MASTER] if status is not None else []
            return masters[0] if len(masters) == 1 and masters[0].pid not in killed else None

        new = await waitUntil(newMaster, "a master of vm1 none of %s" % (sorted(killed),),
                              timeout=30)
        for pid in oneSpawned() | {new.pid}:
            self.addCleanup(killIfStill, pid, cluster.base)
        await self.servingAgain(cluster, new)
