"""
The only place where ``grpc.aio`` meets Twisted.

grpc's asyncio API runs on the asyncio event loop that Twisted's asyncio
reactor drives, so both share one thread and one loop.  This module converts
at the boundary:

- outgoing unary calls come back as Deferreds (L{call});
- outgoing and incoming bidirectional streams are presented to Twisted code as
  a L{Stream} transport plus a protocol object with C{makeConnection},
  C{messageReceived} and C{connectionLost}, like any Twisted protocol;
- servicer methods are plain functions that may return Deferreds
  (L{Servicer}); domain errors become gRPC statuses through L{errors};
- a failed call (unary or stream) arrives as an L{errors.RemoteError}
  carrying its L{errors.Status}, never as grpc's own exception.

Nothing here blocks, and nothing above this module touches an asyncio future,
a grpc call object or a grpc exception.
"""

import asyncio
import os
import socket

import attrs
import grpc
import grpc.aio
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.core import errors, metrics

# Both ends of every channel set the largest message: limits.py derives the
# bounds on every field from it, so that any update accepted fits in one.
from snstwist.core.limits import IDLE_CONNECTION_SECONDS, MAX_CONNECTIONS, MAX_MESSAGE_BYTES
from snstwist.rpc.heartbeat import Heartbeat

log = Logger()

SECRET_METADATA = "x-sns-secret"
SESSION_METADATA = "x-sns-session"

_CHANNEL_OPTIONS = [
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

_SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Without this a second server binds the same port and steals half of
    # the connections.
    ("grpc.so_reuseport", 0),
    # Connections are bounded (limits.py): in all, and in time when idle.
    ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS),
    ("grpc.max_connection_idle_ms", IDLE_CONNECTION_SECONDS * 1000),
]

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")


def remoteError(e):
    """The L{errors.RemoteError} saying what the failed call C{e} (an AioRpcError) said."""
    return errors.RemoteError(errors.Status[e.code().name], e.details() or "")


def _mapErrors(failure):
    failure.trap(asyncio.CancelledError, grpc.aio.AioRpcError)
    if failure.check(grpc.aio.AioRpcError):
        return Failure(remoteError(failure.value))
    return Failure(defer.CancelledError())


def deferredFromAwaitable(awaitable):
    """
    Run an awaitable on the shared loop and return a Deferred of its result.

    Cancelling the Deferred cancels the task (and so the RPC), and an
    C{asyncio.CancelledError} arrives as L{defer.CancelledError}, so that
    C{addTimeout} reports a C{TimeoutError} as usual.  A failed RPC arrives
    as an L{errors.RemoteError}.
    """
    d = defer.Deferred.fromFuture(asyncio.ensure_future(awaitable))
    d.addErrback(_mapErrors)
    return d


async def awaitDeferred(d):
    """Await a Deferred from inside a grpc.aio coroutine."""
    return await d.asFuture(asyncio.get_running_loop())


# Every certificate of a cluster's processes names this, and every channel
# checks it instead of a host name: the cluster's own CA is what is trusted,
# and it signs nothing but the cluster's processes.
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

    def serverCredentials(self):
        if self.cert is None or self.key is None:
            raise ValueError("serving TLS needs a certificate and its key")
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca)


_DEFAULT = object()
_tls = [_DEFAULT]


def useTLS(tls):
    """
    The TLS of every channel and server of this process that is not given
    its own: a L{TLS}, or None for plain text.  Until this is called, it is
    L{TLS.fromEnvironment}.
    """
    _tls[0] = tls


def defaultTLS():
    if _tls[0] is _DEFAULT:
        _tls[0] = TLS.fromEnvironment()
    return _tls[0]


