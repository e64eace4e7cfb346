"""
The one-command local cluster: C{sns-cluster} (and C{twistd -n sns-cluster}).

Starts a router and N VMs as real C{twistd} processes on loopback addresses
(VM i listens on 127.0.0.(i+1)), and the web pages (C{sns-web}), with all
data and logs under one directory; prints the router's address, the web
address and a ready line once every VM has its master
and its slave registered; stops every process it started on Ctrl-C or SIGTERM, waiting for
each to exit (TERM, then KILL after L{ClusterService.killTime}).

The cluster is encrypted too: unless $SNS_TLS_CA, $SNS_TLS_CERT and
$SNS_TLS_KEY name the files to use, it makes a CA and a certificate in
DIR/tls, and prints the CA's path for clients (C{--tls-ca}).  Its secret is
random unless given, and written to DIR/secret.
"""

import functools
import os
import secrets
import signal
import socket
import sys

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from snstwist import buddy
from snstwist.core import errors
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg

log = Logger()

class HeldPort:
    """
    A free port of C{host}, held for a process that binds it later (the
    router, whose address its clients and servers need before it runs).

    A socket stays bound to it, with C{SO_REUSEADDR} and never listening,
    until L{release}: meanwhile the kernel gives the port neither to another
    bind to port 0 nor to an outgoing connection as its local port, while a
    listener that sets C{SO_REUSEADDR} too (as gRPC's servers do) still binds
    it.  A port only found free and let go could be taken by another process
    before the router's bind (the router then exited with "Address already in
    use", seen in a loaded test run).
    """

    def __init__(self, host):
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port = self._socket.getsockname()[1]

    def release(self):
        self._socket.close()


def vmHost(index):
    return "127.0.0.%d" % (index + 2,)


