"""
The chaos run (C{sns-chaos}): a cluster on several hosts (L{snstwist.testbed.netbed})
under load, with faults injected at random times, and a check at the end that
nothing acknowledged was lost.

For N minutes, posters post and follow/unfollow each other and readers sit in
timeline mode (all of them C{snstwist.client.client.Client}s in one worker process
on the clients' host), while at random times the run SIGKILLs the router, a
master, a slave or a whole VM (and restarts what does not restart itself),
SIGSTOPs and SIGCONTs a master or a slave, partitions two hosts, cuts a host
off from everyone, and adds latency, jitter and loss (where the bed has its
lag proxies).  The worker reports every acknowledged write and every post each
timeline showed.  At the end the run heals everything and checks:

- no acknowledged write lost: every acknowledged post is in its author's post
  file, and every follow relation is as its last answered command left it;
- every VM's post files byte-identical, its users, follows and log rows equal;
- each reader shown each acknowledged post of the users it follows exactly
  once (after catch-up), and no post it was shown is missing from the files;
- no process left in any host of the bed once the cluster stopped.

It prints a table: faults by kind, writes acknowledged, lost, duplicates on
screen, time to converge after the last heal.  It waits on events with
deadlines (processes ended, lines received, data equal), never on a sleep
that hides a race; the only sleeps are the random gaps between faults and
between a user's commands, which are the load itself.
"""

import json
import os
import random
import signal
import sys
import tempfile
import time

import attrs
from twisted.internet import defer, protocol, threads
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage

from snstwist.buddy import buddy
from snstwist.core.errors import RemoteError, Status
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.testbed import netbed

log = Logger()

FAULTS = ("kill-router", "kill-master", "kill-slave", "kill-vm", "stop-master",
          "stop-slave", "partition", "isolate", "latency")


# -- the worker: every client of the run, in one process on the clients' host

