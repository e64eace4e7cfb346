"""
Mutual TLS between the cluster's processes, on real processes (issue 12).

Every router and server has two ports: the client port, which serves the
client RPCs and the operator's views, and the cluster port, which serves the
peer RPCs (replication, the buddy link, the router link) and the operator's
views, and whose TLS handshake requires a certificate of the cluster's CA.
"""

import os

from twisted.internet import defer
from twisted.trial import unittest

from snstwist.core import errors
from snstwist.rpc import auth, certs, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from tests.processes import SECRET, Cluster
from tests.test_integration import inlineAsync
from tests.test_security import refusal


class _Silent:
    """A stream protocol that sends nothing; C{ended} fires with [why it ended]."""

    def __init__(self):
        self.ended = defer.Deferred()

    def makeConnection(self, stream):
        self.stream = stream

    def messageReceived(self, message):
        pass

    def connectionLost(self, reason):
        self.ended.callback([reason])


class MutualTLSTests(unittest.TestCase):
    timeout = 120

    def channel(self, address, tls=grpcbridge.channels.DEFAULT):
        channel = grpcbridge.channel(address, tls)
        self.addCleanup(grpcbridge.closeChannel, channel)
        return channel

    def clusterCA(self):
        return grpcbridge.defaultTLS().ca

    async def assertHandshakeRefused(self, address, tls):
        """
        A call to C{address} with C{tls} fails before any RPC is answered:
        UNAVAILABLE, the connection never made.
        """
        stub = pbg.ClusterStub(self.channel(address, tls))
        e = await refusal(grpcbridge.call(stub.Digest, pb.DigestRequest(), timeout=10,
                                          metadata=auth.secretMetadata(SECRET)))
        self.assertEqual(e.status, errors.Status.UNAVAILABLE, e.message)

    @inlineAsync
    async def test_a_peer_without_a_certificate_of_the_cas_is_refused_at_the_handshake(self):
        """
        A caller that trusts the cluster's CA and knows the secret, but shows
        no certificate, or one of another CA, never connects to a cluster
        port (a master's, the router's); the first one's credentials are
        answered on the client port.
        """
        cluster = await Cluster(self, vms=1).start()
        master = (await cluster.masters())["vm1"]
        self.assertNotEqual(master.peer_address, master.address)
        noCertificate = grpcbridge.TLS(self.clusterCA())
        await self.assertHandshakeRefused(master.peer_address, noCertificate)
        await self.assertHandshakeRefused(cluster.routerPeer, noCertificate)
        stub = pbg.ClusterStub(self.channel(master.address, noCertificate))
        digest = await grpcbridge.call(stub.Digest, pb.DigestRequest(), timeout=10,
                                       metadata=auth.secretMetadata(SECRET))
        self.assertEqual(digest.vm, "vm1")
        # A process with a certificate signed by another CA is no peer either.
        other = os.path.abspath(self.mktemp())
        certs.makeCA(other, name="another CA")
        cert, key = certs.makeNode(other, "intruder", ["127.0.0.1"])
        with open(cert, "rb") as c, open(key, "rb") as k:
            intruder = grpcbridge.TLS(self.clusterCA(), c.read(), k.read())
        await self.assertHandshakeRefused(master.peer_address, intruder)
        await self.assertHandshakeRefused(cluster.routerPeer, intruder)

    @inlineAsync
    async def test_each_port_refuses_the_other_ports_rpcs(self):
        """
        With the cluster's certificate and secret, the peer RPCs are still
        refused on a client port, and the client RPCs on a cluster port,
        each saying where they are served; the operator's views (with the
        secret) answer on both.
        """
        cluster = await Cluster(self, vms=1).start()
        master = (await cluster.masters())["vm1"]
        secret = auth.secretMetadata(SECRET)
        cluster_ = pbg.ClusterStub(self.channel(master.address))
        e = await refusal(grpcbridge.call(cluster_.Onetime_s_to_buddy, pb.UpdateBatch(),
                                          timeout=10, metadata=secret))
        self.assertEqual(e.status, errors.Status.PERMISSION_DENIED)
        self.assertIn("cluster port", e.message)
        for method in (cluster_.BroadcastPosts,
                       pbg.RouterStub(self.channel(cluster.router)).Bidirectional_r_and_s):
            silent = _Silent()
            grpcbridge.openStream(method, silent, metadata=secret)
            [reason] = await silent.ended
            self.assertIsNotNone(reason)
            self.assertEqual(reason.value.status, errors.Status.PERMISSION_DENIED)
            self.assertIn("cluster port", reason.value.message)
        # The other way round: Login and the router's Onetime_c_to_r are not
        # served on cluster ports.
        sns = pbg.SNSStub(self.channel(master.peer_address))
        e = await refusal(grpcbridge.call(sns.Login, pb.LoginRequest(user="alice"),
                                          timeout=10))
        self.assertEqual(e.status, errors.Status.PERMISSION_DENIED)
        self.assertIn("client port", e.message)
        router = pbg.RouterStub(self.channel(cluster.routerPeer))
        e = await refusal(grpcbridge.call(router.Onetime_c_to_r, pb.MasterRequest(),
                                          timeout=10))
        self.assertEqual(e.status, errors.Status.PERMISSION_DENIED)
        self.assertIn("client port", e.message)
        for address in (cluster.router, cluster.routerPeer):
            status = await grpcbridge.call(pbg.RouterStub(self.channel(address)).Status,
                                           pb.StatusRequest(), timeout=10, metadata=secret)
            self.assertIn("vm1", {s.vm for s in status.servers})
        for address in (master.address, master.peer_address):
            digest = await grpcbridge.call(pbg.ClusterStub(self.channel(address)).Digest,
                                           pb.DigestRequest(), timeout=10, metadata=secret)
            self.assertEqual(digest.vm, "vm1")
