"""
Sniffing loopback finds nothing secret: a capture of every packet on lo
while a cluster starts, users log in, post, follow across VMs (replication)
and a slave is killed and respawned holds neither the cluster's secret, nor
a session token, nor a password, nor a post's text (issue 12).

tcpdump (Debian's) captures; the test is skipped, saying why, where it is
not installed or may not capture (capturing needs root or CAP_NET_RAW).
"""

import os
import secrets
import shutil
import signal
import socket

from twisted.internet import reactor
from twisted.trial import unittest

from snstwist.client.client import Client
from snstwist.rpc import sns_pb2 as pb
from tests.processes import Cluster, Collector, childEnv, stopChild, waitUntil
from tests.test_integration import inlineAsync


def startCapture(testCase, path):
    """tcpdump writing every packet on lo to C{path}; stopped in cleanup."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise unittest.SkipTest("tcpdump is not installed (apt-get install tcpdump)")
    child = Collector()
    reactor.spawnProcess(child, tcpdump, [tcpdump, "-i", "lo", "-U", "-s", "0", "-n",
                                          "-w", path], env=childEnv())
    testCase.addCleanup(stopChild, child)
    return child


class CaptureTests(unittest.TestCase):
    timeout = 240

    @inlineAsync
    async def test_nothing_secret_crosses_loopback_in_clear(self):
        pcap = os.path.abspath(self.mktemp())
        capture = startCapture(self, pcap)
        await waitUntil(lambda: b"listening on" in capture.err or capture.ended.called,
                        "tcpdump to start")
        if capture.ended.called:
            raise unittest.SkipTest("tcpdump can not capture on lo here: %s"
                                    % (capture.err.decode("utf-8", "replace").strip(),))
        # Values no other test (or teammate's run) on this machine sends.
        secret = "capture-secret-" + secrets.token_hex(16)
        password = "capture-password-" + secrets.token_hex(8)
        text = "capture-post-" + secrets.token_hex(8)
        control = b"capture-control-" + secrets.token_hex(8).encode()

        cluster = await Cluster(self, vms=2, secret=secret).start()
        alice = Client([cluster.router], "alice", password, clock=reactor)
        await alice.connect()
        self.addCleanup(alice.close)
        token = alice.token
        await alice.post(text)
        bob = await cluster.run("bob", "FOLLOW alice\nTIMELINE\n", password=password)
        self.assertIn(text, bob.text, bob.err)

        # A slave killed and respawned: its hello, the secret on its
        # streams, the updates its master feeds it.
        status = await cluster.status()
        slave = [s for s in status.servers if s.vm == "vm1" and s.role == pb.SLAVE][0]
        os.kill(slave.pid, signal.SIGKILL)

        async def respawned():
            servers = (await cluster.status()).servers
            return any(s.vm == "vm1" and s.role == pb.SLAVE and s.pid != slave.pid
                       for s in servers)

        await waitUntil(respawned, "a new slave of vm1")
        await alice.post(text + " again")

        # What the capture would show if something went in clear.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(control, ("127.0.0.1", 9))

        def captured():
            with open(pcap, "rb") as f:
                return control in f.read()

        await waitUntil(captured, "the control datagram in the capture")
        capture.transport.signalProcess("INT")
        await capture.ended
        with open(pcap, "rb") as f:
            data = f.read()
        self.assertGreater(len(data), 100000, "the capture saw the cluster's traffic")
        for what, value in [("the cluster secret", secret), ("a password", password),
                            ("a session token", token), ("a post's text", text)]:
            self.assertNotIn(value.encode(), data, "%s crossed loopback in clear" % (what,))
