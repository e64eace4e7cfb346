"""
The client-facing C{SNS} service of a master: Login, Password, List, Follow,
UnFollow, Post, History and the live sessions (C{Bidirectional_s_and_c}).

A client in timeline mode posts on its session instead of calling Post
(L{snstwist.server.sessionposts}): the same write, without a call each.

Each method checks its request and who calls (L{admission.Admission}),
applies the domain rule on the node, and leaves acknowledgement to
L{admission.Writes}.  Errors are raised as L{errors.SNSError}s; the bridge
turns each into its gRPC status.
"""

from twisted.internet import defer
from twisted.logger import Logger

from snstwist.core import errors, limits
from snstwist.core.limits import HISTORY
from snstwist.core.model import (
    checkPassword,
    checkPostText,
    checkRequestId,
    checkUsername,
)
from snstwist.core.pages import nextListToken, parseListToken
from snstwist.rpc import auth
from snstwist.rpc import sns_pb2 as pb
from snstwist.server.passwords import FailedLogins, TokenBuckets
from snstwist.server.sessions import hostOf

log = Logger()


def postBuckets(clock, rate=None):
    """How often one user may post: C{rate} a second, or the default of limits.py."""
    rate = rate or limits.POSTS_PER_USER_RATE
    return TokenBuckets(clock, rate, rate * limits.POSTS_PER_USER_BURST_SECONDS,
                        "posts by one user")


