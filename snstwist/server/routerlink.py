"""
A server's streams to the routers (C{Bidirectional_r_and_s}): hello,
heartbeats with its load, and the membership the routers push back, from
which a master learns where the other VMs' masters are.
"""

from twisted.internet import defer

from snstwist.core.limits import ROUTER_HEARTBEAT as HEARTBEAT
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg


class RouterLink(grpcbridge.ReconnectingLink):
    """
    This server's C{Bidirectional_r_and_s} stream to one router: C{hello()}
    when connected, C{load()} with every heartbeat, and each membership
    pushed back given to C{onMembership(address, membership)}.  Reconnects
    with backoff for as long as the server runs.
    """

    interval = HEARTBEAT
    timeout = 3 * HEARTBEAT

    def __init__(self, clock, secret, address, hello, load, onMembership):
        self.clock = clock
        self.address = address
        self.metadata = auth.secretMetadata(secret)
        self.hello = hello
        self.load = load
        self.onMembership = onMembership

    def method(self, channel):
        return pbg.RouterStub(channel).Bidirectional_r_and_s

    def connected(self):
        # The load at once too: a router that (re)connects knows our update
        # count now, not a heartbeat later (a standby ready before the
        # stream was up would otherwise wait for it).
        self.sendHello()
        self.beat()

    def sendHello(self):
        """Tell the router who we are (again, when our role changed)."""
        self.send(pb.ServerMessage(hello=self.hello()))

    def beat(self):
        self.send(pb.ServerMessage(heartbeat=self.load()))

    def received(self, message):
        if message.WhichOneof("kind") == "membership":
            self.onMembership(self.address, message.membership)


def peersOf(memberships, vm):
    """
    {vm: address} of the other VMs' masters, as the routers' views put
    together say; for a VM listed with a slave and no master (its master
    died: the slave is taking over), that slave's, whose end of the stream
    waits until it is master (L{peers.ReplicaReceiver}): the stream is up
    when the promotion is done, not dialled only once it registers.
    """
    peers, standbys = {}, {}
    for membership in memberships:
        for server in membership.servers:
            if server.vm != vm:
                # Peers replicate on the cluster port (mutual TLS).
                found = peers if server.role == pb.MASTER else standbys
                found[server.vm] = server.peer_address or server.address
    return {**standbys, **peers}


class RouterLinks:
    """
    A L{RouterLink} to every router, and what their memberships mean: while
    this server is its VM's master, C{setPeers({vm: address})} is told where
    the other VMs' masters (or their slaves taking over) are after every
    membership a router pushes.
    """

    def __init__(self, routers, clock, secret, vm, current, hello, load, setPeers):
        self.routers = tuple(routers)
        self.clock = clock
        self.secret = secret
        self.vm = vm
        self.current = current
        self.hello = hello
        self.load = load
        self.setPeers = setPeers
        self.links = []
        self.memberships = {}

    def serve(self):
        """Dial every router (the first time), or say hello again (a new role)."""
        if not self.links:
            for address in self.routers:
                link = RouterLink(self.clock, self.secret, address, self.hello, self.load,
                                  self.membershipChanged)
                self.links.append(link)
                link.start()
        else:
            for link in self.links:
                link.sendHello()

    def report(self):
        """Every router hears our load now, not at the next heartbeat (a standby just ready)."""
        for link in self.links:
            link.beat()

    def membershipChanged(self, router, membership):
        self.memberships[router] = membership
        if self.current.isMaster():
            self.setPeers(peersOf(self.memberships.values(), self.vm))

    @defer.inlineCallbacks
    def stop(self):
        """Leave every router, one after the other (a graceful end of each stream)."""
        for link in self.links:
            yield link.stop(graceful=True)
