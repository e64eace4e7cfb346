"""
The processes of C{history.py}: a router and the servers of two VMs started
by hand (twistd, the package's one launch line), how the benchmark reaches
them (TLS channels, the router's Status, Login and a token's renewal), and
their stop, which ends only processes this run started, by pid.

Blocking code: the benchmark is a plain script polling real processes.
"""

import glob
import os
import signal
import subprocess
import time

from benchlib.cluster import PASSWORD, fastChannel, until
from benchlib.processes import procCmdline

from snstwist.buddy.processes import pidAlive, signalPid, twistdArgs
from snstwist.commands.cluster import HeldPort
from snstwist.testbed.vmprocesses import killServersOn, serversOn

HOSTS = {"vm1": "127.0.0.2", "vm2": "127.0.0.3"}


# Ports of the run's processes, held (nothing else is given them) for the
# life of the benchmark: a process started again binds the same one.
_held = []


def freePort(host):
    held = HeldPort(host)
    _held.append(held)
    return held.port


class VMs:
    """
    A router and the VMs of one run under C{work}, started with C{env}
    (which holds the cluster's C{secret}).  Every pid the run started or
    met (its children, the servers the router named, the pidfiles of the
    VMs' data directories) is remembered, and only those are ever signalled.
    """

    def __init__(self, work, env, secret):
        self.work = work
        self.env = env
        self.secret = secret
        self.procs = []
        self.channels = {}
        self.tokens = {}
        self.pids = set()

    def data(self, vm):
        return os.path.join(self.work, vm, "data")

    def spawn(self, name, args):
        with open(os.path.join(self.work, name + ".out"), "ab") as log:
            p = subprocess.Popen(twistdArgs(os.path.join(self.work, name + ".log"), *args),
                                 env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                 cwd=self.work)
        self.procs.append(p)
        self.pids.add(p.pid)
        return p

    def startRouter(self):
        self.routerAddress = "127.0.0.1:%d" % (freePort("127.0.0.1"),)
        # Servers register at the router's cluster port (mutual TLS).
        self.routerPeer = "127.0.0.1:%d" % (freePort("127.0.0.1"),)
        self.spawn("router", ["sns-router", "--listen", self.routerAddress,
                              "--peer-listen", self.routerPeer])
        until("the router", lambda: self.status() is not None, timeout=30)

    def startServer(self, vm):
        """Start C{vm}'s master; its Popen and the address it serves clients at."""
        address = "%s:%d" % (HOSTS[vm], freePort(HOSTS[vm]))
        p = self.spawn(vm, ["sns-server", "--router", self.routerPeer, "--vm", vm,
                            "--listen", address, "--data", self.data(vm)])
        return p, address

    def channel(self, address):
        if address not in self.channels:
            self.channels[address] = fastChannel(address)
        return self.channels[address]

    def connect(self, address, timeout=10):
        """Open (and wait for) the TLS connection to C{address} before it is measured."""
        import grpc
        grpc.channel_ready_future(self.channel(address)).result(timeout=timeout)

    def status(self):
        from snstwist.rpc import sns_pb2 as pb
        from snstwist.rpc import sns_pb2_grpc as pbg
        reply = pbg.RouterStub(self.channel(self.routerAddress)).Status(
            pb.StatusRequest(), timeout=2, metadata=(("x-sns-secret", self.secret),))
        self.pids.update(s.pid for s in reply.servers)
        return reply

    def servers(self, vm, role=None):
        from snstwist.rpc import sns_pb2 as pb
        role = {"master": pb.MASTER, "slave": pb.SLAVE, None: None}[role]
        return [s for s in self.status().servers
                if s.vm == vm and (role is None or s.role == role)]

    def pair(self, vm):
        return self.servers(vm, "master")[0], self.servers(vm, "slave")[0]

    def login(self, address, user="probe"):
        """A Login with the password (argon2: hashed for a new user, else verified)."""
        from snstwist.rpc import sns_pb2 as pb
        from snstwist.rpc import sns_pb2_grpc as pbg
        reply = pbg.SNSStub(self.channel(address)).Login(
            pb.LoginRequest(user=user, password=PASSWORD), timeout=5)
        self.tokens[user] = reply.token
        return reply

    def renew(self, address, user="probe"):
        """A Login with the token a previous Login gave: what a client failing over sends."""
        from snstwist.rpc import auth
        from snstwist.rpc import sns_pb2 as pb
        from snstwist.rpc import sns_pb2_grpc as pbg
        return pbg.SNSStub(self.channel(address)).Login(
            pb.LoginRequest(user=user), timeout=1,
            metadata=auth.sessionMetadata(self.tokens[user]))

    def loggedIn(self, address):
        self.login(address)
        return time.time()

    def readyStandby(self, vm, oldPids=()):
        """The time when C{vm} has a master and a (new) slave holding as many updates, or None."""
        masters, slaves = self.servers(vm, "master"), self.servers(vm, "slave")
        slaves = [s for s in slaves if s.pid not in oldPids]
        if masters and slaves and slaves[0].updates == masters[0].updates > 0:
            return time.time()
        return None

    def kill(self, pid):
        self.pids.add(pid)
        os.kill(pid, signal.SIGKILL)

    def killVM(self, vm):
        """
        SIGKILL every server process of C{vm}, its spares included, and wait
        until none is left (L{vmprocesses.killServersOn}).
        """
        data = self.data(vm)
        self.pids.update(killServersOn(data))
        until("%s's processes to end" % (vm,), lambda: not serversOn(data), timeout=30)

    # -- the end of a run

    def _ours(self):
        """The pids of this run still alive: children, servers named, pidfiles of our VMs."""
        pids = set(self.pids)
        for path in glob.glob(os.path.join(self.work, "vm*", "data", "run", "*.pid")):
            try:
                pids.add(int(os.path.basename(path)[:-len(".pid")]))
            except ValueError:
                pass
        # A pid seen earlier may have been reused since: a process of ours
        # runs twistd on a data directory or log of this run.
        return {p for p in pids if pidAlive(p) and "twistd" in procCmdline(p)
                and self.work in procCmdline(p)}

    def stop(self):
        """SIGTERM every server and router of this run, then SIGKILL what is left; their pids."""
        try:
            self.status()
        except Exception:
            pass
        ours = self._ours()
        for pid in ours:
            signalPid(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(pidAlive(pid) for pid in ours) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self._ours()
        for pid in left:
            signalPid(pid, signal.SIGKILL)
        for p in self.procs:
            p.wait()
        for ch in self.channels.values():
            ch.close()
        return sorted(left)
