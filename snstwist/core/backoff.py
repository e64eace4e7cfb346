"""
How long to wait before trying again: the one retry policy of the package.

Every loop that tries something again after a failure (a client finding a
master, a master respawning its slave, a link to a router or a peer, a
login refused for load) waits L{backoffPolicy}'s delay: exponential, capped,
and stretched by a random part of itself.  The random part matters: when a
master dies, every client of it and every peer loses it at the same instant,
and without jitter they would all come back in the same instant again, each
time, in step.

Like L{twisted.application.internet.backoffPolicy}, whose shape this is,
except that the jitter is a fraction of the delay instead of up to a whole
second added to it: our delays start at tens of milliseconds, where an added
second would be the whole wait.

This module never sleeps or schedules: it only answers "how long".
"""

import random

# The jitter stretches a delay by up to this fraction of itself.
JITTER = 0.25


def backoffPolicy(initialDelay, maxDelay, factor=2.0, jitter=random.random, spread=JITTER):
    """
    The seconds to wait before attempt C{n + 1} after C{n + 1} failures in a
    row (C{n} counts from 0): C{initialDelay * factor ** n}, never more than
    C{maxDelay}, then multiplied by C{1 + spread * jitter()}.

    @param jitter: a 0-argument callable returning a float in [0, 1), such
        as C{random.random} (the default); a test passes a constant.
    @return: a 1-argument callable from the attempt number to the delay,
        which is in [base, base * (1 + spread)).
    """
    if initialDelay <= 0 or maxDelay < initialDelay or factor < 1 or not 0 <= spread <= 1:
        raise ValueError("a backoff needs 0 < initialDelay <= maxDelay, factor >= 1 and"
                         " 0 <= spread <= 1, not %r, %r, %r, %r"
                         % (initialDelay, maxDelay, factor, spread))

    def policy(attempt):
        try:
            base = min(initialDelay * factor ** min(attempt, 100), maxDelay)
        except OverflowError:
            base = maxDelay
        return base * (1 + spread * jitter())

    return policy
