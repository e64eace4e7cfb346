"""
The replicated state of one VM, in memory: users, follows, posts.

A L{Replica} is a pure data structure: no I/O, no clock, no reactor.  It is
a state-based CRDT assembled from three simple ones, so that replicas that
applied the same set of updates are equal whatever the order, duplication or
delay of delivery:

- users are a grow-only set, and each user's password a last-writer-wins
  register (the account's creation is its first write);
- a follow relation is a last-writer-wins register per (follower, followee),
  ordered by (hybrid logical time, update id);
- posts are a grow-only set, ordered by (time, id) per author.

Its memory does not grow with history: of the posts it holds only a window
in memory, the newest posts of each author, bounded in count and in bytes
per author and in total (L{snstwist.core.window}), and of the requests that
made updates those most recently seen, bounded in count and in bytes
(L{snstwist.core.requests}).  What it holds is
said by its version vector (ranges per origin); the updates themselves are
in the VM's store, which answers what a peer lacks and the older posts
(L{snstwist.core.history}).
"""

import bisect
import heapq
import itertools
import sys

import attrs
from sortedcontainers import SortedSet

from snstwist.core import errors
from snstwist.core.limits import MAX_FOLLOWS
from snstwist.core.requests import REMEMBERED_BYTES, REMEMBERED_REQUESTS, RememberedRequests
from snstwist.core.versions import Seen, VersionVector
from snstwist.core.window import AUTHOR_BYTES, HOT_POSTS, WINDOW_BYTES, Windows

__all__ = ["HOT_POSTS", "AUTHOR_BYTES", "WINDOW_BYTES", "Replica", "Seen", "VersionVector",
           "pageOf"]

# A user's followers are a plain set until they are this many, then a
# sorted one: a page of a popular user's followers (LIST) is then found
# without going through them all, and the many small sets stay small.
SORTED_FOLLOWERS = 1000


def pageOf(names, after, limit):
    """
    The first C{limit} of C{names} (a set of strings, sorted or not) that
    sort after C{after} ("": from the first), in order, and whether more
    follow: a page that begins by name, not by offset, so that names added
    between two pages never make one appear twice.
    """
    if isinstance(names, SortedSet):
        page = list(itertools.islice(
            names.irange(minimum=after, inclusive=(False, True)), limit + 1))
    else:
        page = heapq.nsmallest(limit + 1, (n for n in names if n > after))
    return page[:limit], len(page) > limit


@attrs.frozen
class PasswordRegister:
    key: tuple  # (time_us, update id): the last writer wins; the generation of tokens
    hash: str


@attrs.frozen
class FollowRegister:
    key: tuple  # (time_us, update id): the last writer wins
    following: bool


