"""
The processes a benchmark starts and measures, by pid: a child speaking JSON
lines (L{Child}), the CPU and memory it uses, and the sweep of whatever a run
left behind (L{killLeft}).

Blocking code: the benchmark programs are plain scripts that wait on their
children; none of this runs on a reactor.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

from snstwist.buddy.processes import pidAlive, signalPid

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/
ROOT = os.path.dirname(HERE)
PY = sys.executable
ENV = dict(os.environ, GRPC_VERBOSITY="ERROR", GRPC_ENABLE_FORK_SUPPORT="0",
           PYTHONUNBUFFERED="1")


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
    """A load generator (C{benchmarks/loadgen.py MODE ARGS}) as a L{Child}."""
    return Child(name, [PY, os.path.join(HERE, "loadgen.py"), mode] + [str(a) for a in args],
                 logdir)


def procCmdline(pid):
    """What C{pid} runs, its arguments joined by spaces; "" when it is gone."""
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


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
        signalPid(pid, signal.SIGKILL)
    return left


def cpuSeconds(pid):
    """User and system CPU seconds C{pid} has used; None when it is gone."""
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

    def seconds(self):
        """The CPU seconds each group used since the start, and the seconds since."""
        used = {}
        for k, pids in self.groups.items():
            used[k] = sum((cpuSeconds(p) or 0) - (c or 0) for p, c in zip(pids, self.start[k]))
        return used, time.monotonic() - self.t0

    def percent(self):
        used, wall = self.seconds()
        return {k: round(100 * v / wall) for k, v in used.items()}


def rssKB(pid):
    """The resident memory of C{pid} (VmRSS), in KB."""
    with open("/proc/%d/status" % (pid,)) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % (pid,))

