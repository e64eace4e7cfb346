"""
Values of the domain: posts, updates, usernames; and their limits, in one place.

Everything here is a frozen attrs value validated at construction, so a bad
value never travels.  Conversions to and from the wire types live here too.
"""

import re

import attrs

from snstwist import errors
from snstwist import sns_pb2 as pb

USERNAME = re.compile(r"[A-Za-z0-9_.\-]{1,32}\Z")
MAX_POST_CHARS = 1000
HISTORY = 20
# An error message quotes at most this much of the input it refuses: a 20 KB
# name must not come back whole (nor overflow gRPC's 8 KB metadata limit,
# which would turn INVALID_ARGUMENT into RESOURCE_EXHAUSTED).
MAX_ECHO = 40


def excerpt(value, limit=MAX_ECHO):
    """C{repr(value)}, cut to C{limit} characters, saying how long the value was."""
    quoted = repr(value)
    if len(quoted) <= limit:
        return quoted
    size = " (%d characters)" % (len(value),) if isinstance(value, (str, bytes)) else ""
    return quoted[:limit] + "..." + size


def checkUsername(name):
    if not isinstance(name, str) or not USERNAME.match(name):
        raise errors.InvalidUsername(
            "invalid username %s: use 1-32 of A-Z a-z 0-9 _ . -" % (excerpt(name),))
    return name


def checkPostText(text):
    if not isinstance(text, str) or not (1 <= len(text) <= MAX_POST_CHARS):
        raise errors.InvalidPost(
            "a post is 1-%d characters (got %d)" % (MAX_POST_CHARS, len(text or "")))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidPost("a post must be valid UTF-8 text")
    return text


def _username(instance, attribute, value):
    checkUsername(value)


def _postText(instance, attribute, value):
    checkPostText(value)


def updateId(origin, seq):
    return "%s/%d" % (origin, seq)


def parseUpdateId(identifier):
    origin, _, seq = identifier.rpartition("/")
    if not origin or not seq.isdigit():
        raise errors.InvalidRequest("malformed update id %s" % (excerpt(identifier),))
    return origin, int(seq)


@attrs.frozen(order=False)
class Post:
    id: str
    author: str = attrs.field(validator=_username)
    time_us: int
    text: str = attrs.field(validator=_postText)

    @property
    def key(self):
        """Posts are ordered by (time, id) everywhere."""
        return (self.time_us, self.id)

    def toProto(self):
        return pb.Post(id=self.id, author=self.author, time_us=self.time_us, text=self.text)

    @classmethod
    def fromProto(cls, p):
        return cls(id=p.id, author=p.author, time_us=p.time_us, text=p.text)


@attrs.frozen
class FollowChange:
    follower: str = attrs.field(validator=_username)
    followee: str = attrs.field(validator=_username)
    following: bool


@attrs.frozen
class ReadMark:
    """C{user} has seen their timeline up to the post (time_us, post_id)."""

    user: str = attrs.field(validator=_username)
    time_us: int
    post_id: str

    @property
    def key(self):
        return (self.time_us, self.post_id)


@attrs.frozen
class Update:
    """
    One replicated write, identified everywhere by (origin, seq).  Exactly
    one of C{user}, C{post}, C{follow}, C{read} is set.
    """

    origin: str
    seq: int
    time_us: int
    user: str | None = None
    post: Post | None = None
    follow: FollowChange | None = None
    read: ReadMark | None = None
    request_id: str = ""

    @property
    def id(self):
        return updateId(self.origin, self.seq)

    @property
    def key(self):
        return (self.time_us, self.id)

    def toProto(self):
        u = pb.Update(origin=self.origin, seq=self.seq, time_us=self.time_us,
                      request_id=self.request_id)
        if self.user is not None:
            u.user.name = self.user
        elif self.post is not None:
            u.post.CopyFrom(self.post.toProto())
        elif self.read is not None:
            r = self.read
            u.read.user, u.read.time_us, u.read.post_id = r.user, r.time_us, r.post_id
        else:
            f = self.follow
            u.follow.follower = f.follower
            u.follow.followee = f.followee
            u.follow.following = f.following
        return u

    @classmethod
    def fromProto(cls, u):
        kind = u.WhichOneof("change")
        common = dict(origin=u.origin, seq=u.seq, time_us=u.time_us, request_id=u.request_id)
        if not u.origin or u.seq < 1:
            raise errors.InvalidRequest("update without origin or sequence number")
        if kind == "user":
            return cls(user=checkUsername(u.user.name), **common)
        if kind == "post":
            post = Post.fromProto(u.post)
            if post.id != updateId(u.origin, u.seq):
                raise errors.InvalidRequest("post id does not match its update")
            return cls(post=post, **common)
        if kind == "follow":
            f = u.follow
            return cls(follow=FollowChange(f.follower, f.followee, f.following), **common)
        if kind == "read":
            r = u.read
            return cls(read=ReadMark(r.user, r.time_us, r.post_id), **common)
        raise errors.InvalidRequest("update with no change")
