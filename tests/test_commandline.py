"""
What every command-line program shares (snstwist/commands/commandline.py).
"""

import asyncio

from twisted.internet import reactor
from twisted.trial import unittest

from snstwist.commands.commandline import installReactor


class InstallReactorTests(unittest.SynchronousTestCase):

    def test_a_second_install_keeps_the_reactors_loop_current(self):
        """
        Options of a command and of its sub-command each install the
        reactor: the second call must leave the reactor's asyncio loop the
        current one, or grpc.aio binds to a loop nothing runs and every call
        hangs (what sns-chaos's worker did).
        """
        installReactor()
        installReactor()
        self.assertIs(asyncio.get_event_loop(), reactor._asyncioEventloop)
