"""
C{sns-status}: the cluster as the router sees it, for a person to read.

    sns-status --router HOST:PORT --secret-file FILE

The router answers only with the cluster's secret (--secret-file, or
$SNS_SECRET): its view names processes, addresses and the users online.

One row per live server process: VM, role, address, pid, live client
sessions, updates held, updates not yet acknowledged by a peer VM
(replication lag), and seconds since its last heartbeat.
"""

import sys

from twisted.python import usage

from snstwist import auth, grpcbridge
from snstwist import sns_pb2 as pb
from snstwist import sns_pb2_grpc as pbg
from snstwist.commandline import SECRET_OPTION

COLUMNS = ("VM", "ROLE", "ADDRESS", "PID", "CLIENTS", "UPDATES", "LAG", "SEEN")


def table(reply):
    rows = [COLUMNS] + [
        (s.vm, pb.Role.Name(s.role).lower(), s.address, str(s.pid), str(s.clients),
         str(s.updates), str(s.pending), "%.1fs" % (s.seen_ago,))
        for s in reply.servers]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    vms = {s.vm for s in reply.servers}
    masters = {s.vm for s in reply.servers if s.role == pb.MASTER}
    lines.append("%d VMs, %d with a live master; router up %.0fs"
                 % (len(vms), len(masters), reply.uptime))
    return "\n".join(lines)


class Options(usage.Options):
    """The options of an operator's command: the router, and the cluster's secret."""

    optParameters = [["router", "r", "127.0.0.1:3410", "Router address."], SECRET_OPTION]

    def postOptions(self):
        from snstwist.commandline import installReactor, parseAddress, readSecret
        self["router"] = parseAddress(self["router"], "--router")
        self["secret"] = readSecret(self["secret-file"])
        installReactor()


async def routerStatus(router, secret, timeout=5):
    """The router's Status reply (the caller proves it knows the cluster's secret)."""
    channel = grpcbridge.channel(router)
    try:
        return await grpcbridge.call(pbg.RouterStub(channel).Status, pb.StatusRequest(),
                                     timeout=timeout, metadata=auth.secretMetadata(secret))
    finally:
        await grpcbridge.closeChannel(channel)


async def show(reactor, options):
    print(table(await routerStatus(options["router"], options["secret"])))
    return 0


def main(argv=None):
    """The C{sns-status} command."""
    from snstwist.commandline import runCommand
    return runCommand("sns-status", Options(), argv, show)


if __name__ == "__main__":
    sys.exit(main())
