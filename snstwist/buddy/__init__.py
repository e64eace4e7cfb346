"""
Buddies: the master and the slave of one VM, which resurrect each other.

- L{role}: the state machine of a server process's role.
- L{supervisor}: the master keeps its slave process alive.
- L{link}: the two ends of C{BuddyConnection}.
- L{processes}: spawning, stopping, signalling and fencing processes (the
  only module of the package that does).
- L{orders}: what a spare process is told on its stdin.

The names most callers need are here too (C{from snstwist import buddy}).
A client program never imports this package.
"""

from snstwist.buddy.link import HEARTBEAT, TIMEOUT, MasterLink, SlaveLink, checkBuddyMessage
from snstwist.buddy.processes import (
    BuddyCommand,
    Pidfile,
    WatchedProcess,
    fence,
    isServer,
    pidAlive,
    runDirectory,
    signalChild,
    signalIfStill,
    signalPid,
    spawn,
    terminate,
    twistdArgs,
    watchParent,
)
from snstwist.buddy.orders import Order, awaitGo, tellGo, tellStandby
from snstwist.buddy.role import Role
from snstwist.buddy.supervisor import BuddySupervisor

__all__ = ["HEARTBEAT", "TIMEOUT", "BuddyCommand", "BuddySupervisor", "MasterLink", "Pidfile",
           "Order", "Role", "SlaveLink", "WatchedProcess", "awaitGo", "checkBuddyMessage", "fence",
           "isServer", "pidAlive", "runDirectory", "signalChild", "signalIfStill", "signalPid",
           "spawn", "tellGo", "tellStandby", "terminate", "twistdArgs", "watchParent"]
