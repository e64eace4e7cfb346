"""
Browser sessions (L{Visit}) and the people signed in through them
(L{Person}, one L{snstwist.client.client.Client} each).

A visit is named by a random cookie (HttpOnly, SameSite=Strict) and carries
the CSRF token every form of its pages must send back.  Signing in gives the
visit a new name and token (no session fixation) and a person: a cluster
client logged in as the user, in timeline mode, that keeps the newest posts
and pushes each new one to the person's live streams.

Everything is bounded: visits, people signed in, live streams per person,
posts kept per person; idle visits are forgotten and their clients closed.
"""

import collections
import hmac
import secrets

from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

from snstwist.client.client import Client, ClusterUnreachable, CommandFailed, InvalidPassword
from snstwist.commands.cli import (
    INVALID_PASSWORD,
    INVALID_USERNAME,
    UNKNOWN,
    formatPost,
    sentenceOf,
)
from snstwist.core import errors
from snstwist.core.limits import HISTORY
from snstwist.core.model import checkUsername

log = Logger()

COOKIE = b"sns_visit"
MAX_VISITS = 10000
MAX_PEOPLE = 200
STREAMS_PER_PERSON = 4
IDLE = 3600.0
SWEEP = 60.0


class SignInFailed(Exception):
    """Signing in did not work; the message is the sentence to show."""


def sentence(failure, command=None):
    """
    The CLI's sentence for a failed command (C{command}: its name, when its
    line depends on it) and its cause, when unknown.
    """
    e = failure if isinstance(failure, Exception) else failure.value
    if isinstance(e, InvalidPassword):
        return INVALID_PASSWORD
    if isinstance(e, CommandFailed):
        return sentenceOf(e.code, command) or UNKNOWN + ": " + e.message
    if isinstance(e, (ClusterUnreachable, errors.RemoteError)):
        return UNKNOWN + ": the cluster cannot be reached"
    if isinstance(e, errors.InvalidUsername):
        return INVALID_USERNAME
    log.failure("unexpected failure", failure if not isinstance(failure, Exception) else None)
    return UNKNOWN


def postData(post):
    """What a browser is sent of a post: the CLI's line, and the id to de-duplicate."""
    return {"id": post.id, "author": post.author, "time_us": post.time_us,
            "line": formatPost(post)}


class Person:
    """A user signed in: one cluster client, its newest posts, its live streams."""

    def __init__(self, client):
        self.client = client
        self.user = client.user
        self.posts = collections.deque(maxlen=HISTORY)
        self.streams = set()
        self.status = ""
        client.onPost = self._post
        client.onReconnect = self._reconnecting

    def _post(self, post):
        self.posts.append(post)
        if self.status:
            # Posts flow again: the failover is over.
            self.status = ""
            self._send("status", {"text": ""})
        self._send("post", postData(post))

    def _reconnecting(self, address):
        # The CLI's words for a failover, shown while it lasts.
        self.status = "Reconnecting to %s..." % (address,)
        self._send("status", {"text": self.status})

    def _send(self, kind, data):
        for stream in list(self.streams):
            stream.send(kind, data)

    def newest(self):
        """The posts kept, newest first."""
        return list(reversed(self.posts))

    async def start(self):
        await self.client.connect()
        await self.client.timeline()

    def close(self):
        for stream in list(self.streams):
            stream.close()
        return self.client.close()


class Visit:
    """One browser's session."""

    def __init__(self, key, now):
        self.key = key
        self.csrf = secrets.token_urlsafe(24)
        self.lastSeen = now
        self.person = None
        self.flash = ""

    def checkCsrf(self, given):
        return hmac.compare_digest(self.csrf.encode(), given.encode("utf-8", "replace"))

    def takeFlash(self):
        flash, self.flash = self.flash, ""
        return flash


class Visits(TimerService):
    """
    Every visit, by cookie; sign in and out.  C{makeClient(user, password)}
    returns an unconnected L{Client}.
    """

    def __init__(self, clock, makeClient, maxVisits=MAX_VISITS, maxPeople=MAX_PEOPLE):
        TimerService.__init__(self, SWEEP, self.sweep)
        self.clock = clock
        self.makeClient = makeClient
        self.maxVisits = maxVisits
        self.maxPeople = maxPeople
        self.visits = collections.OrderedDict()

    @property
    def people(self):
        return sum(1 for v in self.visits.values() if v.person is not None)

    def find(self, request):
        """The visit named by the request's cookie, or None."""
        key = request.getCookie(COOKIE)
        visit = self.visits.get(key.decode("ascii", "replace")) if key else None
        if visit is not None:
            visit.lastSeen = self.clock.seconds()
            self.visits.move_to_end(visit.key)
        return visit

    def visit(self, request):
        """The request's visit, or a new one (with its cookie set)."""
        visit = self.find(request)
        if visit is None:
            visit = self._new(request)
        return visit

    def _new(self, request):
        while len(self.visits) >= self.maxVisits:
            # The least recently seen visit without a person makes room.
            oldest = next((k for k, v in self.visits.items() if v.person is None), None)
            if oldest is None:
                break
            del self.visits[oldest]
        visit = Visit(secrets.token_urlsafe(32), self.clock.seconds())
        self.visits[visit.key] = visit
        request.addCookie(COOKIE, visit.key.encode("ascii"), path=b"/", httpOnly=True,
                          sameSite="strict", secure=request.isSecure())
        return visit

    def signIn(self, request, visit, user, password):
        """
        Sign C{visit} in as C{user}: a new visit (name and CSRF token) with a
        person whose client is logged in and in timeline mode.
        """
        return defer.ensureDeferred(self._signIn(request, visit, user, password))

    async def _signIn(self, request, visit, user, password):
        try:
            user = checkUsername(user)
        except errors.SNSError:
            raise SignInFailed(INVALID_USERNAME)
        if visit.person is None and self.people >= self.maxPeople:
            raise SignInFailed("Too many people are signed in here right now; try again later")
        person = Person(self.makeClient(user, password))
        try:
            await person.start()
        except Exception as e:
            await person.close()
            raise SignInFailed(sentence(e))
        await self.signOut(visit)
        fresh = self._new(request)
        fresh.person = person
        log.info("{user} signed in on the web", user=user)
        return fresh

    def signOut(self, visit):
        """Forget C{visit} and close its person's client."""
        self.visits.pop(visit.key, None)
        person, visit.person = visit.person, None
        if person is None:
            return defer.succeed(None)
        return person.close()

    def sweep(self):
        """Forget visits idle for longer than L{IDLE} (a live stream counts as use)."""
        now = self.clock.seconds()
        for visit in list(self.visits.values()):
            if visit.person is not None and visit.person.streams:
                visit.lastSeen = now
            elif now - visit.lastSeen > IDLE:
                self.signOut(visit)

    def stopService(self):
        TimerService.stopService(self)
        return defer.gatherResults([self.signOut(v) for v in list(self.visits.values())],
                                   consumeErrors=True)


def clientFactory(routers, clock):
    """Make the cluster clients of the people signing in."""

    def make(user, password):
        return Client(routers, user, password, clock=clock)

    return make
