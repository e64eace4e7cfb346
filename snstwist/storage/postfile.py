"""
The post files, DATA/posts/<user>.txt: the posts by <user>, one JSON object
per line, ordered by (time, id), byte-identical on every VM.  Their format
(shared with sns-admin export and import), and L{PostFiles}, which appends
to them and rewrites them on the disk thread.
"""

import datetime
import heapq
import json
from json.encoder import encode_basestring as _jsonString
import os
import sys

from twisted.logger import Logger

from snstwist.core import errors
from snstwist.core.model import Post, Update, checkUsername
from snstwist.storage.appends import Appends

# A post key before every post's (times are never negative, ids never empty).
NO_KEY = (0, "")

log = Logger()

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


# The second formatted last, (seconds since the epoch, its text up to the
# dot): the posts of a batch, or of an import, mostly share their second.
_second = (None, "")


def formatTime(time_us):
    global _second
    seconds, micros = divmod(time_us, 1000000)
    last = _second  # one read: another thread may format meanwhile
    if last[0] != seconds:
        moment = _EPOCH + datetime.timedelta(seconds=seconds)
        last = _second = (seconds, moment.strftime("%Y-%m-%dT%H:%M:%S."))
    return "%s%06dZ" % (last[1], micros)


def parseTime(text):
    # fromisoformat is several times faster than strptime, and a promoted
    # slave parses every stored post.
    moment = datetime.datetime.fromisoformat(text)
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000000 + delta.microseconds


def postLine(update):
    """The line of DATA/posts/<author>.txt that stores C{update}'s post."""
    post = update.post
    return postLineOf(formatTime(post.time_us), post.id, post.author, post.text,
                     update.request_id)


def postLineOf(time, postId, author, text, requestId):
    """
    The line of a post file: C{json.dumps} of {"time", "id", "author", "text"
    [, "request"]} with C{ensure_ascii=False}, built directly (an import
    writes millions).  The time, id and author are of characters JSON does
    not escape; the text and the request id are escaped as C{json.dumps}
    does.  json escapes newlines, so a post is always exactly one line, and
    ensure_ascii=False keeps the file readable.
    """
    if requestId:
        return '{"time": "%s", "id": "%s", "author": "%s", "text": %s, "request": %s}\n' % (
            time, postId, author, _jsonString(text), _jsonString(requestId))
    return '{"time": "%s", "id": "%s", "author": "%s", "text": %s}\n' % (
        time, postId, author, _jsonString(text))


def parsePostLine(line):
    record = json.loads(line)
    origin, _, seq = record["id"].rpartition("/")
    time_us = parseTime(record["time"])
    # One string per author, not one per post held.
    post = Post(id=record["id"], author=sys.intern(record["author"]), time_us=time_us,
                text=record["text"])
    return Update(origin=origin, seq=int(seq), time_us=time_us, post=post,
                  request_id=record.get("request", ""))



def fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsyncAll(pool, paths):
    """fsync every file of C{paths}, several at a time."""
    if len(paths) == 1:
        fsync(paths[0])
    elif paths:
        for _ in pool.map(fsync, paths):
            pass


