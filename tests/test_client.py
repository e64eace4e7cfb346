"""
The client library's timeline cursor: what it shows once, what it
acknowledges, and where a resumed session (after a failover) starts; and its
reconnect policy, on a Clock.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.client import client as clientModule
from snstwist.client import timeline as timelineModule
from snstwist.client.client import Client, ClusterUnreachable, CommandFailed, Reconnects
from snstwist.client.masters import Master
from snstwist.core.errors import RemoteError, Status
from snstwist.core.backoff import backoffPolicy
from snstwist.core.model import Post
from snstwist.rpc import sns_pb2 as pb
from tests.fakes import FakeStream

SECOND = 1000000


def post(seq, time_us, author="bob"):
    return Post(id="vm1.a/%d" % (seq,), author=author, time_us=time_us, text="p%d" % (seq,))


def makeClient():
    shown = []
    c = Client(["127.0.0.1:1"], "alice", "pw", clock=Clock(), onPost=shown.append)
    return c, shown


def reopen(c):
    """The open request a new session (after a failover) sends first."""
    stream = FakeStream()
    session = c._newSession()
    session.makeConnection(stream)
    session.beats.stop()
    return stream.sent[0].open


def liveClient(test):
    """A client with a live session on a fake stream (its heartbeats stopped at cleanup)."""
    c, shown = makeClient()
    stream = FakeStream()
    c.session = c._newSession()
    c.session.makeConnection(stream)
    test.addCleanup(c.session.beats.stop)
    return c, stream


def acks(stream):
    return [(m.ack.time_us, m.ack.id) for m in stream.sent if m.WhichOneof("kind") == "ack"]


class ResumeTests(SynchronousTestCase):
    def test_a_resumed_session_starts_from_the_newest_post_shown(self):
        """
        After posts up to time 50 s were shown, the new session asks from the
        newest one, less the documented 10 s window (for posts that reach the
        new master later than the old one).
        """
        c, shown = makeClient()
        for i, t in enumerate((10, 30, 50), 1):
            c.reader.received(post(i, t * SECOND))
        request = reopen(c)
        self.assertTrue(request.HasField("cursor"))
        self.assertEqual(request.cursor.time_us, 40 * SECOND)

    def test_the_cursor_moves_with_every_newer_post(self):
        c, shown = makeClient()
        c.reader.received(post(1, 100 * SECOND))
        self.assertEqual(reopen(c).cursor.time_us, 90 * SECOND)
        c.reader.received(post(2, 200 * SECOND))
        self.assertEqual(reopen(c).cursor.time_us, 190 * SECOND)

    def test_an_older_post_shown_late_does_not_move_the_cursor_back(self):
        c, shown = makeClient()
        c.reader.received(post(2, 200 * SECOND))
        c.reader.received(post(1, 100 * SECOND))
        self.assertEqual(reopen(c).cursor.time_us, 190 * SECOND)
        self.assertEqual([p.id for p in shown], ["vm1.a/2", "vm1.a/1"])

    def test_a_window_before_the_epoch_starts_at_zero(self):
        c, shown = makeClient()
        c.reader.received(post(1, 3 * SECOND))
        self.assertEqual(reopen(c).cursor.time_us, 0)

    def test_before_any_post_is_shown_the_session_asks_for_history(self):
        c, shown = makeClient()
        request = reopen(c)
        self.assertFalse(request.HasField("cursor"))
        self.assertEqual(request.history, 20)

    def test_a_session_reopened_in_the_timeline_asks_for_the_timeline(self):
        c, shown = makeClient()
        self.assertFalse(reopen(c).timeline)
        c.timeline()
        self.assertTrue(reopen(c).timeline)


class ShownOnceTests(SynchronousTestCase):
    def test_a_post_received_again_is_not_shown_again(self):
        """The resumed session re-sends the window; what was shown is skipped."""
        c, shown = makeClient()
        c.reader.received(post(1, 10 * SECOND))
        c.reader.received(post(2, 20 * SECOND))
        c.reader.received(post(1, 10 * SECOND))
        c.reader.received(post(2, 20 * SECOND))
        c.reader.received(post(3, 30 * SECOND))
        self.assertEqual([p.id for p in shown], ["vm1.a/1", "vm1.a/2", "vm1.a/3"])

    def test_the_memory_of_shown_posts_is_bounded_oldest_first(self):
        c, shown = makeClient()
        self.patch(timelineModule, "SHOWN_MEMORY", 3)
        for i in range(1, 5):
            c.reader.received(post(i, i * SECOND))
        self.assertEqual(list(c.reader.shown), ["vm1.a/2", "vm1.a/3", "vm1.a/4"])
        c.reader.received(post(4, 4 * SECOND))
        self.assertEqual(len(shown), 4)


class AckTests(SynchronousTestCase):
    def test_the_newest_post_shown_is_acknowledged(self):
        c, stream = liveClient(self)
        c.reader.received(post(1, 10 * SECOND))
        c.reader.received(post(3, 30 * SECOND))
        c.reader.received(post(2, 20 * SECOND))
        c.clock.advance(0.2)
        self.assertEqual(acks(stream), [(30 * SECOND, "vm1.a/3")])

    def test_acks_are_batched(self):
        """One ack per 0.2 s, however many posts were shown meanwhile."""
        c, stream = liveClient(self)
        for i in range(1, 6):
            c.reader.received(post(i, i * SECOND))
        c.clock.advance(0.19)
        self.assertEqual(acks(stream), [])
        c.clock.advance(0.01)
        self.assertEqual(acks(stream), [(5 * SECOND, "vm1.a/5")])
        c.reader.received(post(6, 6 * SECOND))
        c.clock.advance(0.2)
        self.assertEqual(acks(stream)[-1], (6 * SECOND, "vm1.a/6"))

    def test_closing_sends_the_last_ack_at_once(self):
        c, stream = liveClient(self)
        c.reader.received(post(1, 10 * SECOND))
        c.close()
        self.assertEqual(acks(stream), [(10 * SECOND, "vm1.a/1")])
        self.assertTrue(stream.closed)


class TimelineTests(SynchronousTestCase):
    def test_entering_the_timeline_on_a_live_session_asks_for_it(self):
        """TIMELINE on an open session sends an open request for the timeline, at once."""
        c, stream = liveClient(self)
        d = c.timeline()
        opens = [m.open for m in stream.sent if m.WhichOneof("kind") == "open"]
        self.assertEqual([o.timeline for o in opens], [False, True])
        self.assertNoResult(d)
        c.session.messageReceived(pb.ServerPush(ready=pb.SessionReady(history=0)))
        self.successResultOf(d)

    def test_the_timeline_waits_for_a_session_when_there_is_none(self):
        c, shown = makeClient()
        d = c.timeline()
        self.assertNoResult(d)
        self.assertTrue(reopen(c).timeline)


def reconnects(clock, jitter=0.0, deadline=15.0):
    return Reconnects(clock, deadline=deadline,
                      delay=backoffPolicy(0.02, 1.0, jitter=lambda: jitter))


class ReconnectsTests(SynchronousTestCase):
    def test_each_failed_attempt_waits_twice_as_long_up_to_a_second(self):
        """0.02, 0.04, 0.08 ... seconds, never more than a second (before jitter)."""
        policy = reconnects(Clock())
        delays = [policy.failed("down") for _ in range(10)]
        self.assertEqual(delays[:4], [0.02, 0.04, 0.08, 0.16])
        self.assertEqual(delays[-1], 1.0)

    def test_jitter_spreads_the_delays(self):
        """The default policy stretches each delay by up to a quarter, at random."""
        policy = Reconnects(Clock())
        delays = {policy.failed("down") for _ in range(3)} | {
            Reconnects(Clock()).failed("down") for _ in range(20)}
        self.assertTrue(all(0.02 <= d < 0.1 for d in delays))
        self.assertGreater(len(delays), 3)

    def test_a_run_of_failures_gives_up_after_the_deadline_naming_the_cause(self):
        """Past the deadline the next failure is ClusterUnreachable, with the last cause."""
        clock = Clock()
        policy = reconnects(clock)
        elapsed = 0.0
        while elapsed <= 15.0:
            delay = policy.failed("session refused")
            clock.advance(delay)
            elapsed += delay
        e = self.assertRaises(ClusterUnreachable, policy.failed, "too many sessions")
        self.assertIn("too many sessions", str(e))
        self.assertIn("gave up after", str(e))

    def test_the_give_up_line_keeps_the_cause_the_server_gave_in_words(self):
        """
        gRPC core's INTERNAL "Internal error from Core" (a refused stream
        racing the client's first write) does not replace a cause in words;
        alone, it is still named.
        """
        from snstwist.core.errors import RemoteError, Status
        core = RemoteError(Status.INTERNAL, "Internal error from Core")
        clock = Clock()
        policy = reconnects(clock)
        policy.failed(core)
        policy.failed(RemoteError(Status.RESOURCE_EXHAUSTED, "10 sessions open on this master"))
        policy.failed(core)
        clock.advance(16)
        e = self.assertRaises(ClusterUnreachable, policy.failed, core)
        self.assertIn("RESOURCE_EXHAUSTED: 10 sessions open on this master", str(e))
        clock.advance(16)
        policy.failed(core)
        clock.advance(16)
        e = self.assertRaises(ClusterUnreachable, policy.failed, core)
        self.assertIn("INTERNAL: Internal error from Core", str(e))

    def test_our_words_for_a_broken_session_do_not_replace_the_servers(self):
        """
        A refused session, then a new one that broke before it worked,
        reported as gRPC core's INTERNAL (the refusal racing the client's
        first write): the give-up line names the server's refusal, whichever
        of the three came last.
        """
        from snstwist.core.errors import RemoteError, Status
        from twisted.python.failure import Failure
        refused = RemoteError(Status.RESOURCE_EXHAUSTED, "10 sessions open on this master")
        core = Failure(RemoteError(Status.INTERNAL, "Internal error from Core"))
        clock = Clock()
        policy = reconnects(clock)
        policy.failed(refused)
        policy.unproven("the session with 127.0.0.1:2 broke before it worked")
        policy.note(core)
        clock.advance(16)
        e = self.assertRaises(ClusterUnreachable, policy.failed, policy.problem)
        self.assertIn("RESOURCE_EXHAUSTED: 10 sessions open on this master", str(e))

    def test_a_later_cause_in_words_replaces_an_earlier_one(self):
        from snstwist.core.errors import RemoteError, Status
        clock = Clock()
        policy = reconnects(clock)
        policy.unproven("the session broke before it worked")
        policy.failed(RemoteError(Status.RESOURCE_EXHAUSTED, "10 sessions open"))
        policy.note(RemoteError(Status.UNAVAILABLE, "vm2 is stopping"))
        clock.advance(16)
        e = self.assertRaises(ClusterUnreachable, policy.failed, policy.problem)
        self.assertIn("UNAVAILABLE: vm2 is stopping", str(e))

    def test_a_working_session_ends_the_run(self):
        """healthy() starts the count afresh: the next failure waits the shortest time."""
        clock = Clock()
        policy = reconnects(clock)
        for _ in range(5):
            policy.failed("down")
        clock.advance(14)
        policy.healthy()
        clock.advance(10)
        self.assertEqual(policy.failed("down"), 0.02)
        self.assertTrue(policy.troubled)

    def test_an_unproven_session_that_breaks_continues_the_run(self):
        """A session lost before it worked counts from when the run began."""
        clock = Clock()
        policy = reconnects(clock)
        policy.unproven("new session")
        self.assertTrue(policy.troubled)
        clock.advance(16)
        self.assertRaises(ClusterUnreachable, policy.failed, "broke again")

    def test_giving_up_starts_a_fresh_run_for_the_next_try(self):
        """After giving up, the next attempt (a new command) is not refused at once."""
        clock = Clock()
        policy = reconnects(clock)
        policy.failed("down")
        clock.advance(16)
        self.assertRaises(ClusterUnreachable, policy.failed, "down")
        self.assertFalse(policy.troubled)
        self.assertEqual(policy.failed("down"), 0.02)


class SessionLostTests(SynchronousTestCase):
    def test_a_session_lost_to_core_internal_keeps_the_refusal_as_the_cause(self):
        """
        The client's session, refused in words before and now ended by gRPC
        core's INTERNAL, leaves the words as the run's cause (its give-up
        line would otherwise say only "Internal error from Core").
        """
        from twisted.python.failure import Failure
        c, stream = liveClient(self)
        self.patch(c.masters, "failOver", lambda: defer.Deferred())
        refused = RemoteError(Status.RESOURCE_EXHAUSTED, "10 sessions open on this master")
        c.reconnects.failed(refused)
        c.session.connectionLost(Failure(RemoteError(Status.INTERNAL,
                                                     "Internal error from Core")))
        self.assertIs(c.reconnects.problem, refused)


class FinishTests(SynchronousTestCase):
    def test_an_orderly_end_completes_when_the_server_ends_the_stream(self):
        """Closing waits for the server to end the session, not for the timeout."""
        c, shown = makeClient()
        stream = FakeStream()
        session = c._newSession()
        session.makeConnection(stream)
        d = session.finish(timeout=1.0)
        self.assertTrue(stream.closed)
        self.assertNoResult(d)
        session.connectionLost(None)
        self.successResultOf(d)
        self.assertEqual(c.clock.getDelayedCalls(), [])


class ScriptedCalls:
    """grpcbridge.call for a client under test: each call answered as scripted, in order."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def call(self, method, request, timeout=None, metadata=None):
        self.calls.append((method, getattr(request, "request_id", None),
                           getattr(request, "prefer_vm", None)))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


