"""
The lag proxy's relay (snstwist/testbed/lagproxy.py): bytes held as the settings say,
never reordered, never changed.
"""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from snstwist.testbed.lagproxy import RTO, Pipe, Settings


def pipe(delay=0.0, jitter=0.0, loss=0.0, draws=()):
    draws = list(draws)
    settings = Settings(rng=lambda: draws.pop(0) if draws else 0.0)
    settings.update(delay, jitter, loss)
    clock = Clock()
    transport = StringTransport()
    return Pipe(clock, settings, transport), clock, transport


class PipeTests(unittest.SynchronousTestCase):

    def test_plain_relay_writes_at_once(self):
        p, clock, transport = pipe()
        p.send(b"abc")
        self.assertEqual(transport.value(), b"abc")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_delay_holds_each_chunk(self):
        p, clock, transport = pipe(delay=0.05)
        p.send(b"abc")
        clock.advance(0.049)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.001)
        self.assertEqual(transport.value(), b"abc")

    def test_jitter_never_reorders(self):
        """A chunk drawn a shorter hold than the one before waits for it."""
        p, clock, transport = pipe(delay=0.01, jitter=0.1, draws=[1.0, 0.0])
        p.send(b"first ")
        p.send(b"second")
        clock.advance(0.011)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1)
        self.assertEqual(transport.value(), b"first second")

    def test_loss_costs_a_retransmission_timeout(self):
        p, clock, transport = pipe(loss=0.5, draws=[0.1, 0.9])
        p.send(b"lost ")
        p.send(b"after")
        clock.advance(RTO - 0.001)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.001)
        self.assertEqual(transport.value(), b"lost after")

    def test_close_waits_for_what_is_held(self):
        p, clock, transport = pipe(delay=0.05)
        p.send(b"last words")
        p.close()
        clock.advance(0.05)
        self.assertEqual(transport.value(), b"last words")
        self.assertTrue(transport.disconnecting)

    def test_settings_back_to_nothing_is_a_plain_relay_again(self):
        p, clock, transport = pipe(delay=0.05)
        p.send(b"slow ")
        p.settings.update()
        p.send(b"fast")
        self.assertEqual(transport.value(), b"")
        clock.advance(0.05)
        self.assertEqual(transport.value(), b"slow fast")
        p.send(b"!")
        self.assertEqual(transport.value(), b"slow fast!")
