"""
Making a data directory's post files say what its record says, after a
crash, on the disk thread of the writer that opens it.

A batch commits to the record before its lines are appended to the post
files, and they are flushed later (L{filesync}): a crash in between leaves
the files of the record's C{unsynced} authors short of lines, or ending in
a torn one.  Only those are checked, and each only from the end the record
says was flushed (its C{flushed} row) on: a repair costs the tail a crash
can have cut, not the author's history.  A file with no such end, or one
shorter than it, or not ending a line there, is checked whole.  The files
checked from their ends are flushed by the writer's first round, not
before it serves: until then their authors stay unsynced.
"""

import os

from twisted.logger import Logger

from snstwist.storage.postfile import fsync, postLine

log = Logger()


class Repair:
    """The repairs of the post files C{files} from the record C{index}."""

    def __init__(self, index, files):
        self.index = index
        self.files = files

    def unsynced(self, authors):
        """
        Make the files of C{authors} (the record's unsynced ones) hold
        what the record says; each checked from its flushed end on, when
        the record knows one.  Those checked whole are flushed here; the
        others are returned ({author: its file's end now}), not flushed:
        their authors stay unsynced, their ends in the record still true,
        until the writer's next round of flushes (off the way to serving).
        """
        ends = self.index.flushedEnds()
        left = []
        for author in sorted(authors):
            end = ends.get(author)
            if end is None or not self._tail(author, end, left):
                self.whole(author)
        return {author: self.files.end(author) for author in left}

    def torn(self):
        """The authors whose files end in the middle of a line (a layout before C{unsynced})."""
        return [name[:-len(".txt")] for name in self.files.names()
                if _endsTorn(os.path.join(self.files.postsDir, name))]

    def _tail(self, author, end, left):
        """
        Make the author's file after its flushed C{end} ((size, post key))
        what the record holds after that key (not flushed); the author
        joins C{left}.
        False when the file does not reach that end: then it is for
        L{whole}.
        """
        size, key = end
        path = self.files.path(author)
        try:
            f = open(path, "r+b")
        except FileNotFoundError:
            return False
        with f:
            if os.fstat(f.fileno()).st_size < size:
                return False
            f.seek(max(0, size - 1))
            if size and f.read(1) != b"\n":
                return False
            have = f.read()
            want = "".join(postLine(u) for u in self.index.shownPosts(author, key))
            want = want.encode("utf-8")
            if have != want:
                log.warn("{path}: its last {n} bytes repaired from the record (a write was"
                         " cut short)", path=path, n=len(have))
                good = _wholeLines(have, want) or 0
                f.truncate(size + good)
                f.seek(size + good)
                f.write(want[good:])
                self.files.forget(author)
        left.append(author)
        return True

    def whole(self, author):
        """Make the author's whole file what the record says it holds, flushed."""
        path = self.files.path(author)
        want = "".join(postLine(u) for u in self.index.shownPosts(author)).encode("utf-8")
        have = None
        if os.path.exists(path):
            with open(path, "rb") as f:
                have = f.read()
        if have == want:
            if have is not None:
                # Right, maybe not flushed yet (the process died, not the machine).
                fsync(path)
            return
        log.warn("{path}: repaired from the record (a write was cut short)", path=path)
        good = _wholeLines(have or b"", want)
        if good is not None:
            # The usual crash: lines missing at the end, or a torn one.
            with open(path, "r+b" if have is not None else "wb") as f:
                f.truncate(good)
                f.seek(good)
                f.write(want[good:])
                f.flush()
                os.fsync(f.fileno())
            if have is None:
                self.files.syncDir()
        else:
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(want)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            self.files.syncDir()
        self.files.forget(author)


def _wholeLines(have, want):
    """
    How many bytes of C{have}, up to its last newline, C{want} begins with
    (None if it does not begin with them all).
    """
    good = have.rfind(b"\n") + 1
    return good if want.startswith(have[:good]) else None


def _endsTorn(path):
    """Does the file at C{path} end in the middle of a line (an append cut short)?"""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"
