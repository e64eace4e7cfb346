"""
Values of the domain: posts, follows, read marks, password changes and the
updates that replicate them; and the C{check*} functions that hold every
value a client or a peer sends to its bound.

Everything here is a frozen attrs value validated at construction, so a bad
value never travels.  Conversions to and from the wire types live here too.
The bounds themselves are named in L{snstwist.core.limits}; this module
applies them and words the refusal.
"""

import attrs

from snstwist.core import errors
from snstwist.core.limits import (
    CLOCK_WINDOW_US,
    MAX_ADDRESS,
    MAX_ERROR_TEXT,
    MAX_EXTRA,
    MAX_HEARTBEAT_USERS,
    MAX_INCARNATION,
    MAX_ORIGIN,
    MAX_ORIGINS,
    MAX_PASSWORD_CHARS,
    MAX_PASSWORD_HASH_CHARS,
    MAX_PEER_STREAMS,
    MAX_POST_CHARS,
    MAX_REQUEST_ID,
    MAX_SEQ,
    MAX_UPDATE_ID,
    MAX_USERNAME,
    ORIGIN,
    REQUEST_ID,
    USERNAME,
    excerpt,
)
from snstwist.rpc import sns_pb2 as pb


def checkPassword(password):
    if not isinstance(password, str) or not (1 <= len(password) <= MAX_PASSWORD_CHARS):
        raise errors.InvalidPassword(
            "a password is 1-%d characters" % (MAX_PASSWORD_CHARS,))
    return password


def _passwordHash(instance, attribute, value):
    if not isinstance(value, str) or len(value) > MAX_PASSWORD_HASH_CHARS:
        raise errors.InvalidRequest("a password hash is at most %d characters"
                                    % (MAX_PASSWORD_HASH_CHARS,))


def checkUsername(name):
    if not isinstance(name, str) or not USERNAME.match(name):
        raise errors.InvalidUsername(
            "invalid username %s: use 1-%d of A-Z a-z 0-9 _ . -" % (excerpt(name), MAX_USERNAME))
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


def checkRequestId(requestId):
    """A client's request id: 0-64 printable ASCII characters, no spaces."""
    if not isinstance(requestId, str) or not REQUEST_ID.match(requestId):
        raise errors.InvalidRequest(
            "a request id is at most %d printable ASCII characters without spaces (got %s)"
            % (MAX_REQUEST_ID, excerpt(requestId)))
    return requestId


def checkVm(name, what="VM name"):
    """A VM's name: the username rule."""
    if not isinstance(name, str) or not USERNAME.match(name):
        raise errors.InvalidRequest("invalid %s %s: use 1-%d of A-Z a-z 0-9 _ . -"
                                    % (what, excerpt(name), MAX_USERNAME))
    return name


def checkOrigin(origin):
    if not isinstance(origin, str) or not ORIGIN.match(origin):
        raise errors.InvalidRequest("invalid origin %s: use 1-%d of A-Z a-z 0-9 _ . -"
                                    % (excerpt(origin), MAX_ORIGIN))
    return origin


def checkSeq(seq):
    if not 1 <= seq <= MAX_SEQ:
        raise errors.InvalidRequest("a sequence number is 1-%d (got %d)" % (MAX_SEQ, seq))
    return seq


def checkText(value, what, maximum, minimum=1):
    """A peer's printable ASCII field (an address, an incarnation) of bounded length."""
    if (not isinstance(value, str) or not minimum <= len(value) <= maximum
            or not value.isascii() or not value.isprintable() or " " in value):
        raise errors.InvalidRequest("invalid %s %s: %d-%d printable ASCII characters"
                                    % (what, excerpt(value), minimum, maximum))
    return value


