"""
Prometheus metrics of one router or server process (C{--metrics HOST:PORT}).

Every metric of snstwist is declared here, once, in prometheus-client's
default registry, and the code that counts something imports its metric from
here.  Counting is cheap and always on; serving the figures is what
C{--metrics} turns on (L{MetricsService}: prometheus-client's Twisted
resource on a twisted.web site).

Gauges of the process's state (sessions, replication lag) are set on the
reactor thread by L{MetricsService}'s ticker from functions the process
registers with L{watch}, never read from the web thread pool that serves the
scrape: that thread must not touch Twisted objects.

This module must not import the reactor at import time.
"""

from prometheus_client import Counter, Gauge, Histogram
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.logger import Logger

log = Logger()

rpcs = Counter("sns_rpcs", "RPCs served, by method and gRPC status.", ["method", "code"])
acknowledgedWrites = Counter(
    "sns_acknowledged_writes", "Writes acknowledged to clients, by kind.", ["kind"])
copies = Histogram(
    "sns_write_copies", "VMs holding a write durably when it was acknowledged.",
    buckets=(1, 2, 3, 4, 5))
replicationLag = Gauge(
    "sns_replication_lag_updates",
    "Updates held here that the peer VM furthest behind has not confirmed.")
replicationFailures = Counter(
    "sns_replication_stream_failures", "Replication streams to a peer VM that broke.")
sessions = Gauge("sns_sessions", "Live client sessions on this process.")
promotions = Counter("sns_promotions", "Times this process took over as master.")
respawns = Counter("sns_respawns", "Buddies respawned after they died.")
loopLag = Histogram(
    "sns_loop_lag_seconds", "How late the reactor ran a timer (event-loop lag).",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
servers = Gauge("sns_router_servers", "Live server processes registered, by role.", ["role"])
deactivations = Counter("sns_router_deactivations", "Servers the router deactivated.")

_gauges = {}

TICK = 0.5


def watch(gauge, read):
    """
    Set C{gauge} from C{read()} on every tick of the metrics service (the
    last function given for a gauge is the one read: one process, one
    server).
    """
    _gauges[gauge] = read


def refresh():
    """Set every watched gauge now (on the reactor thread)."""
    for gauge, read in _gauges.items():
        try:
            value = read()
        except Exception:
            log.failure("reading a gauge failed")
            continue
        if isinstance(value, dict):
            for label, v in value.items():
                gauge.labels(label).set(v)
        else:
            gauge.set(value)


class Ticker(TimerService):
    """
    Every L{TICK} seconds: refresh the watched gauges, and observe how late
    this timer ran (event-loop lag, as a histogram; L{snstwist.core.looplag} is
    the fine-grained, logging measurement that benchmarks turn on).
    """

    def __init__(self, clock=None):
        TimerService.__init__(self, TICK, self._tick)
        self.expected = None
        if clock is not None:
            self.clock = clock

    def _tick(self):
        # The LoopingCall's clock: ours, or the reactor once started.
        now = self._loop.clock.seconds()
        if self.expected is not None:
            loopLag.observe(max(0.0, now - self.expected))
        self.expected = now + TICK
        refresh()


class _Site(Service):
    """prometheus-client's Twisted resource at /metrics on C{listen}."""

    def __init__(self, listen, reactor=None):
        self.listen = listen
        self.reactor = reactor
        self.port = None

    def startService(self):
        Service.startService(self)
        # Imported here: that module binds the global reactor when imported.
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource
        from twisted.web.server import Site
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        root = Resource()
        root.putChild(b"metrics", MetricsResource())
        host, port = self.listen.rsplit(":", 1)
        self.port = reactor.listenTCP(int(port), Site(root), interface=host.strip("[]"))
        log.info("metrics at http://{host}:{port}/metrics", host=host,
                 port=self.port.getHost().port)

    def stopService(self):
        Service.stopService(self)
        if self.port is not None:
            return self.port.stopListening()


class MetricsService(MultiService):
    """Serve the metrics on C{listen} (HOST:PORT) and keep the gauges fresh."""

    def __init__(self, listen, reactor=None):
        MultiService.__init__(self)
        self.site = _Site(listen, reactor)
        self.site.setServiceParent(self)
        Ticker(reactor).setServiceParent(self)

    @property
    def address(self):
        """HOST:PORT where the metrics are served, once started."""
        return "%s:%d" % (self.site.listen.rsplit(":", 1)[0], self.site.port.getHost().port)
