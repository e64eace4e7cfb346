"""
The replicated state of one VM, in memory: users, follows, posts.

A L{Replica} is a pure data structure: no I/O, no clock, no reactor.  It is
a state-based CRDT assembled from three simple ones, so that replicas that
applied the same set of updates are equal whatever the order, duplication or
delay of delivery:

- users are a grow-only set, and each user's password a last-writer-wins
  register (the account's creation is its first write);
- a follow relation is a last-writer-wins register per (follower, followee),
  ordered by (hybrid logical time, update id), held compactly
  (L{snstwist.core.follows}, each register's key packed into one int:
  L{snstwist.core.registers});
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
from snstwist.core.accounts import Passwords
from snstwist.core.follows import FollowRegister, Follows
from snstwist.core.limits import MAX_FOLLOWS
from snstwist.core.registers import Keys
from snstwist.core.requests import REMEMBERED_BYTES, REMEMBERED_REQUESTS, RememberedRequests
from snstwist.core.versions import Seen, VersionVector
from snstwist.core.window import AUTHOR_BYTES, HOT_POSTS, WINDOW_BYTES, Windows

__all__ = ["HOT_POSTS", "AUTHOR_BYTES", "WINDOW_BYTES", "FollowRegister", "Replica", "Seen",
           "VersionVector", "pageOf"]

def pageOf(names, after, limit):
    """
    The first C{limit} of C{names} (a SortedSet, a sorted tuple, or any
    other set of strings) that sort after C{after} ("": from the first),
    in order, and whether more follow: a page that begins by name, not by
    offset, so that names added between two pages never make one appear
    twice.
    """
    if isinstance(names, SortedSet):
        page = list(itertools.islice(
            names.irange(minimum=after, inclusive=(False, True)), limit + 1))
    elif isinstance(names, tuple):
        start = bisect.bisect_right(names, after)
        page = list(names[start:start + limit + 1])
    else:
        page = heapq.nsmallest(limit + 1, (n for n in names if n > after))
    return page[:limit], len(page) > limit


@attrs.frozen
class PasswordRegister:
    key: tuple  # (time_us, update id): the last writer wins; the generation of tokens
    hash: str


class Replica:
    def __init__(self, hotPosts=HOT_POSTS, rememberedRequests=REMEMBERED_REQUESTS,
                 authorBytes=AUTHOR_BYTES, windowBytes=WINDOW_BYTES,
                 rememberedBytes=REMEMBERED_BYTES):
        # Sorted, so that LIST reads a page of it without sorting them all.
        self.users = SortedSet()
        # Registers' keys packed with their values (L{registers}), one int each.
        self.keys = Keys()
        # user -> (its password register's packed key, its password's hash).
        self.passwords = Passwords()
        # The follow registers, and the followers of each user for fan-out.
        self.follows = Follows(self.keys)
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
        if update.post is None:
            self.applyState(update)
            return True
        later = prior is not None and prior.post is not None and update.key > prior.key
        if prior is not None and prior.post is not None and not later:
            self.windows.hide(prior.post)
            if displaced is not None:
                displaced.append(prior)
        self.windows.hold(update.post, hidden=later)
        return True

    def applyState(self, update):
        """
        Apply the change of C{update}, not a post, as L{apply} does, but
        neither note it in the version vector nor remember its request: a
        start applies the state it reads so, and then holds the store's
        vector (L{History}), not one gap per post skipped.
        """
        if update.user is not None:
            user = sys.intern(update.user)
            self.users.add(user)
            self.setPassword(user, update.time_us, update.origin, update.seq, update.hash)
        elif update.password is not None:
            self.setPassword(update.password.user, update.time_us, update.origin, update.seq,
                             update.password.hash)
        elif update.read is not None:
            mark = update.read
            if mark.key > self.reads.get(mark.user, (0, "")):
                self.reads[mark.user] = mark.key
        else:
            f = update.follow
            self.follows.apply(f.follower, f.followee, update.time_us, update.origin,
                               update.seq, f.following)

    def setPassword(self, user, time_us, origin, seq, hash):
        """Write C{user}'s password register, keyed (C{time_us}, C{origin}/C{seq}), if newer."""
        current = self.passwords.get(user)
        keys = self.keys
        if current is None or keys.newer(time_us, origin, seq, current[0]):
            self.passwords[user] = (keys.pack(time_us, origin, seq, True), hash)

    def password(self, user):
        """C{user}'s L{PasswordRegister} (its key is the generation), or None."""
        held = self.passwords.get(user)
        return PasswordRegister(self.keys.key(held[0]), held[1]) if held is not None else None

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
        return self.follows.isFollowing(follower, followee)

    def checkFollow(self, follower, followee):
        """Raise why C{follower} may not follow C{followee} now (a FOLLOW's rules)."""
        if self.isFollowing(follower, followee):
            raise errors.AlreadyFollowing("you already follow %s" % (followee,))
        if self.follows.count(follower) >= MAX_FOLLOWS:
            raise errors.TooManyFollows("one may follow at most %d users: unfollow one first"
                                        % (MAX_FOLLOWS,))

    def following(self, user):
        return sorted(self.follows.following(user))

    def followers(self, user):
        return list(self.follows.followers(user))

    def usersPage(self, after, limit):
        """A page of the users after the name C{after} (L{pageOf})."""
        return pageOf(self.users, after, limit)

    def followersPage(self, user, after, limit):
        """A page of C{user}'s followers after the name C{after} (L{pageOf})."""
        return pageOf(self.follows.followers(user), after, limit)

    def followerSet(self, user):
        """The followers of C{user} (iterable, sorted; do not change it): for fan-out."""
        return self.follows.followers(user)

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
        sources = set(self.follows.following(user))
        sources.add(user)
        return sources

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
            frozenset((user, self.password(user)) for user in self.passwords),
        )
