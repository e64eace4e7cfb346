"""
Connections per address, for a gRPC server.

gRPC's server accepts every connection up to its total
(C{grpc.max_allowed_incoming_connections}) and has no hook where one could
be refused by its peer's address, so one address could take them all and
lock everybody else out.  L{AddressCap} bounds them from outside gRPC: it
looks at this process's own sockets (Linux's C{/proc/self/fd} and
C{/proc/net/tcp}, C{tcp6}), and shuts down the newest connections of any
address holding more than its limit on the server's ports.  gRPC then sees
them end as if the peer had hung up, and closes them itself.

The look is cheap while the process has fewer sockets than the limit (no
address can be over it then: one directory listing a sweep), and runs on a
thread, never on the reactor.
"""

import collections
import os
import socket

from twisted.internet import task, threads
from twisted.logger import Logger

from snstwist.core.limits import MAX_CONNECTIONS_PER_ADDRESS

log = Logger()

PROC_NET = ("/proc/net/tcp", "/proc/net/tcp6")
ESTABLISHED = "01"


def _host(hexAddress):
    """The host of a C{/proc/net/tcp} address (C{0100007F:1F90}), as text."""
    raw = bytes.fromhex(hexAddress.split(":")[0])
    # The kernel prints each 32-bit word of the address in host byte order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return socket.inet_ntop(socket.AF_INET, words)
    if words[:12] == b"\0" * 10 + b"\xff\xff":  # an IPv4 peer of an IPv6 socket
        return socket.inet_ntop(socket.AF_INET, words[12:])
    return socket.inet_ntop(socket.AF_INET6, words)


def established(ports, tables=PROC_NET):
    """
    [(inode, peer host)] of the established TCP connections whose local
    port is one of C{ports}, from the kernel's tables (of every process in
    this network namespace: the caller keeps its own).
    """
    wanted = {"%04X" % p for p in ports}
    out = []
    for table in tables:
        try:
            f = open(table)
        except FileNotFoundError:  # no IPv6 here
            continue
        with f:
            next(f, None)  # the header
            for line in f:
                fields = line.split()
                if len(fields) < 10 or fields[3] != ESTABLISHED:
                    continue
                if fields[1].rpartition(":")[2] in wanted:
                    out.append((int(fields[9]), _host(fields[2])))
    return out


def socketsByInode(fdDir="/proc/self/fd"):
    """{inode: fd} of this process's sockets."""
    out = {}
    for name in os.listdir(fdDir):
        try:
            target = os.readlink(os.path.join(fdDir, name))
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            out[int(target[8:-1])] = int(name)
    return out


def overLimit(connections, limit):
    """
    The inodes of C{connections} ([(inode, host)]) past the first C{limit}
    of their host, oldest first: the kernel numbers sockets as it makes
    them, so the newest are the ones left out.
    """
    byHost = collections.defaultdict(list)
    for inode, host in connections:
        byHost[host].append(inode)
    return {host: sorted(inodes)[limit:]
            for host, inodes in byHost.items() if len(inodes) > limit}


def shutDown(fd, inode):
    """
    Shut down the socket C{fd} if it still is socket C{inode} (the number
    may have been reused since it was read); True if it was.
    """
    try:
        mine = os.dup(fd)
    except OSError:
        return False
    try:
        if os.fstat(mine).st_ino != inode:
            return False
        with socket.socket(fileno=mine) as s:
            mine = None
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:  # already gone
                return False
        return True
    finally:
        if mine is not None:
            os.close(mine)


class AddressCap:
    """
    Every C{interval} seconds, shut down the connections of any peer
    address past C{limit} on C{ports} (the ports of this process's gRPC
    server).
    """

    interval = 1.0

    def __init__(self, reactor, ports, limit=MAX_CONNECTIONS_PER_ADDRESS,
                 fdDir="/proc/self/fd", tables=PROC_NET):
        self.reactor = reactor
        self.ports = set(ports)
        self.limit = limit
        self.fdDir = fdDir
        self.tables = tables
        self.closed = 0
        self._loop = None
        self._sweeping = None

    def start(self):
        if not os.path.isdir(self.fdDir):
            log.warn("connections per address are not capped: no {dir} here",
                     dir=self.fdDir)
            return
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def _tick(self):
        if self._sweeping is not None:
            return  # the last sweep is still under way
        d = self._sweeping = threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self.sweep)
        d.addCallback(self._swept)
        d.addErrback(lambda f: log.failure("capping connections per address failed", f))
        d.addBoth(self._done)

    def _done(self, _):
        self._sweeping = None

    def sweep(self):
        """Shut down what is over the limit ({host: how many}); on a thread."""
        if len(os.listdir(self.fdDir)) <= self.limit:
            return {}
        mine = socketsByInode(self.fdDir)
        connections = [(inode, host) for inode, host in established(self.ports, self.tables)
                       if inode in mine]
        shut = {}
        for host, inodes in overLimit(connections, self.limit).items():
            n = sum(shutDown(mine[inode], inode) for inode in inodes)
            if n:
                shut[host] = n
        return shut

    def _swept(self, shut):
        for host, n in shut.items():
            self.closed += n
            log.warn("closed {n} connections from {host}: over {limit} from one address",
                     n=n, host=host, limit=self.limit)

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return self._sweeping
