"""
The store's threads: each kind of its disk work (the batches and their
commits, the queries, the post files' flushes, the WAL's checkpoints) runs
on a thread of its own, one job at a time, in the order given, and each
job's Deferred fires on the reactor.

Twisted's thread pool of one worker did this with a queue, a coordinator
and a context for each job, and a condition to wake its worker: the
reactor spent Python on every handoff (notifying the condition was 2% of a
master's reactor thread at 100 posts/s), and the woken worker took the
interpreter several times before it ran the job, each time winning it back
from a reactor that may be busy.  A L{DiskThread} sleeps on a lock of its
own, released once to wake it; it takes every job waiting when it wakes,
and answers each in one turn of the reactor's loop (L{fromThread}).
"""

import collections
import threading

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

# In the queue: the thread ends here.
_STOP = object()


def _run(f, args):
    try:
        f(*args)
    except BaseException:
        log.failure("a call from a disk thread failed")


def fromThread(reactor):
    """
    How a thread calls C{f(*args)} on C{reactor}'s thread, as soon as it
    can.  Twisted's asyncio reactor's C{callFromThread} takes two turns of
    its loop (the loop's C{call_soon_threadsafe} runs a C{callLater(0, f)},
    which runs on the turn after): on that reactor the call goes to the
    loop itself, one turn.  Other reactors (tests' fakes) get their own.
    """
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is None:
        return reactor.callFromThread

    def call(f, *args):
        loop.call_soon_threadsafe(_run, f, args)

    return call


class DiskThread:
    """
    One thread, made at the first job (L{run}), that runs the jobs given it
    in order; L{stop} ends it after the jobs given before.
    """

    def __init__(self, reactor, name):
        self.reactor = reactor
        self.name = name
        self._jobs = collections.deque()
        # Released to wake the thread (locked: nothing new since it looked).
        self._wake = threading.Lock()
        self._wake.acquire()
        self._thread = None
        self._stopping = None
        # How the thread answers (a test counts the calls here).
        self.callFromThread = fromThread(reactor)

    @property
    def started(self):
        """Has a job been given (and the thread made), and the thread not been stopped?"""
        return self._thread is not None and self._stopping is None

    def run(self, function, *args):
        """
        Run C{function(*args)} on the thread once the jobs given before are
        done: a Deferred of its result (or of its failure), fired on the
        reactor.
        """
        if self._stopping is not None:
            raise RuntimeError("%s was stopped" % (self.name,))
        return self._give(function, args)

    def _give(self, function, args):
        d = defer.Deferred()
        self._jobs.append((function, args, d))
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        try:
            self._wake.release()
        except RuntimeError:
            pass  # woken already: it takes this job with the others
        return d

    def stop(self):
        """
        End the thread once the jobs given before are done: a Deferred that
        fires then (at once if it never started).  No job may be given after.
        """
        if self._stopping is None:
            self._stopping = (self._give(_STOP, ()) if self._thread is not None
                              else defer.succeed(None))
        d = defer.Deferred()

        def stopped(result):
            d.callback(None)
            return result

        self._stopping.addBoth(stopped)
        return d

    def _work(self):
        """The thread: sleep until woken, then run every job waiting, answering each."""
        answer = self.callFromThread
        while True:
            self._wake.acquire()
            while self._jobs:
                function, args, d = self._jobs.popleft()
                if function is _STOP:
                    answer(d.callback, None)
                    return
                try:
                    result = function(*args)
                except BaseException:
                    answer(d.errback, Failure())
                else:
                    answer(d.callback, result)
