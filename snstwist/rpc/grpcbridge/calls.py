"""
Calls from Twisted code into grpc.aio, and back: Deferreds from awaitables,
awaitables from Deferreds, and a failed call as an L{errors.RemoteError}.
"""

import asyncio

import grpc.aio
from twisted.internet import defer
from twisted.python.failure import Failure

from snstwist.core import errors

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
