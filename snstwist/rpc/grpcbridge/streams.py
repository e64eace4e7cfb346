"""
Bidirectional streams as a Twisted transport (L{Stream}) and protocol, on
the client's side (L{openStream}); the server's side is in L{servicers}.
"""

import asyncio

import grpc.aio
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.core import errors
from snstwist.rpc.grpcbridge.calls import remoteError

log = Logger()

# The header with which a servicer of ours accepts a stream (a refusal is a
# status without it).
ACCEPTED = (("x-sns-stream", "accepted"),)

_END = object()


class _Ending:
    """In the queue: end the stream here, with C{reason}'s status."""

    def __init__(self, reason):
        self.reason = reason


class _Gathering:
    """In the queue: one message of C{kind}, built from C{items} when it is taken to be sent."""

    __slots__ = ("kind", "build", "items")

    def __init__(self, kind, build):
        self.kind = kind
        self.build = build
        self.items = []


class Stream:
    """
    Our side of one bidirectional stream: a bounded outgoing queue.

    C{send} and C{gather} never block.  When more than C{maxQueue} messages
    are waiting for a slow peer, the stream is aborted (the peer is cut off
    rather than allowed to grow our memory) and they return False.
    """

    def __init__(self, maxQueue=1000):
        self._queue = asyncio.Queue()
        self._maxQueue = maxQueue
        self._tail = None  # the last message queued, until it is taken
        self._ended = False
        self._abort = None
        self.ending = None  # the reason a server's stream ends with (L{end})
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
        """
        Queue C{message} (or, on a server's stream, its encoding: bytes,
        sent as they are) for the peer.  False if the stream has ended or
        its queue is full (the peer is cut off).
        """
        if self._ended:
            return False
        if self._queue.qsize() >= self._maxQueue:
            log.warn("cutting off slow peer {peer}: {n} messages queued",
                     peer=self.peer, n=self._queue.qsize())
            self.abort()
            return False
        self._queue.put_nowait(message)
        self._tail = message
        return True

    def gather(self, kind, items, build, limit):
        """
        Queue C{items} for the peer in messages of C{kind}, each of at most
        C{limit} items and built (C{build(items)}) only when it is taken to
        be sent: items gathered while the last message queued is one of
        C{kind} not yet taken join it.  An idle stream takes a message on
        the loop's next turn, as soon as a message sent would go; while the
        one before is still being written (or waits for the peer's flow
        control) what comes meanwhile leaves in one message, not one each.
        Only the last message queued is joined, so messages leave in the
        order they were queued, and each counts against C{maxQueue} as a
        message sent does.  False if the stream has ended or is cut off.
        """
        if self._ended:
            return False
        start, n = 0, len(items)
        while start < n:
            tail = self._tail
            if type(tail) is not _Gathering or tail.kind != kind or len(tail.items) >= limit:
                tail = _Gathering(kind, build)
                if not self.send(tail):
                    return False
            end = start + limit - len(tail.items)
            tail.items.extend(items[start:end])
            start = end
        return True

    def close(self):
        """Finish our side once everything queued has been sent."""
        if not self._ended:
            self._ended = True
            self._tail = None
            self._queue.put_nowait(_END)

    def end(self, reason, farewell=None):
        """
        End a server's stream with the status of C{reason} (an
        L{errors.SNSError}) once C{farewell}, a message saying why, has
        gone; what else is queued is dropped.  The peer reads the farewell
        before the status, and so knows why even when its gRPC reports the
        end as INTERNAL (a write of its own racing the status: grpc/grpc#36066).
        A peer that reads nothing never gets it: L{abort} then.
        """
        if self._ended:
            return
        self._ended = True
        self._drained = []
        self._tail = None
        while not self._queue.empty():
            self._queue.get_nowait()
        if farewell is not None:
            self._queue.put_nowait(farewell)
        self._queue.put_nowait(_Ending(reason))

    def abort(self, reason=None):
        """
        Tear the stream down now, dropping anything queued.  On a server's
        stream, C{reason} (an L{errors.SNSError}) is the status the peer
        gets; ABORTED without one.
        """
        self._ended = True
        self._drained = []
        self._tail = None
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
            if isinstance(message, _Ending):
                self.ending = message.reason
                return
            if message is self._tail:
                self._tail = None
            self._taken()
            if type(message) is _Gathering:
                message = message.build(message.items)
            yield message


class Garbage:
    """What a request that is not a valid message of its type arrives as."""

    def __init__(self, messageClass):
        self.error = errors.InvalidRequest(
            "the request is not a valid %s message" % (messageClass.DESCRIPTOR.name,))


def lenient(messageClass):
    """
    A request deserializer that never raises: grpc would answer UNKNOWN,
    with a protobuf exception's name, for bytes that do not parse.  The
    handler answers a L{Garbage} with INVALID_ARGUMENT instead.
    """
    def deserialize(data):
        try:
            return messageClass.FromString(data)
        except Exception:
            return Garbage(messageClass)

    return deserialize


async def pump(messages, protocol):
    async for message in messages:
        if isinstance(message, Garbage):
            raise message.error
        protocol.messageReceived(message)


def lost(protocol, reason):
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

    async def outgoing():
        # Nothing is written before the server has accepted the stream: a
        # write that loses the race with a refusal makes grpc report
        # INTERNAL "Internal error from Core" instead of the refusal's own
        # status (grpc/grpc#36066).  Refused, we write nothing and the
        # refusal reaches the protocol as it is.
        if ACCEPTED[0] not in tuple(await grpcCall.initial_metadata() or ()):
            return
        async for message in stream._outgoing():
            yield message

    grpcCall = method(outgoing(), metadata=metadata)

    async def run():
        reason = None
        try:
            await pump(grpcCall, protocol)
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
            lost(protocol, reason)

    task = asyncio.ensure_future(run())
    # A client can not send a status: the reason is only the server's.
    stream._abort = lambda reason=None: task.cancel()
    protocol.makeConnection(stream)
    return stream