class CommandTests(SynchronousTestCase):
    """A command's tries: through a master shedding load, a failover, a refusal."""

    def client(self, test, *answers):
        c, _ = makeClient()
        c.login.stub = type("Stub", (), {"Post": "Post", "List": "List"})()
        c.masters.master1 = Master("vm1", "127.0.0.1:1")
        c.masters.master2 = Master("vm2", "127.0.0.1:2")
        calls = ScriptedCalls(*answers)
        test.patch(clientModule, "grpcbridge", calls)
        failovers = []

        def failOver():
            failovers.append(c.epoch)
            c.epoch += 1
            return defer.succeed(None)

        c.masters.failOver = failOver
        return c, calls, failovers

    def test_a_command_that_works_at_once_is_one_call(self):
        c, calls, failovers = self.client(self, pb.WriteReply(id="vm1.a/1", copies=2))
        reply = self.successResultOf(c.post("hi"))
        self.assertEqual((reply.id, len(calls.calls), calls.calls[0][2], failovers),
                         ("vm1.a/1", 1, "vm2", []))

    def test_a_dead_master_is_failed_over_and_the_same_request_tried_again(self):
        c, calls, failovers = self.client(
            self, RemoteError(Status.UNAVAILABLE, "gone"), pb.WriteReply(id="vm2.b/1"))
        reply = self.successResultOf(c.post("hi"))
        ids = {request for _, request, _ in calls.calls}
        self.assertEqual((reply.id, len(calls.calls), len(ids), failovers), ("vm2.b/1", 2, 1, [0]))

    def test_a_master_shedding_load_is_asked_again_after_a_pause(self):
        c, calls, failovers = self.client(
            self, RemoteError(Status.RESOURCE_EXHAUSTED, "busy"), pb.WriteReply(id="vm1.a/1"))
        d = c.post("hi")
        self.assertNoResult(d)
        c.clock.advance(10)
        self.assertEqual((self.successResultOf(d).id, len(calls.calls), failovers),
                         ("vm1.a/1", 2, []))

    def test_a_refused_command_fails_at_once(self):
        c, calls, failovers = self.client(self, RemoteError(Status.INVALID_ARGUMENT, "bad"))
        failure = self.failureResultOf(c.post("hi"), CommandFailed)
        self.assertEqual((failure.value.code, len(calls.calls), failovers),
                         (Status.INVALID_ARGUMENT, 1, []))

    def test_a_call_cancelled_by_a_failover_is_tried_again_after_it(self):
        c, calls, failovers = self.client(self, defer.CancelledError(), ["listed"])
        self.assertEqual((self.successResultOf(c.listPage()), failovers), (["listed"], [0]))

    def test_a_command_fails_after_its_tries(self):
        c, calls, failovers = self.client(
            self, *[RemoteError(Status.UNAVAILABLE, "gone")] * clientModule.COMMAND_TRIES)
        self.failureResultOf(c.post("hi"), ClusterUnreachable)
        self.assertEqual(len(failovers), clientModule.COMMAND_TRIES)
