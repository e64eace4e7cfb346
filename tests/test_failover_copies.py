"""
A post acknowledged during a client's failover is on two VMs' disks, with
real processes and real signals: master1 is SIGKILLed while its client
posts, the client's posts go on on master2's VM, which waits for the
promoted master of the first VM before it answers (docs/design.md section 5,
"When a write is acknowledged"); then every process of master2's VM is
SIGKILLed, and the promoted master still holds every acknowledged post.
"""

import json
import os
import signal

from twisted.internet import reactor
from twisted.trial import unittest

from snstwist.client.client import Client
from tests.processes import PASSWORD, Cluster, killServersUsing, masterOf, waitUntil
from tests.test_integration import inlineAsync

THROUGH = 5  # posts answered after the kill, one after the other


class FailoverCopiesTests(unittest.TestCase):
    timeout = 180

    @inlineAsync
    async def test_posts_acknowledged_through_a_failover_survive_the_other_vm(self):
        cluster = await Cluster(self, vms=2).start()
        client = Client([cluster.router], "writer", PASSWORD, clock=reactor)
        await client.connect()
        self.addCleanup(client.close)
        await client.timeline()
        master1 = await masterOf(cluster, "writer")
        [other] = [vm for vm in ("vm1", "vm2") if vm != master1.vm]
        replies = [await client.post("before %d" % (i,)) for i in range(3)]
        self.assertEqual([r.copies for r in replies], [2] * 3, "a healthy pair of VMs")

        # One post on its way when master1 dies: it is sent again on master2.
        inFlight = client.post("in flight")
        os.kill(master1.pid, signal.SIGKILL)
        through = [await inFlight]
        for i in range(THROUGH):
            through.append(await client.post("through %d" % (i,)))
        # At once: nothing of master2's VM may copy them anywhere any more.
        killServersUsing(cluster.data(other))
        self.assertEqual([(r.post.text, r.copies) for r in through],
                         [(r.post.text, 2) for r in through],
                         "acknowledged through the failover on two VMs")

        acked = sorted(r.post.text for r in replies + through)

        def heldBy(vm):
            return sorted(json.loads(line)["text"]
                          for content in cluster.postFiles(vm).values()
                          for line in content.decode().splitlines())

        # The promoted master of master1's VM writes its post files after
        # each commit: wait for those of the posts its disk holds.
        await waitUntil(lambda: heldBy(master1.vm) == acked,
                        "every acknowledged post in %s's post files" % (master1.vm,))