class ClusterService(MultiService):
    killTime = 5.0
    readyTimeout = 30.0

    def __init__(self, base, vms=3, routerListen="127.0.0.1:3410", secret=None,
                 reactor=None, out=None, webListen=None, serverArgs=(), tlsFiles=None):
        MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.base = os.path.abspath(base)
        self.vms = vms
        host, port = routerListen.rsplit(":", 1)
        # The router's cluster port, where servers register (mutual TLS):
        # the next port, as sns-router's default, or another free one.
        # Ports chosen here are held until the cluster stops (a router
        # started again binds the same ones).
        self.heldPorts = []
        if int(port) == 0:
            port, peerPort = self._holdPort(host), self._holdPort(host)
        else:
            peerPort = int(port) + 1
        self.router = "%s:%s" % (host, port)
        self.routerPeer = "%s:%d" % (host, peerPort)
        self.web = None
        if webListen:
            host, port = webListen.rsplit(":", 1)
            self.web = "%s:%s" % (host, port if int(port) else self._holdPort(host))
        self.serverArgs = list(serverArgs)
        self.secret = secret or secrets.token_hex(32)
        self.secretFile = os.path.join(self.base, "secret")
        self.tlsFiles = tlsFiles or _tlsFromEnvironment()
        self.tls = None
        self.tlsArgs = []
        self.out = out or self._print
        self.children = {}
        self.whenReady = defer.Deferred()
        self.stopping = False

    def _holdPort(self, host):
        held = HeldPort(host)
        self.heldPorts.append(held)
        return held.port

    @classmethod
    def fromOptions(cls, options):
        serverArgs = []
        if options["posts-per-second"]:
            serverArgs = ["--posts-per-second", repr(options["posts-per-second"])]
        return cls(options["dir"], options["vms"], options["router"],
                   options.secretOrNone(), webListen=options["web"], serverArgs=serverArgs)

    @staticmethod
    def _print(line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def command(self, name, args, env):
        """
        What to run for process C{name}: C{args} (an argv) as it is here; a
        test bed that puts each host in a network namespace wraps it.
        """
        return buddy.BuddyCommand(sys.executable, args, env)

    def vmListen(self, index):
        """The address the VM of C{index} (0, 1, ...) serves on."""
        return vmHost(index) + ":0"

    def _spawn(self, name, args):
        env = dict(os.environ, SNS_SECRET=self.secret, GRPC_ENABLE_FORK_SUPPORT="0",
                   GRPC_VERBOSITY=os.environ.get("GRPC_VERBOSITY", "ERROR"))
        child = buddy.spawn(self.reactor, name, self.command(name, args, env),
                            self._childEnded)
        self.children[name] = child
        return child

    def startRouter(self):
        """Start the router (again, after it was killed)."""
        return self._spawn("router", buddy.twistdArgs(
            os.path.join(self.base, "router.log"), "sns-router", "--listen", self.router,
            "--peer-listen", self.routerPeer, *self.tlsArgs))

    def startVM(self, index):
        """
        Start the master of VM C{index} (0, 1, ...), which spawns its slave;
        again after the VM was killed, on the same data.
        """
        vm = "vm%d" % (index + 1,)
        vmdir = os.path.join(self.base, vm)
        os.makedirs(vmdir, exist_ok=True)
        return self._spawn(vm, buddy.twistdArgs(
            os.path.join(vmdir, "server.log"), "sns-server",
            "--router", self.routerPeer, "--vm", vm, "--listen", self.vmListen(index),
            "--data", os.path.join(vmdir, "data"), *self.serverArgs, *self.tlsArgs))

    def _childEnded(self, child, reason):
        name = child.name
        if not self.stopping and not self.whenReady.called:
            self.whenReady.errback(RuntimeError("%s exited during start-up: see %s"
                                                % (name, self.base)))

    def startService(self):
        MultiService.startService(self)
        os.makedirs(self.base, exist_ok=True)
        if self.tlsFiles is None:
            from snstwist.rpc.certs import ensureClusterCerts
            self.tlsFiles = ensureClusterCerts(os.path.join(self.base, "tls"),
                                               ["127.0.0.1", "localhost"])
        ca, cert, key = self.tlsFiles
        self.tls = grpcbridge.TLS.load(ca, cert, key)
        self.tlsArgs = ["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key]
        # The secret, for an operator who adds or restarts a server by hand
        # (twistd sns-server --secret-file DIR/secret ...).
        fd = os.open(self.secretFile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.secret + "\n")
        self.startRouter()
        for i in range(self.vms):
            self.startVM(i)
        self.out("sns-cluster: router at %s, %d VMs, data and logs in %s"
                 % (self.router, self.vms, self.base))
        self.out("sns-cluster: servers register at the router's cluster port %s"
                 " (mutual TLS)" % (self.routerPeer,))
        if self.web:
            self._spawn("web", buddy.twistdArgs(
                os.path.join(self.base, "web.log"), "sns-web", "--router", self.router,
                "--listen", self.web, *self.tlsArgs))
            self.out("sns-cluster: web timeline and dashboard at http://%s/ (and /cluster)"
                     % (self.web,))
        self.out("sns-cluster: TLS everywhere; clients need --tls-ca %s" % (ca,))
        d = defer.ensureDeferred(self._waitReady())
        d.addCallbacks(self._ready, self._notReady)

    async def _waitReady(self):
        channel = grpcbridge.channel(self.router, self.tls)
        stub = pbg.RouterStub(channel)
        deadline = self.reactor.seconds() + self.readyTimeout
        problem = None
        try:
            while not self.whenReady.called:
                try:
                    status = await grpcbridge.call(stub.Status, pb.StatusRequest(), timeout=1,
                                                  metadata=auth.secretMetadata(self.secret))
                except errors.RemoteError as e:
                    # The router is still starting: ask again.  Each new
                    # reason is logged once, not every tenth of a second.
                    status = None
                    if e.message != problem:
                        problem = e.message
                        log.info("router not answering yet: {why}", why=problem)
                if status is not None:
                    # Ready means fault tolerant: every VM has its master
                    # and that master's slave.
                    masters = {s.vm: s.address for s in status.servers if s.role == pb.MASTER}
                    slaves = {s.vm for s in status.servers if s.role == pb.SLAVE}
                    if len(masters) >= self.vms and len(slaves) >= self.vms:
                        return masters
                if self.reactor.seconds() > deadline:
                    raise RuntimeError("the cluster was not ready within %ds"
                                       % (self.readyTimeout,))
                await deferLater(self.reactor, 0.1)
        finally:
            await grpcbridge.closeChannel(channel)
        # Only _childEnded stops the loop early: it failed whenReady, whose
        # failure main() has consumed (awaiting it would give None).
        raise RuntimeError("a process exited during start-up: see %s" % (self.base,))

    def _ready(self, masters):
        if not self.whenReady.called:
            self.whenReady.callback(masters)
        self.out("sns-cluster ready: router %s; %s; clients: --tls-ca %s" % (
            self.router, ", ".join("%s %s" % kv for kv in sorted(masters.items())),
            self.tlsFiles[0]))

    def _notReady(self, failure):
        if not self.whenReady.called:
            self.whenReady.errback(failure)
        self.out("sns-cluster failed: %s" % (failure.getErrorMessage(),))
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self):
        self.stopping = True
        MultiService.stopService(self)
        # A promoted slave is not our child (its master spawned it): find
        # every server of our VMs by the pid files they keep in their data.
        others = {pid: data for pid, data in self.serverPids().items()
                  if pid not in {c.pid for c in self.children.values()}}
        for pid, data in others.items():
            buddy.signalIfStill(pid, signal.SIGTERM, functools.partial(buddy.isServer,
                                                                       data=data))
        stops = [buddy.terminate(self.reactor, c, self.killTime)
                 for c in self.children.values()]
        stops.append(defer.ensureDeferred(self._waitGone(others)))
        for held in self.heldPorts:
            held.release()
        return defer.gatherResults(stops, consumeErrors=True)

    def serverPids(self, vm=None):
        """
        {pid: data directory} of the live sns-server processes of VM C{vm}
        (default: of every VM), from their pid files.  A pid file left by a
        server that died (a SIGKILLed process whose parent had died first
        removes none) may name a pid the kernel has given another program
        since, another run's server too: only a process whose command line
        holds this VM's data directory is one of ours.
        """
        pids = {}
        for i in range(self.vms):
            name = "vm%d" % (i + 1,)
            if vm not in (None, name):
                continue
            data = os.path.join(self.base, name, "data")
            run = os.path.join(data, "run")
            for entry in os.listdir(run) if os.path.isdir(run) else ():
                stem = entry.split(".")[0]
                if stem.isdigit() and buddy.isServer(int(stem), data):
                    pids[int(stem)] = data
        return pids

    async def _waitGone(self, pids):
        """Wait for the servers C{pids} ({pid: data directory}) to end; SIGKILL them late."""
        deadline = self.reactor.seconds() + self.killTime
        while any(buddy.isServer(p, data) for p, data in pids.items()):
            if self.reactor.seconds() > deadline:
                for pid, data in pids.items():
                    buddy.signalIfStill(pid, signal.SIGKILL, functools.partial(buddy.isServer,
                                                                               data=data))
                return
            await deferLater(self.reactor, 0.02)


def _tlsFromEnvironment():
    """(ca, cert, key) from $SNS_TLS_CA, $SNS_TLS_CERT, $SNS_TLS_KEY, if all are set."""
    files = tuple(os.environ.get(n) for n in ("SNS_TLS_CA", "SNS_TLS_CERT", "SNS_TLS_KEY"))
    return tuple(os.path.abspath(f) for f in files) if all(files) else None


def deferLater(clock, seconds):
    from twisted.internet.task import deferLater as later
    return later(clock, seconds, lambda: None)


class ClusterOptions(usage.Options):
    synopsis = "[--vms N] [--dir DIR] [--router HOST:PORT]"
    optParameters = [
        ["vms", "n", 3, "Number of VMs (server pairs).", int],
        ["dir", "d", "sns-cluster", "Directory for every VM's data and the logs."],
        ["router", "r", "127.0.0.1:3410", "Router address (port 0: any free port)."],
        ["web", "w", "127.0.0.1:8080",
         "Address of the web pages (port 0: any free port; empty: no web)."],
        ["secret-file", None, None,
         "File holding the cluster's shared secret (default: $SNS_SECRET, else random)."],
        ["posts-per-second", None, None,
         "Posts one user may make per second (sns-server's option).", float],
    ]

    def postOptions(self):
        from snstwist.commands.commandline import installReactor, parseAddress, readSecret
        if not 1 <= self["vms"] <= 200:
            raise usage.UsageError("--vms must be between 1 and 200")
        self["router"] = parseAddress(self["router"], "--router")
        if self["web"]:
            self["web"] = parseAddress(self["web"], "--web")
        self["secret"] = None
        if self["secret-file"] or os.environ.get("SNS_SECRET"):
            self["secret"] = readSecret(self["secret-file"])
        installReactor()

    def secretOrNone(self):
        """The secret given, or None: the cluster then makes a random one."""
        return self["secret"]


def main(argv=None):
    """The C{sns-cluster} command."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    options = ClusterOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write("%s\nsns-cluster: %s\n" % (options, e))
        return 2
    from twisted.internet import reactor

    service = ClusterService.fromOptions(options)
    os.makedirs(service.base, exist_ok=True)
    logfile = open(os.path.join(service.base, "cluster.log"), "a")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(logfile)],
                                     redirectStandardIO=False)
    failed = []
    service.whenReady.addErrback(lambda f: failed.append(f))
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
