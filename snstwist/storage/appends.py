"""
The post files held open for appending: the L{Appends.most} appended to
last.  A batch's lines go to a file open already in one call to the system
(a write), where opening and closing the file made three.  Each call lets go
of the interpreter, and on a master's disk thread each has to win it back
from a reactor that is busy most of the time at 1,000 posts a second.

Used on the disk thread only.  A file replaced, cut short or removed by
other means than these appends is let go first (L{Appends.close}): an
append through a descriptor of the file it replaced would be lost.
"""

import collections
import os

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class Appends:
    """C{appends(path, data)}: append the bytes C{data} to the file at C{path} (made if absent)."""

    most = 64

    def __init__(self):
        self._open = collections.OrderedDict()  # path: descriptor, the least recently used first

    def __call__(self, path, data):
        fd = self._open.pop(path, None)
        if fd is None:
            fd = os.open(path, _FLAGS, 0o644)
            while len(self._open) >= self.most:
                os.close(self._open.popitem(last=False)[1])
        self._open[path] = fd
        try:
            # A short write (a disk filling up) is followed by the rest, and
            # so by the error that stopped it.
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            self.close(path)
            raise

    @property
    def held(self):
        """The paths held open, the least recently appended to first."""
        return list(self._open)

    def close(self, path):
        """Let go of the file at C{path}, if it is held open."""
        fd = self._open.pop(path, None)
        if fd is not None:
            os.close(fd)

    def closeAll(self):
        while self._open:
            os.close(self._open.popitem(last=False)[1])
