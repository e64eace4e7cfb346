"""
The values one server process is made of: what it was started with
(L{ServerConfig}, the C{sns-server} command line) and who it is
(L{Identity}).
"""

import uuid

import attrs


@attrs.frozen
class ServerConfig:
    """What one server process was started with."""

    vm: str
    listen: str
    routers: tuple = attrs.field(converter=tuple)
    data: str
    secret: str = attrs.field(repr=False)
    role: str = attrs.field(default="master", validator=attrs.validators.in_(("master", "slave")))
    master: str | None = None  # the slave's: its master's BuddyConnection address
    masterPid: int = 0
    # A slave started ahead as a spare: it waits for the order to go on.
    spare: bool = False
    logfile: str | None = None
    metricsListen: str | None = None
    postRate: float | None = None
    tlsArgs: tuple = attrs.field(default=(), converter=tuple)
    # The cluster port (mutual TLS), for the other processes of the
    # cluster; None: any free port of the listen host.
    peerListen: str | None = None
    tokenLifetime: float | None = None  # seconds; None: limits.TOKEN_LIFETIME


@attrs.frozen
class Identity:
    """
    Who this process is: its VM, and an incarnation no other process of the
    VM ever had, which makes C{origin} (the prefix of the ids of the
    updates it writes) unique across restarts and take-overs.
    """

    vm: str
    incarnation: str

    @property
    def origin(self):
        return "%s.%s" % (self.vm, self.incarnation)

    @classmethod
    def new(cls, vm, clock):
        """A fresh incarnation: the start time in microseconds, and some randomness."""
        return cls(vm, "%x" % (int(clock.seconds() * 1e6),) + uuid.uuid4().hex[:6])
