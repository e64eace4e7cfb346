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
from snstwist.storage.memory import MemoryStore
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


class IdleWriterStore(MemoryStore):
    """
    A manual MemoryStore whose every write wakes an idle writer: the write's
    L{committing} Deferred (the test fires it when the commit starts).
    """

    def __init__(self):
        super().__init__(manual=True)
        self.commits = []

    def committing(self):
        d = defer.Deferred()
        self.commits.append(d)
        return d


def makeServer(test, store=None):
    parts = serverParts(test, store=store)
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


class PeersAfterTheCommitStartsTests(SynchronousTestCase):
    """
    A write that woke the store's idle writer goes to the peers once its
    commit has started, so that the reactor's replication work runs beside
    the fsync rather than before the disk thread's statements; the answer
    still waits for this VM's flush and a peer's copy.
    """

    def test_offered_to_the_peers_only_once_the_commit_has_started(self):
        store = IdleWriterStore()
        parts, peer = makeServer(self, store)
        d = post(parts, "hi", "r1")
        self.assertEqual(peer.offered, [])
        [starting] = store.commits
        starting.callback(None)
        [updateId] = peer.offered
        parts.replicator.acked("vm2", updateId)
        self.assertNoResult(d)
        store.flush()
        self.assertEqual(self.successResultOf(d).copies, 2)

    def test_the_flush_alone_answers_nothing_before_the_peers_copy(self):
        store = IdleWriterStore()
        parts, peer = makeServer(self, store)
        d = post(parts, "hi", "r1")
        store.flush()
        self.assertNoResult(d)
        store.commits[0].callback(None)
        parts.replicator.acked("vm2", peer.offered[0])
        self.assertEqual(self.successResultOf(d).copies, 2)

    def test_a_retry_of_an_applied_write_goes_to_the_peers_at_once(self):
        store = IdleWriterStore()
        parts, peer = makeServer(self, store)
        first = post(parts, "hi", "r1")
        store.commits[0].callback(None)
        store.flush()
        parts.replicator.acked("vm2", peer.offered[0])
        self.successResultOf(first)
        again = post(parts, "hi", "r1")  # the same request again: nothing new is stored
        self.assertEqual((len(store.commits), peer.offered), (1, peer.offered[:1] * 2))
        parts.replicator.acked("vm2", peer.offered[0])
        self.assertEqual(self.successResultOf(again).copies, 2)

    def test_with_a_busy_writer_the_peers_have_it_at_once(self):
        """The plain manual MemoryStore: nothing to wait for (committing is None)."""
        parts, peer = makeServer(self)
        post(parts, "hi", "r1")
        self.assertEqual(len(peer.offered), 1)


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
