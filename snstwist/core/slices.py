"""
Long work on the reactor thread, cut into slices.

Loading a VM's history, mirroring it into a standby or sending a catch-up
to a peer touches every update; done in one go it holds the reactor for
seconds, and heartbeats stop (the router then deactivates the server, the
buddy fences it).  L{inSlices} does the same work a slice of at most
C{budget} seconds at a time, letting the reactor run between slices.
"""

import time

from twisted.internet import defer

BUDGET = 0.010
_CHECK_EVERY = 64


def inSlices(clock, items, apply, budget=BUDGET, now=time.monotonic):
    """
    Call C{apply(item)} for each of C{items}, in order; between slices of
    C{budget} seconds the reactor runs (C{clock.callLater(0)}).  The first
    slice runs at once, so work that fits in one slice is done on return.
    Returns a Deferred that fires with None when every item is applied (or
    fails with the first error of C{apply}, leaving the rest undone).
    """
    remaining = iter(items)
    done = defer.Deferred()

    def run():
        deadline = now() + budget
        try:
            n = 0
            for item in remaining:
                apply(item)
                n += 1
                if n % _CHECK_EVERY == 0 and now() > deadline:
                    clock.callLater(0, run)
                    return
        except Exception:
            done.errback()
            return
        done.callback(None)

    run()
    return done
