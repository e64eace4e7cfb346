"""
What one server process does to the process it runs in: its reactor's stop,
its exit status, its pidfile, and how the garbage collector treats the data
it holds.  Nothing here knows about roles, RPCs or replication.
"""

import gc
import os
import sys

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

log = Logger()

SETTLE = 60.0


def stopOnlyOnce(reactor):
    """
    Make a second stop of this process's reactor a no-op.  A slave is told
    to stop more than once (its master's SIGTERM, sns-cluster's SIGTERM, the
    master's stopping notice), and twistd's own signal handler calls
    C{reactor.stop()} each time: the second raised ReactorNotRunning, logged
    as a critical error, in an orderly stop.
    """
    stop = reactor.stop
    if getattr(stop, "once", False):
        return

    def stopOnce():
        try:
            stop()
        except ReactorNotRunning:
            log.info("asked to stop again while stopping")

    stopOnce.once = True
    reactor.stop = stopOnce


def stopReactor(reactor):
    """Stop this process, unless it is stopping already."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


def exitNow(status):
    """End this process with C{status} (twistd itself would exit 0)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def exitWith(reactor, status):
    """Stop the reactor, and once it has shut down, exit with C{status}."""
    reactor.addSystemEventTrigger("after", "shutdown", exitNow, status)
    stopReactor(reactor)


def settleMemory():
    """
    What was loaded or accepted so far lives as long as the process: keep it
    out of the garbage collector's full passes, which otherwise hold the
    reactor for hundreds of milliseconds once a million posts are held.
    Young garbage is collected first; a full collection is not (it would
    cost what freezing saves).  Done once warm, then every L{SETTLE} seconds.
    """
    gc.collect(1)
    gc.freeze()


def withoutCollections(load):
    """
    Run C{load()} (a Deferred: a history read on the disk thread and applied
    in slices) with the collector off, so that no full collection over the
    objects being loaded runs in the middle, on either thread; then freeze
    what was loaded and turn the collector on again.  Not even a young
    collection first: with the collector off nothing aged, so everything
    loaded is young, and collecting it would be the long pass avoided.
    """
    gc.disable()

    def settle(result):
        gc.freeze()
        gc.enable()
        return result

    return load().addBoth(settle)

