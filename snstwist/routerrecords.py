"""
What the router knows of each server process (values, no rule of the
router's): its identity from its hello, its record while it is live, the
events the router keeps for Status, and a VM catching up.
"""

import attrs

from snstwist.core import errors
from snstwist.core.limits import ROUTER_HEARTBEAT
from snstwist.core.model import checkServerHello
from snstwist.rpc import sns_pb2 as pb

# Clients handed a server this recently count in its load until its
# heartbeats do.
PICK_MEMORY = 4 * ROUTER_HEARTBEAT


@attrs.frozen
class ServerIdentity:
    vm: str
    role: int
    address: str
    pid: int
    incarnation: str
    # Its cluster port, where peers dial it (mutual TLS); "" when one port
    # serves both.
    peerAddress: str = ""

    @classmethod
    def fromHello(cls, hello):
        if not hello.vm or not hello.address or not hello.incarnation:
            raise errors.InvalidRequest("hello needs vm, address and incarnation")
        if hello.role not in (pb.MASTER, pb.SLAVE):
            raise errors.InvalidRequest("hello needs a role")
        checkServerHello(hello)
        return cls(hello.vm, hello.role, hello.address, hello.pid, hello.incarnation,
                   hello.peer_address)



@attrs.define
class ServerRecord:
    identity: ServerIdentity
    link: object
    since: float
    lastSeen: float
    awakeSeen: float = 0.0  # lastSeen on the registry's clock of running time (Asleep)
    clients: int = 0
    updates: int = 0
    pending: int = 0
    users: tuple = ()
    acknowledged: int = 0
    peers: tuple = ()
    refused: int = 0
    fedUpdates: int = 0
    fedCalls: int = 0
    picks: list = attrs.field(factory=list)

    def load(self, now):
        """
        Live sessions, plus clients handed this server so recently that its
        heartbeats may not count them yet.
        """
        self.picks = [t for t in self.picks if now - t < PICK_MEMORY]
        return self.clients + len(self.picks)

    def info(self, now, streams=True):
        """What the router says of this server; with C{streams}, its peer streams too."""
        i = self.identity
        return pb.ServerInfo(vm=i.vm, role=i.role, address=i.address,
                             peer_address=i.peerAddress, pid=i.pid,
                             incarnation=i.incarnation, clients=self.clients,
                             updates=self.updates, pending=self.pending,
                             seen_ago=now - self.lastSeen, users=self.users,
                             acknowledged=self.acknowledged,
                             peers=self.peers if streams else (),
                             refused=self.refused if streams else 0,
                             fed_updates=self.fedUpdates, fed_calls=self.fedCalls)


@attrs.frozen
class ClusterEvent:
    time: float
    kind: str
    vm: str
    text: str

    def toProto(self):
        return pb.ClusterEvent(time=self.time, kind=self.kind, vm=self.vm, text=self.text)


@attrs.frozen
class CatchUp:
    """A VM back with a new master, and how many updates its peers held then."""
    target: int
    since: float
