"""
Real processes for integration tests: a local cluster, sns-client runs, a
bare router.

Everything here waits on events (a line printed, a process ended, a status
answered) with a deadline, never on fixed sleeps, and every process started
is stopped in the test's cleanup, by PID, whatever happened in the test.
"""

import os
import signal
import sys

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.task import deferLater

from snstwist import buddy
from snstwist.buddy.processes import pidAlive  # noqa: F401  (the tests import it from here)
from snstwist.commands.cluster import HeldPort
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.testbed.vmprocesses import killServersOn as killServersUsing  # noqa: F401
from snstwist.testbed.vmprocesses import serversOn as serversUsing  # noqa: F401

DEADLINE = 30.0

# The cluster secret of every router and server the tests start (sns-cluster
# takes it from $SNS_SECRET too): tests ask Status and Digest with it.
SECRET = "snstwist-tests-shared-secret"
# The password of every user the tests log in (sns-client reads $SNS_PASSWORD).
PASSWORD = "correct horse battery staple"


def twistd(*args, logfile="-"):
    """
    The package's one twistd launch line for spawn() (which puts
    sys.executable first itself): C{args} in a foreground twistd logging to
    C{logfile} (default: stdout, which the test reads).
    """
    return buddy.twistdArgs(logfile, *args)[1:]


TWISTD = twistd()


def childEnv(**extra):
    env = dict(os.environ, GRPC_VERBOSITY="ERROR", GRPC_ENABLE_FORK_SUPPORT="0",
               PYTHONUNBUFFERED="1", SNS_SECRET=SECRET, SNS_PASSWORD=PASSWORD)
    env.update(extra)
    return env


# Signal a process by pid; one already gone is no error.
killPid = buddy.signalPid


def heldAddress(testCase, host="127.0.0.1"):
    """
    C{HOST:PORT} of a free port held for a process the test starts later
    (L{HeldPort}: nothing else is given it meanwhile), until the test's
    cleanup.
    """
    held = HeldPort(host)
    testCase.addCleanup(held.release)
    return "%s:%d" % (host, held.port)


def killIfStill(pid, running, signum=signal.SIGKILL):
    """
    Signal C{pid} only if it is still the process it was: one whose command
    line holds C{running} (a path of its test, as text).  A pid seen earlier
    may be another program's by now: the kernel hands out pids again once
    they wrap (every few minutes on the team's machine, threads counting),
    and a blind SIGKILL in a cleanup then kills another run's process.
    """
    buddy.signalIfStill(pid, signum, lambda p: pidAlive(p, running=running.encode()))


class Collector(protocol.ProcessProtocol):
    """Collects a child's output; fires C{ended} with its exit code."""

    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = defer.Deferred()
        self.exitCode = None
        self.waiters = []

    @property
    def pid(self):
        return self.transport.pid

    @property
    def text(self):
        return self.out.decode("utf-8", "replace")

    @property
    def lines(self):
        return self.text.splitlines()

    def outReceived(self, data):
        self.out += data
        self._check()

    def errReceived(self, data):
        self.err += data

    def _check(self):
        for waiter in list(self.waiters):
            needle, count, d = waiter
            if self.text.count(needle) >= count:
                self.waiters.remove(waiter)
                d.callback(self.text)

    def waitFor(self, needle, count=1, timeout=DEADLINE):
        """Fires when C{needle} has been printed on stdout C{count} times."""
        d = defer.Deferred()
        self.waiters.append((needle, count, d))
        self._check()
        if d.called:
            return d

        def timedOut(result, t):
            raise AssertionError("%r not printed within %ss; stdout:\n%s\nstderr:\n%s"
                                 % (needle, t, self.text, self.err.decode("utf-8", "replace")))

        return d.addTimeout(timeout, reactor, onTimeoutCancel=timedOut)

    def write(self, text):
        self.transport.write(text.encode("utf-8"))

    def closeStdin(self):
        self.transport.closeStdin()

    def processEnded(self, reason):
        self.exitCode = getattr(reason.value, "exitCode", None)
        if isinstance(reason.value, error.ProcessTerminated) and reason.value.signal:
            self.exitCode = -reason.value.signal
        self.ended.callback(self.exitCode)


def spawn(testCase, args, env=None, path=None):
    """Start C{args} (python module invocation) and stop it in cleanup, by PID."""
    child = Collector()
    reactor.spawnProcess(child, sys.executable, [sys.executable] + list(args),
                         env=env or childEnv(), path=path)
    testCase.addCleanup(stopChild, child)
    return child


def stopChild(child, timeout=10.0):
    """SIGTERM, then SIGKILL after C{timeout}; fires when the child has exited."""
    return buddy.terminate(reactor, child, timeout)


