"""
Load generators for ``benchmarks/run.py``: each is a separate process running
many in-process ``snstwist.client.client.Client`` objects on the asyncio reactor,
so that the client side never shares the CPU of the process that measures.

    python benchmarks/loadgen.py post      --router R --prefix p --clients M [--pin VM] [--unary]
    python benchmarks/loadgen.py poster    --router R --user U --rate N [--pin VM] --tag T
                                           [--timeline]
    python benchmarks/loadgen.py follower  --router R --user U --follow P[,P...] [--pin VM] --tag T
    python benchmarks/loadgen.py sessions  --router R --prefix p --clients M [--pin VM] [--timeline]
    python benchmarks/loadgen.py failover  --router R --user U
    python benchmarks/loadgen.py users     --router R --prefix p --clients M

Each speaks JSON lines on stdout (``{"event": "ready", ...}`` once every
client is logged in, then ``{"event": "result", ...}``) and takes commands on
stdin, one per line: ``go SECONDS [WARMUP]`` (start the load), ``stop`` (end
it and report), ``kill PID`` (failover: SIGKILL PID and time the next
commands), ``where`` (failover: which master am I on), ``quit`` (close every
client in order and exit).

A measurement tool, not part of snstwist: it is never run by trial or CI.
"""

import argparse
import os
import signal
import sys
import time

from snstwist.commands.commandline import installReactor

installReactor()

