"""
The cluster as the router sees it, for the dashboard: polled from the
router's Status RPC every L{POLL} seconds and pushed to every open dashboard.

Besides the latest status it keeps a short history (L{WINDOW} seconds,
sampled every L{SAMPLE}): acknowledged posts per second (from each server's
count of the posts it acknowledged) and replication lag (updates sent to
peer VMs and not yet acknowledged, summed over the masters), drawn as a
small SVG chart.  The events (deactivation, promotion, respawn, catch-up)
are the router's own, with its times.
"""

import collections

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from snstwist.core import errors
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg

log = Logger()

POLL = 0.25
CALL_TIMEOUT = 1.0
SAMPLE = 1.0
WINDOW = 180
EVENTS_SHOWN = 30
CHART_WIDTH = 600
CHART_HEIGHT = 120


@attrs.frozen
class Sample:
    time: float
    posts: float  # acknowledged posts per second
    lag: int      # updates not yet acknowledged by a peer VM


def path(points, now, top):
    """An SVG path of (time, value) C{points} over the last L{WINDOW} seconds."""
    if not points:
        return ""
    top = top or 1
    out = []
    for t, v in points:
        x = CHART_WIDTH * (1 - (now - t) / WINDOW)
        y = CHART_HEIGHT * (1 - v / top)
        out.append("%s%.1f,%.1f" % ("L" if out else "M", max(0.0, x), y))
    return " ".join(out)


def niceTop(values):
    """The top of a chart's scale: 1, 2 or 5 times a power of ten, at least 1."""
    peak = max(values, default=0)
    scale = 1
    while True:
        for factor in (1, 2, 5):
            if factor * scale >= peak:
                return factor * scale
        scale *= 10


class ClusterWatch(Service):
    """
    Polls the first router that answers; C{publish(snapshot)} gets every
    new snapshot (a dict for JSON); C{watched()} says whether anyone looks.
    """

    def __init__(self, routers, secret, clock, publish=lambda snapshot: None,
                 watched=lambda: True):
        self.routers = list(routers)
        self.watched = watched
        self.secret = secret
        self.clock = clock
        self.publish = publish
        self.status = None
        self.error = "waiting for the router"
        self.router = None
        self.samples = collections.deque(maxlen=int(WINDOW / SAMPLE) + 1)
        self.vms = set()
        self._channels = {}
        self._next = None
        self._lastSample = None

    def startService(self):
        Service.startService(self)
        self._next = self.clock.callLater(0, self._poll)

    def stopService(self):
        Service.stopService(self)
        if self._next is not None and self._next.active():
            self._next.cancel()
        channels, self._channels = self._channels, {}
        return defer.gatherResults([grpcbridge.closeChannel(c) for c in channels.values()],
                                   consumeErrors=True)

    def _poll(self):
        self._next = None
        d = defer.ensureDeferred(self.poll())
        d.addErrback(self._failed)
        d.addBoth(self._again)

    def _failed(self, failure):
        if self.running or not failure.check(defer.CancelledError):
            log.failure("polling the router failed", failure)

    def _again(self, _):
        if self.running:
            # Four times a second while someone watches; once a second (for
            # the chart's history) while nobody does.
            self._next = self.clock.callLater(POLL if self.watched() else SAMPLE, self._poll)

    async def poll(self):
        """Ask the routers, in order, until one answers; publish what it says."""
        problems = []
        for address in self.routers:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = grpcbridge.channel(address)
            try:
                reply = await grpcbridge.call(
                    pbg.RouterStub(channel).Status, pb.StatusRequest(), timeout=CALL_TIMEOUT,
                    metadata=auth.secretMetadata(self.secret) if self.secret else None)
            except errors.RemoteError as e:
                problems.append("%s: %s" % (address, e.message))
                continue
            self.router, self.status, self.error = address, reply, ""
            self._sample(reply)
            self.publish(self.snapshot())
            return
        self.error = "no router answers (%s)" % ("; ".join(problems),)
        self.publish(self.snapshot())

    def _sample(self, reply):
        now = reply.time or self.clock.seconds()
        counts = {s.incarnation: s.acknowledged for s in reply.servers}
        lag = sum(s.pending for s in reply.servers if s.role == pb.MASTER)
        self.vms.update(s.vm for s in reply.servers)
        last = self._lastSample
        if last is None:
            self._lastSample = (now, counts)
            return
        then, before = last
        if now - then < SAMPLE:
            return
        # A new incarnation counts from zero; one gone counts no more.
        acked = sum(max(0, n - before.get(i, 0)) for i, n in counts.items())
        self.samples.append(Sample(now, acked / (now - then), lag))
        self._lastSample = (now, counts)

    def snapshot(self):
        """What a dashboard shows, as plain data for JSON."""
        status = self.status
        out = {"router": self.router or "", "error": self.error, "servers": [],
               "events": [], "down": [], "chart": self.chart()}
        if status is None:
            return out
        out["time"] = status.time
        out["uptime"] = status.uptime
        out["servers"] = [
            {"vm": s.vm, "role": pb.Role.Name(s.role).lower(), "pid": s.pid,
             "address": s.address, "clients": s.clients, "updates": s.updates,
             "lag": s.pending, "seen": round(s.seen_ago, 1)}
            for s in sorted(status.servers, key=lambda s: (s.vm, s.role))]
        live = {s.vm for s in status.servers}
        out["down"] = sorted(self.vms - live)
        out["events"] = [{"time": e.time, "kind": e.kind, "vm": e.vm, "text": e.text}
                         for e in reversed(status.events[-EVENTS_SHOWN:])]
        return out

    def chart(self):
        samples = list(self.samples)
        if not samples:
            return {"posts": "", "lag": "", "postsTop": 1, "lagTop": 1,
                    "width": CHART_WIDTH, "height": CHART_HEIGHT, "window": WINDOW}
        now = samples[-1].time
        postsTop = niceTop([s.posts for s in samples])
        lagTop = niceTop([s.lag for s in samples])
        return {"posts": path([(s.time, s.posts) for s in samples], now, postsTop),
                "lag": path([(s.time, s.lag) for s in samples], now, lagTop),
                "postsTop": postsTop, "lagTop": lagTop, "lastPosts": round(samples[-1].posts, 1),
                "lastLag": samples[-1].lag,
                "width": CHART_WIDTH, "height": CHART_HEIGHT, "window": WINDOW}
