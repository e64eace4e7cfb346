"""
Passwords, and how fast anyone may try them: argon2id hashing off the
reactor, token buckets, and the slowdown of failed logins.

argon2 is deliberately slow and memory-hungry (tens of milliseconds and
19 MiB a hash): it must never run on the reactor thread, and never more
than L{limits.HASHING_THREADS} at once, or a burst of logins would stall
every client of the master and take all its memory.  A L{Hasher} runs it
on a thread pool of its own and refuses work past L{limits.HASHING_QUEUE}
waiting.

The bounds and rates are in L{snstwist.core.limits}; this module is the
machinery.
"""

import collections

import argon2
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from snstwist.core import errors, limits


def argon2Hasher():
    return argon2.PasswordHasher(time_cost=limits.ARGON2_TIME_COST,
                                 memory_cost=limits.ARGON2_MEMORY_KIB,
                                 parallelism=limits.ARGON2_PARALLELISM,
                                 type=argon2.Type.ID)


def _verify(hasher, hashed, password):
    try:
        return hasher.verify(hashed, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


class Hasher:
    """
    argon2id on a bounded thread pool.  C{hash(password)} and
    C{verify(hashed, password)} return Deferreds (of the hash, of a bool);
    both raise L{errors.Overloaded} at once when too many wait already.
    """

    def __init__(self, reactor=None, threads=limits.HASHING_THREADS,
                 queue=limits.HASHING_QUEUE):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.argon2 = argon2Hasher()
        self.pool = ThreadPool(0, threads, name="sns-argon2")
        self.queue = queue
        self.busy = 0
        self.started = False

    def _run(self, f, *args):
        if self.busy >= self.queue:
            raise errors.Overloaded("%d password checks waiting on this master; try again"
                                    % (self.busy,))
        if not self.started:
            self.pool.start()
            self.started = True
        self.busy += 1

        def done(result):
            self.busy -= 1
            return result

        return deferToThreadPool(self.reactor, self.pool, f, *args).addBoth(done)

    def hash(self, password):
        return self._run(self.argon2.hash, password)

    def verify(self, hashed, password):
        if not hashed:
            # An account from before passwords: nothing to check against.
            return defer.succeed(False)
        return self._run(_verify, self.argon2, hashed, password)

    def stop(self):
        if self.started:
            self.started = False
            self.pool.stop()


class _Recent(collections.OrderedDict):
    """A dict that keeps at most C{limit} keys, forgetting the least recently used."""

    def __init__(self, limit=limits.MAX_TRACKED):
        super().__init__()
        self.limit = limit

    def touch(self, key, default):
        value = self.pop(key, None)
        if value is None:
            value = default()
        self[key] = value
        while len(self) > self.limit:
            self.popitem(last=False)
        return value


class TokenBuckets:
    """
    One token bucket per key (a user, an address): each holds at most
    C{burst} tokens and gains C{rate} a second; a request takes one, and
    is refused with L{errors.RateLimited} when the bucket is empty.  So a
    key may send C{burst} requests at once, then C{rate} a second for as
    long as it likes.  Only the L{limits.MAX_TRACKED} keys seen last are
    kept (a forgotten key starts full, which costs nothing: a full bucket
    is the state of any key idle for C{burst / rate} seconds).
    """

    def __init__(self, clock, rate, burst, what, limit=limits.MAX_TRACKED):
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.what = what
        self.buckets = _Recent(limit)

    def take(self, key):
        now = self.clock.seconds()
        bucket = self.buckets.touch(key, lambda: [self.burst, now])
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            raise errors.RateLimited("more than %g %s a second; slow down"
                                     % (self.rate, self.what))
        bucket[0] = tokens - 1


class FailedLogins:
    """
    Failed logins slow down the next attempt, per user and per address:
    after N failures in a row, attempts are refused (RESOURCE_EXHAUSTED,
    saying how long to wait) until L{limits.FAILED_LOGIN_DELAY} * 2**(N-1)
    seconds (at most L{limits.FAILED_LOGIN_MAX_DELAY}) after the last one.
    A success clears the user's count and the address's.
    """

    def __init__(self, clock, limit=limits.MAX_TRACKED):
        self.clock = clock
        self.failures = _Recent(limit)

    def _wait(self, key):
        entry = self.failures.get(key)
        if entry is None:
            return 0.0
        count, last = entry
        delay = min(limits.FAILED_LOGIN_MAX_DELAY, limits.FAILED_LOGIN_DELAY * 2 ** (count - 1))
        return last + delay - self.clock.seconds()

    def check(self, user, address):
        for key, who in ((("user", user), "for " + user), (("address", address),
                                                            "from your address")):
            wait = self._wait(key)
            if wait > 0:
                raise errors.RateLimited("too many failed logins %s: try again in %.1f s"
                                         % (who, wait))

    def failed(self, user, address):
        now = self.clock.seconds()
        for key in (("user", user), ("address", address)):
            entry = self.failures.touch(key, lambda: [0, now])
            entry[0] += 1
            entry[1] = now

    def succeeded(self, user, address):
        self.failures.pop(("user", user), None)
        self.failures.pop(("address", address), None)

