"""
Processes: how snstwist starts, watches, signals and fences them.

One C{twistd} launch line (L{twistdArgs}) for every process the package
starts (a master's slave, the local cluster's routers and VMs, the test
bed's hosts); L{spawn} and L{WatchedProcess} for a child whose end we wait
for; L{terminate} for an orderly stop with a deadline; L{fence} for the old
master a slave takes over from; L{pidAlive}, L{isServer}, L{signalPid} and
L{signalIfStill} for processes known only by their pid; L{watchParent},
the kernel's word that the process that spawned us (a slave's master)
ended.  (What a spare is told on its stdin is L{orders}'.)

This is the only module that spawns or signals processes.
"""

import ctypes
import os
import signal
import sys

import attrs
from twisted.internet import defer, error, protocol
from twisted.logger import Logger

log = Logger()

# Run twistd with this interpreter (sys.executable), wherever the twistd
# script is or is not installed; argv[0] names it in ps and in its usage.
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def twistdArgs(logfile, *args):
    """
    The argv of a foreground twistd (no pid file: several run in one
    directory) logging to C{logfile}, running the plugin and options
    C{args}.
    """
    return [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=" + logfile,
            *args]


def runDirectory(data):
    """Where the pid files of a VM's server processes are: C{data}/run."""
    return os.path.join(data, "run")


class Pidfile:
    """
    C{run}/PID.pid while the process C{pid} runs: how sns-cluster and the
    tests find every server process of a VM, slaves and spares included.
    A server writes its own at start and removes it at its orderly end;
    the process that spawned it writes it at once (before the child has
    even imported anything) and removes it when the child's end is heard,
    however it ended.
    """

    def __init__(self, run, pid):
        self.pid = pid
        self.path = os.path.join(run, "%d.pid" % (pid,))

    def write(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "w") as f:
            f.write("%d\n" % (self.pid,))

    def remove(self):
        try:
            os.remove(self.path)
        except OSError:
            pass


@attrs.frozen
class BuddyCommand:
    """
    What to spawn as the buddy: executable, argv and environment; C{run},
    the directory of its pid file (L{Pidfile}) while it runs, if any;
    C{master}, the address a slave spawned by it dials (a spare told to go
    on in its place is told it: L{orders.tellGo}).
    """

    executable: str
    args: tuple
    env: dict = attrs.field(factory=dict, eq=False)
    run: str | None = None
    master: str | None = None


class WatchedProcess(protocol.ProcessProtocol):
    """
    A child process of ours: what it prints goes to our log, prefixed with
    its name; C{ended} fires (with the reason's value) when it has exited,
    after C{onEnded(process, reason)} is called.
    """

    def __init__(self, name, started=0.0, onEnded=None, run=None):
        self.name = name
        self.started = started
        self.onEnded = onEnded
        self.ended = defer.Deferred()
        self.pid = None
        self.run = run
        self.pidfile = None

    def connectionMade(self):
        self.pid = self.transport.pid
        if self.run is not None:
            self.pidfile = Pidfile(self.run, self.pid)
            self.pidfile.write()

    def outReceived(self, data):
        for line in data.decode("utf-8", "replace").splitlines():
            log.info("{name} {pid}: {line}", name=self.name, pid=self.pid, line=line)

    errReceived = outReceived

    def processEnded(self, reason):
        log.info("{name} (pid {pid}) ended: {why}", name=self.name, pid=self.pid,
                 why=reason.getErrorMessage())
        if self.pidfile is not None:
            self.pidfile.remove()
        if self.onEnded is not None:
            self.onEnded(self, reason)
        self.ended.callback(reason.value)


def signalChild(process, signum):
    """
    Send C{signum} to our child C{process} (any ProcessProtocol); one that
    has exited already (its end not yet delivered) is no error: it is
    ending anyway.
    """
    try:
        process.transport.signalProcess(signum)
    except error.ProcessExitedAlready:
        pass


def spawn(reactor, name, command, onEnded=None):
    """
    Start C{command} (a L{BuddyCommand}) as a L{WatchedProcess}.

    On the reactor thread, with no path, uid, gid, pty or file descriptor
    map asked for, so that Twisted takes its posix_spawnp path: the child
    shares our memory until it execs, and the spawn costs well under a
    millisecond from a master of 100 MB or more, where a fork (which copies
    the page tables) took 4-7 ms.  Not from another thread either: the
    parent-death signal a slave asks for (L{watchParent}) comes when the
    I{thread} that spawned it ends.
    """
    process = WatchedProcess(name, reactor.seconds(), onEnded, command.run)
    reactor.spawnProcess(process, command.executable, list(command.args), env=command.env)
    return process


