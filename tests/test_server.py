"""The server's write path, on a Clock and an in-memory store (no gRPC)."""

import gc

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors
from snstwist.rpc import sns_pb2 as pb
from snstwist.server import server
from snstwist.core.node import Node
from snstwist.server.server import ServerService
from snstwist.storage.store import MemoryStore
from tests.fakes import FakeHasher


def makeServer(test):
    """A ServerService whose node runs on a manual MemoryStore, as user alice."""
    clock = Clock()
    service = ServerService("vm1", "127.0.0.1:0", ["127.0.0.1:1"], test.mktemp(), "s",
                            clock=clock, hasher=FakeHasher())
    store = MemoryStore(manual=True)
    service.node = Node("vm1", service.origin, store, clock)
    service.node.addDurableObserver(service._durable)
    service.replicator.node = service.node
    service.sessions.node = service.node
    test.successResultOf(service.node.load())
    service._user = lambda ctx: "alice"
    service.node.login("alice")
    store.flush()
    return service, store


class WritePathTests(SynchronousTestCase):
    def test_a_write_is_answered_once_durable_with_its_copies(self):
        """With no peer VM, a post is answered after the local flush: one copy."""
        service, store = makeServer(self)
        d = service.post(pb.PostRequest(text="hi", request_id="r1"), None)
        self.assertNoResult(d)
        store.flush()
        reply = self.successResultOf(d)
        self.assertEqual((reply.copies, reply.post.text), (1, "hi"))

    def test_a_retried_request_is_answered_with_the_first_write(self):
        """The same request id twice: one post, the same id in both replies."""
        service, store = makeServer(self)
        first = service.post(pb.PostRequest(text="hi", request_id="r1"), None)
        again = service.post(pb.PostRequest(text="hi", request_id="r1"), None)
        store.flush()
        self.assertEqual(self.successResultOf(first).id, self.successResultOf(again).id)
        self.assertEqual(len(service.node.replica.postsBy("alice")), 1)

    def test_a_request_id_of_another_user_is_a_new_request(self):
        """
        Request ids are scoped to their user: bob's r1 is not alice's r1,
        so bob's post is stored and answered with his own write.
        """
        service, store = makeServer(self)
        service.node.login("bob")
        mine = service.post(pb.PostRequest(text="alice's", request_id="r1"), None)
        service._user = lambda ctx: "bob"
        theirs = service.post(pb.PostRequest(text="bob's", request_id="r1"), None)
        store.flush()
        self.assertEqual([self.successResultOf(d).post.text for d in (mine, theirs)],
                         ["alice's", "bob's"])
        self.assertEqual([p.text for p in service.node.replica.postsBy("bob")], ["bob's"])

    def test_too_many_writes_in_flight_are_refused_as_overloaded(self):
        """Past maxWriting unanswered writes, the next is refused, not queued."""
        service, store = makeServer(self)
        service.maxWriting = 2
        pending = [service.post(pb.PostRequest(text="p%d" % i, request_id="r%d" % i), None)
                   for i in range(2)]
        self.assertRaises(errors.Overloaded, service.post,
                          pb.PostRequest(text="p2", request_id="r2"), None)
        store.flush()
        for d in pending:
            self.successResultOf(d)
        self.assertEqual(service.writing, 0)
        store.flush()
        service.post(pb.PostRequest(text="p3", request_id="r3"), None)

    def test_an_overly_long_request_id_is_invalid(self):
        """Request ids are bounded: a 65-character one is an invalid request."""
        service, store = makeServer(self)
        self.assertRaises(errors.InvalidRequest, service.post,
                          pb.PostRequest(text="hi", request_id="x" * 65), None)


class LoadingMemoryTests(SynchronousTestCase):
    def test_a_history_loads_without_collections_and_is_frozen_after(self):
        """
        While a history loads the collector is off (no full pass over it on
        either thread); once loaded it is frozen and the collector is on.
        """
        loading = defer.Deferred()
        during = []

        def load():
            during.append(gc.isenabled())
            return loading

        self.addCleanup(gc.enable)
        self.addCleanup(gc.unfreeze)
        before = gc.get_freeze_count()
        result = server._withoutCollections(load)
        loaded = [{"post": n} for n in range(100)]
        loading.callback(loaded)
        self.assertEqual(
            (during, gc.isenabled(), self.successResultOf(result) is loaded,
             gc.get_freeze_count() > before),
            ([False], True, True, True))


class _StrictReactor:
    """A reactor's stop as Twisted's: a second call raises ReactorNotRunning."""

    def __init__(self):
        self.stops = 0

    def stop(self):
        from twisted.internet.error import ReactorNotRunning
        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")


class StopOnceTests(SynchronousTestCase):
    def test_a_second_stop_is_a_no_op(self):
        """
        twistd's signal handler stops the reactor on each SIGTERM: a server
        process's reactor takes a second stop without an error.
        """
        from snstwist.server.server import _stopOnlyOnce
        reactor = _StrictReactor()
        _stopOnlyOnce(reactor)
        reactor.stop()
        reactor.stop()
        self.assertEqual(reactor.stops, 2)

    def test_wrapping_twice_wraps_once(self):
        from snstwist.server.server import _stopOnlyOnce
        reactor = _StrictReactor()
        _stopOnlyOnce(reactor)
        wrapped = reactor.stop
        _stopOnlyOnce(reactor)
        self.assertIs(reactor.stop, wrapped)
