"""
Servers built from their parts for unit tests: a node on a MemoryStore, a
Clock, a fake password hasher and a role given outright; no process, no
socket, no router.  The same L{ServerParts} a real server is made of.
"""

from twisted.internet.testing import MemoryReactorClock

from snstwist.core.limits import HISTORY
from snstwist.core.node import Node
from snstwist.server.config import Identity, ServerConfig
from snstwist.server.lifecycle import CurrentRole
from snstwist.server.service import ServerParts
from snstwist.storage.store import MemoryStore
from tests.fakes import FakeHasher

def readWindows(test, node):
    """
    Ask for every user's timeline, so that memory holds again the windows
    a start does not read (they are read from disk when first asked for).
    """
    for user in sorted(node.replica.users):
        test.successResultOf(node.history.recent(user, HISTORY))


ADDRESS = "127.0.0.1:1"
PEER_ADDRESS = "127.0.0.1:3"


def serverConfig(test, role="master", secret="s", vm="vm1", postRate=None):
    return ServerConfig(vm=vm, listen="127.0.0.1:0", routers=("127.0.0.1:2",),
                        data=test.mktemp(), secret=secret, role=role, postRate=postRate)


def serverParts(test, role="master", secret="s", store=None, clock=None, load=True,
                postRate=None, current=None, node=None, feedTo=None):
    """
    The parts of VM vm1's server playing C{role} on C{store} (a manual
    MemoryStore by default), loaded unless C{load} is false.  C{current} is
    the L{CurrentRole} it reads (a new one of C{role} by default); C{node}
    one already made (and loaded), instead of a new one; C{feedTo} makes a
    master's feed to its slave (see L{buddylink.MasterEnd}).  Its reactor is
    a L{MemoryReactorClock}, so nothing it could spawn is real.
    """
    reactor = MemoryReactorClock()
    clock = clock if clock is not None else reactor
    identity = Identity("vm1", "test")
    if node is None:
        store = store if store is not None else MemoryStore(manual=True)
        node = Node("vm1", identity.origin, store, clock)
        if load:
            test.successResultOf(node.load())
    return ServerParts(serverConfig(test, role, secret, postRate=postRate), identity, node,
                       clock, reactor, FakeHasher(), current or CurrentRole(role), lambda: ADDRESS,
                       lambda: PEER_ADDRESS, feedTo)