class Worker:
    """
    Posters and readers, each a L{snstwist.client.client.Client}; one JSON object per
    line on C{out} for each event: C{ready}, C{ack}, C{fail}, C{shown},
    C{reconnect}, C{writes-done}.
    """

    def __init__(self, reactor, routers, posters, readers, follows, seed, pause, out):
        self.reactor = reactor
        self.routers = routers
        self.posters = posters
        self.readers = readers
        self.follows = follows
        self.random = random.Random(seed)
        self.pause = pause
        self.out = out
        self.clients = {}
        self.incarnations = {}
        self.writing = True
        self.loops = []
        self.closing = False

    def emit(self, **event):
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    def _client(self, user, reader=False):
        from snstwist.client.client import Client
        incarnation = self.incarnations[user] = self.incarnations.get(user, -1) + 1

        def shown(post):
            self.emit(ev="shown", user=user, id=post.id, author=post.author, text=post.text,
                      inc=incarnation)

        client = Client(self.routers, user, "chaos-%s" % (user,), self.reactor,
                        onReconnect=lambda address: self.emit(ev="reconnect", user=user,
                                                              to=address),
                        onPost=shown if reader else None)
        if reader:
            client.onLost = lambda error: self._readerLost(user, client, error)
        return client

    async def _until(self, what, make):
        """Set-up steps happen before any fault, but the cluster may be busy."""
        deadline = self.reactor.seconds() + 60
        while True:
            try:
                return await make()
            except Exception as e:
                if self.reactor.seconds() > deadline:
                    raise RuntimeError("%s: %s" % (what, e))
                await deferLater(self.reactor, 0.2, lambda: None)

    async def start(self):
        from snstwist.client.client import CommandFailed
        for user in self.posters + self.readers:
            client = self.clients[user] = self._client(user, user in self.readers)
            await self._until("%s logs in" % (user,), client.connect)
        for reader in self.readers:
            for followee in self.follows[reader]:
                async def follow(client=self.clients[reader], followee=followee):
                    try:
                        await client.follow(followee)
                    except CommandFailed as e:
                        if e.code != Status.ALREADY_EXISTS:
                            raise
                await self._until("%s follows %s" % (reader, followee), follow)
            await self._until("%s enters the timeline" % (reader,),
                              self.clients[reader].timeline)
        self.emit(ev="ready")
        self.loops = [defer.ensureDeferred(self._write(user)) for user in self.posters]

    def _readerLost(self, reader, client, error):
        """
        A reader only reads: when its failover gives up (the cluster was out
        of reach too long), nothing brings it back.  Do what its user would:
        start it again, as a returning reader.
        """
        if client is not self.clients.get(reader) or self.closing:
            return
        self.emit(ev="gave-up", user=reader, why=str(error)[:200])
        defer.maybeDeferred(client.close).addErrback(lambda f: None)
        fresh = self.clients[reader] = self._client(reader, True)
        d = defer.ensureDeferred(self._until("%s comes back" % (reader,), fresh.connect))
        d.addCallback(lambda _: fresh.timeline())
        d.addErrback(lambda f: self.emit(
            ev="error", why="%s could not come back: %s" % (reader, f.getErrorMessage())))

    async def _write(self, user):
        from snstwist.client.client import ClusterUnreachable, CommandFailed
        client = self.clients[user]
        others = [p for p in self.posters if p != user]
        following = set()
        n = 0
        while self.writing:
            if others and self.random.random() < 0.15:
                target = self.random.choice(others)
                op = "unfollow" if target in following else "follow"
                event = dict(user=user, op=op, target=target)
                call = client.unfollow if op == "unfollow" else client.follow
            else:
                n += 1
                text = "%s %d" % (user, n)
                op = "post"
                event = dict(user=user, op=op, text=text)
                call = client.post
            try:
                reply = await call(event.get("target", event.get("text")))
            except CommandFailed as e:
                # A definite answer: the relation is in the state refused.
                if e.code == Status.ALREADY_EXISTS:
                    following.add(event["target"])
                elif e.code == Status.FAILED_PRECONDITION:
                    following.discard(event["target"])
                self.emit(ev="fail", definite=True, code=e.code.name, **event)
            except (ClusterUnreachable, defer.CancelledError, RemoteError) as e:
                self.emit(ev="fail", definite=False, why=str(e)[:200], **event)
                await deferLater(self.reactor, 0.2, lambda: None)
            else:
                if op == "follow":
                    following.add(event["target"])
                elif op == "unfollow":
                    following.discard(event["target"])
                self.emit(ev="ack", id=reply.id, copies=reply.copies, **event)
            await deferLater(self.reactor, self.random.uniform(0, 2 * self.pause), lambda: None)

    finishTimeout = 60.0

    async def stopWriting(self):
        """
        Let each poster finish the command it has in flight.  One that is
        still not answered after L{finishTimeout} (the cluster healed long
        ago) is reported stuck, with its client's state.
        """
        self.writing = False
        waiting = defer.DeferredList(self.loops)
        waiting.addTimeout(self.finishTimeout, self.reactor).addErrback(lambda f: None)
        await waiting
        stuck = {user: _state(self.clients[user]) for user, loop in zip(self.posters, self.loops)
                 if not loop.called}
        self.emit(ev="writes-done", stuck=stuck)

    async def close(self):
        self.closing = True
        await defer.DeferredList([defer.maybeDeferred(c.close) for c in self.clients.values()])


def _state(client):
    """What a client is doing, for a report."""
    return {"master1": str(client.master1), "master2": str(client.master2),
            "session": client.session is not None, "failover": client._failover is not None,
            "epoch": client.epoch, "closed": client.closed}


class _Commands(protocol.Protocol):
    """The worker's stdin: C{stop} (stop writing), then C{quit}."""

    def __init__(self, worker, done):
        self.worker = worker
        self.done = done
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line == b"stop":
                defer.ensureDeferred(self.worker.stopWriting())
            elif line == b"quit":
                self._quit()

    def connectionLost(self, reason):
        self._quit()

    def _quit(self):
        if not self.done.called:
            d = defer.ensureDeferred(self.worker.close())
            d.addBoth(lambda _: None).chainDeferred(self.done)


