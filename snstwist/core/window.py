"""
The hot window of a replica: of each author, the newest posts held in
memory, bounded in count and in bytes, per author and in total.

Memory holds, of each author, exactly the posts after the author's
I{floor} (a post key), and all of them when the author has no floor.  An
author's floor rises when its oldest posts are let go to keep its window
within L{AUTHOR_BYTES} (or L{HOT_POSTS} posts), and when its whole window
is let go because the windows together are over L{WINDOW_BYTES}: the
authors used least recently (written to or read) go first.  What is let go
is on disk, and is read from there when it is asked for
(L{snstwist.core.history}); a post that arrives at or below its author's
floor is not held at all.  Because a window is always every post after its
floor, "does memory hold every post after this key" is one comparison
(L{Windows.covers}).
"""

import bisect
import collections
import sys

from snstwist.core.limits import HISTORY

# The newest shown posts of each author held in memory at most: a history
# of HISTORY posts is answered from memory whatever whom a user follows.
HOT_POSTS = HISTORY
# The bytes of one author's window at most (20 posts of 1,000 ASCII
# characters fit; of 4-byte characters, about 15), and of all of them.
AUTHOR_BYTES = 64 * 1024
WINDOW_BYTES = 32 * 1024 * 1024
# What a post held costs besides its text: the Post, its id, its time, and
# its place in the window's list and in the hidden set.
POST_OVERHEAD = 240


def postBytes(post):
    """The memory a post held in a window costs (an estimate that errs high)."""
    return sys.getsizeof(post.text) + POST_OVERHEAD


def _key(post):
    return post.key


# The keys of late posts kept exactly per author; past that, only the newest
# of those let go (a floor that may be higher than needed, never lower).
LATE_KEYS = 16


class _Late:
    """The shown posts of one author that arrived at or below its floor."""

    def __init__(self):
        self.keys = set()
        self.lost = None  # the newest key let go of (over LATE_KEYS)

    def add(self, key):
        self.keys.add(key)
        if len(self.keys) > LATE_KEYS:
            oldest = min(self.keys)
            self.keys.discard(oldest)
            self.lost = oldest if self.lost is None else max(self.lost, oldest)

    def missing(self, found):
        """The newest key of these that C{found} (keys read from disk) lacks, or None."""
        keys = [k for k in self.keys if k not in found]
        if self.lost is not None:
            keys.append(self.lost)
        return max(keys, default=None)


