"""
Long client-side streams that reconnect by themselves.
"""

import random

from twisted.internet import defer
from twisted.logger import Logger

from snstwist.core.backoff import backoffPolicy
from snstwist.rpc.grpcbridge.calls import closeChannel
from snstwist.rpc.grpcbridge.channels import channel
from snstwist.rpc.grpcbridge.streams import openStream
from snstwist.rpc.heartbeat import Heartbeat

log = Logger()

class ReconnectingLink:
    """
    A client-side bidi stream to one address, opened again with backoff
    (L{backoffPolicy}: from C{minDelay} to C{maxDelay}, with jitter)
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
    lostInARow = 0  # streams lost without a message between: the backoff's attempt
    jitter = staticmethod(random.random)  # a test makes its runs repeatable with its own

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
        if self.lostInARow:
            log.info("back in touch with {address}", address=self.address)
            self.lostInARow = 0
        self.received(message)

    def send(self, message):
        if self.stream is not None:
            self.stream.send(message)

    def gather(self, kind, items, build, limit):
        """L{Stream.gather} on the stream open now, if one is."""
        if self.stream is not None:
            self.stream.gather(kind, items, build, limit)

    def disconnected(self, reason):
        """The stream broke or ended (a hook)."""

    def connectionLost(self, reason):
        if self.beats is not None:
            self.beats.stop()
        self.stream = None
        self.disconnected(reason)
        if self.stopped:
            return
        if not self.lostInARow:
            log.info("stream to {address} lost ({why}); reconnecting",
                     address=self.address,
                     why=reason.getErrorMessage() if reason else "ended")
        delay = backoffPolicy(self.minDelay, self.maxDelay, jitter=self.jitter)(self.lostInARow)
        self.lostInARow += 1
        self.retry = self.clock.callLater(delay, self._connect)

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