class PostFiles:
    """
    The post files of one data directory, written on the disk thread only;
    L{sync} (which reads nothing but paths) runs on the store's sync thread.
    """

    def __init__(self, postsDir, flushers):
        self.postsDir = postsDir
        self._flushers = flushers
        # Of each author whose file was looked at: the key of its last post
        # (None: no post), and the file's size (None: no file), kept as
        # this writer changes the file, so that a batch asks the file
        # system nothing before it appends.
        self.lastKey = {}
        self.sizes = {}
        self._paths = {}  # one a user, as its key and size
        # How bytes are appended to a post file, or to the file a rewrite
        # writes (a test puts a failing filesystem here): through the files
        # held open.
        self.held = Appends()
        self.append = self.held

    def path(self, author):
        path = self._paths.get(author)
        if path is None:
            path = self._paths[author] = os.path.join(self.postsDir,
                                                      checkUsername(author) + ".txt")
        return path

    def names(self):
        return sorted(n for n in os.listdir(self.postsDir) if n.endswith(".txt"))

    def namesAfter(self, after, limit):
        """The first C{limit} file names after C{after}, in order (a page: no full sort)."""
        return heapq.nsmallest(limit, (n for n in os.listdir(self.postsDir)
                                       if n > after and n.endswith(".txt")))

    def write(self, posts, drop):
        """
        Add the posts C{posts} ({author: [update]}) to their files, without
        the posts C{drop} ({author: {post id}}).  Appended lines are written,
        not flushed: returns the files' ends ({author: L{end}}) of those
        appended to (their flush is L{sync}'s, off the acknowledgement's
        path), whether one of those files is new, and the ends of those
        rewritten.  A file rewritten (a late post, a dropped one) is flushed
        here, atomically.  A failure takes back what was appended.
        """
        appended, created, rewritten, undo = {}, False, {}, []
        try:
            for author in set(posts) | set(drop):
                path, new = self._write(author, posts.get(author, []), drop.get(author), undo)
                if path is not None:
                    appended[author] = self.end(author)
                    created = created or new
                else:
                    rewritten[author] = self.end(author)
        except BaseException:
            self._undo(undo)
            raise
        return appended, created, rewritten

    def end(self, author):
        """
        (size, post key) of the author's file: its size, and the key of its
        last post (L{NO_KEY} when it has none).
        """
        last = self.lastKeyOf(author)
        return self.sizes.get(author) or 0, last if last is not None else NO_KEY

    def forget(self, author):
        """The author's file was changed behind this writer's back (a repair): look again."""
        self.lastKey.pop(author, None)
        self.sizes.pop(author, None)
        self.held.close(self.path(author))

    def close(self):
        """Let go of every file held open."""
        self.held.closeAll()

    def sync(self, authors, created):
        """Flush the files of C{authors}, then the directory if a file is new."""
        fsyncAll(self._flushers, [self.path(a) for a in authors])
        if created:
            self.syncDir()

    def lastKeyOf(self, author):
        """The (time, id) of the last post in the author's file, read from its end."""
        if author not in self.lastKey:
            path = self.path(author)
            last = size = None
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                pass
            else:
                with f:
                    size = f.seek(0, os.SEEK_END)
                    f.seek(max(0, size - 64 * 1024))
                    lines = f.read().splitlines()
                try:
                    last = parsePostLine(lines[-1].decode("utf-8")).post.key if lines else None
                except (ValueError, KeyError, errors.SNSError):
                    # A torn last line: read (and repair) the whole file.
                    self.forget(author)
                    if not self.read(path):
                        self.lastKey[author] = None
                        self.sizes[author] = os.path.getsize(path)
                    return self.lastKey[author]
            self.lastKey[author] = last
            self.sizes[author] = size
        return self.lastKey[author]

    def read(self, path, repair=True):
        """The updates of the post file C{path}; a torn last line is cut off (if C{repair})."""
        updates = []
        good = 0
        with open(path, "rb") as f:
            data = f.read()
        for raw in data.splitlines(keepends=True):
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("torn last line")
                updates.append(parsePostLine(raw.decode("utf-8")))
            except (ValueError, KeyError, errors.SNSError) as e:
                log.warn("{path}: dropping damaged post line after byte {good}: {e}",
                         path=path, good=good, e=e)
                break
            good += len(raw)
        if good != len(data) and repair:
            # A crash mid-append left a partial line: it was never
            # acknowledged, so cut it off.
            with open(path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        if updates and repair:
            author = updates[0].post.author
            self.lastKey[author] = max(u.post.key for u in updates)
            self.sizes[author] = good
        return updates

    def _undo(self, undo):
        """
        A batch failed (disk full, no file descriptors): take back what it
        appended, so that its retry writes each line once and no torn line
        is left.  The last keys are read again from the files' ends.
        """
        for path, size, author in reversed(undo):
            self.forget(author)
            try:
                if size is None:
                    os.unlink(path)
                else:
                    os.truncate(path, size)
            except FileNotFoundError:
                pass
            except OSError as e:
                # The retry then rewrites the file merging by post id, so a
                # line left here is not stored twice.
                log.warn("{path}: could not take back a failed append: {e}", path=path, e=e)

    def _write(self, author, ups, drop=None, undo=None):
        """
        Add C{ups} to the author's file, without the posts C{drop}.  Returns
        (path, created) when the lines were appended and still need an
        fsync, (None, False) when the file was rewritten (and flushed) whole.
        How to take an append back is added to C{undo}.
        """
        path = self.path(author)
        ups.sort(key=lambda u: u.post.key)
        last = self.lastKeyOf(author)
        if not drop and (last is None or ups[0].post.key > last):
            size = self.sizes[author]
            if undo is not None:
                undo.append((path, size, author))
            data = "".join([postLine(u) for u in ups]).encode("utf-8")
            self.append(path, data)
            self.sizes[author] = (size or 0) + len(data)
            newest = ups[-1].post.key
            self.lastKey[author] = max(newest, last) if last else newest
            return path, size is None
        self._rewrite(author, path, ups, drop)
        return None, False

    def _rewrite(self, author, path, ups, drop):
        """
        A post older than the newest stored one arrived (replication out of
        order), or one is dropped: rewrite the file in order, atomically, so
        that every VM's file is byte-identical.
        """
        merged = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    u = parsePostLine(line)
                    merged[u.post.id] = u
        for u in ups:
            merged.setdefault(u.post.id, u)
        for postId in drop or ():
            merged.pop(postId, None)
        ordered = sorted(merged.values(), key=lambda u: u.post.key)
        data = "".join([postLine(u) for u in ordered]).encode("utf-8")
        tmp = path + ".tmp"
        try:
            try:
                os.unlink(tmp)  # a crashed rewrite's
            except FileNotFoundError:
                pass
            try:
                self.append(tmp, data)
            finally:
                self.held.close(tmp)
            fsync(tmp)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        # The file replaced is let go: an append to it would be lost.
        self.held.close(path)
        os.replace(tmp, path)
        self.syncDir()
        self.lastKey[author] = ordered[-1].post.key if ordered else None
        self.sizes[author] = len(data)

    def syncDir(self):
        """Make a new or renamed post file's directory entry durable."""
        fsync(self.postsDir)
