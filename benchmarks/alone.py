"""
How long a VM's only live server process is alone: from the moment it is
the VM's last process until it has started a companion (a spare or a
slave) that would take the VM over should it die too.  Killed within that
window, it leaves the VM with no server (docs/design.md section 2, "The
last server of a VM").  Times come from the processes' own log lines
(microseconds, wall clock) and this script's clock at each start or kill.

A router and two VMs started by hand (C{benchlib.vms}), N times:

(f) vm1's master started: its start (this script's exec of twistd) -> its
    first companion spawned; and, of that, the start -> its first log line
    (the interpreter's imports and twistd's start, before any code of ours
    can run); and the start -> its first Login answered (what the
    companion's start may cost it);
(g) a slave alone: vm1's slave SIGKILLed, the master's spare told to go on
    as the new slave, and the master SIGKILLed as soon as it said so (and
    the dead slave's spare stopped): the new slave (no spare of its own
    before it is a ready standby) takes over alone; the master's kill ->
    its first companion;
(h) a spare alone: vm1's master SIGKILLed, then the promoted slave as soon
    as it said it takes over: the spares take over; the slave's kill -> the
    first companion of a spare taking over; and -> vm1's master answers a
    Login.

Then vm1 is killed whole (its spares too) for the next round.

Usage: python benchmarks/alone.py [-n 5] [--work DIR]

A measurement, not a test: it is not run by trial or CI.
"""

import argparse
import datetime
import os
import re
import shutil
import sys
import tempfile
import time

from benchlib.cluster import until, useTLS
from benchlib.processes import ENV
from benchlib.vms import VMs
from failover import summary

from snstwist.buddy.processes import pidAlive

SECRET = "alone-benchmark-secret-0123456789"
SETTLE = 2.5
# A companion started: "spawned spare, pid N", "spawned buddy, pid N", or
# "spare N told to go on as the buddy".
COMPANION = re.compile(r"^(\S+) \[vm1 \S+ pid=(\d+) snstwist\.buddy\.supervisor#info\] "
                       r"(?:spawned (?:spare|buddy), pid \d+|spare \d+ told to go on)")
LINE = re.compile(r"^(\S+) \[vm1 \S+ pid=(\d+) ")


