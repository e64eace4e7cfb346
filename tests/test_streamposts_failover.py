"""
Posts on the session stream across the death of a master, with real
processes and real signals: each post in flight when the master is
SIGKILLed is sent again, with its request id, on the new master, and is
applied exactly once and acknowledged (docs/design.md sections 4 and 5).
"""

import collections
import json
import os
import signal

from twisted.internet import defer, reactor
from twisted.trial import unittest

from snstwist.client.client import Client
from snstwist.commands import compare
from tests.processes import PASSWORD, SECRET, Cluster, masterOf, waitUntil
from tests.test_integration import inlineAsync

CLIENTS = 3
POSTS = 30
IN_FLIGHT = 4  # posts each client keeps unanswered on its stream


class StreamPostFailoverTests(unittest.TestCase):
    timeout = 180

    @inlineAsync
    async def test_posts_in_flight_on_the_stream_when_master1_is_killed_apply_once(self):
        """
        Clients in timeline mode keep several posts in flight on their
        session streams; a third of the way through, their master1 is
        SIGKILLed.  Every post is acknowledged; once the VMs agree, each is
        shown exactly once on every VM and on its author's timeline.
        """
        cluster = await Cluster(self, vms=2).start()
        clients, shown = [], {}
        for i in range(CLIENTS):
            user = "poster%d" % (i,)
            shown[user] = []
            c = Client([cluster.router], user, PASSWORD, clock=reactor,
                       onPost=shown[user].append)
            await c.connect()
            self.addCleanup(c.close)
            await c.timeline()
            clients.append(c)
        victim = await masterOf(cluster, clients[0].user)
        onVictim = [c for c in clients if c.master1.vm == victim.vm]
        acked = []
        third = defer.Deferred()

        async def write(c):
            texts = iter(["%s post %d" % (c.user, n) for n in range(POSTS)])

            async def one(text):
                reply = await c.post(text)
                acked.append((reply.post.author, reply.post.text))
                if len(acked) >= CLIENTS * POSTS // 3 and not third.called:
                    third.callback(None)

            async def lane():
                for text in texts:  # shared: each text is posted by one lane
                    await one(text)

            await defer.gatherResults([defer.ensureDeferred(lane()) for _ in range(IN_FLIGHT)])

        writers = [defer.ensureDeferred(write(c)) for c in clients]
        await third
        inFlight = sum(len(c.session.posts) for c in onVictim if c.session is not None)
        os.kill(victim.pid, signal.SIGKILL)
        self.assertGreater(inFlight, 0, "posts in flight on the victim's session streams")
        await defer.gatherResults(writers)

        self.assertEqual(len(acked), CLIENTS * POSTS)
        self.assertEqual(len(set(acked)), len(acked))
        self.assertTrue(all(c.master1.vm != victim.vm for c in onVictim))

        last = []

        async def agreeing():
            replies = await compare.digests(cluster.router, SECRET)
            last[:] = [compare.differences(replies)]
            return len(replies) == 2 and not last[0]

        try:
            await waitUntil(agreeing, "the two VMs to agree", timeout=60, interval=0.2)
        except AssertionError as e:
            # Say what differed, and where the cluster's logs are (kept with
            # the test's temporary directory).
            raise AssertionError("%s; last differences: %s; logs in %s"
                                 % (e, last, cluster.base)) from None
        for vm in ("vm1", "vm2"):
            stored = [json.loads(line) for content in cluster.postFiles(vm).values()
                      for line in content.decode().splitlines()]
            self.assertEqual(sorted((p["author"], p["text"]) for p in stored), sorted(acked),
                             "posts on %s" % (vm,))
        for c in clients:
            texts = collections.Counter(p.text for p in shown[c.user])
            wanted = collections.Counter("%s post %d" % (c.user, n) for n in range(POSTS))
            self.assertEqual(texts, wanted, "%s's timeline: missing %s, extra %s; logs in %s"
                             % (c.user, sorted(wanted - texts), sorted(texts - wanted),
                                cluster.base))
