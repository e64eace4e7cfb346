"""
Log lines that say who wrote them: one event per line, with the VM, the role
and the pid in each (docs/design.md section 7).

The plugins' options point twistd's C{--logger} here (unless the user chose
another), so C{twistd sns-server ...} logs this way with no extra flag.  The
role is updated as it changes (a slave promoted to master says so).
"""

import fcntl
import os
import sys
import time

from twisted.logger import FileLogObserver, formatEventAsClassicLogText
from twisted.python import logfile

_identity = {"who": "sns"}
_target = {"path": None}


def setIdentity(*words):
    """Name this process in every later line, e.g. setIdentity("vm1", "master")."""
    _identity["who"] = " ".join(words)


def configure(twistdOptions, *words):
    """Called from a plugin's postOptions: use our observer, keep --logfile."""
    setIdentity(*words)
    if twistdOptions is not None and twistdOptions.get("logger") is None:
        _target["path"] = twistdOptions.get("logfile") or None
        twistdOptions["logger"] = "snstwist.core.logs.observer"


def formatTime(when):
    """
    Local time to the microsecond, with its UTC offset: a failover's stages
    are milliseconds apart, and lines of several processes are put side by
    side by their times.
    """
    if when is None:
        return "-"
    seconds, micros = divmod(int(round(when * 1e6)), 1000000)
    moment = time.localtime(seconds)
    return "%s.%06d%s" % (time.strftime("%Y-%m-%dT%H:%M:%S", moment), micros,
                          time.strftime("%z", moment))


def _format(event):
    event = dict(event)
    level = event.get("log_level")
    event["log_system"] = "%s pid=%d %s#%s" % (
        _identity["who"], os.getpid(), event.get("log_namespace", "-"),
        level.name if level is not None else "-")
    text = formatEventAsClassicLogText(event, formatTime)
    if text is None:
        return None
    # One event, one line: a traceback's lines are kept, joined by a
    # visible separator, so that grep and line-based shippers see it whole.
    body = text[:-1] if text.endswith("\n") else text
    return body.replace("\n", " \u23ce ") + "\n"


class SharedLogFile(logfile.LogFile):
    """
    A log file that several processes write at once (a master, its slave and
    their spares all log to the master's C{--logfile}): opened for appending,
    so that each line (one unbuffered write) lands whole at the end.
    Twisted's opens it for writing at the end it saw when it opened it, so
    the processes wrote over each other's lines.

    Rotated by the file's real size, which counts every process's lines
    (Twisted's counts its own only, so that the file grew to several times
    its limit), and by one process at a time: the one that rotates holds
    an exclusive lock on C{PATH.lock} while it renames the files, and a
    writer whose file is no longer the one at C{PATH} (another rotated it:
    its file is at the limit, so its next line comes to L{rotate} too)
    reopens C{PATH} under that lock rather than rotating again (two
    rotations at once would move the other's fresh file away).  A line
    written while another rotates lands whole in the file just renamed.
    (A file moved away under its limit, by a tool other than this one, is
    followed only once it reaches the limit, as Twisted's own never is.)
    """

    def _openFile(self):
        self.closed = False
        self._file = open(self.path, "ab", 0)
        self.size = os.fstat(self._file.fileno()).st_size

    def _follow(self):
        """
        Reopen our path if another process rotated the file we hold (the
        file there is another, or none yet); returns whether it did.
        """
        mine = os.fstat(self._file.fileno())
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            there = None
        if there is not None and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            return False
        self.reopen()
        return True

    def shouldRotate(self):
        # One fstat a line.  A file another process rotated was at its limit
        # when it did, so that the next line of a writer still holding it
        # comes here too, and follows the rotation (L{rotate}).
        self.size = os.fstat(self._file.fileno()).st_size
        return bool(self.rotateLength) and self.size >= self.rotateLength

    def rotate(self):
        """Rotate the file, unless another process rotated it first: then follow it."""
        lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self._follow():
                logfile.LogFile.rotate(self)
        finally:
            os.close(lock)


def observer():
    """The twistd --logger factory: to --logfile if given, else stdout."""
    path = _target["path"]
    if path and path != "-":
        out = SharedLogFile.fromFullPath(path)
    else:
        out = sys.stdout
    return FileLogObserver(out, _format)
