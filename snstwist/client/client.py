"""
The client library: one logged-in user of an snstwist cluster.

It asks a router for master1 and master2 (C{Onetime_c_to_r}), logs in on
master1 with the user's password and keeps C{Bidirectional_s_and_c} open with it, heartbeats both
ways.  When master1 dies (stream broken, call unavailable, or heartbeats
stop) it makes master2 its master1, asks the router for a new master2, logs
in again (renewing its session token there: no password hashing on the way),
resumes the timeline after the last post it showed, and retries
the command that was in flight with the same request id, so that it is
applied once.  In timeline mode a post goes up the session's stream rather
than in a call of its own (L{snstwist.client.timeline.Session.post}), and a
post unanswered when the session ends is sent again in the same way: on the
new session's stream, or by a call while there is none.

L{Client} is the façade, and runs the commands; the masters and their
failover are in L{snstwist.client.masters}; the login and its token in
L{snstwist.client.login}; the session and the timeline in
L{snstwist.client.timeline}.  Every public method returns a
Deferred.
"""

import random

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger

from snstwist.client.errors import ClusterUnreachable, CommandFailed, InvalidPassword
from snstwist.client.listing import Lists
from snstwist.client.login import Login
from snstwist.client.masters import CALL_TIMEOUT, Master, Masters, Reconnects, master
from snstwist.client.timeline import Session, SessionGone, Timeline
from snstwist.core.backoff import backoffPolicy
from snstwist.core.errors import RemoteError, Status
from snstwist.core.limits import HISTORY
from snstwist.rpc import grpcbridge
from snstwist.rpc import sns_pb2 as pb

__all__ = ["Client", "ClusterUnreachable", "CommandFailed", "InvalidPassword", "Master",
           "Reconnects"]

log = Logger()

# Statuses that mean "this server is gone or hung", not "your request is bad".
_DEAD = {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED, Status.UNKNOWN}
# A command is tried this many times in all (failovers and a master
# shedding load in between).
COMMAND_TRIES = 8


def requestId(time_us):
    """
    A new request id made at C{time_us} (microseconds): unique (random), and
    greater, as strings compare, than the ids made before it by a clock
    that has not gone back.  A master proves such an id new from memory,
    without asking its disk whether it is a retry
    (L{snstwist.core.requests}); any unique id would be applied once as
    well, only looked up on disk.
    """
    return "t%016x%016x" % (time_us, random.getrandbits(64))


