"""
The client library's failover, on a Clock and a fake network (no gRPC): when
master1 fails it moves to master2, retries the command in flight with the
same request id, resumes its timeline after the last post shown, refills
master2, and gives up after the documented 15 s when no master answers.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.client.client import Client, ClusterUnreachable, CommandFailed
from snstwist.core.errors import RemoteError, Status
from snstwist.core.model import Post
from snstwist.rpc import grpcbridge
from snstwist.rpc import sns_pb2 as pb
from tests.fakes import FakeStream


def rpcError(status):
    """How a failed call comes out of the bridge."""
    return RemoteError(status, "fake")


class FakeMethod:
    def __init__(self, address, path):
        self.address = address
        self.name = path.rsplit("/", 1)[-1]


class FakeChannel:
    def __init__(self, address):
        self.address = address

    def __getattr__(self, kind):
        return lambda path, *args, **kwargs: FakeMethod(self.address, path)


class FakeCluster:
    """
    A router and masters by address.  C{masters[address]} answers calls
    (a dict of method name to a function of the request), or is absent
    (UNAVAILABLE).  Records every call as (address, name, request).
    """

    def __init__(self, test, masters, vms):
        self.masters = masters
        self.vms = vms  # address -> vm
        self.calls = []
        self.sessions = []
        self.routerDown = False
        test.patch(grpcbridge, "channel", FakeChannel)
        test.patch(grpcbridge, "closeChannel", lambda ch: defer.succeed(None))
        test.patch(grpcbridge, "call", self.call)
        test.patch(grpcbridge, "openStream", self.openStream)

    def pick(self, exclude=()):
        live = [a for a in self.masters if self.vms[a] not in exclude]
        if self.routerDown:
            raise rpcError(Status.UNAVAILABLE)
        if not live:
            raise rpcError(Status.UNAVAILABLE)
        first = pb.ServerAddress(vm=self.vms[live[0]], address=live[0])
        second = (pb.ServerAddress(vm=self.vms[live[1]], address=live[1])
                  if len(live) > 1 else None)
        return pb.MasterReply(master1=first, master2=second)

    def call(self, method, request, timeout=None, metadata=None):
        copy = type(request)()
        copy.CopyFrom(request)
        self.calls.append((method.address, method.name, copy))
        try:
            if method.name == "Onetime_c_to_r":
                return defer.succeed(self.pick(set(request.exclude_vms)))
            handlers = self.masters.get(method.address)
            if handlers is None:
                raise rpcError(Status.UNAVAILABLE)
            return defer.succeed(handlers[method.name](request))
        except RemoteError as e:
            return defer.fail(e)

    def openStream(self, method, protocol, metadata=None):
        stream = FakeStream()
        stream.address = method.address
        self.sessions.append((stream, protocol))
        protocol.makeConnection(stream)
        return stream

    def kill(self, *addresses):
        """The masters at C{addresses} die: their calls fail, their sessions break."""
        for address in addresses:
            del self.masters[address]
        for stream, protocol in self.sessions:
            address = stream.address
            if address not in addresses:
                continue
            if not stream.closed:
                stream.closed = True
                protocol.connectionLost(None)

    def names(self, address=None):
        return [(a, n) for a, n, _ in self.calls if address is None or a == address]


def master(posted):
    """A master's handlers; its posts go to C{posted} as (request id, text)."""
    def post(request):
        posted.append((request.request_id, request.text, request.prefer_vm))
        return pb.WriteReply(id="x/%d" % (len(posted),), copies=2)

    return {"Login": lambda r: pb.LoginReply(token="t"), "Post": post,
            "List": lambda r: pb.ListReply(all_users=["alice"]),
            "Follow": lambda r: pb.WriteReply(id="f", copies=2)}


def threeVMs(test):
    posted = []
    cluster = FakeCluster(test, {"a:1": master(posted), "b:1": master(posted),
                                 "c:1": master(posted)},
                          {"a:1": "vm1", "b:1": "vm2", "c:1": "vm3"})
    reconnects = []
    client = Client(["router:1"], "alice", "pw", clock=Clock(), onReconnect=reconnects.append,
                    jitter=lambda: 0.0)
    test.successResultOf(client.connect())
    return cluster, client, posted, reconnects