async def work(reactor, options):
    from twisted.internet import stdio
    from twisted.logger import globalLogBeginner, textFileLogObserver
    if options["log"]:
        globalLogBeginner.beginLoggingTo([textFileLogObserver(open(options["log"], "a"))],
                                         redirectStandardIO=False)
    follows = {}
    for item in options["follows"].split(";"):
        if item:
            reader, _, followees = item.partition(":")
            follows[reader] = [f for f in followees.split(",") if f]
    worker = Worker(reactor, options["router"].split(","), _names(options["posters"]),
                    _names(options["readers"]), follows, options["seed"], options["pause"],
                    sys.stdout)
    done = defer.Deferred()
    stdio.StandardIO(_Commands(worker, done), reactor=reactor)
    try:
        await worker.start()
    except Exception as e:
        worker.emit(ev="error", why=str(e))
        raise
    await done
    return 0


def _names(text):
    return [n for n in text.split(",") if n]


class WorkerOptions(usage.Options):
    optParameters = [
        ["router", "r", None, "Router address(es)."],
        ["posters", None, "", "Comma-separated users who post and follow."],
        ["readers", None, "", "Comma-separated users in timeline mode."],
        ["follows", None, "", "reader:a,b;reader2:c  whom each reader follows."],
        ["seed", None, 0, "Random seed.", int],
        ["pause", None, 0.2, "Mean pause between a poster's commands (s).", float],
        ["log", None, None, "Log file."],
    ]

    def postOptions(self):
        from snstwist.commands.commandline import installReactor
        installReactor()


# -- the controller

class WorkerProcess(protocol.ProcessProtocol):
    """The controller's end of the worker: its events, and when it ended."""

    def __init__(self, onEvent):
        self.onEvent = onEvent
        self.buffer = b""
        self.err = b""
        self.ended = defer.Deferred()
        self.waiting = {}

    @property
    def pid(self):
        return self.transport.pid

    def outReceived(self, data):
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            event = json.loads(line)
            self.onEvent(event)
            d = self.waiting.pop(event["ev"], None)
            if d is not None:
                d.callback(event)

    def errReceived(self, data):
        self.err = (self.err + data)[-20000:]

    def waitFor(self, kind, reactor, timeout):
        d = self.waiting[kind] = defer.Deferred()

        def timedOut(result, timeout):
            raise RuntimeError("the worker said no %r within %ss; its stderr:\n%s" % (
                kind, timeout, self.err.decode("utf-8", "replace")[-3000:]))

        return d.addTimeout(timeout, reactor, onTimeoutCancel=timedOut)

    def send(self, line):
        self.transport.write(line.encode() + b"\n")

    def processEnded(self, reason):
        for d in self.waiting.values():
            d.errback(RuntimeError("the worker ended: %s\n%s" % (
                reason.getErrorMessage(), self.err.decode("utf-8", "replace")[-3000:])))
        self.waiting = {}
        self.ended.callback(None)


@attrs.define
class Record:
    """What the worker reported."""

    acked: list = attrs.Factory(list)
    failed: list = attrs.Factory(list)
    shown: list = attrs.Factory(list)
    reconnects: int = 0
    gaveUp: int = 0
    errors: list = attrs.Factory(list)
    ops: list = attrs.Factory(list)  # every follow/unfollow outcome, in order

    def event(self, event):
        kind = event["ev"]
        if kind == "ack":
            self.acked.append(event)
        elif kind == "fail":
            self.failed.append(event)
        elif kind == "shown":
            self.shown.append(event)
        elif kind == "reconnect":
            self.reconnects += 1
        elif kind == "gave-up":
            self.gaveUp += 1
        elif kind == "error":
            self.errors.append(event)
        if kind in ("ack", "fail") and event["op"] != "post":
            self.ops.append(event)