def checkTime(time_us, now_us=None):
    """
    A time a peer or a client sends: not before the epoch, and (given our
    clock's C{now_us}) not more than L{CLOCK_WINDOW_US} ahead of it.
    """
    if time_us < 0:
        raise errors.InvalidRequest("a time before 1970 (%d us)" % (time_us,))
    if now_us is not None and time_us > now_us + CLOCK_WINDOW_US:
        raise errors.InvalidRequest(
            "a time %.0f s ahead of this server's clock (at most %d s allowed)"
            % ((time_us - now_us) / 1e6, CLOCK_WINDOW_US // 10**6))
    return time_us


def checkCount(values, what, maximum):
    """A repeated field of at most C{maximum} values."""
    if len(values) > maximum:
        raise errors.TooMany("at most %d %s (got %d)" % (maximum, what, len(values)))
    return values


def checkHeartbeat(beat):
    """
    A heartbeat's bounds: the users it names, the peer streams it reports
    (its counters are any value).
    """
    checkCount(beat.users, "users in a heartbeat", MAX_HEARTBEAT_USERS)
    for user in beat.users:
        checkUsername(user)
    checkCount(beat.peers, "peer streams in a heartbeat", MAX_PEER_STREAMS)
    for peer in beat.peers:
        checkVm(peer.vm, "peer VM")
        if len(peer.last_error) > MAX_ERROR_TEXT or not peer.last_error.isprintable():
            raise errors.InvalidRequest("a stream error is at most %d printable characters"
                                        % (MAX_ERROR_TEXT,))
    return beat


def errorText(text):
    """C{text} (why a stream broke) as a heartbeat carries it: one line, cut short."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= MAX_ERROR_TEXT else line[:MAX_ERROR_TEXT - 3] + "..."


def checkVersionVector(vector):
    """A peer's version vector (wire form): origins and their sequence numbers."""
    checkCount(vector.origins, "origins in a version vector", MAX_ORIGINS)
    for r in vector.origins:
        checkOrigin(r.origin)
        if r.contiguous > MAX_SEQ:
            checkSeq(r.contiguous)
        checkCount(r.extra, "out-of-order sequence numbers of one origin", MAX_EXTRA)
        for seq in r.extra:
            checkSeq(seq)
    return vector


def checkServerHello(hello):
    """
    The bounds of a server's hello (on C{Bidirectional_r_and_s}, and as
    C{BuddyHello} without its version vector): what the router keeps and
    pushes to every server.
    """
    checkVm(hello.vm)
    checkText(hello.address, "address", MAX_ADDRESS)
    checkText(getattr(hello, "peer_address", ""), "cluster address", MAX_ADDRESS, minimum=0)
    checkText(hello.incarnation, "incarnation", MAX_INCARNATION)
    if hello.pid < 0:
        raise errors.InvalidRequest("a negative pid (%d)" % (hello.pid,))
    return hello


def _username(instance, attribute, value):
    checkUsername(value)


def _postText(instance, attribute, value):
    checkPostText(value)


def updateId(origin, seq):
    return "%s/%d" % (origin, seq)


def parseUpdateId(identifier):
    if not isinstance(identifier, str) or len(identifier) > MAX_UPDATE_ID:
        raise errors.InvalidRequest("malformed update id %s" % (excerpt(identifier),))
    origin, _, seq = identifier.rpartition("/")
    if not origin or not seq.isdigit() or not seq.isascii():
        raise errors.InvalidRequest("malformed update id %s" % (excerpt(identifier),))
    return checkOrigin(origin), checkSeq(int(seq))


def checkCursor(time_us, postId, now_us=None):
    """A timeline position: a post's (time, id), the id possibly empty."""
    checkTime(time_us, now_us)
    if postId:
        parseUpdateId(postId)
    return (time_us, postId)


@attrs.frozen(order=False)
class Post:
    id: str
    author: str = attrs.field(validator=_username)
    time_us: int
    text: str = attrs.field(validator=_postText)
    # The author's request id (its update's request_id): the two copies of a
    # retried post differ in id and share it.  Sent to clients (L{toPush}),
    # not in the update's own encoding, which carries it once already.
    request: str = attrs.field(default="", eq=False)

    @property
    def key(self):
        """Posts are ordered by (time, id) everywhere."""
        return (self.time_us, self.id)

    def toProto(self):
        return pb.Post(id=self.id, author=self.author, time_us=self.time_us, text=self.text)

    def toPush(self):
        """The post as a client is sent it: with its request id."""
        return pb.Post(id=self.id, author=self.author, time_us=self.time_us, text=self.text,
                       request=self.request)

    @classmethod
    def fromProto(cls, p, request=None):
        """The post of C{p}; its request id is C{request}, or else the one C{p} carries."""
        return cls(id=p.id, author=p.author, time_us=p.time_us, text=p.text,
                   request=p.request if request is None else request)


@attrs.frozen
class FollowChange:
    follower: str = attrs.field(validator=_username)
    followee: str = attrs.field(validator=_username)
    following: bool


@attrs.frozen
class PasswordChange:
    """C{user}'s password is now the one hashed as C{hash} (argon2id)."""

    user: str = attrs.field(validator=_username)
    hash: str = attrs.field(validator=_passwordHash)


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
    one of C{user} (with its password's C{hash}), C{post}, C{follow},
    C{read}, C{password} is set.
    """

    origin: str
    seq: int
    time_us: int
    user: str | None = None
    post: Post | None = None
    follow: FollowChange | None = None
    read: ReadMark | None = None
    password: PasswordChange | None = None
    request_id: str = ""
    hash: str = attrs.field(default="", validator=_passwordHash)
    # Its encoding, made once (L{encoding}): no part of the value.
    _encoding: object = attrs.field(default=None, init=False, eq=False, repr=False)
    # "origin/seq" and (requester, request id), made once (asked for ten times a write).
    id: str = attrs.field(init=False, eq=False, repr=False)
    request: tuple | None = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "id", updateId(self.origin, self.seq))
        # A post knows its request id (clients are sent it), whoever built it.
        if self.post is not None and self.post.request != self.request_id:
            object.__setattr__(self, "post", attrs.evolve(self.post, request=self.request_id))
        # The request that made it (None if none): ids are scoped to their requester.
        object.__setattr__(self, "request",
                           (self.requester, self.request_id) if self.request_id else None)

    @property
    def key(self):
        return (self.time_us, self.id)

    def encoding(self):
        """
        The update's C{pb.Update}, made on the first call and shared by every
        later one: the write path sends one update to the record, the peer
        VMs, the slave and the writer's reply, and encodes it once.  Read it
        or copy it (a repeated field copies what it is given); never change
        it (L{toProto} gives a message of one's own).
        """
        if self._encoding is None:
            object.__setattr__(self, "_encoding", self.toProto())
        return self._encoding

    def toProto(self):
        u = pb.Update(origin=self.origin, seq=self.seq, time_us=self.time_us,
                      request_id=self.request_id)
        if self.user is not None:
            u.user.name = self.user
            u.user.password_hash = self.hash
        elif self.password is not None:
            u.password.user = self.password.user
            u.password.password_hash = self.password.hash
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

    @property
    def requester(self):
        """
        The user whose request made this update: request ids are scoped to
        (requester, request id), so two users may pick the same id.
        """
        if self.post is not None:
            return self.post.author
        if self.follow is not None:
            return self.follow.follower
        if self.read is not None:
            return self.read.user
        if self.password is not None:
            return self.password.user
        return self.user

    @classmethod
    def fromProto(cls, u):
        """
        An update as a peer sent it, every field checked against its bound
        (L{errors.InvalidRequest} otherwise).  Times are checked against our
        clock by the node that receives it, not here.
        """
        # Each field read once: a message's field is a new object each read.
        origin, seq = u.origin, u.seq
        if not origin or seq < 1:
            raise errors.InvalidRequest("update without origin or sequence number")
        checkOrigin(origin)
        checkSeq(seq)
        time_us = checkTime(u.time_us)
        request_id = checkRequestId(u.request_id)
        kind = u.WhichOneof("change")
        try:
            if kind == "post":
                post = Post.fromProto(u.post, request_id)
                update = cls(origin, seq, time_us, post=post, request_id=request_id)
                if post.id != update.id or post.time_us != time_us:
                    raise errors.InvalidRequest("post id or time does not match its update")
                return update
            if kind == "read":
                r = u.read
                checkCursor(r.time_us, r.post_id)
                r = ReadMark(r.user, r.time_us, r.post_id)
                return cls(origin, seq, time_us, read=r, request_id=request_id)
            if kind == "follow":
                f = u.follow
                if f.follower == f.followee:
                    raise errors.InvalidRequest("a follow of oneself")
                return cls(origin, seq, time_us, request_id=request_id,
                           follow=FollowChange(f.follower, f.followee, f.following))
            if kind == "user":
                name, hashed = checkUsername(u.user.name), u.user.password_hash
                return cls(origin, seq, time_us, user=name, hash=hashed, request_id=request_id)
            if kind == "password":
                p = PasswordChange(u.password.user, u.password.password_hash)
                return cls(origin, seq, time_us, request_id=request_id, password=p)
        except (errors.InvalidUsername, errors.InvalidPost) as e:
            # A peer's bad value is a bad request, whatever its field.
            raise errors.InvalidRequest("bad update %s: %s" % (excerpt(origin), e.message))
        raise errors.InvalidRequest("update with no change")