class Windows:
    """
    The windows of every author, oldest post first, with the ids of those
    not shown (duplicates of a request).  C{coldFloor} is the floor of the
    authors memory knows nothing about: None (they have no posts), or a
    post key, when memory started without reading the windows (then every
    post stored is at or below it).
    """

    def __init__(self, hotPosts=HOT_POSTS, authorBytes=AUTHOR_BYTES,
                 windowBytes=WINDOW_BYTES, coldFloor=None):
        self.hotPosts = hotPosts
        self.authorBytes = authorBytes
        self.windowBytes = windowBytes
        self.coldFloor = coldFloor
        self.posts = {}
        self.hidden = set()
        self.floors = {}
        # author -> the keys of the shown posts not held because they arrived
        # at or below the floor (a L{_Late}): they may not be on disk yet when
        # the window is read from disk again (L{restore}).
        self._late = {}
        # author -> bytes of its window, the least recently used first.
        self._bytes = collections.OrderedDict()
        self.heldBytes = 0

    def floor(self, author):
        """Memory holds every post of C{author} after this key (None: all of them)."""
        if author in self.floors:
            return self.floors[author]
        return None if author in self.posts else self.coldFloor

    def _raise(self, author, key, floor):
        """The floor of C{author} (C{floor} until now) is now at least C{key}."""
        self.floors[author] = key if floor is None or key > floor else floor

    def touch(self, author):
        """C{author}'s window was used: it is the last to be let go."""
        if author in self._bytes:
            self._bytes.move_to_end(author)

    def hold(self, post, hidden):
        """
        Add C{post} to its author's window, unless it is at or below the
        floor (older than what memory holds: it is on disk only).  The
        window is then the author's newest posts whatever the order of
        arrival.
        """
        author = post.author
        floor = self.floor(author)
        if floor is not None and post.key <= floor:
            # A hidden copy is never shown: memory need not hold it, and a
            # read from disk (shown posts only) would never find it.
            if not hidden:
                self._late.setdefault(author, _Late()).add(post.key)
            return
        posts = self.posts.get(author)
        if posts is None:
            posts = self.posts[author] = []
            if floor is not None:
                self.floors[author] = floor
        bisect.insort(posts, post, key=_key)
        if hidden:
            self.hidden.add(post.id)
        size = postBytes(post)
        self._bytes[author] = self._bytes.get(author, 0) + size
        self._bytes.move_to_end(author)
        self.heldBytes += size
        self._trim(author)
        self._evict()

    def _trim(self, author):
        """Let the oldest posts of C{author}'s window go while it is over a bound."""
        posts = self.posts[author]
        drop = 0
        size = self._bytes[author]
        while len(posts) - drop > 1 and (len(posts) - drop > self.hotPosts
                                         or size > self.authorBytes):
            size -= postBytes(posts[drop])
            drop += 1
        if drop:
            for old in posts[:drop]:
                self.hidden.discard(old.id)
            self._raise(author, posts[drop - 1].key, self.floor(author))
            del posts[:drop]
            self.heldBytes -= self._bytes[author] - size
            self._bytes[author] = size

    def _evict(self):
        """Let the least recently used windows go while all of them are over their bound."""
        while self.heldBytes > self.windowBytes and len(self._bytes) > 1:
            author, size = self._bytes.popitem(last=False)
            floor = self.floor(author)
            posts = self.posts.pop(author)
            for post in posts:
                self.hidden.discard(post.id)
            if posts:
                self._raise(author, posts[-1].key, floor)
            self.heldBytes -= size

    def releaseAll(self):
        """
        Let every window go (every post held is on disk): each author's
        floor rises to the newest post its window held, so its window is
        read from disk when it is first asked for, and holds what the
        record says (which copy of a retried post is shown).  Returns the
        windows let go (author -> posts), for the caller to free in slices.
        """
        released = self.posts
        for author, posts in released.items():
            if posts:
                self._raise(author, posts[-1].key, self.floor(author))
        self.posts, self.hidden, self._bytes = {}, set(), collections.OrderedDict()
        self.heldBytes = 0
        return released

    def hide(self, post):
        """
        Stop showing C{post} (not held: it is on disk only, and a read of
        the shown posts will not find it).
        """
        posts = self.posts.get(post.author, [])
        i = bisect.bisect_left(posts, post.key, key=_key)
        if i < len(posts) and posts[i].id == post.id:
            self.hidden.add(post.id)
        elif post.author in self._late:
            self._late[post.author].keys.discard(post.key)

    def restore(self, author, posts, floor):
        """
        Hold C{posts}, the newest shown posts of C{author} read from disk,
        which are every one stored after the key C{floor} (None: every one
        stored).  What memory held is kept (posts that arrived since).
        """
        current = self.floor(author)
        if current is None:
            return  # memory holds them all already
        if floor is not None and current < floor:
            floor = current
        late = self._late.pop(author, None)
        missing = late.missing({p.key for p in posts}) if late is not None else None
        if missing is not None and (floor is None or missing > floor):
            # A shown post that arrived below the floor and was not on disk
            # yet when it was read: memory must not claim to hold it.
            floor = missing
        held = self.posts.pop(author, [])
        ids = {p.id for p in held}
        held += [p for p in posts if p.id not in ids and (floor is None or p.key > floor)]
        held.sort(key=_key)
        self.heldBytes -= self._bytes.pop(author, 0)
        self.floors.pop(author, None)
        if floor is not None:
            self.floors[author] = floor
        self.posts[author] = held
        size = sum(postBytes(p) for p in held)
        self._bytes[author] = size
        self.heldBytes += size
        if held:
            self._trim(author)
        self._evict()

    def shown(self, author):
        """The posts of C{author} held and shown, oldest first."""
        hidden = self.hidden
        return [p for p in self.posts.get(author, ()) if p.id not in hidden]

    def complete(self, author, limit):
        """Does memory hold the C{limit} newest shown posts of C{author} (or all it has)?"""
        return self.floor(author) is None or len(self.shown(author)) >= limit

    def covers(self, author, cursor, inclusive=False):
        """Does memory hold every post of C{author} after C{cursor} (from it, if C{inclusive})?"""
        floor = self.floor(author)
        return floor is None or cursor > floor or (cursor == floor and not inclusive)
