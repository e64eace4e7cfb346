"""
C{sns-status}: the cluster as the router sees it, for a person to read.

    sns-status --router HOST:PORT --secret-file FILE

The router answers only with the cluster's secret (--secret-file, or
$SNS_SECRET): its view names processes, addresses and the users online.

One row per live server process: VM, role, address, pid, live client
sessions, updates held, updates the peer VM furthest behind has not
confirmed (replication lag), and seconds since its last heartbeat.  Then a
line for each replication stream that is not getting updates through: which
VM is behind, by how many updates, how often the stream broke and why.
"""

import sys

from twisted.python import usage

from snstwist.commands.commandline import INSECURE_FLAG, SECRET_OPTION, TLS_CA_OPTION
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg

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
    for s in reply.servers:
        lines.extend(streamTrouble(s.vm, s.peers, s.refused))
    return "\n".join(lines)


def _updates(n):
    return "1 update" if n == 1 else "%d updates" % (n,)


def streamTrouble(vm, peers, refused):
    """
    One line per replication stream of C{vm}'s master that is not getting
    updates through (which VM is behind, by how much, and why), and one if
    C{vm} refused peer updates: how sns-status and sns-compare say it.
    """
    lines = []
    for p in peers:
        if p.failures:
            lines.append("%s -> %s: %s not confirmed; the stream broke %d time%s in a row,"
                         " last: %s" % (vm, p.vm, _updates(p.lacking), p.failures,
                                        "" if p.failures == 1 else "s", p.last_error))
        elif not p.connected:
            lines.append("%s -> %s: %s not confirmed; not connected" % (
                vm, p.vm, _updates(p.lacking)))
    if refused:
        lines.append("%s refused %s from peers, dated beyond its clock window"
                     % (vm, _updates(refused)))
    return lines


class Options(usage.Options):
    """
    The options of an operator's command: the router, the cluster's secret
    and its CA.
    """

    optParameters = [["router", "r", "127.0.0.1:3410", "Router address."], SECRET_OPTION,
                     TLS_CA_OPTION]
    optFlags = [INSECURE_FLAG]

    def postOptions(self):
        from snstwist.commands.commandline import installReactor, parseAddress, readSecret, readTLS
        from snstwist.rpc import grpcbridge
        self["router"] = parseAddress(self["router"], "--router")
        self["secret"] = readSecret(self["secret-file"])
        self["tls"], _ = readTLS(self, server=False)
        grpcbridge.useTLS(self["tls"])
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
    from snstwist.commands.commandline import runCommand
    return runCommand("sns-status", Options(), argv, show)


if __name__ == "__main__":
    sys.exit(main())
