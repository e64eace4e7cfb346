"""
A reader's timeline resumed on another master after a failover, on real
hosts (L{snstwist.testbed.netbed}), shows each post once (docs/design.md,
section 6):

- a post that reaches the reader's next master late: accepted with one copy
  on a VM cut off from its peers, dated long before what the reader was
  shown meanwhile.  The reader resumes a little before the newest post it
  was shown (client.timeline.RESUME_WINDOW_US, 10 s); the post is older than
  that, and is shown all the same.  Time is not waited for: vm3's clock runs
  30 s ahead of the others ($SNS_CLOCK_SKEW), and vm3 writes nothing until
  bob's VM is cut off, so a post made on vm3 then is 30 s newer than
  anything bob's VM had seen;
- a retried post that two VMs accepted (two copies, two ids, one request
  id): the reader was shown one copy and resumes on the VM that holds the
  other.
"""


from twisted.internet import threads
from twisted.trial import unittest

from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.testbed import netcluster
from tests.beds import Bed
from tests.processes import PASSWORD, waitUntil
from tests.test_integration import inlineAsync, posts
from tests.test_netbed import quits, warnedOnce


class ResumeTests(unittest.TestCase):
    timeout = 240

    @inlineAsync
    async def test_a_resumed_timeline_shows_a_post_that_came_late(self):
        """
        alice follows bob and carol on vm A; bob's VM B is cut off from A
        and bob posts "late" there (one copy).  carol posts "ahead" on vm3,
        whose clock is 30 s ahead, and alice is shown it on A.  Then alice's
        host loses A: she resumes on B, her master2, from 10 s before
        "ahead", which is 20 s after "late".  She is shown "late" all the
        same, and once.
        """
        bed = await Bed(self, vms=3, hostEnv={"vm3": {"SNS_CLOCK_SKEW": "30"}}).start()
        # vm3 has written nothing yet: away until bob's VM is cut off.
        await bed.net.isolate("vm3")
        await bed.registered("vm3", present=False)
        await bed.run("carol", "LIST\n")
        await bed.run("bob", "LIST\n")
        alice = bed.client("alice")
        alice.write("FOLLOW bob\nFOLLOW carol\nTIMELINE\n")
        await alice.waitFor("Now you are in the timeline")
        home = (await bed.masterOf("alice")).vm
        bob = bed.client("bob")
        bob.write("TIMELINE\n")
        await bob.waitFor("Now you are in the timeline")
        away = (await bed.masterOf("bob")).vm
        self.assertNotEqual(away, home, "the router gave bob alice's master")

        await bed.net.partition(home, away)
        await bed.net.partition(away, "vm3")
        bob.write("late\n")
        await warnedOnce(bob)

        await bed.net.reconnect("vm3")
        await bed.registered("vm3")

        async def caughtUp():
            snap = await threads.deferToThread(netcluster.snapshot, bed.data("vm3"))
            return len(snap["users"]) == 3 and len(snap["follows"]) == 2

        await waitUntil(caughtUp, "vm3 to hold the users and follows")
        carol = bed.client("carol")
        carol.write("TIMELINE\n")
        await carol.waitFor("Now you are in the timeline")
        self.assertEqual((await bed.masterOf("carol")).vm, "vm3")
        carol.write("ahead\n")
        await alice.waitFor(">> ahead")

        await bed.net.partition("clients", home)
        await alice.waitFor("Reconnecting to ")

        async def movedAway():
            return (await bed.masterOf("alice")).vm == away

        await waitUntil(movedAway, "alice to resume on %s" % (away,))
        await bed.net.heal()
        await bed.converged()
        bob.write("after\n")
        await alice.waitFor(">> after")
        for client in (bob, carol):
            await quits(self, client, stayed=False)
        await quits(self, alice, stayed=False)
        self.assertEqual(posts(alice.lines), [("carol", "ahead"), ("bob", "late"),
                                              ("bob", "after")], alice.err)

    async def post(self, bed, vm, user, text, request):
        """
        C{user} posts C{text} on the master of C{vm} with the request id
        C{request}, as sns-client does (and does again, the same request,
        on another master when the first did not answer).
        """
        channel = grpcbridge.channel((await bed.masters())[vm].address, bed.cluster.tls)
        self.addCleanup(grpcbridge.closeChannel, channel)
        stub = pbg.SNSStub(channel)
        login = await grpcbridge.call(stub.Login, pb.LoginRequest(user=user, password=PASSWORD),
                                      timeout=10)
        return await grpcbridge.call(stub.Post, pb.PostRequest(text=text, request_id=request),
                                     metadata=auth.sessionMetadata(login.token), timeout=10)

    @inlineAsync
    async def test_a_resumed_timeline_shows_a_retried_post_once(self):
        """
        bob's post was accepted on vm A, cut off from vm B, and his retry of
        it (the same request id) on B: two copies.  alice, on B, is shown
        B's copy; her host loses B and she resumes on A, whose copy is the
        one every VM shows in the end.  She is not shown the post again.
        """
        bed = await Bed(self, vms=2).start()
        await bed.run("bob", "LIST\n")
        alice = bed.client("alice")
        alice.write("FOLLOW bob\nTIMELINE\n")
        await alice.waitFor("Now you are in the timeline")
        home = (await bed.masterOf("alice")).vm
        other = bed.otherVM(home)

        await bed.net.partition(home, other)
        first = await self.post(bed, other, "bob", "once", "retried-1")
        retry = await self.post(bed, home, "bob", "once", "retried-1")
        self.assertNotEqual(first.post.id, retry.post.id)
        self.assertEqual((first.copies, retry.copies), (1, 1))
        await alice.waitFor(">> once")

        await bed.net.partition("clients", home)
        await alice.waitFor("Reconnecting to ")

        async def movedAway():
            return (await bed.masterOf("alice")).vm == other

        await waitUntil(movedAway, "alice to resume on %s" % (other,))
        await self.post(bed, other, "bob", "after", "after-1")
        await alice.waitFor(">> after")
        await bed.net.heal()
        data = await bed.converged()
        shown = [line for line in data["posts"]["bob.txt"].decode().splitlines()
                 if '"once"' in line]
        self.assertEqual(len(shown), 1)
        self.assertIn(first.post.id, shown[0])
        await quits(self, alice, stayed=False)
        self.assertEqual(posts(alice.lines), [("bob", "once"), ("bob", "after")], alice.err)
