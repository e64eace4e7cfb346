"""
The benchmark of docs/design.md section 10, on real processes on this machine.

    python benchmarks/run.py [--short | --full] [--out DIR] [--profile]

Starts a local cluster (``python -m snstwist.commands.cluster``) and, in one run:

1. throughput: acknowledged posts per second, each durable on two VMs
   (``WriteReply.copies >= 2``), under a closed loop of C concurrent clients
   (load processes of ``benchmarks/loadgen.py``), and beside it a bare
   ``grpc.aio`` unary echo (``benchmarks/echo.py``) at the same concurrency;
   the ratio of the two (target: >= 40%);
2. post -> follower's screen latency at a fixed offered rate, to a follower
   on the poster's VM and to one on another VM (p50/p99/max);
3. failover: SIGKILL of a client's master1 until its next command succeeds;
   of a master until its promoted slave answers a Login; of a slave until
   its replacement is registered with the router;
4. memory: a master's RSS idle and with 1,000 live timeline sessions;
5. scaling: 1 -> 10 -> 100 (-> 1,000 with --full) clients, and (with
   --full) 2 -> 4 VMs.

Writes ``results.json``, ``results.md`` and ``plot.png`` to --out (default
``bench-results/``).  Every process it starts, directly or through the
cluster, is stopped at the end and on Ctrl-C or SIGTERM, by PID.

A measurement, not a test: trial and CI never run it (``tox -e bench`` does).
"""

import argparse
import datetime
import functools
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
ENV = dict(os.environ, GRPC_VERBOSITY="ERROR", GRPC_ENABLE_FORK_SUPPORT="0",
           PYTHONUNBUFFERED="1")

MODES = {
    "short": dict(
        levels=[1, 10, 100], seconds=3.0, warmup=0.5, workers=2,
        rates=[100, 1000], latencySeconds=4.0, posters=2,
        sessions=1000, sessionWorkers=4,
        failovers=3, vms=[2], vmLevels=[], profileSeconds=0),
    "full": dict(
        levels=[1, 10, 100, 1000], seconds=8.0, warmup=1.0, workers=2,
        rates=[100, 300, 1000], latencySeconds=8.0, posters=2,
        sessions=1000, sessionWorkers=4,
        failovers=15, vms=[2, 4], vmLevels=[10, 100], profileSeconds=0),
}

TARGETS = {
    "ratio": 0.40,
    "same_p50_ms": 2.0, "same_p99_ms": 10.0, "cross_p99_ms": 20.0,
    "client_failover_p50_ms": 100.0, "client_failover_p99_ms": 300.0,
    "replaced_p50_ms": 500.0, "replaced_p99_ms": 1000.0,
    "kb_per_session": 50.0,
}

SETTLE = 1.3  # > BuddySupervisor.threshold: a respawn is immediate, not backed off
POLL = 0.005


class Interrupted(Exception):
    pass


# ---------------------------------------------------------------- processes

class Child:
    """
    A process we started: JSON lines from its stdout on a queue (a reader
    thread), stderr to a log file, commands on stdin.
    """

    running = []

    def __init__(self, name, args, logdir):
        self.name = name
        self.logPath = os.path.join(logdir, name + ".log")
        self.logFile = open(self.logPath, "w")
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logFile,
            env=ENV, cwd=ROOT, text=True, bufsize=1)
        self.pid = self.process.pid
        self.lines = queue.Queue()
        self.raw = []
        threading.Thread(target=self._read, daemon=True).start()
        Child.running.append(self)

    def _read(self):
        for line in self.process.stdout:
            self.raw.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def send(self, line):
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def expect(self, event, timeout=60.0):
        """The next JSON line whose "event" is C{event}; fails on "error" or exit."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("%s: no %r within %.0fs; see %s"
                                   % (self.name, event, timeout, self.logPath))
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise RuntimeError("%s exited (%s) waiting for %r; see %s"
                                   % (self.name, self.process.poll(), event, self.logPath))
            try:
                message = json.loads(line)
            except ValueError:
                if line.startswith("sns-cluster failed"):
                    raise RuntimeError("%s: %s" % (self.name, line.strip()))
                if event is None or line.startswith(event):
                    return line
                continue
            if message.get("event") == "error":
                raise RuntimeError("%s failed: %s" % (self.name, message.get("error")))
            if message.get("event") == event:
                return message

    def stop(self, timeout=10.0):
        """quit on stdin, then TERM, then KILL; always reaped."""
        if self.process.poll() is None:
            self.send("quit")
            try:
                self.process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(3)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        if self in Child.running:
            Child.running.remove(self)
        self.logFile.close()

    @classmethod
    def stopAll(cls, parallel=True):
        children = list(cls.running)
        for child in children:
            if child.process.poll() is None:
                child.send("quit")
        for child in reversed(children):
            child.stop(5.0)


def stopEach(children, timeout=10.0):
    """Stop several children at once (quit to all, then wait for each)."""
    for child in children:
        child.send("quit")
    for child in children:
        child.stop(timeout)


def loadgen(name, mode, logdir, *args):
    return Child(name, [PY, os.path.join(HERE, "loadgen.py"), mode] + [str(a) for a in args],
                 logdir)


def procCmdline(pid):
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def pidAlive(pid):
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def pidsWith(text):
    """Live pids whose command line contains C{text}."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid() and text in procCmdline(int(name)):
            if pidAlive(int(name)):
                out.append(int(name))
    return out


