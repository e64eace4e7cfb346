"""
Operators' doors: Prometheus metrics (C{--metrics HOST:PORT}) and gRPC
server reflection on every gRPC server.

Metrics live in prometheus-client's process-wide registry, so each test
reads a value before and after what it does and checks the difference.
"""

from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY, CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial import unittest

from snstwist.commands import tap
from snstwist.core import errors, metrics
from snstwist.rpc import grpcbridge
from snstwist.rpc import sns_pb2 as pb
from tests.test_grpcbridge import GrpcTestCase
from tests.test_integration import inlineAsync


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


class MetricTests(unittest.SynchronousTestCase):
    def test_a_metric_counts_nothing_until_metrics_are_on(self):
        """
        Before C{enable}, counting (labelled or not) is a no-op and nothing is
        registered; after, every count lands in the registry.
        """
        registry = CollectorRegistry()
        counter = metrics.Metric("Counter", "sns_test_calls", "Calls.", ["kind"])
        gauge = metrics.Metric("Gauge", "sns_test_level", "Level.")
        counter.labels("a").inc()
        gauge.set(7)
        before = [m.name for m in registry.collect()]
        counter.enable(registry)
        gauge.enable(registry)
        counter.labels("a").inc()
        counter.labels("a").inc()
        gauge.set(3)
        self.assertEqual(
            (before, registry.get_sample_value("sns_test_calls_total", {"kind": "a"}),
             registry.get_sample_value("sns_test_level")),
            ([], 2.0, 3.0))

    def test_enabling_twice_keeps_the_counts(self):
        """A second C{enable} (two services in one process) makes no new metric."""
        registry = CollectorRegistry()
        counter = metrics.Metric("Counter", "sns_test_twice", "Twice.")
        counter.enable(registry)
        counter.inc()
        counter.enable(registry)
        counter.inc()
        self.assertEqual(registry.get_sample_value("sns_test_twice_total"), 2.0)


class TickerTests(unittest.SynchronousTestCase):
    def test_a_late_tick_is_observed_as_loop_lag(self):
        clock = Clock()
        service = metrics.Ticker(clock)
        service.startService()
        self.addCleanup(service.stopService)
        count = sample("sns_loop_lag_seconds_count")
        total = sample("sns_loop_lag_seconds_sum")
        clock.advance(metrics.TICK + 0.2)
        self.assertEqual(sample("sns_loop_lag_seconds_count"), count + 1)
        self.assertAlmostEqual(sample("sns_loop_lag_seconds_sum") - total, 0.2)

    def test_ticks_set_the_watched_gauges(self):
        clock = Clock()
        service = metrics.Ticker(clock)
        value = [3]
        metrics.watch(metrics.sessions, lambda: value[0])
        metrics.watch(metrics.servers, lambda: {"master": 2, "slave": 1})
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(sample("sns_sessions"), 3)
        value[0] = 5
        clock.advance(metrics.TICK)
        self.assertEqual(sample("sns_sessions"), 5)
        self.assertEqual(sample("sns_router_servers", role="master"), 2)


class RpcCountTests(GrpcTestCase):
    @inlineAsync
    async def test_rpcs_are_counted_by_method_and_status(self):
        def status(request, ctx):
            if request == pb.StatusRequest():
                raise errors.NotLoggedIn()
            return pb.StatusReply()

        metrics.enable()  # as --metrics does
        ok = sample("sns_rpcs_total", method="Status", code="OK")
        refused = sample("sns_rpcs_total", method="Status", code="UNAUTHENTICATED")
        stub = await self.routerStub(status)
        await self.assertCallFails(grpcbridge.call(stub.Status, pb.StatusRequest()),
                                   errors.Status.UNAUTHENTICATED)
        self.assertEqual(sample("sns_rpcs_total", method="Status", code="UNAUTHENTICATED"),
                         refused + 1)
        self.assertEqual(sample("sns_rpcs_total", method="Status", code="OK"), ok)


class ReflectionTests(GrpcTestCase):
    @inlineAsync
    async def test_every_grpc_server_lists_its_services_by_reflection(self):
        service = grpcbridge.GrpcServerService(
            "127.0.0.1:0", lambda server, streams: None, services=["snstwist.Router"])
        service.startService()
        self.addCleanup(service.stopService)
        await service.started
        channel = grpcbridge.channel(service.address)
        self.addCleanup(grpcbridge.closeChannel, channel)
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        replies = []

        async def collect():
            async for reply in stub.ServerReflectionInfo(ask()):
                replies.append(reply)

        await grpcbridge.deferredFromAwaitable(collect())
        names = sorted(s.name for s in replies[0].list_services_response.service)
        self.assertEqual(names, ["grpc.health.v1.Health",
                                 "grpc.reflection.v1alpha.ServerReflection",
                                 "snstwist.Router"])


class MetricsSiteTests(unittest.TestCase):
    timeout = 20

    @inlineAsync
    async def test_metrics_are_served_over_http(self):
        from twisted.internet import reactor
        from twisted.web.client import Agent, readBody

        service = metrics.MetricsService("127.0.0.1:0")
        service.startService()
        self.addCleanup(service.stopService)
        metrics.promotions.inc()
        response = await Agent(reactor).request(
            b"GET", ("http://%s/metrics" % (service.address,)).encode())
        body = (await readBody(response)).decode()
        self.assertEqual(response.code, 200)
        self.assertIn("sns_promotions_total ", body)
        self.assertIn("sns_loop_lag_seconds_bucket", body)


class OptionTests(unittest.TestCase):
    def test_router_and_server_take_a_metrics_address(self):
        for options, args in (
                (tap.RouterOptions(), []),
                (tap.ServerOptions(), ["--router", "127.0.0.1:1"])):
            options.parseOptions(args + ["--metrics", "127.0.0.1:9100",
                                         "--secret-file", self.secret()])
            self.assertEqual(options["metrics"], "127.0.0.1:9100")

    def test_a_bad_metrics_address_is_a_usage_error(self):
        e = self.assertRaises(tap.usage.UsageError, tap.RouterOptions().parseOptions,
                              ["--metrics", "nowhere"])
        self.assertIn("--metrics must be HOST:PORT", str(e))

    def test_router_service_serves_metrics_when_asked(self):
        options = tap.RouterOptions()
        options.parseOptions(["--metrics", "127.0.0.1:0", "--secret-file", self.secret()])
        service = tap.makeRouterService(options)
        self.assertEqual([type(s) for s in service if isinstance(s, metrics.MetricsService)],
                         [metrics.MetricsService])

    def secret(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("a-secret-of-the-tests\n")
        return path