def stamp(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


class Log:
    """vm1's log (every process of the VM writes to it), read as it grows."""

    def __init__(self, path):
        self.path = path

    def lines(self):
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def first(self, pattern, after, pids=None):
        """(time, pid, line) of the first line matching C{pattern} after C{after}, or None."""
        for line in self.lines():
            m = pattern.match(line)
            if m and stamp(m.group(1)) > after and (pids is None or int(m.group(2)) in pids):
                return stamp(m.group(1)), int(m.group(2)), line
        return None

    def wait(self, needle, after=0.0, timeout=30):
        """Wait (polling every millisecond) for a line holding C{needle}, written after C{after}."""
        def there():
            for line in self.lines():
                m = LINE.match(line)
                if m and needle in line and stamp(m.group(1)) > after:
                    return line
            return None
        return until(repr(needle), there, timeout=timeout, interval=0.001)


class Bench:
    def __init__(self, work):
        self.work = work
        env = dict(ENV, SNS_SECRET=SECRET)
        useTLS(work, env)
        self.vms = VMs(work, env, SECRET)
        self.log = Log(os.path.join(work, "vm1.log"))

    def start(self):
        """(f): vm1's master started; start -> its first line, -> first companion, -> Login; s."""
        t0 = time.time()
        p, self.address = self.vms.startServer("vm1")
        first = until("vm1's first line", lambda: self.log.first(LINE, t0, {p.pid}),
                      interval=0.001)
        companion = until("vm1's master's first companion",
                          lambda: self.log.first(COMPANION, t0, {p.pid}), interval=0.001)
        login = until("vm1 to answer a Login", lambda: self.vms.loggedIn(self.address),
                      interval=0.005)
        self.settled()
        return first[0] - t0, companion[0] - t0, login - t0

    def settled(self):
        """vm1 a pair with both spares started and waiting."""
        until("a pair of vm1", lambda: len(self.vms.servers("vm1")) == 2, timeout=60)
        time.sleep(SETTLE)

    def slaveAlone(self):
        """(g): the master's kill -> the new slave's first companion, in s."""
        vms = self.vms
        master, slave = vms.pair("vm1")
        t0 = time.time()
        vms.kill(slave.pid)
        line = self.log.wait("told to go on as the buddy", after=t0)
        new = int(re.search(r"spare (\d+) told", line).group(1))
        # The dead slave's spare stops (its master lives): only then is the
        # new slave the one process left once the master is killed.
        spare = self.log.first(re.compile(
            r"^(\S+) \[vm1 \S+ pid=(%d) \S+\] spawned spare, pid (\d+)" % (slave.pid,)), 0)
        if spare is not None:
            gone = int(spare[2].rsplit(" ", 1)[1])
            until("the dead slave's spare to stop", lambda: not pidAlive(gone), interval=0.001)
        tKill = time.time()
        vms.kill(master.pid)
        companion = until("the new slave's first companion",
                          lambda: self.log.first(COMPANION, tKill, {new}), interval=0.001)
        self.settled()
        return companion[0] - tKill

    def spareAlone(self):
        """(h): the promoted slave's kill -> a spare's first companion, -> Login; in s."""
        vms = self.vms
        master, slave = vms.pair("vm1")
        vms.kill(master.pid)
        self.log.wait("master %d of VM vm1 lost" % (master.pid,))
        tKill = time.time()
        vms.kill(slave.pid)
        companion = until("a spare's first companion",
                          lambda: self.log.first(COMPANION, tKill), interval=0.001)

        def answers():
            for m in vms.servers("vm1", "master"):
                if m.pid not in (master.pid, slave.pid):
                    return vms.loggedIn(m.address)
            return None

        served = until("vm1 to serve again", answers, interval=0.005)
        return companion[0] - tKill, served - tKill

    def killVM(self):
        self.vms.killVM("vm1")
        until("vm1 to be gone", lambda: not self.vms.servers("vm1"), timeout=30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--work", default=None, help="directory (default: a new temporary one)")
    args = parser.parse_args()
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="sns-alone-"))
    os.makedirs(work, exist_ok=True)
    bench = Bench(work)
    print("load before: %.2f %.2f %.2f" % os.getloadavg(), flush=True)
    imports, starts, logins, slaves, spares, served = [], [], [], [], [], []
    try:
        bench.vms.startRouter()
        bench.vms.startServer("vm2")
        for i in range(args.n):
            first, companion, login = bench.start()
            imports.append(first)
            starts.append(companion)
            logins.append(login)
            slaves.append(bench.slaveAlone())
            spare, serve = bench.spareAlone()
            spares.append(spare)
            served.append(serve)
            print("run %2d: (f) start -> first line %6.1f ms, -> companion %6.1f ms,"
                  " -> Login %6.1f ms; (g) %6.1f ms; (h) %6.1f ms (serving %6.1f ms)"
                  % (i + 1, first * 1000, companion * 1000, login * 1000,
                     slaves[-1] * 1000, spare * 1000, serve * 1000), flush=True)
            bench.killVM()
    finally:
        left = bench.vms.stop()
        print("WARNING: left running (killed): %s" % (left,) if left
              else "stopped; nothing of this run left running")
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    summary("(f) master started -> its first log line (imports)", imports)
    summary("(f) master started -> its first companion", starts)
    summary("(f) master started -> it answers a Login", logins)
    summary("(g) master SIGKILL -> the new slave's first companion", slaves)
    summary("(h) promoted slave SIGKILL -> a spare's first companion", spares)
    summary("(h) promoted slave SIGKILL -> vm1's master answers Login", served)
    print("load after: %.2f %.2f %.2f" % os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