async def waitUntil(predicate, what, timeout=DEADLINE, interval=0.05):
    """Poll C{predicate} (maybe async) until true, or fail after C{timeout}."""
    deadline = reactor.seconds() + timeout
    while True:
        result = predicate()
        if isinstance(result, defer.Deferred) or hasattr(result, "__await__"):
            result = await result
        if result:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        await deferLater(reactor, interval, lambda: None)


def liveProcesses(match):
    """
    Pids of live processes for which C{match(cmdline, ppid)} is true
    (C{cmdline} a list of bytes arguments, C{ppid} the parent's pid).
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % (name,), "rb") as f:
                cmdline = f.read().split(b"\0")
            with open("/proc/%s/stat" % (name,)) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if match(cmdline, ppid) and pidAlive(int(name)):
            found.append(int(name))
    return found


async def routerStatus(address, channel=None, secret=SECRET):
    """The router's Status; on C{channel} if given, else on a channel of its own."""
    if channel is not None:
        return await grpcbridge.call(pbg.RouterStub(channel).Status, pb.StatusRequest(),
                                     timeout=10, metadata=auth.secretMetadata(secret))
    channel = grpcbridge.channel(address)
    try:
        return await routerStatus(address, channel, secret)
    finally:
        await grpcbridge.closeChannel(channel)


async def masterOf(cluster, user):
    """
    The master that reports a live session of C{user} (its master1), once
    one does; C{cluster} is anything with the router's C{status()} (a
    L{Cluster}, a L{tests.beds.Bed}).
    """

    async def serving():
        for s in (await cluster.status()).servers:
            if s.role == pb.MASTER and user in s.users:
                return s
        return None

    return await waitUntil(serving, "a master to report a session of %s" % (user,))


class Cluster:
    """A running C{sns-cluster}, as a new user starts it."""

    def __init__(self, testCase, vms=2, web=False, postsPerSecond=None, secret=SECRET):
        self.testCase = testCase
        self.vms = vms
        self.withWeb = web
        self.postsPerSecond = postsPerSecond
        self.secret = secret
        self.base = os.path.abspath(testCase.mktemp())
        self.router = None
        self.routerPeer = None
        self.web = None
        self.process = None
        self.pids = set()
        self.channel = None

    async def start(self):
        # Cleanups run last-in first-out: the cluster is asked to stop first,
        # then anything it left behind is killed by PID.
        self.testCase.addCleanup(self.killAll)
        self.process = spawn(self.testCase, [
            "-m", "snstwist.commands.cluster", "--dir", self.base, "--vms", str(self.vms),
            "--router", "127.0.0.1:0", "--web", "127.0.0.1:0" if self.withWeb else ""] + (
                ["--posts-per-second", str(self.postsPerSecond)] if self.postsPerSecond else []),
            env=childEnv(SNS_SECRET=self.secret))
        await self.process.waitFor("sns-cluster ready")
        for line in self.process.lines:
            if line.startswith("sns-cluster ready: router "):
                self.router = line.split()[3].rstrip(";")
            if line.startswith("sns-cluster: servers register at the router's cluster port "):
                self.routerPeer = line.split()[8]
            if line.startswith("sns-cluster: web timeline and dashboard at "):
                self.web = line.split()[6][len("http://"):].rstrip("/")
        # One channel for every status poll of the test: a busy machine
        # should not fail a test on connection set-up.
        self.channel = grpcbridge.channel(self.router)
        self.testCase.addCleanup(lambda: grpcbridge.closeChannel(self.channel))
        status = await routerStatus(self.router, self.channel, self.secret)
        self.pids.update(s.pid for s in status.servers)
        return self

    async def status(self):
        status = await routerStatus(self.router, self.channel, self.secret)
        self.pids.update(s.pid for s in status.servers)
        return status

    async def masters(self):
        return {s.vm: s for s in (await self.status()).servers if s.role == pb.MASTER}

    def data(self, vm):
        return os.path.join(self.base, vm, "data")

    def postFiles(self, vm):
        posts = os.path.join(self.data(vm), "posts")
        out = {}
        for name in sorted(os.listdir(posts)):
            with open(os.path.join(posts, name), "rb") as f:
                out[name] = f.read()
        return out

    def client(self, user, stdin=None, password=PASSWORD):
        """Start sns-client; with C{stdin} text, write it and close stdin."""
        child = spawn(self.testCase, ["-m", "snstwist.commands.cli", "-r", self.router, "-u", user],
                      env=childEnv(SNS_PASSWORD=password))
        if stdin is not None:
            child.write(stdin)
            child.closeStdin()
        return child

    async def run(self, user, stdin, password=PASSWORD):
        """Run sns-client to completion; returns the Collector."""
        child = self.client(user, stdin, password)
        await child.ended.addTimeout(DEADLINE, reactor)
        return child

    def killAll(self):
        """
        Last-resort cleanup: nothing the cluster started may survive the
        test: every server it saw, and every server on its data (a spare,
        or a slave spawned after the last status, never registers).
        """
        for pid in self.pids:
            killIfStill(pid, self.base)
        killServersUsing(self.base)
