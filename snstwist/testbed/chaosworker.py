"""
The clients of a chaos run (L{snstwist.testbed.chaos}), and both ends of the
line protocol that joins them to the controller.

Every poster and reader of a run is a L{snstwist.client.client.Client} in one
worker process (C{sns-chaos worker ...}) on the clients' host of the bed, so
that faults on the network between hosts reach the clients as they would
reach real ones.  The worker writes one JSON object a line on stdout for each
thing the checks need (an acknowledged write, a failed one, a post a timeline
showed) and reads C{stop} and C{quit} on stdin.  L{WorkerProcess} is the
controller's end: it parses those lines and waits for the events it needs.

The worker never judges anything: it reports what its clients saw, and the
controller's checks (L{snstwist.testbed.verdict}) decide.
"""

import json
import random
import sys

from twisted.internet import defer, protocol
from twisted.internet.task import deferLater
from twisted.python import usage

from snstwist.core.errors import RemoteError, Status


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
            "session": client.session is not None, "failover": client.failingOver,
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