def channel(address, tls=_DEFAULT):
    """
    A channel to C{address} with our bounds and quick reconnects: TLS,
    checking the cluster's CA, unless C{tls} (or the process's default) is
    None.
    """
    tls = defaultTLS() if tls is _DEFAULT else tls
    if tls is None:
        return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(
        address, tls.channelCredentials(),
        options=_CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", CLUSTER_NAME)])


def closeChannel(ch):
    """Close a channel; the Deferred fires when it is closed."""
    return deferredFromAwaitable(ch.close(None))


def call(method, request, timeout=None, metadata=None):
    """
    Make a unary call.  The Deferred fires with the reply, or fails with
    L{errors.RemoteError}.
    """
    return deferredFromAwaitable(method(request, timeout=timeout, metadata=metadata))


def statusOf(failure):
    """The L{errors.Status} of a failed call, or None if it was not an RPC error."""
    if failure.check(errors.RemoteError):
        return failure.value.status
    return None


def describe(failure):
    """Why a call or a stream failed, in a few words: its status and message."""
    if failure.check(errors.RemoteError):
        return "%s: %s" % (failure.value.status.name, failure.value.message)
    if failure.check(defer.CancelledError):
        return "cancelled (by us: no heartbeat, or stopping)"
    return failure.getErrorMessage()


_END = object()


class Stream:
    """
    Our side of one bidirectional stream: a bounded outgoing queue.

    C{send} never blocks.  When more than C{maxQueue} messages are waiting
    for a slow peer, the stream is aborted (the peer is cut off rather than
    allowed to grow our memory) and C{send} returns False.
    """

    def __init__(self, maxQueue=1000):
        self._queue = asyncio.Queue()
        self._maxQueue = maxQueue
        self._ended = False
        self._abort = None
        self._drained = []
        self.metadata = {}
        self.peer = None

    def drained(self, below):
        """
        A Deferred that fires once at most C{below} messages are waiting:
        the peer has taken the rest (gRPC hands a message to the transport
        only as the peer's flow-control window allows).  How a sender paces
        itself to its reader.  It never fires if the stream ends first.
        """
        if self._queue.qsize() <= below:
            return defer.succeed(None)
        d = defer.Deferred()
        self._drained.append((below, d))
        return d

    def _taken(self):
        if self._drained:
            size = self._queue.qsize()
            ready = [(n, d) for n, d in self._drained if size <= n]
            if ready:
                self._drained = [w for w in self._drained if w[0] < size]
                for _, d in ready:
                    d.callback(None)

    def send(self, message):
        if self._ended:
            return False
        if self._queue.qsize() >= self._maxQueue:
            log.warn("cutting off slow peer {peer}: {n} messages queued",
                     peer=self.peer, n=self._queue.qsize())
            self.abort()
            return False
        self._queue.put_nowait(message)
        return True

    def close(self):
        """Finish our side once everything queued has been sent."""
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_END)

    def abort(self, reason=None):
        """
        Tear the stream down now, dropping anything queued.  On a server's
        stream, C{reason} (an L{errors.SNSError}) is the status the peer
        gets; ABORTED without one.
        """
        self._ended = True
        self._drained = []
        if self._abort is not None:
            self._abort(reason)

    @property
    def pending(self):
        return self._queue.qsize()

    async def _outgoing(self):
        while True:
            message = await self._queue.get()
            if message is _END:
                self._drained = []
                return
            self._taken()
            yield message


class _Garbage:
    """What a request that is not a valid message of its type arrives as."""

    def __init__(self, messageClass):
        self.error = errors.InvalidRequest(
            "the request is not a valid %s message" % (messageClass.DESCRIPTOR.name,))


def _lenient(messageClass):
    """
    A request deserializer that never raises: grpc would answer UNKNOWN,
    with a protobuf exception's name, for bytes that do not parse.  The
    handler answers a L{_Garbage} with INVALID_ARGUMENT instead.
    """
    def deserialize(data):
        try:
            return messageClass.FromString(data)
        except Exception:
            return _Garbage(messageClass)

    return deserialize


async def _pump(messages, protocol):
    async for message in messages:
        if isinstance(message, _Garbage):
            raise message.error
        protocol.messageReceived(message)


def _lost(protocol, reason):
    try:
        protocol.connectionLost(reason)
    except Exception:
        log.failure("connectionLost raised")


