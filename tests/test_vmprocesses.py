"""
Taking a VM down in a test or a benchmark (L{vmprocesses}): the servers on
a data directory, or under a tree of them, found by their command line and
SIGKILLed; nothing else is touched.  With real processes standing for
servers (their command lines say so).
"""

import os
import signal

from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from snstwist.testbed import vmprocesses
from tests.test_integration import inlineAsync
from tests.test_stale_pids import sleeper


class DataDirectoryTests(SynchronousTestCase):
    def test_both_spellings_of_the_option(self):
        for cmdline in ([b"twistd", b"sns-server", b"--data", b"/d/vm1"],
                        [b"twistd", b"sns-server", b"--data=/d/vm1", b"--spare"]):
            self.assertEqual(vmprocesses.dataDirectory(cmdline), b"/d/vm1")

    def test_none_without_the_option(self):
        self.assertIsNone(vmprocesses.dataDirectory([b"twistd", b"sns-router", b"--data"]))


class KillTests(unittest.TestCase):
    timeout = 60

    @inlineAsync
    async def test_every_server_on_the_directory_or_under_it_and_nothing_else(self):
        base = os.path.abspath(self.mktemp())
        vm1, vm2 = os.path.join(base, "vm1", "data"), os.path.join(base, "vm2", "data")
        one = await sleeper(self, "sns-server", "--data", vm1)
        spare = await sleeper(self, "sns-server", "--data=" + vm1, "--spare")
        other = await sleeper(self, "sns-server", "--data", vm2)
        longer = await sleeper(self, "sns-server", "--data", vm1 + "-not")
        router = await sleeper(self, "sns-router", "--data", vm1)
        self.assertEqual(sorted(vmprocesses.serversOn(vm1)), sorted([one.pid, spare.pid]))
        self.assertEqual(sorted(vmprocesses.serversOn(base)),
                         sorted([one.pid, spare.pid, other.pid, longer.pid]))
        self.assertEqual(vmprocesses.killServersOn(vm1), {one.pid, spare.pid})
        self.assertEqual([-(await p.ended) for p in (one, spare)], [signal.SIGKILL] * 2)
        self.assertEqual(sorted(vmprocesses.serversOn(base)), sorted([other.pid, longer.pid]))
        self.assertFalse(router.ended.called)