def killLeft(text):
    """SIGKILL every live process whose command line contains C{text}; their pids."""
    left = pidsWith(text)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def cpuSeconds(pid):
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            fields = f.read().rsplit(")", 1)[-1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return None


class CpuMeter:
    """CPU use (% of one core) of named groups of pids over an interval."""

    def __init__(self, groups):
        self.groups = groups
        self.start = {k: [cpuSeconds(p) for p in pids] for k, pids in groups.items()}
        self.t0 = time.monotonic()

    def percent(self):
        wall = time.monotonic() - self.t0
        out = {}
        for k, pids in self.groups.items():
            used = [(cpuSeconds(p) or 0) - (c or 0) for p, c in zip(pids, self.start[k])]
            out[k] = round(100 * sum(used) / wall)
        return out


def rssKB(pid):
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % (pid,))


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


def clusterSecret(base):
    """Metadata proving we know the secret sns-cluster wrote to BASE/secret."""
    from snstwist.rpc import auth
    with open(os.path.join(base, "secret")) as f:
        return auth.secretMetadata(f.read().strip())


# ---------------------------------------------------------------- the cluster

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
            self.channels[address] = secureChannel(address, options=[
                ("grpc.initial_reconnect_backoff_ms", 20),
                ("grpc.min_reconnect_backoff_ms", 20),
                ("grpc.max_reconnect_backoff_ms", 100)])
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


# ---------------------------------------------------------------- statistics

