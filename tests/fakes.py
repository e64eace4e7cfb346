"""Fakes shared by the unit tests."""


class FakeStream:
    """
    Our side of a bidi stream (what L{snstwist.grpcbridge.Stream} offers):
    records what the code under test sends and how it ends the stream.
    """

    peer = "ipv4:127.0.0.1:5555"

    def __init__(self):
        self.sent = []
        self.closed = False
        self.aborted = False
        self.reason = None

    def send(self, message):
        self.sent.append(message)
        return True

    def close(self):
        self.closed = True

    def abort(self, reason=None):
        self.aborted = True
        self.reason = reason

    def kinds(self):
        """The oneof kind of every message sent, in order."""
        return [m.WhichOneof("kind") for m in self.sent]

    def last(self, kind):
        """The payload of the last message of that kind sent."""
        return [getattr(m, kind) for m in self.sent if m.WhichOneof("kind") == kind][-1]