from twisted.internet import defer, reactor, stdio, task  # noqa: E402
from twisted.logger import (  # noqa: E402
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from benchlib.cluster import PASSWORD  # noqa: E402  (every benchmark user's)
from benchlib.loadworker import CONNECT_PARALLEL, Commands, Worker, admitted  # noqa: E402

from snstwist.client.client import CommandFailed  # noqa: E402
from snstwist.core.errors import Status  # noqa: E402
from snstwist.rpc import grpcbridge  # noqa: E402
from snstwist.rpc import sns_pb2 as pb  # noqa: E402
from snstwist.rpc import sns_pb2_grpc as pbg  # noqa: E402

class PostLoad(Worker):
    """
    Closed loop: every client posts, waits for the ack, posts again.  Each
    client posts as a user in timeline mode does: its timeline open, every
    post on its session's stream; with --unary, with no timeline open, each
    post a Post call.
    """

    async def start(self):
        a = self.args
        clients = [self.makeClient("%s%d" % (a.prefix, i)) for i in range(a.clients)]
        await self.connectAll(clients)
        if not a.unary:
            await self.openTimelines(clients)
        self.emit(event="ready", clients=len(self.clients), vms=self.where())

    async def cmd_go(self, duration, warmup="0"):
        text = "x" * self.args.size
        start = time.perf_counter()
        begin = start + float(warmup)
        end = begin + float(duration)
        latencies = []
        counts = {"ok2": 0, "ok1": 0, "errors": 0, "late": 0}

        async def loop(client):
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                try:
                    reply = await client.post(text)
                except Exception:
                    counts["errors"] += 1
                    await task.deferLater(self.reactor, 0.01, lambda: None)
                    continue
                t1 = time.perf_counter()
                if t0 < begin or t1 > end:
                    continue
                if reply.copies >= 2:
                    counts["ok2"] += 1
                    latencies.append(round((t1 - t0) * 1000, 3))
                else:
                    counts["ok1"] += 1

        await defer.gatherResults([defer.ensureDeferred(loop(c)) for c in self.clients],
                                  consumeErrors=True)
        self.emit(event="result", seconds=float(duration), lat=latencies, **counts)


class Poster(Worker):
    """
    Open loop: posts at a fixed rate, each text carrying its send time; with
    --timeline each client posts as a user in timeline mode does (its
    timeline open, each post on its session's stream), else by Post calls.
    """

    async def start(self):
        a = self.args
        for _ in range(a.clients):
            self.makeClient(a.user)
        await self.connectAll(self.clients)
        if a.timeline:
            await self.openTimelines(self.clients)
        self.emit(event="ready", clients=len(self.clients), vms=self.where())

    async def cmd_go(self, duration, warmup="0"):
        a = self.args
        duration = float(duration)
        counts = {"sent": 0, "acked": 0, "ok1": 0, "errors": 0, "dropped": 0}
        latencies = []
        outstanding = []
        done = defer.Deferred()
        start = time.time()

        def acked(reply, t0):
            outstanding.pop()
            counts["acked"] += 1
            if reply.copies < 2:
                counts["ok1"] += 1
            latencies.append(round((time.time() - t0) * 1000, 3))

        def failed(f):
            outstanding.pop()
            counts["errors"] += 1

        def tick():
            now = time.time()
            if now - start >= duration:
                ticker.stop()
                return
            due = int(a.rate * (now - start)) - counts["sent"] - counts["dropped"]
            for _ in range(due):
                if len(outstanding) >= a.max_outstanding:
                    counts["dropped"] += 1
                    continue
                client = self.clients[(counts["sent"]) % len(self.clients)]
                counts["sent"] += 1
                outstanding.append(None)
                t0 = time.time()
                client.post("%s %.6f %d" % (a.tag, t0, counts["sent"])).addCallbacks(
                    acked, failed, callbackArgs=(t0,))

        ticker = task.LoopingCall(tick)
        ticker.clock = self.reactor
        ticker.start(a.tick).addBoth(lambda _: done.callback(None))
        await done
        # Let what is in flight land (bounded).
        deadline = time.time() + 5
        while outstanding and time.time() < deadline:
            await task.deferLater(self.reactor, 0.01, lambda: None)
        self.emit(event="result", seconds=duration, lat=latencies,
                  outstanding=len(outstanding), **counts)


class Follower(Worker):
    """A live timeline of the users of --follow; each arriving post's delay from its send time."""

    async def start(self):
        a = self.args
        self.arrivals = []
        self.live = False
        self.followed = frozenset(a.follow.split(","))
        client = self.makeClient(a.user, onPost=self.onPost)
        await client.connect()
        for followee in sorted(self.followed):
            await self.follow(client, followee)
        await client.timeline()
        self.live = True
        self.emit(event="ready", vm=client.master1.vm, address=client.master1.address)

    async def follow(self, client, followee):
        for _ in range(200):
            try:
                await client.follow(followee)
                return
            except CommandFailed as e:
                if e.code == Status.ALREADY_EXISTS:
                    return  # following already
                if e.code != Status.NOT_FOUND:
                    raise
                # The followee was created on another VM and has not
                # reached ours yet.
                await task.deferLater(self.reactor, 0.05, lambda: None)
        raise RuntimeError("%s never appeared on %s" % (followee, client.master1.vm))

    def onPost(self, post):
        now = time.time()
        if not self.live or post.author not in self.followed:
            return
        words = post.text.split()
        if len(words) == 3 and words[0] == self.args.tag:
            sent = float(words[1])
            # post.time_us is the master's clock when it accepted the post
            # (a hybrid logical clock: physical time unless clocks disagree;
            # here every process reads the same clock).
            self.arrivals.append((sent, round((now - sent) * 1000, 3),
                                  round((now - post.time_us / 1e6) * 1000, 3)))

    async def cmd_stop(self):
        client = self.clients[0]
        arrivals = sorted(self.arrivals)
        self.emit(event="result", vm=client.master1.vm,
                  lat=[a[1] for a in arrivals], fromAccept=[a[2] for a in arrivals])


class Sessions(Worker):
    """Many logged-in clients, in timeline mode with --timeline, held open."""

    async def start(self):
        a = self.args
        clients = [self.makeClient("%s%d" % (a.prefix, i)) for i in range(a.clients)]
        await self.connectAll(clients)
        if a.timeline:
            await self.openTimelines(clients)
        self.emit(event="ready", clients=len(clients), vms=self.where())


class Users(Worker):
    """Create users by Login alone: no session, no client object per user."""

    async def start(self):
        a = self.args
        probe = self.makeClient("%s0" % (a.prefix,))
        reply = await probe.masters.ask()
        self.clients.remove(probe)
        channel = grpcbridge.channel(reply.master1.address)
        stub = pbg.SNSStub(channel)
        sem = defer.DeferredSemaphore(CONNECT_PARALLEL * 2)

        def login(user):
            return grpcbridge.call(stub.Login, pb.LoginRequest(user=user, password=PASSWORD),
                                   timeout=30)

        async def create(user):
            return await admitted(self.reactor, lambda: login(user))

        await defer.gatherResults([
            sem.run(lambda user=user: defer.ensureDeferred(create(user)))
            for user in ("%s%d" % (a.prefix, i) for i in range(a.clients))],
            consumeErrors=True)
        await grpcbridge.closeChannel(channel)
        self.emit(event="ready", clients=a.clients, vms={reply.master1.vm: a.clients})


class Failover(Worker):
    """One client; on ``kill PID`` it SIGKILLs PID and times its next commands."""

    async def start(self):
        client = self.makeClient(self.args.user)
        await client.connect()
        await client.post("warm")
        await self.cmd_where()

    async def cmd_where(self):
        client = self.clients[0]
        self.emit(event="where", vm=client.master1.vm, address=client.master1.address,
                  master2=client.master2.vm if client.master2 else None)

    async def cmd_kill(self, pid):
        client = self.clients[0]
        before = client.master1
        t0 = time.time()
        os.kill(int(pid), signal.SIGKILL)
        times = {}

        async def timed(name, make):
            try:
                reply = await make()
                times[name] = time.time() - t0
                return reply
            except Exception as e:
                times[name] = None
                times[name + "_error"] = repr(e)

        post, _ = await defer.gatherResults([
            defer.ensureDeferred(timed("post", lambda: client.post("after kill %s" % (pid,)))),
            defer.ensureDeferred(timed("list", client.list)),
        ])
        self.emit(event="failover", t0=t0, killed=int(pid), before=before.vm,
                  after=client.master1.vm, copies=post.copies if post else None, **times)


WORKERS = {"users": Users, "post": PostLoad, "poster": Poster, "follower": Follower,
           "sessions": Sessions, "failover": Failover}


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=sorted(WORKERS))
    parser.add_argument("--router", required=True)
    parser.add_argument("--pin", default=None, help="prefer a master on this VM")
    parser.add_argument("--prefix", default="u")
    parser.add_argument("--user", default="poster")
    parser.add_argument("--follow", default="poster", help="users, comma-separated (follower)")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--size", type=int, default=40, help="post length (post)")
    parser.add_argument("--rate", type=float, default=1000.0, help="posts/s (poster)")
    parser.add_argument("--tick", type=float, default=0.005, help="poster's timer (s)")
    parser.add_argument("--max-outstanding", type=int, default=500)
    parser.add_argument("--tag", default="L")
    parser.add_argument("--timeline", action="store_true")
    parser.add_argument("--unary", action="store_true",
                        help="post: each post a Post call, no timeline open (else on the"
                             " session's stream, as in timeline mode)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr),
                                    [LogLevelFilterPredicate(LogLevel.info)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    worker = WORKERS[args.mode](args, reactor)
    worker.out = Commands(worker)

    def begin():
        stdio.StandardIO(worker.out)
        d = defer.ensureDeferred(worker.start())

        def failed(f):
            worker.emit(event="error", error=f.getTraceback())
            reactor.stop()

        d.addErrback(failed)

    reactor.callWhenRunning(begin)
    reactor.run()


if __name__ == "__main__":
    main()
