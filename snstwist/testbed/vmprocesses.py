"""
The server processes of a VM, found by their data directory, and how a
test or a benchmark takes a VM down: every one of them SIGKILLed, spares
included (a spare whose spawner ended takes its VM over when no other
server of it is left, so a VM killed to be down has none of its processes
left).

Only processes whose command line says they are an C{sns-server} on such a
directory are ever signalled, and each only while it still is one: a pid
seen a moment earlier may be another program's by now.
"""

import os
import signal

from snstwist.buddy.processes import pidAlive, signalIfStill


def dataDirectory(cmdline):
    """The C{--data} directory (bytes) of a server's C{cmdline} (its arguments), or None."""
    for i, arg in enumerate(cmdline):
        if arg == b"--data" and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith(b"--data="):
            return arg[len(b"--data="):]
    return None


def _serverOn(pid, path):
    """Is C{pid} a live sns-server whose data directory is C{path} (bytes) or under it?"""
    try:
        with open("/proc/%d/cmdline" % (pid,), "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        return False
    data = dataDirectory(cmdline) if b"sns-server" in cmdline else None
    return (data is not None and (data == path or data.startswith(path.rstrip(b"/") + b"/"))
            and pidAlive(pid))


def serversOn(path):
    """
    Pids of the live sns-server processes (spares too) whose data directory
    is C{path} or one under it (a test's or a benchmark's whole tree).
    """
    path = os.fsencode(path)
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and _serverOn(int(name), path)]


def killServersOn(path, rounds=10):
    """
    SIGKILL every sns-server process on a data directory at or under
    C{path}, found again until none is left, at most C{rounds} times: a
    server killed in one round may have spawned a process after that round
    looked (a slave or a spare taking over starts a spare first).  Returns
    the pids signalled.
    """
    encoded = os.fsencode(path)
    killed = set()
    for _ in range(rounds):
        pids = serversOn(path)
        if not pids:
            break
        for pid in pids:
            if signalIfStill(pid, signal.SIGKILL, lambda p: _serverOn(p, encoded)):
                killed.add(pid)
    return killed