def openStream(method, protocol, metadata=None, maxQueue=1000):
    """
    Open a client-side bidi stream with C{method} (a stub's multicallable) and
    connect C{protocol} to it.  C{protocol.connectionLost(reason)} is called
    exactly once: with None when the server ended the stream cleanly, or with
    a Failure (L{errors.RemoteError}, L{defer.CancelledError}).
    """
    stream = Stream(maxQueue)
    grpcCall = method(stream._outgoing(), metadata=metadata)

    async def run():
        reason = None
        try:
            await _pump(grpcCall, protocol)
        except asyncio.CancelledError:
            reason = Failure(defer.CancelledError())
        except grpc.aio.AioRpcError as e:
            reason = Failure(remoteError(e))
        except BaseException:
            reason = Failure()
        finally:
            # End our outgoing side too: grpc's task consuming it is not
            # cancelled when the call ended first, and would wait forever.
            stream.close()
            grpcCall.cancel()
            _lost(protocol, reason)

    task = asyncio.ensure_future(run())
    # A client can not send a status: the reason is only the server's.
    stream._abort = lambda reason=None: task.cancel()
    protocol.makeConnection(stream)
    return stream


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
        if isinstance(request, _Garbage):
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
        # message for them (grpc refuses that batch: TOO_MANY_OPERATIONS).
        await context.send_initial_metadata(())
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
                    await _pump(requests, protocol)
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
            _lost(protocol, reason)

    return handler


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
        on C{server}, with request deserializers that answer bytes that do
        not parse with INVALID_ARGUMENT.
        """
        handlers = {}
        for method in service.methods:
            request = message_factory.GetMessageClass(method.input_type)
            reply = message_factory.GetMessageClass(method.output_type)
            make = (grpc.stream_stream_rpc_method_handler if method.client_streaming
                    else grpc.unary_unary_rpc_method_handler)
            handlers[method.name] = make(getattr(self, method.name),
                                         request_deserializer=_lenient(request),
                                         response_serializer=reply.SerializeToString)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service.full_name, handlers),))


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

    def __init__(self, listen, register, services=(), name="grpc", tls=_DEFAULT):
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
        self.server = grpc.aio.server(options=_SERVER_OPTIONS)
        self.register(self.server, self.openStreams)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            self.services + (health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        tls = defaultTLS() if self.tls is _DEFAULT else self.tls
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


class ReconnectingLink:
    """
    A client-side bidi stream to one address, opened again with backoff
    whenever it breaks, until L{stop}; with heartbeats and a deadline.

    Subclasses say which RPC (C{method(channel)}) and fill in the hooks:
    C{connected()} (say hello), C{beat()} (a heartbeat), C{received(message)},
    C{disconnected(reason)}.  C{clock}, C{interval}, C{timeout} and
    C{metadata} are theirs to set.
    """

    minDelay = 0.05
    maxDelay = 1.0
    maxQueue = 1000
    metadata = None

    channel = None
    stream = None
    beats = None
    retry = None
    stopped = False
    delay = minDelay

    def start(self):
        self.channel = channel(self.address)
        self._connect()

    def _connect(self):
        self.retry = None
        if not self.stopped:
            openStream(self.method(self.channel), self, metadata=self.metadata,
                       maxQueue=self.maxQueue)

    def makeConnection(self, stream):
        self.stream = stream
        self.beats = Heartbeat(self.clock, self.interval, self.timeout, self.beat, self._silent)
        self.connected()

    def _silent(self, seconds):
        log.warn("{address} silent for {s:.1f}s: reconnecting", address=self.address, s=seconds)
        self.stream.abort()

    def messageReceived(self, message):
        if self.beats is not None:
            self.beats.heard()
        if self.delay != self.minDelay:
            log.info("back in touch with {address}", address=self.address)
            self.delay = self.minDelay
        self.received(message)

    def send(self, message):
        if self.stream is not None:
            self.stream.send(message)

    def disconnected(self, reason):
        """The stream broke or ended (a hook)."""

    def connectionLost(self, reason):
        if self.beats is not None:
            self.beats.stop()
        self.stream = None
        self.disconnected(reason)
        if self.stopped:
            return
        if self.delay == self.minDelay:
            log.info("stream to {address} lost ({why}); reconnecting",
                     address=self.address,
                     why=reason.getErrorMessage() if reason else "ended")
        self.retry = self.clock.callLater(self.delay, self._connect)
        self.delay = min(self.delay * 2, self.maxDelay)

    def stop(self, graceful=False):
        """Stop for good: end the stream (after what is queued, if C{graceful})."""
        self.stopped = True
        if self.retry is not None and self.retry.active():
            self.retry.cancel()
        if self.stream is not None:
            self.stream.close() if graceful else self.stream.abort()
        if self.channel is not None:
            return closeChannel(self.channel)
        return defer.succeed(None)
