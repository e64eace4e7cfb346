"""
Several hosts and a network that fails: the router, each VM and the clients
in network namespaces of their own (L{snstwist.testbed.netbed}), with partitions,
cut-off hosts and healing.  What a partition does is the README's section
"When the network fails"; each test here is one of its sentences.
"""

import os
import sys

from twisted.internet import reactor
from twisted.trial import unittest

from snstwist.core.errors import RemoteError
from snstwist.rpc import sns_pb2 as pb
from snstwist.testbed import netbed
from tests.beds import Bed, skipUnlessNamespaces
from tests.processes import DEADLINE, Collector, childEnv, waitUntil
from tests.test_integration import inlineAsync, posts

# Connect to port 1 of an address: refused means the host answered (it is
# reachable); anything else (no route, timeout) means it is not.
PROBE = """
import socket, sys
s = socket.socket()
s.settimeout(2)
try:
    s.connect((sys.argv[1], 1))
except ConnectionRefusedError:
    print("reached")
except OSError as e:
    print("unreached", e)
"""


async def reaches(net, source, target):
    child = Collector()
    net.spawn(source, child, [sys.executable, "-c", PROBE, net.address(target)],
              env=childEnv())
    await child.ended.addTimeout(DEADLINE, reactor)
    return child.text.startswith("reached")


async def reachability(net, names):
    return {(a, b): await reaches(net, a, b) for a in names for b in names if a != b}


class NetBedTests(unittest.TestCase):
    timeout = 120

    @inlineAsync
    async def test_partition_isolate_and_heal(self):
        """
        Every host reaches every other; a partition cuts exactly one pair,
        both ways; an isolated host reaches nobody and nobody reaches it;
        heal restores everything; destroy leaves no namespace or link.
        """
        skipUnlessNamespaces()
        names = ["a", "b", "c"]
        net = netbed.NetBed(names)
        self.addCleanup(net.destroy)
        await net.create()
        everyone = {pair: True for pair in await reachability(net, names)}
        self.assertEqual(await reachability(net, names), everyone)

        await net.partition("a", "b")
        expected = dict(everyone)
        expected.update({("a", "b"): False, ("b", "a"): False})
        self.assertEqual(await reachability(net, names), expected)

        await net.isolate("c")
        expected.update({(x, y): False for x, y in expected if "c" in (x, y)})
        self.assertEqual(await reachability(net, names), expected)

        await net.heal()
        self.assertEqual(await reachability(net, names), everyone)

        await net.destroy()
        self.assertEqual([n for n in os.listdir("/run/netns") if net.token in n], [])
        links = (await net._ip("-o", "link", "show"))
        self.assertNotIn(net.token, links)


def reconnects(client):
    return [line for line in client.lines if line.startswith("Reconnecting to ")]


def oneCopyLines(client):
    return client.err.decode("utf-8", "replace").count("stored on one VM only")


async def warnedOnce(client):
    """Wait for the client's one notice (on stderr) that a write has one copy."""
    async def warned():
        return oneCopyLines(client) == 1

    await waitUntil(warned, "the one-copy notice on stderr")


async def quits(test, client, stayed=True):
    """
    Close the client's stdin: it must exit 0 and, with C{stayed}, never have
    moved to another master.
    """
    client.closeStdin()
    test.assertEqual(await client.ended, 0, client.err)
    if stayed:
        test.assertEqual(reconnects(client), [])


