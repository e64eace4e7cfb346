"""
C{sns-compare}: do the VMs of a running cluster hold the same data?

    sns-compare --router HOST:PORT --secret-file FILE [--wait SECONDS]

Asks the router for the live masters, asks each master for the hashes of
what its VM holds on disk (every posts/<user>.txt, the users, the follows,
the read marks),
and says whether they agree; with C{--wait}, keeps asking until they do (the
cluster quiesces) or the time is up.  Exit status 0 when they agree.
"""

import sys

from twisted.internet.task import deferLater

from snstwist.commands import status
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg


async def digests(router, secret):
    """{vm: DigestReply} of every live master known to C{router}."""
    reply = await status.routerStatus(router, secret)
    out = {}
    for server in reply.servers:
        if server.role != pb.MASTER:
            continue
        ch = grpcbridge.channel(server.address)
        try:
            out[server.vm] = await grpcbridge.call(pbg.ClusterStub(ch).Digest,
                                                   pb.DigestRequest(), timeout=5,
                                                   metadata=auth.secretMetadata(secret))
        finally:
            await grpcbridge.closeChannel(ch)
    return out


def differences(replies):
    """Human-readable lines, one per disagreement; empty when all agree."""
    problems = []
    vms = sorted(replies)
    if not vms:
        return ["no live master"]
    first = replies[vms[0]]
    for vm in vms[1:]:
        other = replies[vm]
        for name in sorted(set(first.post_files) | set(other.post_files)):
            a, b = first.post_files.get(name), other.post_files.get(name)
            if a != b:
                problems.append("posts/%s differs between %s and %s" % (name, vms[0], vm))
        if first.users != other.users:
            problems.append("users differ between %s and %s" % (vms[0], vm))
        if first.follows != other.follows:
            problems.append("follows differ between %s and %s" % (vms[0], vm))
        if first.marks and other.marks and first.marks != other.marks:
            # A VM of before the marks' hash sends none: nothing to compare.
            problems.append("read marks differ between %s and %s" % (vms[0], vm))
        if first.updates != other.updates:
            # Read marks and hidden copies are in no file: counted here.
            problems.append("%s holds %d updates, %s %d" % (vms[0], first.updates, vm,
                                                          other.updates))
    return problems


def summary(replies):
    lines = ["%s: %d post files, %d posts, %d updates, %d not yet replicated"
             % (vm, len(r.post_files), r.posts, r.updates, r.unreplicated)
             for vm, r in sorted(replies.items())]
    for vm, r in sorted(replies.items()):
        lines.extend(status.streamTrouble(vm, r.peers, r.refused))
    return lines


async def compare(reactor, options):
    router, wait = options["router"], options["wait"]
    deadline = reactor.seconds() + wait
    while True:
        replies = await digests(router, options["secret"])
        problems = differences(replies)
        if not problems or reactor.seconds() >= deadline:
            break
        await deferLater(reactor, 0.2, lambda: None)
    for line in summary(replies) + problems:
        print(line)
    if problems:
        print("the VMs DISAGREE")
        return 1
    print("all %d VMs agree" % (len(replies),))
    return 0


class Options(status.Options):
    optParameters = [
        ["wait", "w", 0.0, "Keep comparing for up to this many seconds until they agree.",
         float],
    ]


def main(argv=None):
    """The C{sns-compare} command."""
    from snstwist.commands.commandline import runCommand
    return runCommand("sns-compare", Options(), argv, compare)


if __name__ == "__main__":
    sys.exit(main())