def twoVMs(test):
    posted = []
    cluster = FakeCluster(test, {"a:1": master(posted), "b:1": master(posted)},
                          {"a:1": "vm1", "b:1": "vm2"})
    client = Client(["router:1"], "alice", "pw", clock=Clock(), jitter=lambda: 0.0)
    test.successResultOf(client.connect())
    test.assertEqual((client.master1.address, client.master2.address), ("a:1", "b:1"))
    return cluster, client, posted


class FailoverTests(SynchronousTestCase):
    def test_connect_logs_in_on_master1_and_keeps_master2(self):
        cluster, client, posted, reconnects = threeVMs(self)
        self.assertEqual((client.master1.address, client.master2.address), ("a:1", "b:1"))
        self.assertEqual(cluster.names()[-1], ("a:1", "Login"))

    def test_a_dead_master1s_session_moves_the_client_to_master2(self):
        """The session breaks: the client logs in on master2 and writes go there."""
        cluster, client, posted, reconnects = threeVMs(self)
        cluster.kill("a:1")
        self.assertEqual(reconnects, ["b:1"])
        self.assertEqual(client.master1.address, "b:1")
        self.assertEqual(self.successResultOf(client.post("hello")).copies, 2)
        self.assertEqual([text for _, text, _ in posted], ["hello"])
        self.assertEqual([n for a, n in cluster.names("b:1")], ["Login", "Post"])

    def test_a_command_that_failed_on_master1_is_retried_with_its_request_id(self):
        """master1 answers UNAVAILABLE mid-call: the retry on master2 has the same id."""
        cluster, client, posted, reconnects = threeVMs(self)
        handlers = cluster.masters["a:1"]

        def dying(request):
            cluster.kill("a:1")
            raise rpcError(Status.UNAVAILABLE)

        handlers["Post"] = dying
        self.successResultOf(client.post("once"))
        (first,) = [r for a, n, r in cluster.calls if a == "a:1" and n == "Post"]
        (second,) = [r for a, n, r in cluster.calls if a == "b:1" and n == "Post"]
        self.assertEqual(first.request_id, second.request_id)
        self.assertTrue(first.request_id)

    def test_master2_is_refilled_from_another_vm_after_a_failover(self):
        cluster, client, posted, reconnects = threeVMs(self)
        cluster.kill("a:1")
        self.successResultOf(client.list())
        self.assertEqual(client.master1.vm, "vm2")
        self.assertIsNotNone(client.master2)
        self.assertNotEqual(client.master2.vm, "vm2")
        (ask,) = [r for a, n, r in cluster.calls if n == "Onetime_c_to_r" and r.exclude_vms]
        self.assertEqual(list(ask.exclude_vms), ["vm2"])

    def test_master2_is_asked_for_again_until_another_vm_has_one(self):
        """
        Both VMs' masters were killed: after its failover to vm2's promoted
        master, the client finds no master outside vm2 yet; it asks again,
        backing off, and knows vm1's promoted master once it registers, so
        that the next failover asks no router.
        """
        cluster, client, posted = twoVMs(self)
        cluster.kill("a:1")
        self.assertEqual((client.master1.address, client.master2), ("b:1", None))
        cluster.masters["a:2"], cluster.vms["a:2"] = master(posted), "vm1"
        client.clock.advance(0.05)
        self.assertEqual(client.master2.address, "a:2")
        asked = len(cluster.names(None))
        cluster.kill("b:1")
        # (The session on b:1 never worked here: the next one waits a little.)
        client.clock.advance(1)
        self.assertEqual(client.master1.address, "a:2")
        failover = [n for a, n in cluster.names(None)[asked:]]
        self.assertEqual(failover[:2], ["Login", "Onetime_c_to_r"])

    def test_master2_is_asked_for_with_growing_waits_then_no_more(self):
        """50 ms doubling (no jitter here) up to 2 s; after the failover deadline, nothing."""
        cluster, client, posted = twoVMs(self)
        times = []

        def call(method, request, **kwargs):
            if method.name == "Onetime_c_to_r" and list(request.exclude_vms) == ["vm2"]:
                times.append(client.clock.seconds())
            return cluster.call(method, request, **kwargs)

        self.patch(grpcbridge, "call", call)
        cluster.kill("a:1")

        def asks():
            return list(times)

        client.clock.pump([0.001] * 20000)
        times = asks()
        gaps = [round(b - a, 2) for a, b in zip(times, times[1:])]
        self.assertEqual(gaps[:4], [0.05, 0.1, 0.2, 0.4])
        self.assertTrue(set(gaps[6:]) <= {2.0}, gaps)
        client.clock.pump([1.0] * 30)
        self.assertEqual(asks(), times)
        self.assertIsNone(client.masters._refillWait)

    def test_closing_stops_asking_for_master2(self):
        cluster, client, posted = twoVMs(self)
        cluster.kill("a:1")
        client.masters.closed = True
        asked = len(cluster.calls)
        client.clock.pump([0.5] * 10)
        self.assertEqual((len(cluster.calls), client.masters._refillWait), (asked, None))

    def test_a_write_prefers_master2s_vm_for_its_second_copy(self):
        cluster, client, posted, reconnects = threeVMs(self)
        self.successResultOf(client.post("hi"))
        self.assertEqual(posted[0][2], "vm2")

    def test_a_broken_session_fails_over_and_resumes_after_the_last_post_shown(self):
        cluster, client, posted, reconnects = threeVMs(self)
        client.timeline()
        client.reader.received(Post(id="vm1.a/1", author="bob", time_us=50 * 10**6, text="x"))
        cluster.kill("a:1")
        self.assertEqual(client.master1.address, "b:1")
        stream, protocol = cluster.sessions[-1]
        self.assertEqual(stream.address, "b:1")
        opened = stream.sent[0].open
        self.assertTrue(opened.timeline)
        self.assertEqual(opened.cursor.time_us, 40 * 10**6)

    def test_an_invalid_command_is_not_retried_elsewhere(self):
        cluster, client, posted, reconnects = threeVMs(self)

        def refuse(request):
            raise rpcError(Status.INVALID_ARGUMENT)

        cluster.masters["a:1"]["Follow"] = refuse
        f = self.failureResultOf(client.follow("a b"), CommandFailed)
        self.assertEqual(f.value.code, Status.INVALID_ARGUMENT)
        self.assertEqual(reconnects, [])
        self.assertEqual(len([1 for a, n, r in cluster.calls if n == "Follow"]), 1)

    def test_an_overloaded_master_is_asked_again_after_a_pause_with_the_same_id(self):
        cluster, client, posted, reconnects = threeVMs(self)
        busy = [True]
        handlers = cluster.masters["a:1"]
        post = handlers["Post"]

        def shedding(request):
            if busy[0]:
                busy[0] = False
                raise rpcError(Status.RESOURCE_EXHAUSTED)
            return post(request)

        handlers["Post"] = shedding
        d = client.post("later")
        self.assertNoResult(d)
        client.clock.advance(0.049)
        self.assertNoResult(d)
        client.clock.advance(0.001)
        self.successResultOf(d)
        tries = [r.request_id for a, n, r in cluster.calls if n == "Post"]
        self.assertEqual((len(tries), len(set(tries))), (2, 1))
        self.assertEqual(reconnects, [])

    def test_with_no_master_left_a_command_fails_after_fifteen_seconds(self):
        """The documented failover deadline: still trying at 14.5 s, given up by 15.5 s."""
        cluster, client, posted, reconnects = threeVMs(self)
        lost = []
        client.onLost = lost.append
        cluster.kill(*list(cluster.masters))
        d = client.list()
        for _ in range(30):
            client.clock.advance(0.5)
        self.assertNoResult(d)
        client.clock.advance(0.5)
        self.failureResultOf(d, ClusterUnreachable)
        # The failover the broken session started fails the same way, and
        # the client's user is told (onLost), not only the log.
        self.assertEqual([type(e) for e in lost], [ClusterUnreachable])

    def test_a_failover_finds_a_master_that_comes_back(self):
        cluster, client, posted, reconnects = threeVMs(self)
        saved = {a: cluster.masters[a] for a in ("b:1", "c:1")}
        cluster.kill(*list(cluster.masters))
        d = client.list()
        client.clock.advance(1)
        self.assertNoResult(d)
        cluster.masters["c:1"] = saved["c:1"]
        for _ in range(4):
            client.clock.advance(0.5)
        self.successResultOf(d)
        self.assertEqual(client.master1.address, "c:1")
