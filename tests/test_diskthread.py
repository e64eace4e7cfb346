"""
L{DiskThread}: the store's threads run their jobs one at a time, in the
order given, off the reactor's thread, and answer each on the reactor.
"""

import asyncio
import threading

from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from snstwist.storage.threads import DiskThread, fromThread


class Boom(Exception):
    pass


class DiskThreadTests(TestCase):
    def setUp(self):
        self.thread = DiskThread(reactor, "sns-test")
        self.addCleanup(self.thread.stop)

    def test_no_thread_is_made_before_the_first_job(self):
        self.assertFalse(self.thread.started)
        self.assertFalse([t for t in threading.enumerate() if t.name == "sns-test"])

    async def test_jobs_run_in_order_on_one_thread_that_is_not_the_reactors(self):
        ran = []

        def job(n):
            ran.append((n, threading.get_ident()))
            return n * 10

        results = await defer.gatherResults([self.thread.run(job, n) for n in range(50)])
        self.assertEqual(results, [n * 10 for n in range(50)])
        self.assertEqual([n for n, _ in ran], list(range(50)))
        threads = {ident for _, ident in ran}
        self.assertEqual(len(threads), 1)
        self.assertNotIn(threading.get_ident(), threads)
        self.assertTrue(self.thread.started)

    async def test_each_answer_comes_on_the_reactors_thread(self):
        answered = []
        d = self.thread.run(lambda: None)
        d.addCallback(lambda _: answered.append(threading.get_ident()))
        await d
        self.assertEqual(answered, [threading.get_ident()])

    async def test_a_job_given_after_the_thread_went_idle_wakes_it(self):
        self.assertEqual(await self.thread.run(lambda: 1), 1)
        # (The thread is asleep again, or about to be: either way it runs the next.)
        for n in range(20):
            self.assertEqual(await self.thread.run(lambda n=n: n), n)

    async def test_a_job_that_raises_fails_its_deferred_and_the_next_runs(self):
        def fails():
            raise Boom("disk full")

        first = self.thread.run(fails)
        second = self.thread.run(lambda: "next")
        with self.assertRaises(Boom):
            await first
        self.assertEqual(await second, "next")

    async def test_a_job_given_while_another_runs_waits_for_it(self):
        started, release = threading.Event(), threading.Event()
        order = []

        def slow():
            started.set()
            release.wait(30)
            order.append("slow")

        first = self.thread.run(slow)
        # Given while the thread is busy with the first: taken after it.
        started.wait(30)
        second = self.thread.run(lambda: order.append("quick"))
        release.set()
        await defer.gatherResults([first, second])
        self.assertEqual(order, ["slow", "quick"])

    async def test_stop_ends_the_thread_after_the_jobs_given_before(self):
        done = []
        jobs = [self.thread.run(done.append, n) for n in range(5)]
        thread = [t for t in threading.enumerate() if t.name == "sns-test"]
        await self.thread.stop()
        self.assertEqual(done, list(range(5)))
        self.assertTrue(all(d.called for d in jobs))
        # Its last act was the answer to stop: it ends (joined off the reactor).
        await threads.deferToThread(thread[0].join, 30)
        self.assertFalse(thread[0].is_alive())
        self.assertFalse(self.thread.started)
        with self.assertRaises(RuntimeError):
            self.thread.run(done.append, 6)

    async def test_stop_before_any_job_fires_at_once(self):
        thread = DiskThread(reactor, "sns-unused")
        await thread.stop()
        self.assertFalse(thread.started)
        # Stopping twice is stopping.
        await thread.stop()


class FromThreadTests(TestCase):
    async def test_a_call_from_a_thread_runs_on_the_loops_next_turn(self):
        """
        A call made from a thread runs among the loop's ready calls of the
        next turn, before what the reactor's thread queues for the turn
        after it; Twisted's asyncio reactor's callFromThread would run it
        a turn later (a callLater(0) of it).
        """
        loop = asyncio.get_event_loop()
        order = []
        made = threading.Event()
        done = defer.Deferred()

        def fromAThread():
            fromThread(reactor)(order.append, "from the thread")
            made.set()

        def blocked():
            threading.Thread(target=fromAThread).start()
            self.assertTrue(made.wait(30))
            # Queued after the thread's call, on the reactor's thread.
            loop.call_soon(order.append, "next on the loop")
            reactor.callLater(0.01, done.callback, None)

        reactor.callLater(0, blocked)
        await done
        self.assertEqual(order, ["from the thread", "next on the loop"])

    async def test_a_call_from_a_thread_that_raises_is_logged(self):
        def fails():
            raise Boom("bug")

        made = threading.Event()

        def fromAThread():
            fromThread(reactor)(fails)
            made.set()

        await threads.deferToThread(fromAThread)
        await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_a_reactor_without_an_asyncio_loop_is_called_as_it_says(self):
        calls = []

        class Plain:
            def callFromThread(self, f, *args):
                calls.append((f, args))

        fromThread(Plain())(print, 1)
        self.assertEqual(calls, [(print, (1,))])