@attrs.define
class Result:
    faults: dict
    acked: int
    ackedOneCopy: int
    failed: int
    lost: list
    followsWrong: list
    duplicates: list
    missing: list
    phantoms: list
    vmsDiffer: list
    leaked: list
    converge: float
    reconnects: int
    gaveUp: int
    errors: list
    stuck: dict
    stragglers: list
    shown: int
    minutes: float

    @property
    def ok(self):
        return not (self.lost or self.followsWrong or self.duplicates or self.missing
                    or self.phantoms or self.vmsDiffer or self.leaked
                    or self.errors or self.stuck) and self.converge >= 0

    def details(self):
        """The first items of every check that found something, one a line."""
        lines = []
        for name in ("lost", "followsWrong", "duplicates", "missing", "phantoms", "vmsDiffer",
                     "leaked", "stragglers", "errors", "stuck"):
            items = getattr(self, name)
            if items:
                lines.append("%s (%d), first ones:" % (name, len(items)))
                for item in list(items.items() if isinstance(items, dict) else items)[:10]:
                    lines.append("    %s" % (item,))
        return "\n".join(lines)

    def table(self):
        rows = [("faults injected", "")]
        for kind in FAULTS:
            rows.append(("  " + kind, str(self.faults.get(kind, 0))))
        rows += [
            ("  total", str(sum(self.faults.values()))),
            ("writes acknowledged", "%d (%d with one copy)" % (self.acked, self.ackedOneCopy)),
            ("writes failed (not acknowledged)", str(self.failed)),
            ("acknowledged writes lost", str(len(self.lost) + len(self.followsWrong))),
            ("posts shown on timelines", str(self.shown)),
            ("duplicates on screen", str(len(self.duplicates))),
            ("acknowledged posts never shown to a follower", str(len(self.missing))),
            ("posts shown that are in no file", str(len(self.phantoms))),
            ("VMs that differ after healing", str(len(self.vmsDiffer))),
            ("processes leaked", str(len(self.leaked))),
            ("  still exiting when the cluster's stop returned", str(len(self.stragglers))),
            ("errors in the clients' worker", str(len(self.errors))),
            ("writers never answered after healing", str(len(self.stuck))),
            ("client failovers (Reconnecting)", str(self.reconnects)),
            ("readers whose failover gave up (started again)", str(self.gaveUp)),
            ("time to converge after the last heal",
             "%.1f s" % (self.converge,) if self.converge >= 0 else "did not converge"),
        ]
        width = max(len(r[0]) for r in rows)
        lines = ["| %-*s | %s |" % (width, "what", "count"),
                 "|%s|---|" % ("-" * (width + 2),)]
        lines += ["| %-*s | %s |" % (width, a, b) for a, b in rows]
        return "\n".join(lines)


