"""
Routers hold soft state only, and there may be several (docs/design.md section 2):
real processes, real kills.
"""

import os
import signal

from twisted.trial import unittest

from snstwist.rpc import sns_pb2 as pb
from tests.processes import (TWISTD, childEnv, heldAddress, killServersUsing, routerStatus, spawn,
                             waitUntil)
from tests.test_integration import inlineAsync

ENV = childEnv()


class SeveralRoutersTests(unittest.TestCase):
    timeout = 120

    def peerOf(self, address):
        """The cluster port (where servers register) of the router at C{address}."""
        peers = self.__dict__.setdefault("peers", {})
        if address not in peers:
            peers[address] = heldAddress(self)
        return peers[address]

    def router(self, address):
        return spawn(self, TWISTD + ["sns-router", "--listen", address,
                                     "--peer-listen", self.peerOf(address)], env=ENV)

    def server(self, routers, vm, host):
        data = os.path.abspath(self.mktemp())
        # Last of all: whatever still runs on the data (its slave, its
        # spare), by pid.
        self.addCleanup(killServersUsing, data)
        return spawn(self, TWISTD + [
            "--logfile=" + data + ".log", "sns-server",
            "--router", ",".join(self.peerOf(r) for r in routers),
            "--vm", vm, "--listen", host + ":0", "--data", data], env=ENV)

    async def registered(self, router, n):
        """Wait until C{router} lists C{n} servers (masters and slaves)."""

        async def enough():
            try:
                status = await routerStatus(router)
            except Exception:
                return False
            return len(status.servers) >= n

        await waitUntil(enough, "%d servers registered with %s" % (n, router))

    def addresses(self, n):
        return [heldAddress(self) for _ in range(n)]

    @inlineAsync
    async def test_servers_register_with_every_router(self):
        """A server given two routers is known to both, with its slave."""
        routers = self.addresses(2)
        for r in routers:
            self.router(r)
        self.server(routers, "vm1", "127.0.0.2")
        for r in routers:
            await self.registered(r, 2)
            roles = sorted(s.role for s in (await routerStatus(r)).servers)
            self.assertEqual(roles, [pb.MASTER, pb.SLAVE])

    @inlineAsync
    async def test_client_uses_the_next_router_when_the_first_is_dead(self):
        """With the first router killed, sns-client gets its masters from the second."""
        routers = self.addresses(2)
        first = self.router(routers[0])
        self.router(routers[1])
        self.server(routers, "vm1", "127.0.0.2")
        await self.registered(routers[1], 2)
        os.kill(first.pid, signal.SIGKILL)
        await first.ended
        client = spawn(self, ["-m", "snstwist.commands.cli", "-r", ",".join(routers), "-u", "ann"],
                       env=ENV)
        client.write("LIST\n")
        client.closeStdin()
        self.assertEqual(await client.ended, 0, client.err)
        self.assertEqual(client.lines, ["Command completed successfully",
                                        "All users: ann", "Followers:"])

    @inlineAsync
    async def test_a_restarted_router_rebuilds_its_view_from_the_servers(self):
        """
        SIGKILL the only router and start a new one on the same address: the
        servers register again by themselves and clients are served.
        """
        (address,) = self.addresses(1)
        router = self.router(address)
        self.server([address], "vm1", "127.0.0.2")
        self.server([address], "vm2", "127.0.0.3")
        await self.registered(address, 4)
        before = {(s.vm, s.role, s.pid) for s in (await routerStatus(address)).servers}
        os.kill(router.pid, signal.SIGKILL)
        await router.ended
        self.router(address)
        await self.registered(address, 4)
        after = {(s.vm, s.role, s.pid) for s in (await routerStatus(address)).servers}
        self.assertEqual(after, before)
