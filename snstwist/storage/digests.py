"""
What C{sns-compare} compares: hashes of what a VM holds on disk, a page at a
time (C{Digest}), read on the VM's disk thread.  Read-only.
"""

import hashlib
import os

from snstwist.core import limits


def page(db, files, after="", limit=None, most=None):
    """
    Hashes of each post file of C{files} (L{postfile.PostFiles}) after the
    name C{after}: at most C{limit} files (L{limits.DIGEST_PAGE}), and no
    more once C{most} bytes of them were read (L{limits.DIGEST_PAGE_BYTES}),
    with C{next}, the last file hashed if more follow; with the first page
    (C{after} ""), the hashes of the users, the follows and the read marks
    of C{db} too (L{tables}).
    """
    limit = limits.DIGEST_PAGE if limit is None else limit
    most = limits.DIGEST_PAGE_BYTES if most is None else most
    names = files.namesAfter(after, limit + 1)
    hashed, lines, read = {}, 0, 0
    for name in names[:limit]:
        if read >= most:
            break
        with open(os.path.join(files.postsDir, name), "rb") as f:
            data = f.read()
        hashed[name] = hashlib.sha256(data).hexdigest()
        lines += data.count(b"\n")
        read += len(data)
    digest = {"post_files": hashed, "posts": lines,
              "next": max(hashed) if len(hashed) < len(names) else ""}
    if not after:
        digest.update(tables(db))
    return digest


def tables(db):
    """Hashes of the users, the live follows and the read marks, read a row at a time."""
    users = (n for (n,) in db.execute("SELECT name FROM users ORDER BY name"))
    follows = ("%s %s" % pair for pair in db.execute(
        "SELECT follower, followee FROM follows WHERE following = 1"
        " ORDER BY follower, followee"))
    # Each user's winning read mark: the post it reads up to (whichever
    # update set it, as VMs may hold different copies of the same mark).
    marks = ("%s %d %s" % row for row in db.execute(
        "SELECT user, time_us, post_id FROM marks ORDER BY user"))
    return {"users": linesHash(users), "follows": linesHash(follows),
            "marks": linesHash(marks)}


def linesHash(lines):
    """The SHA-256 of C{lines} joined by newlines, without joining them in memory."""
    h = hashlib.sha256()
    for i, line in enumerate(lines):
        h.update(b"\n" + line.encode() if i else line.encode())
    return h.hexdigest()