class PartitionTests(unittest.TestCase):
    timeout = 180

    @inlineAsync
    async def test_vm_cut_from_everyone(self):
        """
        A VM cut from every host: the router drops it; a reader whose
        master1 it was fails over to its master2 and misses nothing; writes
        are acknowledged by the VMs still together (two copies); healed, the
        VM comes back and every VM holds the same files.
        """
        bed = await Bed(self, vms=3).start()
        await bed.run("bob", "LIST\n")
        alice = bed.client("alice")
        alice.write("FOLLOW bob\nTIMELINE\n")
        await alice.waitFor("Now you are in the timeline")
        cut = await bed.masterOf("alice")
        bob = await bed.run("bob", "TIMELINE\nbefore the cut\n")
        await alice.waitFor(">> before the cut")

        await bed.net.isolate(cut.vm)
        await alice.waitFor("Reconnecting to ")
        await bed.registered(cut.vm, present=False)
        bob = await bed.run("bob", "TIMELINE\nduring the cut\n")
        self.assertEqual(bob.exitCode, 0, bob.err)
        self.assertEqual(oneCopyLines(bob), 0, bob.err)
        await alice.waitFor(">> during the cut")

        await bed.net.heal()
        await bed.registered(cut.vm)
        data = await bed.converged()
        self.assertEqual(sorted(data["posts"]), ["bob.txt"])
        await quits(self, alice, stayed=False)
        self.assertEqual(posts(alice.lines), [("bob", "before the cut"),
                                              ("bob", "during the cut")])

    @inlineAsync
    async def test_vm_cut_from_its_peers_accepts_writes_with_one_copy(self):
        """
        A VM that reaches the router and its clients but no other VM keeps
        serving: a write is acknowledged with one copy, and the client says
        so; healed, the write reaches the other VM and both hold the same.
        """
        bed = await Bed(self, vms=2).start()
        alice = await bed.signedIn("alice")
        home = await bed.masterOf("alice")
        await bed.net.partition(home.vm, bed.otherVM(home.vm))
        alice.write("TIMELINE\nalone\n")
        await alice.waitFor(">> alone")
        await warnedOnce(alice)
        await bed.net.heal()
        data = await bed.converged()
        self.assertIn(b"alone", data["posts"]["alice.txt"])
        await quits(self, alice)

    @inlineAsync
    async def test_client_cut_from_master1_fails_over_to_master2(self):
        """
        The clients' host loses its path to master1's VM only: the client
        moves to master2 (one Reconnecting line), its commands succeed there,
        and the router still counts the VM, which everyone else reaches.
        """
        bed = await Bed(self, vms=2).start()
        alice = await bed.signedIn("alice")
        home = await bed.masterOf("alice")
        otherVM = bed.otherVM(home.vm)
        master2 = (await bed.masters())[otherVM]
        await bed.net.partition("clients", home.vm)
        alice.write("TIMELINE\nacross\n")
        await alice.waitFor(">> across")
        self.assertIn("Reconnecting to %s..." % (master2.address,), alice.lines)
        self.assertIn(home.vm, await bed.masters())

        async def moved():
            return "alice" in (await bed.masters())[otherVM].users

        await waitUntil(moved, "alice's session to be on %s" % (otherVM,))
        await quits(self, alice, stayed=False)
        await bed.net.heal()
        await bed.converged()

    @inlineAsync
    async def test_router_cut_off(self):
        """
        The router cut from everyone: connected clients go on (writes still
        reach two VMs, followers still see them) but a new client can not
        find a master; healed, the router sees every server again.
        """
        bed = await Bed(self, vms=2).start()
        await bed.run("bob", "LIST\n")
        alice = bed.client("alice")
        alice.write("FOLLOW bob\nTIMELINE\n")
        await alice.waitFor("Now you are in the timeline")
        bob = bed.client("bob")
        bob.write("TIMELINE\n")
        await bob.waitFor("Now you are in the timeline")

        await bed.net.isolate("router")
        bob.write("while the router is away\n")
        await alice.waitFor(">> while the router is away")
        carol = await bed.run("carol", "LIST\n")
        self.assertEqual(carol.lines, ["Command failed with unknown reason"])

        await bed.net.heal()

        async def everyone():
            try:
                servers = (await bed.status()).servers
            except RemoteError:
                return False
            return len([s for s in servers if s.role == pb.MASTER]) == 2 and \
                len(servers) == 4

        await waitUntil(everyone, "the router to see every server again")
        await quits(self, bob, stayed=False)
        self.assertEqual(oneCopyLines(bob), 0, bob.err)
        await quits(self, alice)
        await bed.converged()

    @inlineAsync
    async def test_router_cut_from_one_vm(self):
        """
        The router loses one VM only: it drops that VM and tells the others,
        which stop replicating to it even though they still reach it, so a
        write on another VM is acknowledged with one copy; the cut VM's
        clients go on.  Healed, the VM registers again and all converge.
        """
        bed = await Bed(self, vms=2).start()
        alice = await bed.signedIn("alice")
        home = await bed.masterOf("alice")
        other = bed.otherVM(home.vm)
        await bed.net.partition("router", other)
        await bed.registered(other, present=False)
        alice.write("TIMELINE\nrouter sees one VM\n")
        await alice.waitFor(">> router sees one VM")
        await warnedOnce(alice)
        await bed.net.heal()
        await bed.registered(other)
        data = await bed.converged()
        self.assertIn(b"router sees one VM", data["posts"]["alice.txt"])
        await quits(self, alice)