def pct(values, p):
    """Nearest-rank percentile of C{values} (any order); None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def summarize(ms):
    return {"n": len(ms), "p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99),
            "max": max(ms) if ms else None,
            "mean": round(statistics.fmean(ms), 3) if ms else None}


def split(total, parts):
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# ---------------------------------------------------------------- phases

class Bench:
    def __init__(self, cfg, out, work, profile):
        self.cfg = cfg
        self.out = out
        self.work = work
        self.logdir = os.path.join(work, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.profile = profile
        self.results = {}
        self.raw = {}
        self.clusters = []
        self.echo = None
        self.runs = 0
        self.argv = None

    def say(self, text):
        sys.stdout.write("[%6.1fs] %s\n" % (time.monotonic() - self.t0, text))
        sys.stdout.flush()

    def name(self, what):
        self.runs += 1
        return "%02d-%s" % (self.runs, what)

    # -- 1 and 5: throughput

    def echoServer(self):
        if self.echo is None:
            child = Child("echo-server", [PY, os.path.join(HERE, "echo.py"), "server",
                                          "--listen", "127.0.0.1:0"], self.logdir)
            self.echo = (child, child.expect("ready", 30)["address"])
        return self.echo

    def echoLoad(self, clients):
        server, address = self.echoServer()
        cfg = self.cfg
        workers = [Child(self.name("echo-c%d-w%d" % (clients, i)), [
            PY, os.path.join(HERE, "echo.py"), "client", "--target", address,
            "--clients", str(n)], self.logdir)
            for i, n in enumerate(split(clients, min(clients, cfg["workers"])))]
        for w in workers:
            w.expect("ready", 60)
        meter = CpuMeter({"echo server": [server.pid], "load generators": [w.pid for w in workers]})
        for w in workers:
            w.send("go %s %s" % (cfg["seconds"], cfg["warmup"]))
        results = [w.expect("result", cfg["seconds"] + cfg["warmup"] + 60) for w in workers]
        cpu = meter.percent()
        stopEach(workers)
        lat = [x for r in results for x in r["lat"]]
        return {"clients": clients, "calls_per_s": round(len(lat) / cfg["seconds"], 1),
                "errors": sum(r["errors"] for r in results), "latency_ms": summarize(lat),
                "cpu_percent": cpu}, lat

    def postLoad(self, cluster, clients, tag, profile=None):
        cfg = self.cfg
        counts = split(clients, min(clients, cfg["workers"]))
        workers = [loadgen(self.name("post-c%d-w%d" % (clients, i)), "post", self.logdir,
                           "--router", cluster.router, "--prefix", "%s%dw%d_" % (tag, clients, i),
                           "--clients", n)
                   for i, n in enumerate(counts)]
        vms = {}
        for w in workers:
            for vm, n in w.expect("ready", 60 + clients / 5)["vms"].items():
                vms[vm] = vms.get(vm, 0) + n
        procs = cluster.processes()
        procs["load generators"] = [w.pid for w in workers]
        meter = CpuMeter(procs)
        spy = None
        seconds = cfg["seconds"]
        if profile:
            seconds = profile["seconds"]
            spy = self.startProfile(profile["pid"], seconds, profile["path"])
        for w in workers:
            w.send("go %s %s" % (seconds, cfg["warmup"]))
        results = [w.expect("result", seconds + cfg["warmup"] + 60) for w in workers]
        cpu = meter.percent()
        stopEach(workers)
        if spy is not None:
            spy.wait(60)
        lat = [x for r in results for x in r["lat"]]
        out = {"clients": clients, "posts_per_s": round(len(lat) / seconds, 1),
               "acked_one_copy": sum(r["ok1"] for r in results),
               "errors": sum(r["errors"] for r in results), "latency_ms": summarize(lat),
               "masters_used": vms, "cpu_percent": cpu}
        return out, lat

    def throughput(self, cluster, levels, key):
        rows = []
        for clients in levels:
            echo, echoLat = self.echoLoad(clients)
            self.say("echo    %4d clients: %8.1f calls/s  p50 %.2f ms p99 %.2f ms"
                     % (clients, echo["calls_per_s"], echo["latency_ms"]["p50"] or 0,
                        echo["latency_ms"]["p99"] or 0))
            sns, snsLat = self.postLoad(cluster, clients, "t%s" % (key,))
            ratio = sns["posts_per_s"] / echo["calls_per_s"] if echo["calls_per_s"] else None
            self.say("snstwist %4d clients: %8.1f posts/s (copies>=2) p50 %.2f ms p99 %.2f ms;"
                     " ratio %.0f%%; cpu %s"
                     % (clients, sns["posts_per_s"], sns["latency_ms"]["p50"] or 0,
                        sns["latency_ms"]["p99"] or 0, 100 * (ratio or 0), sns["cpu_percent"]))
            rows.append({"clients": clients, "echo": echo, "sns": sns,
                         "ratio": round(ratio, 3) if ratio is not None else None})
            self.raw.setdefault("throughput-%s" % (key,), {})[clients] = (echoLat, snsLat)
        return rows

    def startProfile(self, pid, seconds, path):
        spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy")
        if not os.path.exists(spy):
            self.say("py-spy not installed: no profile (pip install py-spy)")
            return None
        return subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
             "--rate", "100", "--idle", "--threads", "--format", "raw", "--output", path,
             "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=open(path + ".log", "w"))

    # -- 2: post -> screen

    def latency(self, cluster, rate, key, same="vm1", other="vm2"):
        cfg = self.cfg
        tag = "L%s%d" % (key, int(rate))
        posters = [loadgen(self.name("poster-%d-w%d" % (rate, i)), "poster", self.logdir,
                           "--router", cluster.router, "--user", "poster", "--pin", same,
                           "--clients", 2, "--rate", rate / cfg["posters"], "--tag", tag)
                   for i in range(cfg["posters"])]
        posterVms = {}
        for p in posters:
            for vm, n in p.expect("ready", 60)["vms"].items():
                posterVms[vm] = posterVms.get(vm, 0) + n
        followers = {
            "same": loadgen(self.name("follower-same-%d" % (rate,)), "follower", self.logdir,
                            "--router", cluster.router, "--user", "fs_%s" % (tag,),
                            "--follow", "poster", "--pin", same, "--tag", tag),
            "cross": loadgen(self.name("follower-cross-%d" % (rate,)), "follower", self.logdir,
                             "--router", cluster.router, "--user", "fc_%s" % (tag,),
                             "--follow", "poster", "--pin", other, "--tag", tag),
        }
        where = {k: f.expect("ready", 60)["vm"] for k, f in followers.items()}
        procs = cluster.processes()
        procs["posters"] = [p.pid for p in posters]
        procs["followers"] = [f.pid for f in followers.values()]
        meter = CpuMeter(procs)
        for p in posters:
            p.send("go %s" % (cfg["latencySeconds"],))
        sent = [p.expect("result", cfg["latencySeconds"] + 60) for p in posters]
        cpu = meter.percent()
        time.sleep(1.0)  # the last posts reach the screens
        out = {"offered_per_s": rate, "seconds": cfg["latencySeconds"],
               "sent": sum(r["sent"] for r in sent), "acked": sum(r["acked"] for r in sent),
               "acked_one_copy": sum(r["ok1"] for r in sent),
               "dropped": sum(r["dropped"] for r in sent),
               "errors": sum(r["errors"] for r in sent),
               "poster_vms": posterVms, "follower_vms": where, "cpu_percent": cpu,
               "ack_ms": summarize([x for r in sent for x in r["lat"]])}
        out["held_per_s"] = round(out["acked"] / cfg["latencySeconds"], 1)
        lats = {}
        for k, f in followers.items():
            f.send("stop")
            result = f.expect("result", 30)
            lats[k] = result["lat"]
            out[k] = summarize(lats[k])
            # The part after the master accepted the post (durable, pushed,
            # shown); the rest is the poster's call reaching the master.
            out[k]["from_accept"] = summarize(result["fromAccept"])
            out[k]["received_fraction"] = round(len(lats[k]) / max(1, out["acked"]), 3)
        stopEach(list(followers.values()) + posters)
        self.raw.setdefault("latency-%s" % (key,), {})[rate] = lats
        self.say("post->screen at %d/s offered (held %.0f/s acked, %d dropped): same VM (%s)"
                 " p50 %s p99 %s max %s ms (after accept p50 %s); cross VM (%s) p50 %s p99 %s"
                 " max %s ms (after accept p50 %s); cpu %s"
                 % (rate, out["held_per_s"], out["dropped"], where["same"],
                    out["same"]["p50"], out["same"]["p99"], out["same"]["max"],
                    out["same"]["from_accept"]["p50"], where["cross"],
                    out["cross"]["p50"], out["cross"]["p99"], out["cross"]["max"],
                    out["cross"]["from_accept"]["p50"], cpu))
        return out

    # -- 4: memory

    def memory(self, cluster, vm="vm1"):
        cfg = self.cfg
        n = cfg["sessions"]
        master = cluster.masterOf(vm)

        def openSessions(timeline):
            args = ["--router", cluster.router, "--pin", vm]
            if timeline:
                args.append("--timeline")
            workers = [loadgen(self.name("sessions-%s-w%d" % ("tl" if timeline else "users", i)),
                               "sessions" if timeline else "users", self.logdir,
                               "--prefix", "m%d_" % (i,), "--clients", k, *args)
                       for i, k in enumerate(split(n, cfg["sessionWorkers"]))]
            vms = {}
            for w in workers:
                for v, k in w.expect("ready", 180)["vms"].items():
                    vms[v] = vms.get(v, 0) + k
            return workers, vms

        def sample(count=5, gap=0.4):
            values = []
            for _ in range(count):
                values.append(rssKB(master.pid))
                time.sleep(gap)
            return int(statistics.median(values))

        t = time.monotonic()
        # The users first, by Login alone: a new user is not a session's cost.
        workers, _ = openSessions(False)
        stopEach(workers)
        time.sleep(1.5)
        idle = sample()
        meter = CpuMeter({"master": [master.pid]})
        time.sleep(1.0)
        idleCpu = meter.percent()["master"]
        workers, vms = openSessions(True)
        opened = time.monotonic() - t
        time.sleep(1.0)  # heartbeats both ways on every session
        meter = CpuMeter({"master": [master.pid]})
        live = sample(6, 0.5)
        liveCpu = meter.percent()["master"]
        clients = {s.pid: s.clients for s in cluster.status().servers}.get(master.pid)
        stopEach(workers)
        time.sleep(2.0)
        after = sample(3)
        out = {"vm": vm, "pid": master.pid, "sessions": n, "sessions_on_master": vms.get(vm, 0),
               "router_reported_clients": clients, "rss_idle_kb": idle,
               "rss_sessions_kb": live, "rss_after_close_kb": after,
               "kb_per_session": round((live - idle) / max(1, vms.get(vm, 0)), 1),
               "master_cpu_percent_idle": idleCpu, "master_cpu_percent_with_sessions": liveCpu,
               "open_seconds": round(opened, 1)}
        self.say("memory: master %s RSS %d KB idle, %d KB with %d timeline sessions"
                 " (%.1f KB each), %d KB after they closed; master CPU %d%% idle, %d%% holding"
                 " the idle sessions"
                 % (vm, idle, live, out["sessions_on_master"], out["kb_per_session"], after,
                    idleCpu, liveCpu))
        return out

    # -- 3: failover

    def failover(self, cluster):
        from snstwist.rpc import sns_pb2 as pb
        cfg = self.cfg
        client = loadgen(self.name("failover-client"), "failover", self.logdir,
                         "--router", cluster.router, "--user", "fo_client")
        where = client.expect("where", 60)
        phase0 = time.time()
        runs = []
        for i in range(cfg["failovers"]):
            until("a healthy cluster", cluster.healthy, timeout=60, interval=0.05)
            client.send("where")
            where = client.expect("where", 30)
            victimVm = where["vm"]
            victim = [s for s in cluster.servers(victimVm, pb.MASTER)
                      if s.address == where["address"]]
            if not victim:
                raise RuntimeError("the client's master1 %s is not a master in Status"
                                   % (where["address"],))
            victim = victim[0]
            oldSlave = cluster.servers(victimVm, pb.SLAVE)[0]
            client.send("kill %d" % (victim.pid,))

            tLogin = until("the promoted master of %s to answer" % (victimVm,),
                           functools.partial(promotedAnswers, cluster, victimVm, victim.pid))
            tPair = until("a new slave of %s" % (victimVm,),
                          functools.partial(newSlave, cluster, victimVm,
                                            (victim.pid, oldSlave.pid)))
            report = client.expect("failover", 60)
            t0 = report["t0"]
            run = {"vm": victimVm, "killed_master": victim.pid, "t_kill": t0 - phase0,
                   "client_post_ms": _ms(report.get("post")),
                   "client_list_ms": _ms(report.get("list")),
                   "post_copies": report.get("copies"),
                   "client_moved_to": report.get("after"),
                   "promoted_login_ms": round((tLogin - t0) * 1000, 1),
                   "pair_again_ms": round((tPair - t0) * 1000, 1)}
            for k in ("post_error", "list_error"):
                if k in report:
                    run[k] = report[k]
            # Then the slave of the VM just repaired (its master's supervisor
            # has not restarted anything yet: no restart-intensity limit).
            until("a healthy cluster", cluster.healthy, timeout=60, interval=0.05)
            slave = cluster.servers(victimVm, pb.SLAVE)[0]
            t1 = time.time()
            os.kill(slave.pid, signal.SIGKILL)
            tRep = until("a replacement slave of %s" % (victimVm,),
                         functools.partial(newSlave, cluster, victimVm, (slave.pid,)))
            run.update(t_slave_kill=t1 - phase0, killed_slave=slave.pid,
                       slave_replaced_ms=round((tRep - t1) * 1000, 1))
            runs.append(run)
            self.say("failover %d/%d on %s: client post %s ms (copies %s), list %s ms;"
                     " promoted answers Login %s ms; pair again %s ms; slave replaced %s ms"
                     % (i + 1, cfg["failovers"], victimVm, run["client_post_ms"],
                        run["post_copies"], run["client_list_ms"], run["promoted_login_ms"],
                        run["pair_again_ms"], run["slave_replaced_ms"]))
        stopEach([client])

        def stat(key):
            values = [r[key] for r in runs if r.get(key) is not None]
            return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99),
                    "max": max(values) if values else None,
                    "failed": len(runs) - len(values)}

        return {"runs": runs, "client_post_ms": stat("client_post_ms"),
                "client_list_ms": stat("client_list_ms"),
                "promoted_login_ms": stat("promoted_login_ms"),
                "pair_again_ms": stat("pair_again_ms"),
                "slave_replaced_ms": stat("slave_replaced_ms")}

    # -- the whole run

    def run(self, mode):
        self.t0 = time.monotonic()
        cfg = self.cfg
        self.results["meta"] = machine(mode, self.argv)
        self.results["config"] = cfg
        for vms in cfg["vms"]:
            key = "%dvm" % (vms,)
            self.say("starting a %d-VM cluster" % (vms,))
            cluster = Cluster(os.path.join(self.work, "cluster-" + key), vms, self.logdir)
            self.clusters.append(cluster)
            cluster.start()
            self.say("cluster ready: router %s" % (cluster.router,))
            section = self.results.setdefault(key, {})
            last = "vm%d" % (vms,)
            if vms == cfg["vms"][0]:
                master = cluster.masterOf("vm1")
                rss0 = rssKB(master.pid)
                section["throughput"] = self.throughput(cluster, cfg["levels"], key)
                rss1 = rssKB(master.pid)
                posts = sum(r["sns"]["posts_per_s"] * cfg["seconds"] for r in section["throughput"])
                section["rss_growth"] = {"vm1_master_before_kb": rss0, "after_kb": rss1,
                                         "posts_acked_approx": int(posts)}
                if self.profile:
                    section["profile"] = self.profileMaster(cluster, key)
                section["latency"] = [self.latency(cluster, rate, key, "vm1", last)
                                      for rate in cfg["rates"]]
                section["memory"] = self.memory(cluster)
                section["failover"] = self.failover(cluster)
            else:
                section["throughput"] = self.throughput(cluster, cfg["vmLevels"], key)
                section["latency"] = [self.latency(cluster, rate, key, "vm1", last)
                                      for rate in cfg["rates"][-1:]]
            self.say("stopping the %d-VM cluster" % (vms,))
            left = cluster.stop()
            self.clusters.remove(cluster)
            section["left_running_after_stop"] = left
        self.results["meta"]["load_after"] = os.getloadavg()
        self.results["meta"]["seconds"] = round(time.monotonic() - self.t0, 1)

    def profileMaster(self, cluster, key):
        master = cluster.masterOf("vm1")
        path = os.path.join(self.out, "profile-master.txt")
        clients = self.cfg["levels"][-1] if self.cfg["levels"][-1] <= 100 else 100
        seconds = max(5, self.cfg.get("profileSeconds") or 8)
        self.say("profiling vm1's master (pid %d) with py-spy for %ds under %d posting clients"
                 % (master.pid, seconds, clients))
        sns, _ = self.postLoad(cluster, clients, "p%s" % (key,),
                               profile={"pid": master.pid, "seconds": seconds, "path": path})
        top = topFunctions(path) if os.path.exists(path) else None
        return {"pid": master.pid, "clients": clients, "seconds": seconds,
                "posts_per_s_while_profiled": sns["posts_per_s"], "raw": path, "top": top}

    def cleanup(self):
        Child.stopAll()
        for cluster in list(self.clusters):
            left = cluster.stop()
            if left:
                sys.stdout.write("killed %d processes left by the cluster: %s\n"
                                 % (len(left), left))
        left = killLeft(self.work)
        if left:
            sys.stdout.write("killed leftover processes: %s\n" % (left,))


def promotedAnswers(cluster, vm, deadPid):
    """The time when a master of C{vm} other than C{deadPid} answers a Login, or None."""
    from snstwist.rpc import sns_pb2 as pb
    for m in cluster.servers(vm, pb.MASTER):
        if m.pid != deadPid:
            try:
                cluster.login(m.address)
            except Exception:
                return None
            return time.time()
    return None


def newSlave(cluster, vm, oldPids):
    """The time when a slave of C{vm} not in C{oldPids} is registered, or None."""
    from snstwist.rpc import sns_pb2 as pb
    if [s for s in cluster.servers(vm, pb.SLAVE) if s.pid not in oldPids]:
        return time.time()
    return None


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


IDLE_LEAVES = {"EpollSelector.select", "Condition.wait", "Thread.run", "Queue.get"}
FRAMEWORK = ("<module>", "run", "runApp", "ApplicationRunner.", "UnixApplicationRunner.",
             "runReactorWithLogging", "AsyncioSelectorReactor.run", "BaseEventLoop.run_forever",
             "BaseEventLoop._run_once", "Handle._run", "Thread._bootstrap", "Thread.run",
             "ThreadWorker.", "Team.", "ThreadPool.", "ThreadedContextTracker.",
             "ContextTracker.", "thread (")


def _top(counts, total, n):
    return [(k, round(100.0 * v / total, 1))
            for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:n]]


def topFunctions(path, n=12):
    """
    Per thread, from py-spy's raw output (recorded with --idle --threads):
    how busy it was, and the functions with the largest self and inclusive
    shares of its busy samples (the event loop and thread-pool frames that
    every sample has are left out of the inclusive list).
    """
    threads = {}
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            count = int(count)
            frames = stack.split(";")
            name = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
            t = threads.setdefault(name, {"samples": 0, "idle": 0, "self": {}, "incl": {}})
            t["samples"] += count
            names = ["%s (%s)" % (fr.split(" (")[0], fr.split(" (")[-1].rsplit(":", 1)[0])
                     if " (" in fr else fr for fr in frames[1:]]
            if not names or names[-1].split(" (")[0] in IDLE_LEAVES:
                t["idle"] += count
                continue
            t["self"][names[-1]] = t["self"].get(names[-1], 0) + count
            for fr in set(names):
                if not fr.startswith(FRAMEWORK):
                    t["incl"][fr] = t["incl"].get(fr, 0) + count
    out = []
    for name, t in sorted(threads.items(), key=lambda kv: -(kv[1]["samples"] - kv[1]["idle"])):
        busy = t["samples"] - t["idle"]
        if not busy:
            continue

        out.append({"thread": name, "samples": t["samples"],
                    "busy_percent": round(100.0 * busy / t["samples"], 1),
                    "self": _top(t["self"], busy, n), "inclusive": _top(t["incl"], busy, n)})
    return out


# ---------------------------------------------------------------- machine

def machine(mode, argv=None):
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def git(*args):
        try:
            return subprocess.run(["git"] + list(args), cwd=ROOT, capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    import grpc
    return {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "cpu": model, "cores": os.cpu_count(), "load_before": os.getloadavg(),
            "python": platform.python_version(), "grpcio": grpc.__version__,
            "kernel": platform.release(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": mode,
            "command": " ".join(["python", "benchmarks/run.py"] + (argv or ["--%s" % (mode,)]))}


# ---------------------------------------------------------------- report

def verdict(value, target, lower=True):
    if value is None:
        return "n/a"
    return "met" if (value < target if lower else value >= target) else "**missed**"


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.*f" % (digits, v)
    return str(v)


def markdown(results):
    m = results["meta"]
    cfg = results["config"]
    lines = [
        "Commit `%s`%s, %s mode, %s; %s, %d cores; load average %s before, %s after;"
        " Python %s, grpcio %s. Command: `%s` (%.0f s)."
        % (m["commit"][:12], " (with uncommitted changes)" if m["dirty"] else "", m["mode"],
           m["date"], m["cpu"], m["cores"], " ".join("%.2f" % x for x in m["load_before"]),
           " ".join("%.2f" % x for x in m.get("load_after", ())), m["python"], m["grpcio"],
           m["command"], m.get("seconds", 0)),
        "",
    ]
    first = "%dvm" % (cfg["vms"][0],)
    base = results.get(first, {})
    rows = base.get("throughput", [])
    headline = rows[-1] if rows else None
    if headline and headline["clients"] > 100:
        headline = [r for r in rows if r["clients"] == 100][0]
    lats = base.get("latency", [])
    fo = base.get("failover")
    mem = base.get("memory")
    lines += ["| figure (docs/design.md section 10) | measured | target | |", "|---|---|---|---|"]
    if headline:
        lines.append("| acked posts/s (copies >= 2), %d clients, vs bare grpc.aio echo | %s / %s"
                     " calls/s = **%.0f%%** | >= 40%% | %s |" % (
                         headline["clients"], fmt(headline["sns"]["posts_per_s"], 0),
                         fmt(headline["echo"]["calls_per_s"], 0), 100 * headline["ratio"],
                         verdict(headline["ratio"], TARGETS["ratio"], lower=False)))
    for x in lats:
        lines.append("| post -> screen at %d/s offered (%s/s held), same VM, p50 / p99 | %s / %s ms"
                     " | < 2 / < 10 ms | %s |" % (
                         x["offered_per_s"], fmt(x["held_per_s"], 0), fmt(x["same"]["p50"]),
                         fmt(x["same"]["p99"]),
                         "met" if verdict(x["same"]["p50"], 2) == "met"
                         and verdict(x["same"]["p99"], 10) == "met" else "**missed**"))
        lines.append("| post -> screen at %d/s offered, across VMs, p99 | %s ms | < 20 ms"
                     " | %s |" % (
            x["offered_per_s"], fmt(x["cross"]["p99"]), verdict(x["cross"]["p99"], 20)))
    if fo:
        c = fo["client_post_ms"]
        lines.append("| client failover (master1 SIGKILL -> next post acked), p50 / p99"
                     " | %s / %s ms"
                     " (n=%d) | < 100 / < 300 ms | %s |" % (
                         fmt(c["p50"]), fmt(c["p99"]), c["n"],
                         "met" if verdict(c["p50"], 100) == "met"
                         and verdict(c["p99"], 300) == "met" else "**missed**"))
        s = fo["slave_replaced_ms"]
        lines.append("| dead slave replaced and registered, p50 / p99 | %s / %s ms (n=%d)"
                     " | < 500 / < 1000 ms | %s |" % (
                         fmt(s["p50"]), fmt(s["p99"]), s["n"],
                         "met" if verdict(s["p50"], 500) == "met"
                         and verdict(s["p99"], 1000) == "met" else "**missed**"))
    if mem:
        lines.append("| memory per live timeline session (%d on one master) | %s KB"
                     " | < 50 KB | %s |"
                     % (mem["sessions_on_master"], fmt(mem["kb_per_session"]),
                        verdict(mem["kb_per_session"], 50)))
    lines.append("")

    for key in ["%dvm" % (v,) for v in cfg["vms"]]:
        section = results.get(key, {})
        if section.get("throughput"):
            lines += ["Throughput, %s (closed loop, %s s per level; latency = post -> ack):" % (
                key.replace("vm", " VMs"), fmt(cfg["seconds"], 0)), "",
                "| clients | echo calls/s | echo p50 / p99 ms | posts/s (copies >= 2) |"
                " post p50 / p99 / max ms | ratio | acked with 1 copy | errors |"
                " CPU % (router, masters, slaves, load gen.) |",
                "|---|---|---|---|---|---|---|---|---|"]
            for r in section["throughput"]:
                e, s = r["echo"], r["sns"]
                cpu = s["cpu_percent"]
                masters = sum(v for k, v in cpu.items() if k.endswith("master"))
                slaves = sum(v for k, v in cpu.items() if k.endswith("slave"))
                row = ("| %d | %s | %s / %s | %s | %s / %s / %s | %.0f%% | %d | %d"
                       " | %s, %s, %s, %s |")
                lines.append(row % (
                    r["clients"], fmt(e["calls_per_s"], 0), fmt(e["latency_ms"]["p50"], 2),
                    fmt(e["latency_ms"]["p99"], 2), fmt(s["posts_per_s"], 0),
                    fmt(s["latency_ms"]["p50"], 2), fmt(s["latency_ms"]["p99"], 2),
                    fmt(s["latency_ms"]["max"], 1), 100 * (r["ratio"] or 0),
                    s["acked_one_copy"], s["errors"], cpu.get("router", "-"), masters, slaves,
                    cpu.get("load generators", "-")))
            lines.append("")
        if section.get("latency"):
            lines += ["Post -> follower's screen, %s (poster on vm1; open loop for %s s):"
                      % (key.replace("vm", " VMs"), fmt(cfg["latencySeconds"], 0)), "",
                      "| offered/s | held (acked)/s | dropped | follower | p50 ms | p99 ms |"
                      " max ms | after accept p50 / p99 ms | received | post -> ack p50 / p99 ms |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for x in section["latency"]:
                for k in ("same", "cross"):
                    row = "| %d | %s | %d | %s (%s) | %s | %s | %s | %s / %s | %.0f%% | %s / %s |"
                    lines.append(row % (
                        x["offered_per_s"], fmt(x["held_per_s"], 0), x["dropped"],
                        "same VM" if k == "same" else "other VM", x["follower_vms"][k],
                        fmt(x[k]["p50"]), fmt(x[k]["p99"]), fmt(x[k]["max"]),
                        fmt(x[k]["from_accept"]["p50"]), fmt(x[k]["from_accept"]["p99"]),
                        100 * x[k]["received_fraction"], fmt(x["ack_ms"]["p50"]),
                        fmt(x["ack_ms"]["p99"])))
            lines.append("")
    if fo:
        lines += ["Failover (%d kills of each kind, 2 VMs):" % (len(fo["runs"]),), "",
                  "| from SIGKILL of ... to ... | p50 ms | p99 ms | max ms | failed |",
                  "|---|---|---|---|---|"]
        for key, what in (("client_post_ms", "the client's master1 -> its next post acknowledged"),
                          ("client_list_ms", "the client's master1 -> its next LIST answered"),
                          ("promoted_login_ms", "a master -> its promoted slave answers Login"),
                          ("pair_again_ms", "a master -> the VM has a new slave registered"),
                          ("slave_replaced_ms", "a slave -> its replacement registered")):
            s = fo[key]
            lines.append("| %s | %s | %s | %s | %d |" % (what, fmt(s["p50"]), fmt(s["p99"]),
                                                        fmt(s["max"]), s["failed"]))
        lines.append("")
    if mem:
        lines += ["Memory of vm1's master (VmRSS): %d KB idle, %d KB with %d live timeline"
                  " sessions (%s KB each), %d KB after they closed; the router counted %s"
                  " clients on it. Holding those sessions (heartbeats only, no posts) took"
                  " %d%% of a core on that master (%d%% with no session)."
                  % (mem["rss_idle_kb"], mem["rss_sessions_kb"],
                     mem["sessions_on_master"], fmt(mem["kb_per_session"]),
                     mem["rss_after_close_kb"], mem["router_reported_clients"],
                     mem["master_cpu_percent_with_sessions"], mem["master_cpu_percent_idle"]),
                  ""]
    prof = base.get("profile")
    if prof and prof.get("top"):
        lines += ["py-spy on vm1's master (pid %d) for %d s under %d posting clients (%s posts/s"
                  " while sampled); per thread, the share of its busy samples (busy = not"
                  " waiting in select or on a queue):" % (
                      prof["pid"], prof["seconds"], prof["clients"],
                      fmt(prof["posts_per_s_while_profiled"], 0)), ""]
        for t in prof["top"][:3]:
            lines += ["Thread %s, busy %s%% of %d samples:" % (t["thread"], t["busy_percent"],
                                                              t["samples"]), "",
                      "| self | % | inclusive | % |", "|---|---|---|---|"]
            for (a, x), (b, y) in zip(t["self"], t["inclusive"]):
                lines.append("| `%s` | %s | `%s` | %s |" % (a, x, b, y))
            lines.append("")
    return "\n".join(lines)


def plot(results, raw, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib, or tox -e bench)"
    cfg = results["config"]
    first = "%dvm" % (cfg["vms"][0],)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax = axes[0]
    n = 0
    for key, byRate in raw.items():
        if not key.startswith("latency"):
            continue
        for rate, lats in byRate.items():
            color = colors[n % len(colors)]
            n += 1
            for k, v in lats.items():
                s = sorted(v)
                if s:
                    ax.plot(s, [(i + 1) / len(s) for i in range(len(s))], color=color,
                            ls="-" if k == "same" else "--",
                            label="%s, %d/s, %s" % (key.split("-")[1], rate,
                                                    "same VM" if k == "same" else "other VM"))
    ax.set_xscale("log")
    ax.set_xlabel("post -> follower's screen (ms)")
    ax.set_ylabel("fraction of posts")
    for x in (2, 10, 20):
        ax.axvline(x, color="grey", ls=":", lw=0.8)
    ax.set_title("post -> screen latency (targets 2 / 10 / 20 ms dotted)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[1]
    for n, (clients, (echoLat, snsLat)) in enumerate(
            sorted(raw.get("throughput-" + first, {}).items())):
        for values, ls, what in ((snsLat, "-", "post -> ack"), (echoLat, "--", "echo")):
            s = sorted(values)
            if s:
                ax.plot(s, [(i + 1) / len(s) for i in range(len(s))],
                        color=colors[n % len(colors)], ls=ls,
                        label="%s, %d clients" % (what, clients))
    ax.set_xscale("log")
    ax.set_xlabel("call latency under closed-loop load (ms)")
    ax.set_title("acknowledged post (solid) vs bare grpc.aio echo (dashed), %s" % (first,))
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[2]
    fo = results.get(first, {}).get("failover")
    if fo:
        kinds = [("client_list_ms", "o", "client's next LIST answered"),
                 ("client_post_ms", "s", "client's next post acknowledged"),
                 ("promoted_login_ms", "^", "promoted slave answers Login"),
                 ("pair_again_ms", "D", "new slave registered (pair again)"),
                 ("slave_replaced_ms", "x", "after a slave SIGKILL: replacement registered")]
        for key, marker, label in kinds:
            points = [(r[key], i + 1) for i, r in enumerate(fo["runs"]) if r.get(key) is not None]
            if points:
                ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker,
                           label=label)
        for x in (100, 500, 1000):
            ax.axvline(x, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("ms after the SIGKILL (dotted: targets 100, 500, 1000 ms)")
        ax.set_ylabel("kill number (master kill, then a slave kill)")
        ax.set_title("failover timeline, %d rounds" % (len(fo["runs"]),))
        ax.legend(fontsize=7, loc="best")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("snstwist %s, %s mode, %s, load %s" % (
        results["meta"]["commit"][:10], results["meta"]["mode"], results["meta"]["date"],
        " ".join("%.1f" % x for x in results["meta"]["load_before"])))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--short", dest="mode", action="store_const", const="short",
                       help="under two minutes (default)")
    group.add_argument("--full", dest="mode", action="store_const", const="full",
                       help="more clients (1,000), 2 and 4 VMs, more kills")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results"),
                        help="where results.json, results.md and plot.png go")
    parser.add_argument("--profile", action="store_true",
                        help="also sample vm1's master with py-spy under the posting load")
    parser.add_argument("--keep", action="store_true", help="keep the clusters' data and logs")
    args = parser.parse_args(argv)
    mode = args.mode or "short"
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="sns-bench-")
    useTLS(work, ENV)
    bench = Bench(MODES[mode], out, work, args.profile)
    bench.argv = sys.argv[1:] if argv is None else list(argv)

    def interrupted(signum, frame):
        raise Interrupted("signal %d" % (signum,))

    # SIGINT too, explicitly: a shell starts background jobs with SIGINT
    # ignored, and Ctrl-C must stop everything wherever we were started.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    status = 0
    try:
        bench.run(mode)
    except (KeyboardInterrupt, Interrupted) as e:
        sys.stdout.write("interrupted (%s): stopping everything\n" % (e or "Ctrl-C",))
        status = 130
    except Exception as e:
        sys.stdout.write("benchmark failed: %s\n" % (e,))
        import traceback
        traceback.print_exc()
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if bench.echo is not None:
            bench.echo[0].stop()
        bench.cleanup()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if status == 0:
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(bench.results, f, indent=1)
        text = markdown(bench.results)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(text + "\n")
        problem = plot(bench.results, bench.raw, os.path.join(out, "plot.png"))
        sys.stdout.write("\n" + text + "\n")
        sys.stdout.write((problem or "plot: %s" % (os.path.join(out, "plot.png"),)) + "\n")
        sys.stdout.write("results: %s\n" % (out,))
    if args.keep or status == 1:
        sys.stdout.write("logs and data kept in %s\n" % (work,))
    else:
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
