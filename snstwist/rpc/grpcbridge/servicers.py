"""
Servicers built from Twisted-side functions: unary handlers that may return
Deferreds, stream handlers that connect a protocol to a L{Stream}, and domain
errors answered with their gRPC status.
"""

import asyncio

import grpc
import grpc.aio
from google.protobuf import message_factory
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.core import errors, metrics
from snstwist.rpc.grpcbridge.calls import awaitDeferred
from snstwist.rpc.grpcbridge.streams import ACCEPTED, Garbage, Stream, lenient, lost, pump

log = Logger()

# What a port serves, when a process has a client port and a cluster port
# (L{servers.GrpcServerService}): the cluster's own RPCs go to the cluster
# port only, where every caller shows a certificate of the cluster's CA; the
# operator's views go to both (they need the cluster secret); the rest, the
# client RPCs, to the client port only.
CLIENTS, PEERS, BOTH = "client", "cluster", "both"

PEER_RPCS = frozenset({
    "snstwist.Router/Bidirectional_r_and_s",
    "snstwist.Cluster/BroadcastPosts",
    "snstwist.Cluster/BuddyConnection",
    "snstwist.Cluster/Onetime_s_to_buddy",
})
OPERATOR_RPCS = frozenset({"snstwist.Router/Status", "snstwist.Cluster/Digest"})


class Port:
    """
    One listening port of a process's gRPC servers: the grpc server (whose
    methods it forwards) and C{kind}, which says what it serves.
    """

    def __init__(self, server, kind=BOTH):
        self.server = server
        self.kind = kind

    def __getattr__(self, name):
        return getattr(self.server, name)

    def refusal(self, method):
        """Why this port does not serve C{method} (C{service/Method}), or None."""
        if self.kind == BOTH or method in OPERATOR_RPCS:
            return None
        if self.kind == CLIENTS and method in PEER_RPCS:
            return ("%s is served on the cluster port only, to a certificate of the"
                    " cluster's CA" % (method,))
        if self.kind == PEERS and method not in PEER_RPCS:
            return "%s is served on the client port, not the cluster port" % (method,)
        return None


def _refused(name, message):
    async def handler(request, context):
        _count(name, grpc.StatusCode.PERMISSION_DENIED)
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    return handler

class CallContext:
    """What a servicer function may know of its call: metadata and peer."""

    def __init__(self, context):
        self._context = context
        self.metadata = dict(context.invocation_metadata() or ())
        self.peer = context.peer()


def _abortWith(context, exc):
    status, message = errors.statusFor(exc)
    return context.abort(grpc.StatusCode[status.name], message)


async def _endAborted(context, reason=None):
    if reason is None:
        code, message = grpc.StatusCode.ABORTED, "stream aborted by the server"
    else:
        status, message = errors.statusFor(reason)
        code = grpc.StatusCode[status.name]
    try:
        await context.abort(code, message)
    except (grpc.aio.AbortError, grpc.aio.UsageError):
        pass  # abort raises once the status is out; or it was already sent
    except Exception as e:
        # The peer cancelled the call first: there is nobody to tell.
        log.debug("aborted stream had already ended: {e}", e=e)


def _count(name, code):
    metrics.rpcs.labels(name, code.name).inc()


def _unaryHandler(name, function):
    async def handler(request, context):
        if isinstance(request, Garbage):
            _count(name, errors.statusFor(request.error)[0])
            await _abortWith(context, request.error)
        ctx = CallContext(context)
        try:
            result = await awaitDeferred(defer.maybeDeferred(function, request, ctx))
        except errors.SNSError as e:
            if isinstance(e, errors.RemoteError):
                # Another process's failure is not an answer to this call.
                log.failure("unexpected error in {name}", name=function.__name__)
            _count(name, errors.statusFor(e)[0])
            await _abortWith(context, e)
        except asyncio.CancelledError:
            _count(name, grpc.StatusCode.CANCELLED)
            raise
        except Exception:
            log.failure("unexpected error in {name}", name=function.__name__)
            _count(name, grpc.StatusCode.INTERNAL)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        _count(name, grpc.StatusCode.OK)
        return result

    return handler