class Replica:
    def __init__(self, hotPosts=HOT_POSTS, rememberedRequests=REMEMBERED_REQUESTS,
                 authorBytes=AUTHOR_BYTES, windowBytes=WINDOW_BYTES,
                 rememberedBytes=REMEMBERED_BYTES):
        # Sorted, so that LIST reads a page of it without sorting them all.
        self.users = SortedSet()
        self.passwords = {}
        self.follows = {}
        # Indexes of the live follows, derived from self.follows, so that
        # fan-out does not scan every relation for every post.
        self._followers = {}
        self._following = {}
        # The newest posts of each author held (older ones on disk only).
        self.windows = Windows(hotPosts, authorBytes, windowBytes)
        self.reads = {}
        self.seen = VersionVector()
        # (requester, request id) -> its earliest update known, for the
        # requests seen last; older ones are looked up in the store.
        self.requests = RememberedRequests(rememberedRequests, rememberedBytes)

    # -- writing

    def has(self, update):
        return self.seen.has(update.origin, update.seq)

    def apply(self, update, displaced=None):
        """
        Apply C{update}; return True if it was new here.  Idempotent and
        commutative: the outcome does not depend on order or repetition.

        A post is shown once per (user, request id): when a client's retry was
        accepted by a second VM before the first VM's copy arrived, both
        updates are kept, and the one with the smaller (time, id) is the post
        shown everywhere.  A post this update hides from view is appended to
        C{displaced}.
        """
        if not self.seen.add(update.origin, update.seq):
            return False
        # Request ids are the client's, and scoped to its user: two users
        # may pick the same one.
        request = update.request
        prior = self.requests.get(request) if request else None
        if request:
            self.rememberRequest(update)
        if update.user is not None:
            user = sys.intern(update.user)
            self.users.add(user)
            self._setPassword(user, update.key, update.hash)
        elif update.password is not None:
            self._setPassword(update.password.user, update.key, update.password.hash)
        elif update.post is not None:
            later = prior is not None and prior.post is not None and update.key > prior.key
            if prior is not None and prior.post is not None and not later:
                self.windows.hide(prior.post)
                if displaced is not None:
                    displaced.append(prior)
            self.windows.hold(update.post, hidden=later)
        elif update.read is not None:
            mark = update.read
            if mark.key > self.reads.get(mark.user, (0, "")):
                self.reads[mark.user] = mark.key
        else:
            f = update.follow
            # One string a name, whatever update brought it: a follow then
            # costs its register and its places in the indexes, not two
            # more copies of the names (a fifth of it, docs/benchmarks.md).
            pair = (sys.intern(f.follower), sys.intern(f.followee))
            current = self.follows.get(pair)
            if current is None or update.key > current.key:
                self.follows[pair] = FollowRegister(update.key, f.following)
                follower, followee = pair
                if f.following:
                    self._addFollower(followee, follower)
                    self._following.setdefault(follower, set()).add(followee)
                else:
                    self._followers.get(followee, set()).discard(follower)
                    self._following.get(follower, set()).discard(followee)
        return True

    def _addFollower(self, followee, follower):
        followers = self._followers.setdefault(followee, set())
        followers.add(follower)
        if len(followers) >= SORTED_FOLLOWERS and not isinstance(followers, SortedSet):
            self._followers[followee] = SortedSet(followers)

    def _setPassword(self, user, key, hash):
        current = self.passwords.get(user)
        if current is None or key > current.key:
            self.passwords[user] = PasswordRegister(key, hash)

    def password(self, user):
        """C{user}'s L{PasswordRegister} (its key is the generation), or None."""
        return self.passwords.get(user)

    def rememberRequest(self, update):
        """
        Remember C{update} as the copy of its request if it is the earliest
        known (the store found it, or it is being applied).
        """
        self.requests.remember(update)

    def knowsRequest(self, request):
        return request in self.requests

    def answersRequest(self, request):
        """
        Can memory say whether C{request} has a copy here: remembered, or
        surely new (L{RememberedRequests.isNew})?  If not, the store can.
        """
        return request in self.requests or self.requests.isNew(request)

    def shows(self, update):
        """Is C{update}'s post the one shown for its request (not a duplicate)?"""
        request = update.request
        shown = self.requests.get(request) if request else None
        return shown is None or shown.id == update.id

    def lastSeq(self, origin):
        seen = self.seen.origins.get(origin)
        return seen.top if seen is not None else 0

    # -- reading

    def readUpTo(self, user):
        """The newest post key C{user} is known to have read, or None."""
        return self.reads.get(user)

    def byRequest(self, user, requestId):
        """The update C{user}'s request C{requestId} made (the earliest copy), or None."""
        return self.requests.get((user, requestId))

    def isFollowing(self, follower, followee):
        register = self.follows.get((follower, followee))
        return register is not None and register.following

    def checkFollow(self, follower, followee):
        """Raise why C{follower} may not follow C{followee} now (a FOLLOW's rules)."""
        if self.isFollowing(follower, followee):
            raise errors.AlreadyFollowing("you already follow %s" % (followee,))
        if len(self._following.get(follower, ())) >= MAX_FOLLOWS:
            raise errors.TooManyFollows("one may follow at most %d users: unfollow one first"
                                        % (MAX_FOLLOWS,))

    def following(self, user):
        return sorted(self._following.get(user, ()))

    def followers(self, user):
        return sorted(self._followers.get(user, ()))

    def usersPage(self, after, limit):
        """A page of the users after the name C{after} (L{pageOf})."""
        return pageOf(self.users, after, limit)

    def followersPage(self, user, after, limit):
        """A page of C{user}'s followers after the name C{after} (L{pageOf})."""
        return pageOf(self._followers.get(user, ()), after, limit)

    def followerSet(self, user):
        """The followers of C{user}, unsorted: for fan-out, on every post."""
        return self._followers.get(user, frozenset())

    def startCold(self, floors):
        """
        Hold no window yet (a start that reads no posts): memory holds, of
        each author of C{floors} ({author: the key of its newest post
        stored}), only the posts after that key; what is stored is read
        from disk when it is asked for (L{History.recent}, pages).
        """
        for author, key in floors.items():
            if author not in self.windows.posts:
                self.windows.floors[author] = key

    @property
    def posts(self):
        """author -> the posts of its window, oldest first."""
        return self.windows.posts

    @property
    def hotPosts(self):
        return self.windows.hotPosts

    def postsBy(self, user):
        """The posts of C{user} shown, of those in memory (its newest), oldest first."""
        return self.windows.shown(user)

    def _timelineSources(self, user):
        return [self.windows.shown(u) for u in self.sources(user)]

    def timeline(self, user, limit):
        """
        The C{limit} newest posts by C{user} and whom they follow held in
        memory, oldest first: the timeline itself when memory holds enough
        of each source (L{coldSources} is empty).
        """
        newest = heapq.merge(*(reversed(p[-limit:]) for p in self._timelineSources(user)),
                             key=lambda p: p.key, reverse=True)
        recent = [p for _, p in zip(range(limit), newest)]
        recent.reverse()
        return recent

    def sources(self, user):
        """The authors of C{user}'s timeline: whom they follow, and themselves."""
        return set(self._following.get(user, ())) | {user}

    def coldSources(self, user, limit):
        """
        The authors of C{user}'s timeline whose C{limit} newest posts memory
        may lack (they are on disk); the others' windows are marked used.
        """
        windows = self.windows
        cold = []
        for author in self.sources(user):
            if windows.complete(author, limit):
                windows.touch(author)
            else:
                cold.append(author)
        return cold

    def covers(self, user, cursor, inclusive=False):
        """
        Does memory hold every post of C{user}'s timeline after the post key
        C{cursor} (from it, if C{inclusive}; else the older ones are on disk only)?
        """
        return all(self.windows.covers(a, cursor, inclusive) for a in self.sources(user))

    def timelinePage(self, user, cursor, limit, inclusive=False):
        """
        At most C{limit} posts of C{user}'s timeline held in memory after
        the post key C{cursor} (from it, if C{inclusive}), oldest first: one
        page of a catch-up, found without copying the rest of the timeline;
        the whole page if L{covers}.
        """
        edge = bisect.bisect_left if inclusive else bisect.bisect_right
        pages = []
        for posts in self._timelineSources(user):
            start = edge(posts, cursor, key=lambda p: p.key)
            pages.append(posts[start:start + limit])
        return list(itertools.islice(heapq.merge(*pages, key=lambda p: p.key), limit))

    def snapshot(self):
        """A comparable summary of the visible state (for tests and compare)."""
        return (
            frozenset(self.users),
            frozenset((pair, r.following) for pair, r in self.follows.items()),
            tuple((a, keys) for a in sorted(self.posts)
                  if (keys := tuple(p.key for p in self.postsBy(a)))),
            frozenset(self.reads.items()),
            frozenset(self.passwords.items()),
        )
