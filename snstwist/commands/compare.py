"""
C{sns-compare}: do the VMs of a running cluster hold the same data?

    sns-compare --router HOST:PORT --secret-file FILE [--wait SECONDS]

Asks the router for the live masters, asks each master for the hashes of
what its VM holds on disk (every posts/<user>.txt, the users, the follows,
the read marks), a page at a time, and says whether they agree; with
C{--wait}, keeps asking until they do (the cluster quiesces) or the time is
up.  Exit status 0 when they agree.
"""

import bisect
import sys

from twisted.internet.task import deferLater

from snstwist.commands import status
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg


class Comparison:
    """
    The digests of several VMs (C{vms}, sorted: the first is the one the
    others are compared with), put together page by page.  The post files
    are compared as the pages come, up to the last name every VM's pages
    have reached, and then forgotten: at most about a page of each VM is
    held, however many files.  L{wanted} says which VM's next page is
    needed, and where it begins.
    """

    def __init__(self, vms):
        self.vms = list(vms)
        self.firsts = {}  # vm -> its first page (the tables' hashes, the counts)
        self.files = dict.fromkeys(self.vms, 0)
        self.posts = dict.fromkeys(self.vms, 0)
        self._pending = {vm: [] for vm in self.vms}  # (name, hash) not compared yet
        self._after = dict.fromkeys(self.vms, "")    # where its next page begins; None: done
        self.fileProblems = []

    def __len__(self):
        return len(self.vms)

    def values(self):
        """The first page of each VM (its tables' hashes and its counts)."""
        return self.firsts.values()

    def wanted(self):
        """{vm: where its next page begins} of the VMs whose next page comparing needs."""
        return {vm: after for vm, after in self._after.items()
                if after is not None and not self._pending[vm]}

    def add(self, vm, page):
        """Take C{vm}'s next page (a DigestReply) and compare what can be compared."""
        after = self._after[vm]
        self.firsts.setdefault(vm, page)
        rows = sorted((n, h) for n, h in page.post_files.items() if n > after)
        self._pending[vm].extend(rows)
        self.files[vm] += len(rows)
        self.posts[vm] += page.posts
        # A page must move on (a VM that sends none, or one that does not page, is done).
        self._after[vm] = page.next if page.next > after else None
        self._compare()

    def _reached(self):
        """The last name every VM's pages have reached; None once all are whole."""
        ends = [pending[-1][0] if pending else self._after[vm]
                for vm, pending in self._pending.items() if self._after[vm] is not None]
        return min(ends) if ends else None

    def _compare(self):
        reached = self._reached()
        taken = {}
        for vm, pending in self._pending.items():
            n = len(pending) if reached is None else bisect.bisect_right(
                pending, reached, key=lambda row: row[0])
            taken[vm] = dict(pending[:n])
            del pending[:n]
        first = self.vms[0] if self.vms else None
        for name in sorted(set().union(*taken.values())):
            for vm in self.vms[1:]:
                if taken[first].get(name) != taken[vm].get(name):
                    self.fileProblems.append("posts/%s differs between %s and %s"
                                             % (name, first, vm))


async def digests(router, secret):
    """The L{Comparison} of the digests of every live master known to C{router}."""
    reply = await status.routerStatus(router, secret)
    masters = {s.vm: s.address for s in reply.servers if s.role == pb.MASTER}
    comparison = Comparison(sorted(masters))
    channels = {vm: grpcbridge.channel(address) for vm, address in masters.items()}
    try:
        while wanted := comparison.wanted():
            for vm, after in sorted(wanted.items()):
                page = await grpcbridge.call(pbg.ClusterStub(channels[vm]).Digest,
                                             pb.DigestRequest(after=after), timeout=30,
                                             metadata=auth.secretMetadata(secret))
                comparison.add(vm, page)
    finally:
        for ch in channels.values():
            await grpcbridge.closeChannel(ch)
    return comparison


def compared(replies):
    """The L{Comparison} of digests each given whole ({vm: DigestReply}, one page each)."""
    comparison = Comparison(sorted(replies))
    for vm, reply in replies.items():
        comparison.add(vm, reply)
    return comparison


def differences(replies):
    """
    Human-readable lines, one per disagreement; empty when all agree.
    C{replies}: a L{Comparison}, or {vm: DigestReply} each whole.
    """
    c = replies if isinstance(replies, Comparison) else compared(replies)
    if not c.vms:
        return ["no live master"]
    problems = list(c.fileProblems)
    vms = c.vms
    first = c.firsts[vms[0]]
    for vm in vms[1:]:
        other = c.firsts[vm]
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
    c = replies if isinstance(replies, Comparison) else compared(replies)
    lines = ["%s: %d post files, %d posts, %d updates, %d not yet replicated"
             % (vm, c.files[vm], c.posts[vm], r.updates, r.unreplicated)
             for vm, r in sorted(c.firsts.items())]
    for vm, r in sorted(c.firsts.items()):
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
