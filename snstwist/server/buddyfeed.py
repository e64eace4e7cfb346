"""
C{Onetime_s_to_buddy}: how a master keeps its slave warm, a L{BuddyFeed}
of every durable update, in batches (L{slaveFeed}: over gRPC).  Off every
acknowledgement's path: nothing is lost when a call fails, since a (new)
slave says in its hello what it holds and is sent the rest.
"""

import collections

from twisted.internet import defer
from twisted.logger import Logger

from snstwist.core import metrics
from snstwist.core.limits import UPDATES_PER_MESSAGE
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg

log = Logger()

# How long a batch for the slave smaller than a full message waits for more.
FEED_LINGER = 0.05


class BuddyFeed:
    """
    C{Onetime_s_to_buddy}: the master tells its slave about every durable
    update, in batches, one call in flight at a time.  Nothing is lost when a
    call fails: a (new) slave says what it holds in its hello and is sent the
    rest.

    C{send(batch, metadata)} makes one call (a Deferred), with the cluster
    C{secret} in its metadata; C{release()} lets go of what the calls went
    through (a Deferred).  With a C{clock}, a batch smaller than a full
    message waits C{linger} seconds for more before it is sent: the feed is
    off every acknowledgement's path, and a call carrying many updates costs
    both processes little more than one carrying one.  L{slaveFeed} makes a
    feed over gRPC.
    """

    def __init__(self, send, secret, release=lambda: defer.succeed(None), clock=None,
                 linger=0.0, traffic=None):
        self.sendBatch = send
        self.release = release
        self.metadata = auth.secretMetadata(secret)
        self.clock = clock
        self.linger = linger if clock is not None else 0.0
        self.queue = collections.deque()
        self.busy = False
        self.closed = False
        self.waiting = None  # the call of a batch lingering for more
        # The updates fed, in how many calls (a master's, across its feeds).
        self.traffic = traffic if traffic is not None else metrics.Traffic()
        self.emptied = []  # Deferreds of pushPage, fired when the queue is empty

    def push(self, updates):
        if self.closed:
            return
        self.queue.extend(updates)
        self._kick()

    def pushPage(self, updates):
        """
        L{push} one page of a catch-up, without lingering; the Deferred
        fires once the queue is empty.
        """
        if self.closed:
            return defer.fail(defer.CancelledError())
        d = defer.Deferred()
        self.emptied.append(d)
        self.push(updates)
        return d

    def _kick(self):
        """Send now, or linger for more (a call in flight sends what waits when it is done)."""
        if self.busy:
            return
        # A page of a catch-up is all there is to wait for (L{pushPage}):
        # lingering would only delay the standby it makes ready.
        full = len(self.queue) >= UPDATES_PER_MESSAGE or bool(self.emptied)
        if self.waiting is not None:
            if not full:
                return
            self.waiting.cancel()
        elif self.queue and not full and self.linger:
            self.waiting = self.clock.callLater(self.linger, self._send)
            return
        self._send()

    def _send(self):
        self.waiting = None
        # Cut from the front without copying the rest.
        batch = [self.queue.popleft() for _ in range(min(UPDATES_PER_MESSAGE, len(self.queue)))]
        if not batch or self.closed:
            self.busy = False
            emptied, self.emptied = self.emptied, []
            for d in emptied:
                d.errback(defer.CancelledError()) if self.closed else d.callback(None)
            return
        self.busy = True
        self.traffic.count(len(batch))
        d = self.sendBatch(pb.UpdateBatch(updates=[u.encoding() for u in batch]), self.metadata)

        def failed(f):
            log.info("could not update the slave: {why}", why=f.getErrorMessage())
            self.queue.clear()

        def done(_):
            self.busy = False
            self._kick()

        d.addCallbacks(lambda _: None, failed)
        d.addCallback(done)

    def close(self):
        self.closed = True
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None
        emptied, self.emptied = self.emptied, []
        for d in emptied:
            d.errback(defer.CancelledError())
        return self.release()


def slaveFeed(address, secret, clock=None):
    """A L{BuddyFeed} to the slave at C{address}, on a gRPC channel of its own."""
    channel = grpcbridge.channel(address)
    stub = pbg.ClusterStub(channel)

    def send(batch, metadata):
        return grpcbridge.call(stub.Onetime_s_to_buddy, batch, timeout=5, metadata=metadata)

    return BuddyFeed(send, secret, lambda: grpcbridge.closeChannel(channel), clock, FEED_LINGER)
