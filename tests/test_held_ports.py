"""
A port chosen for a process that binds it later stays ours until then.

sns-cluster (and the tests and benchmarks that start a router themselves)
must name the router's ports before the router runs: its servers and
clients are given them.  A port found free and let go could be taken by
another process (another bind to port 0, or an outgoing connection's local
port) before the router bound it, and the router then exited with "Address
already in use" (seen once in a loaded suite).  A L{HeldPort} keeps it bound.
"""

import errno
import socket

from twisted.trial import unittest

from snstwist.commands.cluster import ClusterService, HeldPort

HOST = "127.0.0.1"


def plainBind(port):
    """Bind C{port} as a process that does not share ports would; the errno, or 0."""
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError as e:
            return e.errno
        return 0


class HeldPortTests(unittest.TestCase):
    def hold(self):
        held = HeldPort(HOST)
        self.addCleanup(held.release)
        return held

    def test_nobody_else_binds_a_held_port(self):
        held = self.hold()
        self.assertEqual(plainBind(held.port), errno.EADDRINUSE)

    def test_binds_to_port_zero_are_never_given_a_held_port(self):
        held = self.hold()
        sockets = []
        try:
            for _ in range(300):
                s = socket.socket()
                sockets.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((HOST, 0))
                self.assertNotEqual(s.getsockname()[1], held.port)
        finally:
            for s in sockets:
                s.close()

    def test_the_process_it_is_for_listens_on_it_and_is_reached(self):
        """
        A listener that sets C{SO_REUSEADDR} (as gRPC's servers do, with
        C{SO_REUSEPORT} off as ours have it) binds a held port and is reached.
        """
        held = self.hold()
        with socket.socket() as listener, socket.socket() as caller:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, held.port))
            listener.listen(1)
            caller.connect((HOST, held.port))
            accepted, _ = listener.accept()
            accepted.close()

    def test_a_released_port_is_free_again(self):
        held = HeldPort(HOST)
        held.release()
        self.assertEqual(plainBind(held.port), 0)


class ClusterPortsTests(unittest.TestCase):
    def test_sns_cluster_holds_the_ports_it_chose_until_it_stops(self):
        cluster = ClusterService(self.mktemp(), vms=1, routerListen=HOST + ":0",
                                 webListen=HOST + ":0")
        ports = [int(address.rsplit(":", 1)[1])
                 for address in (cluster.router, cluster.routerPeer, cluster.web)]
        self.assertEqual(len(set(ports)), 3)
        self.assertEqual([plainBind(port) for port in ports], [errno.EADDRINUSE] * 3)
        stopped = cluster.stopService()
        self.assertEqual([plainBind(port) for port in ports], [0] * 3)
        return stopped

    def test_ports_given_are_not_held(self):
        cluster = ClusterService(self.mktemp(), vms=1, routerListen=HOST + ":0")
        self.addCleanup(lambda: [held.release() for held in cluster.heldPorts])
        given = ClusterService(self.mktemp(), vms=1, routerListen=cluster.router)
        self.assertEqual(given.heldPorts, [])