class Client(Lists):
    """
    A user of the cluster, who logs in with C{password} (the first login of
    a name creates the account with it).  C{onReconnect(address)} is called
    when a failover starts; C{onPost(post)} with each timeline post, once,
    in order; C{onLost(error)} when the session could not be restored and
    nobody waits for a command.  C{tls} (a L{grpcbridge.TLS}: the cluster's
    CA) secures its channels; by default, the process's
    (L{grpcbridge.useTLS}, else $SNS_TLS_CA).  C{jitter} spreads its retries
    (a test passes a constant).
    """

    # Which masters the router's answers give (a benchmark pins one VM).
    mastersFactory = Masters

    def __init__(self, routers, user, password, clock=None, onReconnect=None, onPost=None,
                 tls=None, jitter=random.random):
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.user = user
        self.tls = tls
        self.onLost = lambda error: None
        self.masters = self.mastersFactory(
            routers, user, clock, self._channel, self._login, self._abandonSession,
            onReconnect or (lambda address: None), jitter)
        self.reader = Timeline(clock, onPost or (lambda post: None), self._send)
        self.login = Login(clock, user, password, self._channel, jitter)
        self._commandBackoff = backoffPolicy(0.05, 6.4, jitter=jitter)
        self._changing = False
        self._requestTime = 0  # of the last request id: they only grow
        self.session = None
        self.epoch = 0
        self.closed = False

    # What the masters and the timeline keep, as the client's own.

    master1 = property(lambda self: self.masters.master1)
    master2 = property(lambda self: self.masters.master2)
    reconnects = property(lambda self: self.masters.reconnects)
    failingOver = property(lambda self: self.masters.failingOver)
    token = property(lambda self: self.login.token)
    password = property(lambda self: self.login.password)

    onReconnect = property(lambda self: self.masters.onReconnect,
                           lambda self, f: setattr(self.masters, "onReconnect", f))
    onPost = property(lambda self: self.reader.onPost,
                      lambda self, f: setattr(self.reader, "onPost", f))

    # -- connecting

    def _channel(self, address):
        if self.tls is None:
            return grpcbridge.channel(address)
        return grpcbridge.channel(address, self.tls)

    async def _login(self, master):
        reply = await self.login.on(master)
        self.epoch += 1
        self._openSession()
        return reply

    def _newSession(self):
        return Session(self.clock, self.reader, self.reconnects.healthy, self._sessionLost)

    def _openSession(self):
        self.session = self._newSession()
        grpcbridge.openStream(self.login.stub.Bidirectional_s_and_c, self.session,
                              metadata=self.login.metadata())

    def _abandonSession(self):
        """Master1 is being replaced: its session goes with it."""
        if self.session is not None:
            self.session.close()
            self.session = None

    def _send(self, message):
        if self.session is not None:
            self.session.send(message)

    def connect(self):
        """Find two masters and log in on the first.  Fires with LoginReply."""
        return defer.ensureDeferred(self._connect())

    async def _connect(self):
        reply = await self.masters.ask()
        first = master(reply.master1)
        try:
            login = await self._login(first)
        except RemoteError as e:
            if e.status not in _DEAD:
                raise CommandFailed(e.status, e.message)
            # master1 died between the router's answer and our login.
            self.masters.master1 = first
            self.masters.master2 = master(reply.master2)
            await self.masters.failOver()
            return pb.LoginReply(token=self.token)
        self.masters.master1 = first
        self.masters.master2 = master(reply.master2)
        return login

    # -- a session lost

    def _sessionLost(self, session, reason):
        if session is self.session and self._changing:
            # Our own password change ended the session (opened under the
            # old password): changePassword opens the next one.
            self.session = None
            return
        if session is self.session and not self.closed:
            log.info("session with {m} lost: {why}", m=self.master1,
                     why=reason.getErrorMessage() if reason else "ended")
            self.session = None
            if self.reconnects.troubled:
                self.reconnects.note(reason or "the session ended")
            self.masters.failOver().addErrback(self._gaveUp)

    def _gaveUp(self, failure):
        """The session could not be restored: whoever waits for it is told."""
        log.warn("giving up on the session: {why}", why=failure.getErrorMessage())
        if not self.reader.failed(failure):
            self.onLost(failure.value)

    # -- commands

    def _command(self, name, request, write=False):
        """Run a command: a call and a callback unless a try fails (then L{_call})."""
        if self.failingOver:
            return defer.ensureDeferred(self._call(name, request, write))
        epoch = self.epoch

        def retry(failure):
            failure.trap(RemoteError, defer.CancelledError, SessionGone)
            return defer.ensureDeferred(self._call(name, request, write, (failure.value, epoch)))

        return self._try(name, request, write).addErrback(retry)

    def _try(self, name, request, write):
        if write and self.master2 is not None:
            request.prefer_vm = self.master2.vm
        session = self.session
        if name == "Post" and session is not None and session.takesPosts():
            return session.post(request)
        d = grpcbridge.call(getattr(self.login.stub, name), request,
                            timeout=CALL_TIMEOUT, metadata=self.login.metadata())
        if name == "Post":
            d.addCallback(self._answered, request.request_id)
        return d

    def _answered(self, reply, requestId):
        """A post answered by a call: shown from its reply in timeline mode, as on a session."""
        self.reader.answered(reply, requestId)
        return reply

    async def _call(self, name, request, write=False, failed=None):
        """The tries of a command; C{failed}: the (error, epoch) of a first one (L{_command})."""
        for attempt in range(COMMAND_TRIES):
            if failed is None:
                await self.masters.settled()
                epoch = self.epoch
                try:
                    return await self._try(name, request, write)
                except (RemoteError, defer.CancelledError, SessionGone) as e:
                    failed = (e, epoch)
            await self._tried(name, attempt, *failed)
            failed = None
        raise ClusterUnreachable("%s did not succeed after repeated failovers" % (name,))

    async def _tried(self, name, attempt, error, epoch):
        """After a try that failed with C{error}: raise, or wait until the next may go."""
        if isinstance(error, SessionGone) and not self.closed:
            return  # Its session ended (a failover follows if due): again once settled.
        if isinstance(error, RemoteError):
            if error.status == Status.RESOURCE_EXHAUSTED:
                # The master is shedding load: the same request, after a pause.
                await deferLater(self.clock, self._commandBackoff(attempt), lambda: None)
                return
            if error.status not in _DEAD:
                raise CommandFailed(error.status, error.message)
            log.info("{name} on {m} failed: {code}", name=name, m=self.master1,
                     code=error.status.name)
        else:
            # A failover closed the channel under this call.
            if self.closed:
                raise error
            log.info("{name} on {m} cancelled by a failover", name=name, m=self.master1)
        if self.epoch == epoch:  # nobody has replaced this master yet: we do
            await self.masters.failOver()

    def _requestId(self):
        self._requestTime = max(int(self.clock.seconds() * 1e6), self._requestTime + 1)
        return requestId(self._requestTime)

    def _write(self, name, request):
        request.request_id = self._requestId()
        return self._command(name, request, write=True)

    def follow(self, target):
        return self._write("Follow", pb.FollowRequest(target=target))

    def unfollow(self, target):
        return self._write("UnFollow", pb.FollowRequest(target=target))

    def post(self, text):
        return self._write("Post", pb.PostRequest(text=text))

    async def _changePassword(self, new):
        request = pb.PasswordRequest(user=self.user, old_password=self.password,
                                     new_password=new, request_id=self._requestId())
        self._changing = True
        try:
            reply = await self._call("Password", request, write=True)
        finally:
            self._changing = False
        self.login.password = new
        self.login.newToken(reply)
        if self.session is not None:
            self.session.close()
        self._openSession()
        return reply

    def changePassword(self, new):
        """
        Change the password to C{new}: every other session of the user ends;
        this one goes on (with a new token).
        """
        return defer.ensureDeferred(self._changePassword(new))

    def history(self, limit=HISTORY):
        return self._command("History", pb.HistoryRequest(limit=limit))

    # -- the timeline

    def timeline(self):
        """
        Enter timeline mode: C{onPost} gets the recent history, then each new
        post.  The Deferred fires once the history has been delivered.
        """
        return self.reader.enter()

    @defer.inlineCallbacks
    def close(self):
        """Say how far we read, end the session in order, close the channel."""
        self.closed = self.masters.closed = True
        self.login.stopRenewing()
        self.reader.flush()
        if self.session is not None:
            yield self.session.finish()
        yield self.login.close()
