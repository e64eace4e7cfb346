"""
The gRPC server of a process, as a Twisted service.
"""

import socket

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from twisted.application.service import Service
from twisted.logger import Logger

from snstwist.core.limits import IDLE_CONNECTION_SECONDS, MAX_CONNECTIONS, MAX_MESSAGE_BYTES
from snstwist.rpc.grpcbridge.calls import deferredFromAwaitable
from snstwist.rpc.grpcbridge.channels import DEFAULT, defaultTLS

log = Logger()

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Without this a second server binds the same port and steals half of
    # the connections.
    ("grpc.so_reuseport", 0),
    # Connections are bounded (limits.py): in all, and in time when idle.
    ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS),
    ("grpc.max_connection_idle_ms", IDLE_CONNECTION_SECONDS * 1000),
]


class GrpcServerService(Service):
    """
    Serve gRPC on C{listen} while this service runs.

    C{register(server, openStreams)} adds the servicers; C{services} names
    them (full names, such as C{snstwist.Router}) for server reflection,
    which every server offers beside the health service.  The gRPC server is
    created in C{startService}, never earlier: twistd may fork to daemonize
    after makeService, and a fork after gRPC's threads exist leaves a server
    that accepts but never answers.
    """

    grace = 1.0

    def __init__(self, listen, register, services=(), name="grpc", tls=DEFAULT):
        self.listen = listen
        self.register = register
        self.services = tuple(services)
        self.name = name
        self.tls = tls
        self.port = None
        self.server = None
        self.openStreams = set()
        self.health = None

    @property
    def address(self):
        """Where others reach us: the listening host, or our name if it is a wildcard."""
        host = self.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", "::", ""):
            host = socket.gethostname()
        return "%s:%d" % (host, self.port)

    def startService(self):
        Service.startService(self)
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        self.register(self.server, self.openStreams)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            self.services + (health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        tls = defaultTLS() if self.tls is DEFAULT else self.tls
        if tls is None:
            log.warn("serving WITHOUT TLS on {listen}: everything travels in clear",
                     listen=self.listen)
            self.port = self.server.add_insecure_port(self.listen)
        else:
            self.port = self.server.add_secure_port(self.listen, tls.serverCredentials())
        self.started = deferredFromAwaitable(self.server.start())
        self.started.addCallback(lambda _: self.setHealth(True))
        self.started.addErrback(lambda f: log.failure("gRPC server failed to start", f))
        log.info("gRPC listening on {address}", address=self.address)

    def setHealth(self, serving):
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        return deferredFromAwaitable(self.health.set("", status))

    def stopService(self):
        Service.stopService(self)
        # Open bidi streams would hold the stop for the whole grace period:
        # end them first.
        for stream in list(self.openStreams):
            stream.close()
        server, self.server = self.server, None
        if server is None:
            return None
        return deferredFromAwaitable(server.stop(self.grace))
