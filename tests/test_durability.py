"""
No acknowledged write is lost while a VM that stored it survives: real
processes, real load, a whole VM SIGKILLed in the middle (docs/design.md section 5).
"""

import json
import os
import signal

from twisted.internet import defer, reactor
from twisted.trial import unittest

from snstwist.client.client import Client
from snstwist.commands import compare
from snstwist.rpc import sns_pb2 as pb
from tests.processes import PASSWORD, SECRET, Cluster, childEnv, spawn, twistd, waitUntil
from tests.test_integration import inlineAsync

CLIENTS = 4
POSTS = 30


class WholeVMDeathTests(unittest.TestCase):
    timeout = 180

    @inlineAsync
    async def test_acknowledged_posts_survive_sigkill_of_a_whole_vm(self):
        """
        Several clients post while both processes of one VM are SIGKILLed;
        the VM is restarted; then every VM holds exactly the acknowledged
        posts, byte-identical.

        An acknowledged write is identified by its request (user, request
        id), not by the id in its acknowledgement: a request retried on a
        second VM after the first stored it but died before answering has
        two copies, and the earlier by (time, id) is the one every VM shows,
        while the acknowledgement may name the later one (the VM that
        answered could not know of a copy still on the dead VM's disk).  So
        each acknowledged request must be shown exactly once, with its text,
        on every VM; every text here is unique to its request.
        """
        cluster = await Cluster(self, vms=3).start()
        acked = []
        clients = []
        for i in range(CLIENTS):
            c = Client([cluster.router], "writer%d" % (i,), PASSWORD, clock=reactor)
            await c.connect()
            self.addCleanup(c.close)
            clients.append(c)
        killed = defer.Deferred()

        async def write(c):
            for n in range(POSTS):
                reply = await c.post("%s post %d" % (c.user, n))
                acked.append((reply.post.author, reply.post.text))
                if len(acked) == CLIENTS * POSTS // 3 and not killed.called:
                    killed.callback(None)

        writers = [defer.ensureDeferred(write(c)) for c in clients]
        await killed
        vm2 = [s for s in (await cluster.status()).servers if s.vm == "vm2"]
        self.assertEqual(len(vm2), 2, "vm2 runs a master and a slave")
        for s in vm2:
            os.kill(s.pid, signal.SIGKILL)
        await defer.gatherResults(writers)
        self.assertEqual(len(acked), CLIENTS * POSTS)
        self.assertEqual(len(set(acked)), len(acked))

        # Bring vm2 back on its data, as an operator would.
        spawn(self, twistd("sns-server", "--router", cluster.routerPeer, "--vm", "vm2",
                           "--listen", "127.0.0.3:0", "--data", cluster.data("vm2"),
                           "--secret-file", os.path.join(cluster.base, "secret"),
                           logfile=os.path.join(cluster.base, "vm2", "again.log")),
              env=childEnv())

        async def agreeing():
            replies = await compare.digests(cluster.router, SECRET)
            await cluster.status()
            return len(replies) == 3 and not compare.differences(replies)

        await waitUntil(agreeing, "the three VMs to agree", timeout=60, interval=0.2)
        for vm in ("vm1", "vm2", "vm3"):
            shown = [json.loads(line) for content in cluster.postFiles(vm).values()
                     for line in content.decode().splitlines()]
            self.assertEqual(sorted((p["author"], p["text"]) for p in shown), sorted(acked),
                             "posts on %s" % (vm,))
            requests = [(p["author"], p["request"]) for p in shown]
            self.assertEqual(len(set(requests)), len(requests),
                             "one post shown per request on %s" % (vm,))
        self.assertEqual(cluster.postFiles("vm1"), cluster.postFiles("vm2"))
        self.assertEqual(cluster.postFiles("vm1"), cluster.postFiles("vm3"))
        status = await cluster.status()
        self.assertEqual(sorted(s.vm for s in status.servers if s.role == pb.MASTER),
                         ["vm1", "vm2", "vm3"])