def terminate(reactor, process, killTime):
    """
    Stop C{process} (a ProcessProtocol with an C{ended} Deferred, such as a
    L{WatchedProcess}): SIGTERM now, SIGKILL C{killTime} seconds later if it is
    still there.  The Deferred fires once it has exited.
    """
    if process.ended.called:
        return defer.succeed(None)
    signalChild(process, signal.SIGTERM)
    kill = reactor.callLater(killTime, signalChild, process, signal.SIGKILL)
    done = defer.Deferred()

    def ended(result):
        if kill.active():
            kill.cancel()
        done.callback(None)
        return result

    process.ended.addBoth(ended)
    return done


def signalPid(pid, signum=signal.SIGKILL, kill=os.kill):
    """
    Send C{signum} to the process C{pid}, which need not be our child.
    Returns whether it was there to get it; one that is gone is no error.
    """
    try:
        kill(pid, signum)
        return True
    except ProcessLookupError:
        return False


def pidAlive(pid, running=None):
    """
    Whether process C{pid} runs; a zombie, or a process being reaped, is
    dead for our purposes.  With
    C{running} (bytes), only if its command line contains them too: a pid
    read from a file may have been reused by another program since.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        if running is None:
            return True
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            if f.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                return False
        if running is not None:
            with open("/proc/%d/cmdline" % (pid,), "rb") as f:
                return running in f.read()
        return True
    except OSError:
        return False


def isServer(pid, data):
    """
    Is C{pid} a live sns-server process on the data directory C{data} (not
    a zombie, not a pid another program has now)?  The data directory as
    a whole argument (C{--data DIR}, or C{--data=DIR} as an operator may
    type it): not a longer path it begins.
    """
    data = os.fsencode(data)
    return pidAlive(pid, running=b"sns-server") and (
        pidAlive(pid, running=b"\0" + data + b"\0")
        or pidAlive(pid, running=b"\0--data=" + data + b"\0"))


def signalIfStill(pid, signum, still, kill=None):
    """
    Send C{signum} to C{pid}, seen earlier, only while C{still(pid)} says
    it is the process it was (L{isServer}, or L{pidAlive} with C{running}).
    The kernel hands a pid out again once its counter wraps (pid_max 32768,
    threads taking pids too: every few minutes on a busy machine), and a
    blind signal then ends another program's process.  Where Linux gives
    a pidfd, the signal goes through one opened before the check, so that
    the pid can not change hands between the check and the signal either.
    C{kill(pid, signum)} (a test's) replaces both.  Returns whether it was
    sent.
    """
    fd = None
    if kill is None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        except (AttributeError, OSError):
            kill = os.kill  # no pidfd here: check, then signal
    try:
        if not still(pid):
            return False
        if fd is None:
            return signalPid(pid, signum, kill)
        try:
            signal.pidfd_send_signal(fd, signum)
        except ProcessLookupError:
            return False
        return True
    finally:
        if fd is not None:
            os.close(fd)


def fence(pid, data, kill=None, still=isServer):
    """
    Make sure the old master C{pid} (a server on the data directory
    C{data}) can never write again: kill it.  SIGKILL also ends a stopped
    (SIGSTOP) process.  Only while C{pid} is still a server on C{data}: a
    master that died before it was fenced left its pid to whoever comes
    next.  Returns True if it was alive.
    """
    if not pid or pid == os.getpid():
        return False
    try:
        return signalIfStill(pid, signal.SIGKILL, lambda p: still(p, data), kill)
    except PermissionError:
        log.warn("cannot fence old master {pid}: permission denied", pid=pid)
        return False


# prctl(2): the signal a process gets when its parent ends (Linux).  A
# real-time signal: twistd --debug takes SIGUSR2, log rotation SIGUSR1.
_PR_SET_PDEATHSIG = 1
PARENT_ENDED = getattr(signal, "SIGRTMIN", 0) and signal.SIGRTMIN + 2


def _prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def watchParent(pid, callFromThread, ended, prctl=_prctl, signals=signal):
    """
    Have C{ended()} called, through C{callFromThread} (the reactor's), once
    our parent process C{pid} ends: the kernel signals it as the parent's
    process is torn down, before the end of a stream from it is noticed.
    A slave is spawned by its master, so this is its master's death, a
    SIGKILL included.  Returns False, and watches nothing, where the kernel
    can not (not Linux) or C{pid} is not our parent (any more).
    """
    call = prctl() if PARENT_ENDED else None
    if call is None or not pid:
        return False
    signals.signal(PARENT_ENDED, lambda signum, frame: callFromThread(ended))
    if call(_PR_SET_PDEATHSIG, PARENT_ENDED, 0, 0, 0) == 0:
        if os.getppid() == pid:
            return True
        # Not our parent, or it ended before we asked: no signal will come.
        call(_PR_SET_PDEATHSIG, 0, 0, 0, 0)
    signals.signal(PARENT_ENDED, signal.SIG_IGN)
    return False