class Chaos:
    """One chaos run: the bed, the cluster, the worker, the faults, the checks."""

    convergeTimeout = 180.0

    def __init__(self, reactor, minutes, vms=3, posters=4, readers=3, seed=None,
                 base=None, lag=True, out=None, pause=0.2):
        self.reactor = reactor
        self.minutes = minutes
        self.vmNames = ["vm%d" % (i + 1,) for i in range(vms)]
        self.posters = ["poster%d" % (i + 1,) for i in range(posters)]
        self.readers = ["reader%d" % (i + 1,) for i in range(readers)]
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.random = random.Random(self.seed)
        self.base = base or tempfile.mkdtemp(prefix="sns-chaos-")
        self.lag = lag
        self.out = out or (lambda line: print(line, flush=True))
        self.pause = pause
        self.faults = {}
        self.record = Record()
        self.net = None
        self.cluster = None
        self.worker = None
        self.down = set()      # "router" or VM names killed and not yet restarted
        self.stopped = set()   # pids SIGSTOPped and not yet continued
        self.stuck = {}
        self.stragglers = []
        self.follows = {r: self.random.sample(self.posters, min(2, len(self.posters)))
                        for r in self.readers}

    def say(self, text, *args):
        line = "[%7.1fs] %s" % (self.reactor.seconds() - self.started, text % args)
        self.out(line)
        if getattr(self, "events", None) is not None:
            self.events.write(json.dumps({"ev": "controller", "line": line}) + "\n")

    async def run(self):
        self.started = self.reactor.seconds()
        self.net = netbed.NetBed(["router"] + self.vmNames + ["clients"], self.reactor,
                                 lag=self.lag)
        try:
            await self.net.create()
            try:
                return await self._run()
            finally:
                await self._teardown()
        finally:
            await self.net.destroy()

    async def _run(self):
        self.say("seed %d; data and logs in %s; hosts %s", self.seed, self.base,
                 ", ".join("%s %s" % (h.name, h.address) for h in self.net.hosts.values()))
        self.cluster = netbed.NetCluster(self.net, self.base, len(self.vmNames))
        self.cluster.startService()
        await self.cluster.whenReady.addTimeout(60, self.reactor)
        self.channel = grpcbridge.channel(self.cluster.router, self.cluster.tls)
        self.events = open(os.path.join(self.base, "events.jsonl"), "w")
        self.worker = WorkerProcess(self._event)
        ready = self.worker.waitFor("ready", self.reactor, 120)
        self.net.spawn("clients", self.worker, [
            sys.executable, "-m", "snstwist.testbed.chaos", "worker",
            "--router", self.cluster.router,
            "--posters", ",".join(self.posters), "--readers", ",".join(self.readers),
            "--follows", ";".join("%s:%s" % (r, ",".join(f)) for r, f in self.follows.items()),
            "--seed", str(self.seed), "--pause", str(self.pause),
            "--log", os.path.join(self.base, "worker.log")],
            env=dict(os.environ, GRPC_VERBOSITY="ERROR", GRPC_ENABLE_FORK_SUPPORT="0",
                     PYTHONUNBUFFERED="1", SNS_TLS_CA=self.cluster.tlsFiles[0]))
        await ready
        self.say("cluster ready, %d posters and %d readers connected; faults for %.1f min",
                 len(self.posters), len(self.readers), self.minutes)
        end = self.reactor.seconds() + self.minutes * 60
        while True:
            await self._later(self.random.uniform(0.5, 3.0))
            left = end - self.reactor.seconds()
            if left < 0.5:
                break
            await self._fault(min(left, self.random.uniform(1.0, 8.0)))
        healed = await self._healAll()
        self.say("everything healed; stopping the writers")
        done = self.worker.waitFor("writes-done", self.reactor, 120)
        self.worker.send("stop")
        self.stuck = (await done)["stuck"]
        if self.stuck:
            self.say("writers still waiting for an answer: %s", self.stuck)
        converge = await self._converge(healed)
        self.say("converged %.1f s after the last heal" % (converge,) if converge >= 0
                 else "did NOT converge within %ds" % (self.convergeTimeout,))
        return await self._check(converge)

    def _event(self, event):
        event["at"] = round(self.reactor.seconds() - self.started, 3)
        self.events.write(json.dumps(event) + "\n")
        self.record.event(event)

    def _later(self, seconds):
        return deferLater(self.reactor, max(0.0, seconds), lambda: None)

    # -- faults

    async def _status(self):
        try:
            return await grpcbridge.call(pbg.RouterStub(self.channel).Status,
                                         pb.StatusRequest(), timeout=2,
                                         metadata=auth.secretMetadata(self.cluster.secret))
        except (RemoteError, defer.CancelledError, defer.TimeoutError):
            return None

    async def _server(self, role):
        """A live server of C{role} (a pb role) on a VM that is up, or None."""
        status = await self._status()
        if status is None:
            return None
        servers = [s for s in status.servers if s.role == role and s.vm not in self.down
                   and s.pid not in self.stopped and _alive(s.pid)]
        return self.random.choice(servers) if servers else None

    async def _fault(self, duration):
        kinds = [k for k in FAULTS if k != "latency" or self.lag]
        kind = self.random.choice(kinds)
        hosts = ["router"] + self.vmNames + ["clients"]
        done = False
        if kind == "kill-router" and "router" not in self.down:
            self.say("SIGKILL the router; restart in %.1fs", duration)
            _kill(self.cluster.children["router"].pid, signal.SIGKILL)
            self.down.add("router")
            await self._later(duration)
            await self._restart("router")
            done = True
        elif kind in ("kill-master", "kill-slave", "stop-master", "stop-slave"):
            server = await self._server(pb.MASTER if kind.endswith("master") else pb.SLAVE)
            if server is not None:
                if kind.startswith("kill"):
                    self.say("SIGKILL the %s of %s (pid %d)", kind[5:], server.vm, server.pid)
                    _kill(server.pid, signal.SIGKILL)
                else:
                    self.say("SIGSTOP the %s of %s (pid %d) for %.1fs", kind[5:], server.vm,
                             server.pid, duration)
                    _kill(server.pid, signal.SIGSTOP)
                    self.stopped.add(server.pid)
                    await self._later(duration)
                    _kill(server.pid, signal.SIGCONT)
                    self.stopped.discard(server.pid)
                done = True
        elif kind == "kill-vm":
            vm = self.random.choice(self.vmNames)
            if vm not in self.down:
                self.say("SIGKILL every process of %s; restart in %.1fs", vm, duration)
                await self.net.kill(vm)
                self.down.add(vm)
                await self._later(duration)
                await self._restart(vm)
                done = True
        elif kind == "partition":
            a, b = self.random.sample(hosts, 2)
            self.say("partition %s | %s for %.1fs", a, b, duration)
            await self.net.partition(a, b)
            await self._later(duration)
            await self.net.unpartition(a, b)
            done = True
        elif kind == "isolate":
            host = self.random.choice(hosts)
            self.say("cut %s off from everyone for %.1fs", host, duration)
            await self.net.isolate(host)
            await self._later(duration)
            await self.net.reconnect(host)
            done = True
        elif kind == "latency":
            host = self.random.choice(hosts)
            lag = netbed.Lag(delay=self.random.choice([0.005, 0.02, 0.05, 0.2]),
                             jitter=self.random.choice([0.0, 0.01, 0.05]),
                             loss=self.random.choice([0.0, 0.01, 0.05]))
            self.say("slow %s down (%s) for %.1fs", host, lag, duration)
            await self.net.slow(host, lag)
            await self._later(duration)
            await self.net.slow(host, None)
            done = True
        if done:
            self.faults[kind] = self.faults.get(kind, 0) + 1
        else:
            self.say("(no %s now: nothing to apply it to)", kind)

    async def _restart(self, name):
        """Start the router or a VM again once none of its processes is left."""
        await self.net.kill(name)

        async def gone():
            return not await self.net.pids(name)

        await _waitUntil(self.reactor, gone, "%s's processes to be gone" % (name,), 30)
        if name == "router":
            self.cluster.startRouter()
        else:
            self.cluster.startVM(self.vmNames.index(name))
        self.down.discard(name)
        self.say("%s started again", name)

    async def _healAll(self):
        for pid in list(self.stopped):
            _kill(pid, signal.SIGCONT)
        self.stopped.clear()
        await self.net.heal()
        for name in sorted(self.down):
            await self._restart(name)
        return self.reactor.seconds()

    # -- the end

    async def _converge(self, healed):
        """Seconds from C{healed} until every VM and every reader agree, or -1."""
        deadline = healed + self.convergeTimeout
        while True:
            self.snapshots = await self._snapshots()
            first = self.snapshots[self.vmNames[0]]
            if (all(s == first for s in self.snapshots.values())
                    and not self._lost(first) and not self._missing()):
                return self.reactor.seconds() - healed
            if self.reactor.seconds() > deadline:
                return -1.0
            await self._later(0.25)

    async def _snapshots(self):
        out = {}
        for vm in self.vmNames:
            out[vm] = await threads.deferToThread(
                netbed.snapshot, os.path.join(self.base, vm, "data"))
        return out

    def _posts(self, snapshot):
        """
        (author, text) of every post in the files.  A post is known by its
        text (each poster's texts are unique), not by its id: a post whose
        master died before it answered, retried on another VM, is stored
        twice and shown once, as the earlier copy, whichever id the retry
        was answered with.
        """
        posts = set()
        for data in snapshot["posts"].values():
            for line in data.decode("utf-8").splitlines():
                record = json.loads(line)
                posts.add((record["author"], record["text"]))
        return posts

    def _lost(self, snapshot):
        posts = self._posts(snapshot)
        return [a for a in self.record.acked
                if a["op"] == "post" and (a["user"], a["text"]) not in posts]

    def _followsWrong(self, snapshot):
        last = {}
        for event in self.record.ops:
            pair = (event["user"], event["target"])
            if event["ev"] == "ack":
                last[pair] = event["op"] == "follow"
            elif event.get("definite"):
                last[pair] = event["code"] == "ALREADY_EXISTS"
            else:
                last[pair] = None  # may or may not have been applied
        rows = {(r[0], r[1]): bool(r[2]) for r in snapshot["follows"]}
        return [(pair, want) for pair, want in sorted(last.items())
                if want is not None and rows.get(pair, False) != want]

    def _shownBy(self):
        shown = {}
        for event in self.record.shown:
            shown.setdefault(event["user"], []).append(event)
        return shown

    def _missing(self):
        shown = self._shownBy()
        missing = []
        for reader, followees in self.follows.items():
            seen = {(e["author"], e["text"]) for e in shown.get(reader, ())}
            missing += [(reader, a["user"], a["text"]) for a in self.record.acked
                        if a["op"] == "post" and a["user"] in followees
                        and (a["user"], a["text"]) not in seen]
        return missing

    def _duplicates(self):
        duplicates = []
        for reader, events in self._shownBy().items():
            # A reader started again (its failover gave up) is a new
            # sns-client: it prints the recent history again, as it should.
            seen = set()
            texts = set()
            for e in events:
                key = (e["inc"], e["author"], e["text"])
                if (e["inc"], e["id"]) in seen or key in texts:
                    duplicates.append((reader, e["id"], e["author"], e["text"]))
                seen.add((e["inc"], e["id"]))
                texts.add(key)
        return duplicates

    async def _check(self, converge):
        snapshots = self.snapshots
        first = snapshots[self.vmNames[0]]
        posts = self._posts(first)
        self.worker.send("quit")
        await self.worker.ended.addTimeout(60, self.reactor)
        leaked = await self._stopEverything()
        acked = self.record.acked
        return Result(
            faults=dict(self.faults),
            acked=len(acked),
            ackedOneCopy=len([a for a in acked if a["copies"] == 1]),
            failed=len(self.record.failed),
            lost=self._lost(first),
            followsWrong=self._followsWrong(first),
            duplicates=self._duplicates(),
            missing=self._missing(),
            phantoms=[e for e in self.record.shown if (e["author"], e["text"]) not in posts],
            vmsDiffer=[vm for vm, s in snapshots.items() if s != first],
            leaked=leaked,
            converge=converge,
            reconnects=self.record.reconnects,
            gaveUp=self.record.gaveUp,
            errors=self.record.errors,
            stuck=self.stuck,
            stragglers=self.stragglers,
            shown=len(self.record.shown),
            minutes=self.minutes)

    leakGrace = 10.0

    async def _stopEverything(self):
        """
        Stop the cluster as sns-cluster stops.  A process still in a host
        when that returns is a straggler (noted, with what it is); one still
        there L{leakGrace} seconds later leaked.
        """
        if self.cluster is not None and self.cluster.running:
            await self.cluster.stopService()
        self.stragglers = await self._left()
        deadline = self.reactor.seconds() + self.leakGrace
        left = self.stragglers
        while left and self.reactor.seconds() < deadline:
            await self._later(0.1)
            left = await self._left()
        if self.stragglers:
            self.say("still running when the cluster's stop returned: %s", self.stragglers)
        return left

    async def _left(self):
        left = []
        for host in self.net.hosts.values():
            for pid in await self.net.pids(host.name):
                if _alive(pid):
                    left.append((host.name, pid, _cmdline(pid)))
        return left

    async def _teardown(self):
        if getattr(self, "events", None) is not None:
            self.events.close()
            self.events = None
        if self.worker is not None and not self.worker.ended.called:
            buddy.fence(self.worker.pid)
        if self.cluster is not None and self.cluster.running:
            await self.cluster.stopService()
        if getattr(self, "channel", None) is not None:
            await grpcbridge.closeChannel(self.channel)


