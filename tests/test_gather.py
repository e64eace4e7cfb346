"""
L{grpcbridge.Stream.gather}: items queued for a peer join the last message
queued while the stream's writer has not taken it, so a busy stream sends
fewer, fuller messages; each message is built when it is taken, in the
order queued, within its limit and the queue's bound.

The writer is the stream's own outgoing generator, driven here by hand (as
grpc drives it: one message, then the next once that one is written), and
once over a real grpc.aio stream.
"""

from twisted.trial import unittest

from snstwist.rpc import grpcbridge
from tests.test_grpcbridge import GrpcTestCase, RecordingProtocol, numbers, push


def built(items):
    """The message gathered C{items} make: what the writer sends."""
    return ("batch", list(items))


def other(items):
    return ("other", list(items))


class GatherTests(unittest.TestCase):
    def setUp(self):
        self.stream = grpcbridge.Stream(maxQueue=3)
        self.writer = self.stream._outgoing()

    async def take(self):
        """The writer takes the next message to send."""
        return await self.writer.__anext__()

    async def test_items_gathered_before_the_writer_takes_go_in_one_message(self):
        for i in range(3):
            self.assertTrue(self.stream.gather("batch", [i], built, 10))
        self.assertEqual((self.stream.pending, await self.take()), (1, ("batch", [0, 1, 2])))

    async def test_once_taken_a_message_is_not_joined(self):
        self.stream.gather("batch", [1], built, 10)
        first = await self.take()
        self.stream.gather("batch", [2], built, 10)
        self.assertEqual((first, await self.take()), (("batch", [1]), ("batch", [2])))

    async def test_a_message_holds_at_most_its_limit(self):
        self.stream.gather("batch", [1, 2, 3], built, 2)
        self.stream.gather("batch", [4], built, 2)
        self.assertEqual([await self.take(), await self.take()],
                         [("batch", [1, 2]), ("batch", [3, 4])])

    async def test_nothing_overtakes_a_message_queued_after_the_gathering(self):
        """Only the last message queued is joined: messages leave in the order queued."""
        self.stream.gather("batch", [1], built, 10)
        self.stream.send("hello")
        self.stream.gather("batch", [2], built, 10)
        self.assertEqual([await self.take() for _ in range(3)],
                         [("batch", [1]), "hello", ("batch", [2])])

    async def test_another_kind_starts_its_own_message(self):
        self.stream.gather("batch", [1], built, 10)
        self.stream.gather("other", [2], other, 10)
        self.assertEqual([await self.take(), await self.take()],
                         [("batch", [1]), ("other", [2])])

    async def test_the_messages_count_against_the_queue_bound(self):
        """Gathering more than maxQueue full messages cuts the peer off, as sends do."""
        self.assertTrue(self.stream.gather("batch", list(range(6)), built, 2))
        self.assertFalse(self.stream.gather("batch", [6], built, 2))
        self.assertFalse(self.stream.gather("batch", [7], built, 100),
                         "nothing is queued once cut off")

    async def test_joining_a_waiting_message_does_not_count(self):
        for i in range(100):
            self.assertTrue(self.stream.gather("batch", [i], built, 100))
        self.assertEqual(self.stream.pending, 1)

    async def test_nothing_is_gathered_after_close(self):
        self.stream.gather("batch", [1], built, 10)
        self.stream.close()
        self.assertFalse(self.stream.gather("batch", [2], built, 10))
        self.assertEqual(await self.take(), ("batch", [1]))

    async def test_an_ended_stream_drops_what_was_gathered(self):
        self.stream.gather("batch", [1], built, 10)
        self.stream.end(None, farewell="bye")
        self.assertFalse(self.stream.gather("batch", [2], built, 10))
        self.assertEqual(await self.take(), "bye")


def pushes(items):
    return push(sum(items))


class GatherOverGrpcTests(GrpcTestCase):
    async def test_what_is_gathered_in_one_turn_arrives_in_one_message(self):
        """
        Items gathered in one turn reach the client as one message, built
        from all of them; what follows, after it, in order.
        """
        server = RecordingProtocol()
        _, client, _ = await self.openSession(lambda ctx: server)
        transport = await server.connected
        for n in (1, 2, 3):
            transport.gather("pushes", [n], pushes, 10)
        transport.send(push(100))
        transport.close()
        self.assertIsNone(await client.lost())
        self.assertEqual(numbers(client.received), [6, 100])
