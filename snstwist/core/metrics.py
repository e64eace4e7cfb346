"""
Prometheus metrics of one router or server process (C{--metrics HOST:PORT}).

Every metric of snstwist is declared here, once, and the code that counts
something imports its metric from here.  Serving the figures is what
C{--metrics} turns on (L{MetricsService}: prometheus-client's Twisted
resource on a twisted.web site), and counting with it: until then a metric
counts nothing and prometheus-client is not even imported (some 10-15 ms of
every start and every new standby).  A process turns them on as it is
built, before it serves anything, so no count is missed.

Gauges of the process's state (sessions, replication lag) are set on the
reactor thread by L{MetricsService}'s ticker from functions the process
registers with L{watch}, never read from the web thread pool that serves the
scrape: that thread must not touch Twisted objects.

This module must not import the reactor at import time.
"""

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.logger import Logger

log = Logger()


class _Off:
    """What a metric, or one of its labelled children, is while metrics are off."""

    def inc(self, amount=1):
        pass

    def observe(self, value):
        pass

    def set(self, value):
        pass

    def labels(self, *values):
        return self


_OFF = _Off()


class Metric:
    """
    One metric: prometheus-client's C{kind} (Counter, Gauge, Histogram) named
    C{name}, made when L{enable} is called; until then, counting it does
    nothing.
    """

    def __init__(self, kind, name, documentation, labelnames=(), **options):
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.options = options
        self.counting = _OFF

    def enable(self, registry=None):
        """Count from now on, in C{registry} (prometheus-client's default one)."""
        if self.counting is not _OFF:
            return
        import prometheus_client
        options = dict(self.options)
        if registry is not None:
            options["registry"] = registry
        self.counting = getattr(prometheus_client, self.kind)(
            self.name, self.documentation, self.labelnames, **options)

    def inc(self, amount=1):
        self.counting.inc(amount)

    def observe(self, value):
        self.counting.observe(value)

    def set(self, value):
        self.counting.set(value)

    def labels(self, *values):
        return self.counting.labels(*values)


@attrs.define
class Traffic:
    """
    What a stream carried since the process started: C{updates} in how many
    C{messages} (plain counts, kept whether metrics are on or not: the
    routers' Status shows them, and the benchmark divides them by the posts
    acknowledged).
    """

    updates: int = 0
    messages: int = 0

    def count(self, updates):
        """One message carrying C{updates} updates (or ids)."""
        self.updates += updates
        self.messages += 1


_declared = []


def _declare(*args, **options):
    metric = Metric(*args, **options)
    _declared.append(metric)
    return metric


def enable():
    """Turn every metric of snstwist on (once metrics are asked for)."""
    for metric in _declared:
        metric.enable()


rpcs = _declare("Counter", "sns_rpcs", "RPCs served, by method and gRPC status.",
                ["method", "code"])
acknowledgedWrites = _declare(
    "Counter", "sns_acknowledged_writes", "Writes acknowledged to clients, by kind.", ["kind"])
copies = _declare(
    "Histogram", "sns_write_copies", "VMs holding a write durably when it was acknowledged.",
    buckets=(1, 2, 3, 4, 5))
replicationLag = _declare(
    "Gauge", "sns_replication_lag_updates",
    "Updates held here that the peer VM furthest behind has not confirmed.")
replicationFailures = _declare(
    "Counter", "sns_replication_stream_failures",
    "Replication streams to a peer VM that broke.")
sessions = _declare("Gauge", "sns_sessions", "Live client sessions on this process.")
promotions = _declare("Counter", "sns_promotions", "Times this process took over as master.")
respawns = _declare("Counter", "sns_respawns", "Buddies respawned after they died.")
loopLag = _declare(
    "Histogram", "sns_loop_lag_seconds", "How late the reactor ran a timer (event-loop lag).",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
servers = _declare("Gauge", "sns_router_servers",
                   "Live server processes registered, by role.", ["role"])
deactivations = _declare("Counter", "sns_router_deactivations",
                         "Servers the router deactivated.")

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
    the fine-grained, logging measurement that benchmarks turn on).  Making
    one turns the metrics on: they are counted to be read.
    """

    def __init__(self, clock=None):
        TimerService.__init__(self, TICK, self._tick)
        enable()
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