def _alive(pid):
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")[:200]
    except OSError:
        return "?"


def _kill(pid, signum):
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, TypeError):
        pass


async def _waitUntil(reactor, predicate, what, timeout):
    deadline = reactor.seconds() + timeout
    while not await predicate():
        if reactor.seconds() > deadline:
            raise RuntimeError("timed out after %ss waiting for %s" % (timeout, what))
        await deferLater(reactor, 0.05, lambda: None)


class ChaosOptions(usage.Options):
    synopsis = "[--minutes N] [--vms N] [--seed N] [--dir DIR]"
    optParameters = [
        ["minutes", "m", 2.0, "How long faults are injected.", float],
        ["vms", None, 3, "Number of VMs.", int],
        ["posters", None, 4, "Users who post and follow.", int],
        ["readers", None, 3, "Users in timeline mode.", int],
        ["pause", None, 0.2, "Mean pause between a poster's commands (s).", float],
        ["seed", None, None, "Random seed (default: random; printed).", int],
        ["dir", "d", None, "Directory for data and logs (default: a new temporary one)."],
    ]
    optFlags = [["no-lag", None, "No latency proxies (no latency faults)."]]
    subCommands = [["worker", None, WorkerOptions, "(internal) the clients of a run"]]

    def postOptions(self):
        from snstwist.commands.commandline import installReactor
        if not 2 <= self["vms"] <= 9:
            raise usage.UsageError("--vms must be between 2 and 9")
        installReactor()


