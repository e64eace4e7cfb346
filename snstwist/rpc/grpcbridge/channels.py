"""
Channels: our bounds, quick reconnects, and TLS checking the cluster's CA.
"""

import os

import attrs
import grpc
import grpc.aio

# Both ends of every channel set the largest message: limits.py derives the
# bounds on every field from it, so that any update accepted fits in one.
from snstwist.core.limits import MAX_MESSAGE_BYTES

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A respawned server is reached within about 100 ms (gRPC's floor for
    # the first backoff) instead of the default one second.  Not
    # grpc.min_reconnect_backoff_ms: gRPC also uses it as the time a
    # connection attempt is given, and at 100 ms a busy machine fails
    # handshakes that are merely slow.
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.enable_retries", 0),
]


# Every certificate of a cluster's processes names this, and every channel
# checks it instead of the host it dials: the cluster's own CA is what is
# trusted, and it signs nothing but the cluster's processes, so a certificate
# proves "a process of this cluster"; the addresses dialled come from the
# router (a wildcard listener's host name, a namespace's address), not from
# a name a person typed.  (docs/design.md, "Ports and TLS".)
CLUSTER_NAME = "snstwist"


@attrs.frozen
class TLS:
    """
    The cluster's CA (PEM), and this process's certificate and key (PEM),
    which clients do not have.  C{load} reads them from files.
    """

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def load(cls, ca, cert=None, key=None):
        def read(path):
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        return cls(read(ca), read(cert), read(key))

    @classmethod
    def fromEnvironment(cls, environ=None):
        """From $SNS_TLS_CA (and $SNS_TLS_CERT, $SNS_TLS_KEY), or None."""
        environ = os.environ if environ is None else environ
        if not environ.get("SNS_TLS_CA"):
            return None
        return cls.load(environ["SNS_TLS_CA"], environ.get("SNS_TLS_CERT") or None,
                        environ.get("SNS_TLS_KEY") or None)

    def channelCredentials(self):
        # A process of the cluster shows its certificate when it calls.
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

    def serverCredentials(self, requireClientCertificate=False):
        """
        What a port serves TLS with; with C{requireClientCertificate}, the
        handshake fails unless the caller shows a certificate of our CA.
        """
        if self.cert is None or self.key is None:
            raise ValueError("serving TLS needs a certificate and its key")
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=requireClientCertificate)


DEFAULT = object()
_tls = [DEFAULT]


def useTLS(tls):
    """
    The TLS of every channel and server of this process that is not given
    its own: a L{TLS}, or None for plain text.  Until this is called, it is
    L{TLS.fromEnvironment}.
    """
    _tls[0] = tls


def defaultTLS():
    if _tls[0] is DEFAULT:
        _tls[0] = TLS.fromEnvironment()
    return _tls[0]


def channel(address, tls=DEFAULT):
    """
    A channel to C{address} with our bounds and quick reconnects: TLS,
    checking the cluster's CA, unless C{tls} (or the process's default) is
    None.
    """
    tls = defaultTLS() if tls is DEFAULT else tls
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(
        address, tls.channelCredentials(),
        options=CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", CLUSTER_NAME)])
