"""
End to end, with real processes: sns-cluster, twistd sns-router, sns-client
through a pipe, real signals.
"""

import os
import re
import signal

from twisted.internet import defer
from twisted.trial import unittest

from tests.processes import (
    Cluster,
    childEnv,
    heldAddress,
    killIfStill,
    pidAlive,
    routerStatus,
    spawn,
    twistd,
    waitUntil,
)

POST_LINE = re.compile(r"^(\S+) \(\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\) >> (.*)$")


def posts(lines):
    """(sender, text) of every timeline line printed."""
    return [m.groups() for m in map(POST_LINE.match, lines) if m]


def inlineAsync(f):
    def wrapper(*a, **kw):
        return defer.ensureDeferred(f(*a, **kw))
    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper


class TwoUsersOnTwoVMsTests(unittest.TestCase):
    timeout = 120

    @inlineAsync
    async def test_users_on_two_vms_follow_and_see_each_others_posts(self):
        """
        alice and bob, served by masters on two different VMs, follow each
        other, post, and each sees the other's posts; LIST shows the users
        and followers; both VMs end with byte-identical post files.
        """
        cluster = await Cluster(self, vms=2).start()
        # alice stays connected, so the router hands bob the other VM.
        alice = cluster.client("alice")
        alice.write("LIST\n")
        await alice.waitFor("Followers:")
        bob = await cluster.run("bob", "FOLLOW alice\nTIMELINE\nhello from bob\n")
        self.assertEqual(bob.exitCode, 0, bob.err)
        self.assertEqual(bob.lines[:2], ["Command completed successfully",
                                         "Now you are in the timeline"])

        alice.write("FOLLOW bob\nLIST\nTIMELINE\n")
        await alice.waitFor(">> hello from bob")
        alice.write("hello from alice\n")
        alice.closeStdin()
        self.assertEqual(await alice.ended, 0, alice.err)
        self.assertEqual(alice.lines[:7], [
            "Command completed successfully",
            "All users: alice",
            "Followers:",
            "Command completed successfully",
            "Command completed successfully",
            "All users: alice, bob",
            "Followers: bob",
        ])
        self.assertEqual(alice.lines[7], "Now you are in the timeline")
        self.assertEqual(posts(alice.lines)[0], ("bob", "hello from bob"))

        bob = await cluster.run("bob", "LIST\nTIMELINE\n")
        self.assertEqual(bob.exitCode, 0, bob.err)
        self.assertEqual(bob.lines[:4], ["Command completed successfully",
                                         "All users: alice, bob", "Followers: alice",
                                         "Now you are in the timeline"])
        self.assertEqual(posts(bob.lines), [("bob", "hello from bob"),
                                            ("alice", "hello from alice")])

        files = {vm: cluster.postFiles(vm) for vm in ("vm1", "vm2")}
        self.assertEqual(sorted(files["vm1"]), ["alice.txt", "bob.txt"])
        self.assertEqual(files["vm1"], files["vm2"])
        origins = {line.split('"id": "')[1].split(".")[0]
                   for content in files["vm1"].values()
                   for line in content.decode().splitlines()}
        self.assertEqual(origins, {"vm1", "vm2"}, "the posts were made on two VMs")

    @inlineAsync
    async def test_cli_error_lines_from_a_live_cluster(self):
        """Every error sentence of the CLI contract, against real servers."""
        cluster = await Cluster(self, vms=2).start()
        await cluster.run("carol", "LIST\n")
        dave = await cluster.run("dave", "\n".join([
            "FOLLOW nobody", "UNFOLLOW nobody", "FOLLOW carol", "follow carol",
            "FOLLOW dave", "FOLLOW bad/name", "UNFOLLOW carol", "UNFOLLOW carol",
            "JUMP", "FOLLOW", "LIST extra", "list", ""]))
        self.assertEqual(dave.exitCode, 0, dave.err)
        self.assertEqual(dave.lines, [
            "Input username does not exists, command failed",
            "Input username does not exists, command failed",
            "Command completed successfully",
            "Input username already exists, command failed",
            "Command failed with invalid username",
            "Command failed with invalid username",
            "Command completed successfully",
            "Command failed with not a follower",
            "Command failed with invalid command",
            "Command failed with invalid command",
            "Command failed with invalid command",
            "Command completed successfully",
            "All users: carol, dave",
            "Followers:",
        ])

    @inlineAsync
    async def test_timeline_shows_the_twenty_newest_posts_oldest_first(self):
        """History is the 20 newest posts by the user and whom they follow."""
        cluster = await Cluster(self, vms=2).start()
        lines = "".join("post %d\n" % (i,) for i in range(25))
        erin = await cluster.run("erin", "TIMELINE\n" + lines)
        self.assertEqual(erin.exitCode, 0, erin.err)
        again = await cluster.run("erin", "TIMELINE\n")
        self.assertEqual(posts(again.lines),
                         [("erin", "post %d" % (i,)) for i in range(5, 25)])


