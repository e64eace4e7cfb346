"""
When a master answers a write (snstwist.server.admission.Writes): once it is
durable here and a peer VM holds it, with the number of VMs holding it; the
disk's refusal at once, as itself.  On a server built from its parts (a
Clock, a manual MemoryStore) with a fake synced peer link.
"""

import gc

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors
from snstwist.rpc import sns_pb2 as pb
from snstwist.server.admission import _Copies
from tests.servers import serverParts


class _Peer:
    """A synced link to vm2 that takes what it is offered."""

    synced = True

    def __init__(self):
        self.offered = []

    def offer(self, update):
        self.offered.append(update.id)

    def stop(self):
        return defer.succeed(None)


def makeServer(test):
    parts = serverParts(test)
    parts.node.login("alice")
    parts.node.store.flush()
    peer = _Peer()
    parts.replicator.links = {"vm2": peer}
    test.addCleanup(parts.replicator.stop)
    return parts, peer


def post(parts, text, requestId):
    return parts.api._post("alice", pb.PostRequest(text=text, request_id=requestId))


class AnsweredTests(SynchronousTestCase):
    def test_a_post_is_answered_once_durable_here_and_held_by_the_peer(self):
        parts, peer = makeServer(self)
        d = post(parts, "hi", "r1")
        [updateId] = peer.offered
        parts.node.store.flush()
        self.assertNoResult(d)
        parts.replicator.acked("vm2", updateId)
        reply = self.successResultOf(d)
        self.assertEqual((reply.id, reply.copies, reply.post.text), (updateId, 2, "hi"))
        self.assertEqual((parts.writes.writing, parts.writes.acknowledgedPosts), (0, 1))

    def test_the_peers_copy_first_then_the_flush(self):
        parts, peer = makeServer(self)
        d = post(parts, "hi", "r1")
        parts.replicator.acked("vm2", peer.offered[0])
        self.assertNoResult(d)
        parts.node.store.flush()
        self.assertEqual(self.successResultOf(d).copies, 2)

    def test_a_failed_flush_is_answered_at_once_as_itself(self):
        """The peer has not answered yet: the disk's refusal does not wait for it."""
        parts, peer = makeServer(self)
        d = post(parts, "hi", "r1")
        store = parts.node.store
        store.problem = errors.StorageFailed("the disk is full")
        store.onProblem(store.problem)  # as a store whose batch failed says it
        self.failureResultOf(d, errors.StorageFailed)
        self.assertEqual(parts.writes.writing, 0)
        parts.replicator.acked("vm2", peer.offered[0])  # too late: nothing happens


class CopiesTests(SynchronousTestCase):
    def test_fires_with_this_vm_and_the_others_once_both_are_known(self):
        durable, replicated = defer.Deferred(), defer.Deferred()
        d = _Copies(durable, replicated).deferred
        replicated.callback(2)
        self.assertNoResult(d)
        durable.callback(None)
        self.assertEqual(self.successResultOf(d), 3)

    def test_halves_fired_already_count(self):
        self.assertEqual(self.successResultOf(
            _Copies(defer.succeed(None), defer.succeed(0)).deferred), 1)

    def test_the_first_failure_at_once_and_a_later_one_consumed(self):
        durable, replicated = defer.Deferred(), defer.Deferred()
        d = _Copies(durable, replicated).deferred
        durable.errback(errors.StorageFailed("the disk is full"))
        self.failureResultOf(d, errors.StorageFailed)
        replicated.errback(ZeroDivisionError())
        del replicated
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(ZeroDivisionError), [])
