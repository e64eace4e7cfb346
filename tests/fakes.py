"""Fakes shared by the unit tests."""

from twisted.internet import defer

from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc.grpcbridge import SECRET_METADATA, SESSION_METADATA


class FakeCallContext:
    """What a servicer function sees of a call: its metadata and peer."""

    peer = "ipv4:127.0.0.1:5555"

    def __init__(self, metadata=()):
        self.metadata = dict(metadata)


def session(token):
    """A call carrying the session token C{token}."""
    return FakeCallContext({SESSION_METADATA: token})


def secret(value):
    """A call carrying C{value} as the cluster secret."""
    return FakeCallContext({SECRET_METADATA: value})


class NoRoleWork:
    """Role hooks that do nothing: the role machine alone, no processes."""

    def serveAsMaster(self, promoted):
        pass

    def standBy(self):
        pass

    def takeOver(self, why):
        pass

    def shutdown(self):
        pass


class FakeStream:
    """
    Our side of a bidi stream (what L{snstwist.rpc.grpcbridge.Stream} offers):
    records what the code under test sends and how it ends the stream.
    C{sent} holds messages: what was sent encoded (bytes, on a server's
    stream) is decoded as a C{encodedAs}; C{encoded} holds those bytes as sent.
    """

    peer = "ipv4:127.0.0.1:5555"
    encodedAs = pb.ServerPush

    def __init__(self):
        self._sent = []
        self._gathered = []  # what L{gather} queued, until the writer takes it
        self._encoded = []
        self.closed = False
        self.aborted = False
        self.reason = None
        self.unread = 0
        self.mostUnread = 0
        self._drained = []

    @property
    def sent(self):
        """
        Every message sent so far: the writer takes what L{gather} queued
        whenever the test looks (L{take}).
        """
        self.take()
        return self._sent

    @property
    def encoded(self):
        """What was sent encoded, as sent (the writer takes what was gathered first)."""
        self.take()
        return self._encoded

    def take(self):
        """The writer takes the gathered messages: nothing joins them any more."""
        gathered, self._gathered = self._gathered, []
        for _kind, items, build in gathered:
            self._record(build(items))

    def send(self, message):
        self.take()
        self._record(message)
        self._count()
        return True

    def _record(self, message):
        if isinstance(message, bytes):
            self._encoded.append(message)
            message = self.encodedAs.FromString(message)
        self._sent.append(message)

    def gather(self, kind, items, build, limit):
        """As the real stream's: items join the last message queued while it is of C{kind}."""
        for item in items:
            tail = self._gathered[-1] if self._gathered else None
            if tail is None or tail[0] != kind or len(tail[1]) >= limit:
                tail = (kind, [], build)
                self._gathered.append(tail)
                self._count()
            tail[1].append(item)
        return True

    def _count(self):
        self.unread += 1
        self.mostUnread = max(self.mostUnread, self.unread)

    def drained(self, below):
        """Fires once the peer has read all but C{below} messages (see L{read})."""
        if self.unread <= below:
            return defer.succeed(None)
        d = defer.Deferred()
        self._drained.append((below, d))
        return d

    def read(self):
        """The peer reads everything sent so far."""
        self.unread = 0
        waiters, self._drained = self._drained, []
        for _, d in waiters:
            d.callback(None)

    def readAll(self, most=1000):
        """The peer keeps reading until nothing more comes (at most C{most} times)."""
        for _ in range(most):
            if not self._drained:
                return
            self.read()
        raise AssertionError("the sender never stopped")

    def close(self):
        self.closed = True

    def abort(self, reason=None):
        self.aborted = True
        self.reason = reason

    def end(self, reason, farewell=None):
        """Ended with C{reason}'s status (as an abort is), C{farewell} sent first."""
        if farewell is not None:
            self.sent.append(farewell)
        self.abort(reason)

    def kinds(self):
        """The oneof kind of every message sent, in order."""
        return [m.WhichOneof("kind") for m in self.sent]

    def last(self, kind):
        """The payload of the last message of that kind sent."""
        return [getattr(m, kind) for m in self.sent if m.WhichOneof("kind") == kind][-1]


class FakeHasher:
    """
    Stands in for L{snstwist.server.passwords.Hasher} in unit tests: answers at
    once (argon2 itself is tested in test_passwords).
    """

    def hash(self, password):
        from twisted.internet import defer
        return defer.succeed("fake$" + password)

    def verify(self, hashed, password):
        from twisted.internet import defer
        return defer.succeed(bool(hashed) and hashed == "fake$" + password)

    def stop(self):
        pass