class RouterTests(unittest.TestCase):
    timeout = 60

    def startRouter(self):
        address = heldAddress(self)
        router = spawn(self, twistd("sns-router", "--listen", address,
                                    "--peer-listen", "127.0.0.1:0"),
                       env=childEnv())
        return router, address

    @inlineAsync
    async def test_router_without_servers_answers_unavailable(self):
        """With no server registered, a client gets a clear error, not an address."""
        router, address = self.startRouter()
        await waitUntil(lambda: _answers(address), "the router to answer")
        client = spawn(self, ["-m", "snstwist.commands.cli", "-r", address, "-u", "frank"])
        client.write("LIST\n")
        client.closeStdin()
        code = await client.ended
        self.assertEqual(client.lines, ["Command failed with unknown reason"])
        self.assertIn("no live master", client.err.decode())
        self.assertEqual(code, 1)

    @inlineAsync
    async def test_router_deactivates_a_killed_server(self):
        """SIGKILL a master: the router drops it within a heartbeat timeout."""
        cluster = await Cluster(self, vms=2).start()
        masters = await cluster.masters()
        killed = masters["vm2"].pid
        os.kill(killed, signal.SIGKILL)

        async def gone():
            return killed not in {s.pid for s in (await cluster.status()).servers}

        await waitUntil(gone, "pid %d to be deactivated" % (killed,), timeout=3)
        george = await cluster.run("george", "LIST\n")
        self.assertEqual(george.lines[0], "Command completed successfully")

    @inlineAsync
    async def test_cluster_stops_every_process_on_sigterm(self):
        """SIGTERM to sns-cluster stops the router and every server it started."""
        cluster = await Cluster(self, vms=2).start()
        status = await cluster.status()
        pids = {s.pid for s in status.servers}
        self.assertEqual(len(pids), 4, "two masters and their slaves")
        os.kill(cluster.process.pid, signal.SIGTERM)
        await cluster.process.ended
        for pid in pids:
            self.assertFalse(pidAlive(pid, running=cluster.base.encode()),
                             "pid %d survived" % (pid,))


async def _answers(address):
    try:
        await routerStatus(address)
        return True
    except Exception:
        return False


class PluginTests(unittest.TestCase):
    timeout = 60

    @inlineAsync
    async def test_twistd_finds_the_plugins(self):
        """twistd --help lists sns-router, sns-server, sns-cluster and sns-web."""
        child = spawn(self, ["-c", "from twisted.scripts.twistd import run; run()", "--help"])
        await child.ended
        for name in ("sns-router", "sns-server", "sns-cluster", "sns-web"):
            self.assertIn(name, child.text)


class TwistdClusterTests(unittest.TestCase):
    timeout = 60

    @inlineAsync
    async def test_twistd_sns_cluster_starts_and_stops_everything(self):
        """
        twistd -n sns-cluster prints the ready line and, on SIGTERM, stops
        the router, the masters and their slaves.
        """
        base = os.path.abspath(self.mktemp())
        cluster = spawn(self, twistd("sns-cluster", "--dir", base, "--vms", "2",
                                     "--router", "127.0.0.1:0", "--web", "127.0.0.1:0"))
        await cluster.waitFor("sns-cluster ready")
        router = [line.split("router ")[1].split(";")[0] for line in cluster.lines
                  if "sns-cluster ready" in line][0]
        pids = {s.pid for s in (await routerStatus(router)).servers}
        self.addCleanup(lambda: [killIfStill(p, base) for p in pids])
        self.assertEqual(len(pids), 4, "two masters and their slaves")
        os.kill(cluster.pid, signal.SIGTERM)
        await cluster.ended
        for pid in pids:
            self.assertFalse(pidAlive(pid, running=base.encode()), "pid %d survived" % (pid,))
