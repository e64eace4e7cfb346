"""
Every Deferred ends in a callback or an errback that logs: a failure on a
path nobody waits for (closing a link, refilling master2) is logged, never
dropped.
"""

import socket

import attrs
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from snstwist.client.client import Client, Master
from snstwist.core.node import Node
from snstwist.server.replication import Replicator
from snstwist.storage.store import MemoryStore


@attrs.define
class BrokenLink:
    """A PeerLink stand-in whose stop fails."""

    address: str
    stopped: bool = False

    def stop(self):
        self.stopped = True
        return defer.fail(RuntimeError("channel close failed"))


class ReplicatorTests(SynchronousTestCase):
    def test_a_link_that_fails_to_stop_is_logged(self):
        """A peer that left the membership: its link's failed stop is logged."""
        clock = Clock()
        node = Node("vm1", "vm1.a", MemoryStore(), clock)
        replicator = Replicator(node, "s" * 16, clock)
        link = replicator.links["vm2"] = BrokenLink("127.0.0.3:7000")
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        replicator.setPeers({})
        self.assertTrue(link.stopped)
        self.assertEqual(replicator.links, {})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [event] = [e for e in logged if e["log_level"] == LogLevel.critical]
        self.assertEqual(event["vm"], "vm2")


def closedPort():
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClientTests(TestCase):
    async def test_no_router_for_a_new_master2_is_logged_not_raised(self):
        """
        After a failover the client looks for a new master2 in the
        background; with no router answering it says so in the log and goes
        on without one.
        """
        client = Client(["127.0.0.1:%d" % (closedPort(),)], "alice", "pw")
        client.masters.master1 = Master("vm1", "127.0.0.2:7000")
        client.masters.master2 = Master("vm2", "127.0.0.3:7000")
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await client.masters._refillMaster2()
        self.assertIsNone(client.master2)
        [event] = [e for e in logged if e.get("log_format", "").startswith("no master2")]
        self.assertEqual(event["vm"], "vm1")
        self.assertIn("127.0.0.1", str(event["why"]))