def _streamHandler(name, factory, openStreams, maxQueue):
    async def handler(requests, context):
        ctx = CallContext(context)
        stream = Stream(maxQueue)
        stream.metadata = ctx.metadata
        stream.peer = ctx.peer
        try:
            protocol = factory(ctx)
        except errors.SNSError as e:
            _count(name, errors.statusFor(e)[0])
            await _abortWith(context, e)
            return
        # Headers go now, so that an abort's status never races a first
        # message for them (grpc refuses that batch: TOO_MANY_OPERATIONS),
        # and say that the stream is accepted: the client writes only then.
        await context.send_initial_metadata(ACCEPTED)
        reader = None
        reason = None
        refused = []
        me = asyncio.current_task()

        def abort(reason=None):
            # grpc sends no status for a cancelled handler, so the peer would
            # wait on a dead stream: end the call with a status as well.
            if not context.done():
                asyncio.ensure_future(_endAborted(context, reason))
            me.cancel()

        stream._abort = abort
        openStreams.add(stream)
        try:
            protocol.makeConnection(stream)

            async def read():
                try:
                    await pump(requests, protocol)
                except errors.SNSError as e:
                    # A message we refuse (garbage): end the stream with its
                    # status once what is queued has gone.
                    refused.append(e)
                    raise
                finally:
                    # The client finished (or broke) its side: end ours.
                    stream.close()

            reader = asyncio.ensure_future(read())
            async for message in stream._outgoing():
                yield message
            if reader.done() and not reader.cancelled() and reader.exception():
                reason = Failure(reader.exception())
            if stream.ending is not None:
                refused.append(stream.ending)
            if refused:
                await _abortWith(context, refused[0])
        except asyncio.CancelledError:
            reason = Failure(defer.CancelledError())
            raise
        except BaseException:
            reason = Failure()
            raise
        finally:
            # A stream counts once, when it ends: OK when both sides
            # finished, CANCELLED when it was torn down.
            _count(name, errors.statusFor(refused[0])[0] if refused
                   else grpc.StatusCode.OK if reason is None else grpc.StatusCode.CANCELLED)
            openStreams.discard(stream)
            stream._ended = True
            stream._abort = None
            if reader is not None:
                reader.cancel()
            lost(protocol, reason)

    return handler


def encoder(messageClass):
    """
    The response serializer of a method replying with C{messageClass}: a
    message is encoded, bytes (a message encoded already) go as they are.
    What many streams send alike (a post pushed to each of its followers'
    sessions) is encoded once, not once per stream.
    """
    serialize = messageClass.SerializeToString

    def encode(message):
        return message if isinstance(message, bytes) else serialize(message)

    return encode


class Servicer:
    """
    A grpc.aio servicer built from Twisted-side functions.

    C{unary} maps method names to C{function(request, callContext)} returning
    a reply or a Deferred of one; C{streams} maps bidi method names to
    C{factory(callContext)} returning a stream protocol.  Either may raise
    L{errors.SNSError}, which is answered with its gRPC status.
    """

    def __init__(self, unary=None, streams=None, openStreams=None, maxQueue=1000):
        self.openStreams = openStreams if openStreams is not None else set()
        for name, function in (unary or {}).items():
            setattr(self, name, _unaryHandler(name, function))
        for name, factory in (streams or {}).items():
            setattr(self, name, _streamHandler(name, factory, self.openStreams, maxQueue))

    def register(self, server, service):
        """
        Serve the methods of C{service} (a service descriptor of the proto)
        on C{server} (a L{Port}), with request deserializers that answer
        bytes that do not parse with INVALID_ARGUMENT.  A method the port
        does not serve is answered PERMISSION_DENIED, saying which port
        does.
        """
        handlers = {}
        for method in service.methods:
            request = message_factory.GetMessageClass(method.input_type)
            reply = message_factory.GetMessageClass(method.output_type)
            make = (grpc.stream_stream_rpc_method_handler if method.client_streaming
                    else grpc.unary_unary_rpc_method_handler)
            why = server.refusal("%s/%s" % (service.full_name, method.name))
            function = (getattr(self, method.name) if why is None
                        else _refused(method.name, why))
            handlers[method.name] = make(function,
                                         request_deserializer=lenient(request),
                                         response_serializer=encoder(reply))
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),))
