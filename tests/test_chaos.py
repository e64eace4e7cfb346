"""
The chaos run's short mode (about two minutes of faults), as CI runs it:
kills, stops, partitions, cut-off hosts and (where iptables is installed)
latency, under load; nothing acknowledged may be lost.
"""

import os

from twisted.internet import reactor
from twisted.trial import unittest

from snstwist.testbed import chaos, netbed
from tests.beds import skipUnlessNamespaces
from tests.test_integration import inlineAsync

MINUTES = float(os.environ.get("SNS_CHAOS_MINUTES", "1.5"))


class ChaosRunTests(unittest.TestCase):
    timeout = 900

    @inlineAsync
    async def test_nothing_acknowledged_is_lost_under_faults(self):
        """
        Faults at random times for a minute and a half; then, healed: no
        acknowledged write lost, every VM the same, every reader shown each
        acknowledged post of whom it follows exactly once, nothing leaked.
        """
        skipUnlessNamespaces()
        lines = []
        run = chaos.Chaos(reactor, MINUTES, base=os.path.abspath(self.mktemp()),
                          lag=netbed.lagUnavailable() is None, out=lines.append)
        result = await run.run()
        report = "\n".join(lines + [result.table(), result.details()])
        self.assertTrue(result.ok, report)
        self.assertGreater(sum(result.faults.values()), 0, report)
        self.assertGreater(result.acked, 0, report)
