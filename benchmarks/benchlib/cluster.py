"""
The local cluster a benchmark measures (L{Cluster}: C{python -m
snstwist.commands.cluster}, seen through the router's Status), and how a
benchmark reaches its processes: TLS channels with the run's CA, the
cluster's secret, a Login probe, and L{until}, the one polling loop.

Blocking gRPC (C{grpc.secure_channel}): the benchmark programs are plain
scripts; the processes they measure are the ones on a reactor.
"""

import os
import signal
import subprocess
import time

from benchlib.processes import Child, PY, killLeft, pidsWith, procCmdline

# Seconds a pair is left alone before the next kill: more than
# BuddySupervisor.threshold (a respawn is immediate, not backed off), and
# more than buddylink.SPARE_DELAY plus a spare's start (0.35-0.5 s on a quiet
# machine): the killed process's replacement is the spare, as after any
# failure that does not follow another within seconds.
SETTLE = 2.5
POLL = 0.005

# Every benchmark user's password.
PASSWORD = "benchmark password"


def probeLogin(stub, user, tokens):
    """
    A Login, as a client that fails over makes it: the first with the
    password (argon2, once), then renewals of the token it got (no hashing),
    so that the figure is the server's answer, not the hash's cost.
    """
    from snstwist.rpc import auth
    from snstwist.rpc import sns_pb2 as pb
    if user not in tokens:
        tokens[user] = stub.Login(pb.LoginRequest(user=user, password=PASSWORD), timeout=5).token
    stub.Login(pb.LoginRequest(user=user), timeout=0.5,
               metadata=auth.sessionMetadata(tokens[user]))


def useTLS(work, env):
    """
    A CA and certificate in WORK/tls for every cluster of the run, in $SNS_TLS_*
    of C{env} and of this process (sns-cluster, load generators and our own
    channels use them).
    """
    from snstwist.rpc.certs import ensureClusterCerts
    ca, cert, key = ensureClusterCerts(os.path.join(work, "tls"))
    for e in (env, os.environ):
        e.update(SNS_TLS_CA=ca, SNS_TLS_CERT=cert, SNS_TLS_KEY=key)


def secureChannel(address, options=()):
    """A blocking channel to a process of the cluster, over TLS (our CA)."""
    import grpc

    from snstwist.rpc import grpcbridge
    return grpc.secure_channel(address, grpcbridge.defaultTLS().channelCredentials(),
                               options=list(options) + [
                                   ("grpc.ssl_target_name_override", grpcbridge.CLUSTER_NAME)])


def fastChannel(address):
    """
    A channel that reconnects within 100 ms: a benchmark polls a process
    that was just (re)started, and gRPC's default backoff (a second and
    more) would be measured instead of the process.
    """
    return secureChannel(address, options=[
        ("grpc.initial_reconnect_backoff_ms", 20),
        ("grpc.min_reconnect_backoff_ms", 20),
        ("grpc.max_reconnect_backoff_ms", 100)])


def clusterSecret(base):
    """Metadata proving we know the secret sns-cluster wrote to BASE/secret."""
    from snstwist.rpc import auth
    with open(os.path.join(base, "secret")) as f:
        return auth.secretMetadata(f.read().strip())


class Cluster:
    """A running ``python -m snstwist.commands.cluster``, seen through the router's Status."""

    def __init__(self, base, vms, logdir):
        self.base = base
        self.vms = vms
        self.logdir = logdir
        self.child = None
        self.router = None
        self.channels = {}
        self.tokens = {}
        self.firstSeen = {}

    def start(self, timeout=90.0):
        os.makedirs(self.base, exist_ok=True)
        self.child = Child("cluster-%dvm" % (self.vms,), [
            PY, "-m", "snstwist.commands.cluster", "--dir", self.base, "--vms", str(self.vms),
            "--router", "127.0.0.1:0", "--web", "",
            # One benchmark user posts up to 1,000/s: above the per-user
            # limit real users get.
            "--posts-per-second", "100000"], self.logdir)
        line = self.child.expect("sns-cluster ready", timeout)
        self.router = line.split()[3].rstrip(";")
        return self

    def channel(self, address):
        if address not in self.channels:
            self.channels[address] = fastChannel(address)
        return self.channels[address]

    def status(self):
        from snstwist.rpc import sns_pb2 as pb
        from snstwist.rpc import sns_pb2_grpc as pbg
        reply = pbg.RouterStub(self.channel(self.router)).Status(
            pb.StatusRequest(), timeout=2, metadata=clusterSecret(self.base))
        now = time.monotonic()
        for s in reply.servers:
            self.firstSeen.setdefault(s.pid, now)
        return reply

    def servers(self, vm=None, role=None):
        return [s for s in self.status().servers
                if (vm is None or s.vm == vm) and (role is None or s.role == role)]

    def login(self, address, user="bench-probe"):
        from snstwist.rpc import sns_pb2_grpc as pbg
        probeLogin(pbg.SNSStub(self.channel(address)), user, self.tokens)

    def vmNames(self):
        return ["vm%d" % (i + 1,) for i in range(self.vms)]

    def masterOf(self, vm):
        from snstwist.rpc import sns_pb2 as pb
        masters = self.servers(vm, pb.MASTER)
        return masters[0] if masters else None

    def processes(self):
        """{role name: [pid]} of every process of this cluster."""
        from snstwist.rpc import sns_pb2 as pb
        out = {"router": [p for p in pidsWith(self.base) if "sns-router" in procCmdline(p)]}
        for s in self.status().servers:
            key = "%s %s" % (s.vm, "master" if s.role == pb.MASTER else "slave")
            out.setdefault(key, []).append(s.pid)
        return out

    def healthy(self, settle=SETTLE):
        """Every VM has one master and one slave, each up for at least C{settle} s."""
        from snstwist.rpc import sns_pb2 as pb
        servers = self.status().servers
        now = time.monotonic()
        for vm in self.vmNames():
            masters = [s for s in servers if s.vm == vm and s.role == pb.MASTER]
            slaves = [s for s in servers if s.vm == vm and s.role == pb.SLAVE]
            if len(masters) != 1 or len(slaves) != 1:
                return False
            if any(now - self.firstSeen[s.pid] < settle for s in masters + slaves):
                return False
        return True

    def stop(self):
        for ch in self.channels.values():
            ch.close()
        self.channels = {}
        if self.child is not None and self.child.process.poll() is None:
            self.child.process.send_signal(signal.SIGTERM)
            try:
                self.child.process.wait(30)
            except subprocess.TimeoutExpired:
                self.child.process.kill()
                self.child.process.wait()
        if self.child is not None:
            self.child.stop()
        return killLeft(self.base)


def until(what, predicate, timeout=30.0, interval=POLL):
    """
    Poll C{predicate} (an RPC failing counts as not yet) until it returns
    something true, and return that; RuntimeError after C{timeout}.
    """
    import grpc
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except grpc.RpcError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)
