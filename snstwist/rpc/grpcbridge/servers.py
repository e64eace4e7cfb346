"""
The gRPC server of a process, as a Twisted service.
"""

import asyncio
import socket

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from twisted.application.service import Service
from twisted.logger import Logger

from snstwist.core.limits import (
    IDLE_CONNECTION_SECONDS,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_ADDRESS,
    MAX_MESSAGE_BYTES,
)
from snstwist.rpc.grpcbridge.addresscap import AddressCap
from snstwist.rpc.grpcbridge.calls import deferredFromAwaitable
from snstwist.rpc.grpcbridge.channels import DEFAULT, defaultTLS
from snstwist.rpc.grpcbridge.servicers import BOTH, CLIENTS, PEERS, Port

log = Logger()

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Without this a second server binds the same port and steals half of
    # the connections.
    ("grpc.so_reuseport", 0),
    # Connections are bounded (limits.py): in all, and in time when idle
    # (and per address: L{AddressCap}).
    ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS),
    ("grpc.max_connection_idle_ms", IDLE_CONNECTION_SECONDS * 1000),
]


class GrpcServerService(Service):
    """
    Serve gRPC on C{listen} while this service runs; with C{peerListen},
    serve the cluster's own RPCs on a second port, which requires a
    certificate of the cluster's CA from every caller (mutual TLS).

    gRPC can not ask for a client certificate on some RPCs of a port only,
    hence the two ports: the client port (C{listen}) serves the client RPCs
    and refuses the peer ones, the cluster port (C{peerListen}) the other
    way round, and both the operator's views (L{servicers.PEER_RPCS},
    L{servicers.OPERATOR_RPCS}).  Without C{peerListen}, one port serves
    everything.  On both, no address holds more than
    C{connectionsPerAddress} connections (L{AddressCap}).

    C{register(server, openStreams)} adds the servicers, once per port (a
    L{servicers.Port}, which says which RPCs it serves); C{services} names
    them (full names, such as C{snstwist.Router}) for server reflection,
    which every port offers beside the health service.  The gRPC servers
    are created in C{startService}, never earlier: twistd may fork to
    daemonize after makeService, and a fork after gRPC's threads exist
    leaves a server that accepts but never answers.
    """

    grace = 1.0

    def __init__(self, listen, register, services=(), name="grpc", tls=DEFAULT,
                 peerListen=None, reactor=None,
                 connectionsPerAddress=MAX_CONNECTIONS_PER_ADDRESS):
        self.listen = listen
        self.peerListen = peerListen
        self.register = register
        self.services = tuple(services)
        self.name = name
        self.tls = tls
        self.port = None
        self.peerPort = None
        self.server = None
        self.peerServer = None
        self.openStreams = set()
        self.health = None
        self.reactor = reactor
        self.connectionsPerAddress = connectionsPerAddress
        self.addressCap = None

    @property
    def address(self):
        """Where clients reach us: the listening host, or our name if it is a wildcard."""
        return _reach(self.listen, self.port)

    @property
    def peerAddress(self):
        """Where the cluster's processes reach us: the cluster port, if we have one."""
        if self.peerListen is None:
            return self.address
        return _reach(self.peerListen, self.peerPort)

    def startService(self):
        Service.startService(self)
        tls = defaultTLS() if self.tls is DEFAULT else self.tls
        self.health = health.aio.HealthServicer()
        if self.peerListen is None:
            self.server, self.port = self._serve(self.listen, BOTH, tls)
            starts = [self.server.start()]
        else:
            self.server, self.port = self._serve(self.listen, CLIENTS, tls)
            self.peerServer, self.peerPort = self._serve(self.peerListen, PEERS, tls)
            starts = [self.server.start(), self.peerServer.start()]
        self.started = deferredFromAwaitable(asyncio.gather(*starts))
        if self.reactor is None:
            from twisted.internet import reactor as theReactor
            self.reactor = theReactor
        self.addressCap = AddressCap(self.reactor, [p for p in (self.port, self.peerPort) if p],
                                     self.connectionsPerAddress)
        self.addressCap.start()
        self.started.addCallback(lambda _: self.setHealth(True))
        self.started.addErrback(lambda f: log.failure("gRPC server failed to start", f))
        if self.peerListen is None:
            log.info("gRPC listening on {address}", address=self.address)
        else:
            log.info("gRPC listening on {address}, cluster port {peer} (mutual TLS)",
                     address=self.address, peer=self.peerAddress)

    def _serve(self, listen, kind, tls):
        server = grpc.aio.server(options=SERVER_OPTIONS)
        self.register(Port(server, kind), self.openStreams)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            self.services + (health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        if tls is None:
            log.warn("serving WITHOUT TLS on {listen}: everything travels in clear",
                     listen=listen)
            return server, server.add_insecure_port(listen)
        credentials = tls.serverCredentials(requireClientCertificate=kind == PEERS)
        return server, server.add_secure_port(listen, credentials)

    def setHealth(self, serving):
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        return deferredFromAwaitable(self.health.set("", status))

    def stopService(self):
        Service.stopService(self)
        if self.addressCap is not None:
            self.addressCap.stop()
            self.addressCap = None
        # Open bidi streams would hold the stop for the whole grace period:
        # end them first.
        for stream in list(self.openStreams):
            stream.close()
        servers = [s for s in (self.server, self.peerServer) if s is not None]
        self.server = self.peerServer = None
        if not servers:
            return None
        return deferredFromAwaitable(asyncio.gather(*(s.stop(self.grace) for s in servers)))


def _reach(listen, port):
    host = listen.rsplit(":", 1)[0]
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = socket.gethostname()
    return "%s:%d" % (host, port)