async def chaos(reactor, options):
    if options.subCommand == "worker":
        return await work(reactor, options.subOptions)
    why = await threads.deferToThread(netbed.unavailable)
    if why is not None:
        print("sns-chaos: no multi-host test bed here: %s" % (why,))
        return 2
    lag = not options["no-lag"]
    if lag and netbed.lagUnavailable():
        print("sns-chaos: no latency faults: %s" % (netbed.lagUnavailable(),))
        lag = False
    run = Chaos(reactor, options["minutes"], options["vms"], options["posters"],
                options["readers"], options["seed"], options["dir"], lag=lag,
                pause=options["pause"])
    began = time.time()
    result = await run.run()
    print()
    print("sns-chaos: %.1f min of faults, seed %d, %d VMs, %d posters, %d readers (%.0f s in all)"
          % (options["minutes"], run.seed, options["vms"], options["posters"],
             options["readers"], time.time() - began))
    print(result.table())
    print(result.details())
    print("sns-chaos: %s" % ("PASSED" if result.ok else "FAILED"))
    return 0 if result.ok else 1


def main(argv=None):
    """The C{sns-chaos} command."""
    from snstwist.commands.commandline import runCommand
    return runCommand("sns-chaos", ChaosOptions(), argv, chaos)


if __name__ == "__main__":
    sys.exit(main())
