"""
Server-Sent Events: a response kept open, one C{event:}/C{data:} block per
message, until the browser goes away.

Streams are bounded: a L{Streams} set refuses a new stream past its limit
(the browser's EventSource then retries later), and a stream whose browser
does not read is dropped once its transport buffers more than
L{MAX_BUFFERED} bytes.  One keep-alive timer serves every stream of a set.
"""

import json

from twisted.application.internet import TimerService
from twisted.logger import Logger

log = Logger()

KEEPALIVE = 15.0
MAX_BUFFERED = 1 << 20
RETRY_MS = 500


class TooManyStreams(Exception):
    """A new live stream would pass the bound."""


def encode(kind, data):
    """One event: C{kind} and C{data} (JSON on one line, so one data: line)."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
    return ("event: %s\ndata: %s\n\n" % (kind, body)).encode("ascii")


class EventStream:
    """One open C{text/event-stream} response."""

    def __init__(self, request, owners):
        self.request = request
        self.owners = owners
        self.open = True
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b"retry: %d\n\n" % (RETRY_MS,))
        request.notifyFinish().addBoth(self._gone)

    def send(self, kind, data):
        self.sendRaw(encode(kind, data))

    def sendRaw(self, chunk):
        if not self.open:
            return
        transport = self.request.channel.transport if self.request.channel else None
        buffered = getattr(transport, "_tempDataLen", 0) if transport is not None else 0
        if buffered > MAX_BUFFERED:
            log.info("dropping a live stream whose browser does not read")
            self.close()
            return
        self.request.write(chunk)

    def close(self):
        if self.open:
            self._gone(None)
            self.request.finish()

    def _gone(self, _):
        # The browser closed the page (or we finished the response).
        self.open = False
        for owner in self.owners:
            owner.discard(self)


class Streams(TimerService):
    """
    A bounded set of live streams, with one keep-alive timer for all of
    them (a comment line every L{KEEPALIVE} seconds keeps proxies and
    browsers from timing an idle stream out).
    """

    def __init__(self, limit, clock=None):
        TimerService.__init__(self, KEEPALIVE, self._keepAlive)
        if clock is not None:
            self.clock = clock
        self.limit = limit
        self.streams = set()

    def __len__(self):
        return len(self.streams)

    def open(self, request, mine=None, mineLimit=0):
        """
        A new stream on C{request}, counted here and, if given, in the set
        C{mine} too (a person's own streams, at most C{mineLimit}).
        """
        if len(self.streams) >= self.limit:
            raise TooManyStreams("%d live streams open already" % (len(self.streams),))
        if mine is not None and len(mine) >= mineLimit:
            raise TooManyStreams("%d live streams of yours open already" % (len(mine),))
        stream = EventStream(request, [self] + ([mine] if mine is not None else []))
        self.streams.add(stream)
        if mine is not None:
            mine.add(stream)
        return stream

    def discard(self, stream):
        self.streams.discard(stream)

    def send(self, kind, data):
        chunk = encode(kind, data)
        for stream in list(self.streams):
            stream.sendRaw(chunk)

    def closeAll(self):
        for stream in list(self.streams):
            stream.close()

    def _keepAlive(self):
        for stream in list(self.streams):
            stream.sendRaw(b": keep-alive\n\n")

    def stopService(self):
        self.closeAll()
        return TimerService.stopService(self)
