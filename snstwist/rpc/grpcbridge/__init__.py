"""
The only place where ``grpc.aio`` meets Twisted.

grpc's asyncio API runs on the asyncio event loop that Twisted's asyncio
reactor drives, so both share one thread and one loop.  This package
converts at the boundary:

- outgoing unary calls come back as Deferreds (L{call}; L{calls});
- outgoing and incoming bidirectional streams are presented to Twisted code as
  a L{Stream} transport plus a protocol object with C{makeConnection},
  C{messageReceived} and C{connectionLost}, like any Twisted protocol
  (L{streams}; L{links} for the ones that reconnect by themselves);
- servicer methods are plain functions that may return Deferreds
  (L{Servicer}; L{servicers}); domain errors become gRPC statuses through
  L{errors}, and L{GrpcServerService} (L{servers}) serves them;
- channels carry our bounds and TLS (L{channels});
- a failed call (unary or stream) arrives as an L{errors.RemoteError}
  carrying its L{errors.Status}, never as grpc's own exception.

Nothing here blocks, and nothing above this package touches an asyncio
future, a grpc call object or a grpc exception.  The rest of the code uses
the names below, from here.
"""

import os

from snstwist.rpc.grpcbridge.calls import (
    awaitDeferred,
    call,
    closeChannel,
    deferredFromAwaitable,
    describe,
    remoteError,
    statusOf,
)
from snstwist.rpc.grpcbridge.channels import (
    CHANNEL_OPTIONS,
    CLUSTER_NAME,
    TLS,
    channel,
    defaultTLS,
    useTLS,
)
from snstwist.rpc.grpcbridge.links import ReconnectingLink
from snstwist.rpc.grpcbridge.servers import SERVER_OPTIONS, GrpcServerService
from snstwist.rpc.grpcbridge.servicers import (
    OPERATOR_RPCS,
    PEER_RPCS,
    CallContext,
    Port,
    Servicer,
)
from snstwist.rpc.grpcbridge.streams import Stream, openStream

SECRET_METADATA = "x-sns-secret"
SESSION_METADATA = "x-sns-session"

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

__all__ = [
    "CHANNEL_OPTIONS", "CLUSTER_NAME", "OPERATOR_RPCS", "PEER_RPCS", "SECRET_METADATA",
    "SERVER_OPTIONS", "SESSION_METADATA", "TLS", "CallContext", "GrpcServerService", "Port",
    "ReconnectingLink", "Servicer", "Stream", "awaitDeferred", "call", "channel", "closeChannel",
    "defaultTLS", "deferredFromAwaitable", "describe", "openStream", "remoteError", "statusOf",
    "useTLS",
]
