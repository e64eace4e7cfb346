"""
More users than one message holds, on a real cluster: imported with
C{sns-admin import} into two VMs, listed by C{sns-client} (LIST a page at a
time), compared by C{sns-compare} (the digest a page at a time).
"""

import json
import os

from twisted.trial.unittest import TestCase

from snstwist.core import limits
from tests.processes import Cluster, childEnv, spawn
from tests.test_integration import inlineAsync

USERS = 9000       # past the 8,000 a cluster once held, past a LIST page
FOLLOWERS = 6000   # of the first user: past a page of its followers too
AUTHORS = 2500     # post files: past a digest page


def name(i):
    return "u%05d" % (i,)


def importFile(path):
    with open(path, "w") as f:
        for i in range(USERS):
            f.write(json.dumps({"user": name(i)}) + "\n")
        for i in range(1, FOLLOWERS + 1):
            f.write(json.dumps({"follower": name(i), "followee": name(0)}) + "\n")
        for i in range(AUTHORS):
            f.write(json.dumps({"author": name(i), "time": "2026-11-29T18:26:21.%06dZ" % (i,),
                                "text": "hello from %s" % (name(i),)}) + "\n")


class ManyUsersTests(TestCase):
    timeout = 300

    @inlineAsync
    async def test_users_past_a_message_are_imported_listed_and_compared(self):
        """
        9,000 users imported into both VMs (one file, so the same ids): LIST
        from sns-client prints each once, sorted, and the 6,000 followers of
        u00000; sns-compare walks both VMs' digests and says they agree.
        """
        self.assertGreater(USERS, limits.LIST_PAGE)
        self.assertGreater(FOLLOWERS, limits.LIST_PAGE)
        self.assertGreater(AUTHORS, limits.DIGEST_PAGE)
        cluster = Cluster(self, vms=2)
        source = os.path.join(self.mktemp() + ".jsonl")
        importFile(source)
        for vm in ("vm1", "vm2"):
            imported = spawn(self, ["-m", "snstwist.commands.admin", "import",
                                    "--data", cluster.data(vm), source])
            self.assertEqual(await imported.ended, 0, imported.err)
        await cluster.start()

        listing = await cluster.run(name(0), "LIST\n")
        self.assertEqual(listing.exitCode, 0, listing.err)
        lines = listing.lines
        users = next(x for x in lines if x.startswith("All users: "))[len("All users: "):]
        followers = next(x for x in lines if x.startswith("Followers: "))[len("Followers: "):]
        self.assertEqual(lines[0], "Command completed successfully")
        self.assertEqual(users.split(", "), [name(i) for i in range(USERS)])
        self.assertEqual(followers.split(", "), [name(i) for i in range(1, FOLLOWERS + 1)])

        compared = spawn(self, ["-m", "snstwist.commands.compare", "-r", cluster.router,
                                "--wait", "60"], env=childEnv(SNS_SECRET=cluster.secret))
        self.assertEqual((await compared.ended, compared.lines[-1]), (0, "all 2 VMs agree"),
                         compared.text)
        self.assertIn("vm1: %d post files, %d posts" % (AUTHORS, AUTHORS), compared.text)