class SNSApi:
    """
    The servicer functions of C{SNS}.  C{hasher} hashes and checks passwords
    (off the reactor thread); C{posts} bounds how often a user posts (see
    L{postBuckets}).
    """

    def __init__(self, admission, writes, node, sessions, hasher, clock, posts=None):
        self.admission = admission
        self.writes = writes
        self.node = node
        self.sessions = sessions
        self.hasher = hasher
        self.clock = clock
        self.posts = posts if posts is not None else postBuckets(clock)
        self.failedLogins = FailedLogins(clock)
        self.logins = TokenBuckets(clock, limits.LOGINS_PER_ADDRESS_RATE,
                                   limits.LOGINS_PER_ADDRESS_BURST, "logins from one address")

    def unary(self):
        return {"Login": self.login, "Password": self.password, "List": self.list,
                "Follow": self.follow, "UnFollow": self.unfollow, "Post": self.post,
                "History": self.history}

    def streams(self):
        return {"Bidirectional_s_and_c": self.session}

    # -- accounts

    def login(self, request, ctx):
        """
        The first Login of a name creates the account with the password
        given; later ones must give it.  With no password, a live token of
        the same user is renewed.  Failed logins slow the next attempts of
        that user and of that address; logins per address are rate-limited.
        """
        self.admission.asMaster()
        user = checkUsername(request.user)
        if not request.password and auth.SESSION_METADATA in ctx.metadata:
            if self.admission.user(ctx) != user:
                raise errors.NotLoggedIn("this session token is not %s's" % (user,))
            reply = self.admission.loginReply(user)
            # The timeline on this connection goes on under the new token.
            self.sessions.renew(user, ctx.peer, reply.expires)
            return reply
        password = checkPassword(request.password)
        address = hostOf(ctx.peer)
        self.failedLogins.check(user, address)
        self.logins.take(address)
        return defer.ensureDeferred(self._login(user, password, address))

    async def _login(self, user, password, address):
        register = self.node.replica.password(user)
        created = False
        if register is None or not register.hash:
            hashed = await self.hasher.hash(password)
            register = self.node.replica.password(user)
            update = None
            if register is None:
                # (Unless someone created it while we were hashing.)
                update = self.node.login(user, hashed)
                created = True
                log.info("new user {user}", user=user)
            elif not register.hash:
                # An account from before passwords: its first login sets one.
                update = self.node.setPassword(user, hashed)
            if update is not None:
                await self.writes.acknowledged(update, "")
                register = None
        if register is not None:
            if not await self.hasher.verify(register.hash, password):
                self.failedLogins.failed(user, address)
                log.info("failed login of {user} from {address}", user=user, address=address)
                raise errors.WrongPassword("invalid password")
        self.failedLogins.succeeded(user, address)
        return self.admission.loginReply(user, created)

    def password(self, request, ctx):
        """
        Change the password: the old one proves it is the user.  The new
        generation ends every session opened under the old password, on
        every VM it reaches; the reply's token is of the new one.
        """
        self.admission.asMaster()
        user = checkUsername(request.user)
        old, new = checkPassword(request.old_password), checkPassword(request.new_password)
        requestId = checkRequestId(request.request_id)
        address = hostOf(ctx.peer)
        self.failedLogins.check(user, address)
        self.logins.take(address)
        return defer.ensureDeferred(
            self._changePassword(user, old, new, requestId, request.prefer_vm, address))

    async def _changePassword(self, user, old, new, requestId, prefer, address):
        done = await self.node.history.byRequest(user, requestId)
        if done is not None and done.password is not None and done.password.user == user:
            # A retry of a change already made: the new password proves it.
            proof, hashed = new, done.password.hash
        else:
            register = self.node.replica.password(user)
            if register is None:
                raise errors.UnknownUser("user %s does not exist" % (user,))
            proof, hashed, done = old, register.hash, None
        if not await self.hasher.verify(hashed, proof):
            self.failedLogins.failed(user, address)
            raise errors.WrongPassword("invalid password")
        self.failedLogins.succeeded(user, address)
        if done is None:
            update = self.node.setPassword(user, await self.hasher.hash(new), requestId)
            log.info("{user} changed their password", user=user)
            await self.writes.acknowledged(update, prefer)
        else:
            await self.node.durable(done)
        return self.admission.loginReply(user)

    # -- the seed's commands

    def list(self, request, ctx):
        """A page of LIST: the next names of the users and of the caller's followers."""
        user = self.admission.user(ctx)
        at = parseListToken(request.page_token)
        users, moreUsers = self._page(at.users, self.node.replica.usersPage)
        followers, moreFollowers = self._page(
            at.followers, lambda after, n: self.node.replica.followersPage(user, after, n))
        return pb.ListReply(all_users=users, followers=followers, next_page_token=nextListToken(
            users, moreUsers, followers, moreFollowers))

    @staticmethod
    def _page(after, read):
        return read(after, limits.LIST_PAGE) if after is not None else ([], False)

    def follow(self, request, ctx):
        return self.writes.write(self.admission.user(ctx), request, lambda user, rid:
                                 self.node.follow(user, request.target, rid),
                                 lambda user: checkUsername(request.target))

    def unfollow(self, request, ctx):
        return self.writes.write(self.admission.user(ctx), request, lambda user, rid:
                                 self.node.unfollow(user, request.target, rid),
                                 lambda user: checkUsername(request.target))

    def post(self, request, ctx):
        return self._post(self.admission.user(ctx), request)

    def sessionPost(self, session, request, answer=None):
        """
        A post on C{session}'s stream (L{snstwist.server.sessionposts}), as
        the Post call of its user: on a master only, while the session's
        token (renewed on its connection) holds and its password stands.
        C{answer(update, copies)} builds what it is answered with (the
        C{WriteReply} by default).
        """
        self.admission.asMaster()
        expires = session.expires if session.expires is not None else float("inf")
        auth.stillValid(session.user, expires, session.generation, self.clock.seconds(),
                        self.admission.generation)
        return self._post(session.user, request, answer)

    def _post(self, user, request, answer=None):
        def check(user):
            checkPostText(request.text)
            self.posts.take(user)

        return self.writes.write(user, request, lambda user, rid:
                                 self.node.post(user, request.text, rid), check, answer)

    def history(self, request, ctx):
        user = self.admission.user(ctx)
        limit = min(request.limit or HISTORY, HISTORY)
        d = self.node.history.recent(user, limit)
        return d.addCallback(lambda posts: pb.HistoryReply(posts=[p.toProto() for p in posts]))

    def session(self, ctx):
        token = self.admission.session(ctx)
        session = self.sessions.session(token.user, ctx.peer)
        session.generation = token.generation
        session.expires, session.peer = token.expires, ctx.peer
        session.writePost = self.sessionPost
        return session
