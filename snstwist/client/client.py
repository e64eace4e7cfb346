"""
The client library: one logged-in user of an snstwist cluster.

It asks a router for master1 and master2 (C{Onetime_c_to_r}), logs in on
master1 with the user's password and keeps C{Bidirectional_s_and_c} open with it, heartbeats both
ways.  When master1 dies (stream broken, call unavailable, or heartbeats
stop) it makes master2 its master1, asks the router for a new master2, logs
in again (renewing its session token there: no password hashing on the way),
resumes the timeline after the last post it showed, and retries
the command that was in flight with the same request id, so that it is
applied once.

Every public method returns a Deferred.
"""

import random
import uuid

import attrs
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.core.errors import RemoteError, Status
from snstwist.core.limits import HISTORY
from snstwist.core.limits import SESSION_HEARTBEAT as HEARTBEAT
from snstwist.core.model import Post
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.rpc.heartbeat import Heartbeat

# The session's heartbeat interval is the server's: the deadline on each side
# is three of the other side's intervals.

log = Logger()

CALL_TIMEOUT = 5.0
FAILOVER_DEADLINE = 15.0
RESUME_WINDOW_US = 10 * 1000000
SHOWN_MEMORY = 10000
_BEAT = pb.ClientMessage(heartbeat=pb.Heartbeat())

# Statuses that mean "this server is gone or hung", not "your request is bad".
_DEAD = {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED, Status.UNKNOWN}


class CommandFailed(Exception):
    """The cluster refused a command: C{code} is its L{Status}."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidPassword(CommandFailed):
    """The cluster refused the user's password."""


class ClusterUnreachable(Exception):
    """No router or no master could be reached."""


@attrs.frozen
class Master:
    vm: str
    address: str


@attrs.define
class Reconnects:
    """
    The client's run of failed attempts to get a working session: each one
    waits longer than the last (exponential, with jitter, as
    L{twisted.application.internet.ClientService} does), and the run gives
    up C{deadline} seconds after it began.  A session that works ends the
    run (L{healthy}).  A session that breaks before it works (a timeline
    that never got its history, a session refused) counts as a failed
    attempt, so a client can not reconnect in a tight loop forever.
    """

    clock: object
    deadline: float = FAILOVER_DEADLINE
    delay: object = attrs.field(factory=lambda: backoffPolicy(
        initialDelay=0.02, maxDelay=1.0, factor=2.0, jitter=lambda: random.random() * 0.02))
    since: float | None = None
    attempts: int = 0
    problem: object = None

    @property
    def troubled(self):
        return self.since is not None

    def failed(self, problem):
        """
        One more attempt failed because of C{problem}: the seconds to wait
        before the next, or L{ClusterUnreachable} once past the deadline
        (and the run starts afresh for whoever tries next).
        """
        now = self.clock.seconds()
        if self.since is None:
            self.since = now
        self.attempts += 1
        self._remember(problem)
        if now - self.since > self.deadline:
            attempts, since = self.attempts, self.since
            cause = self.problem
            self.healthy()
            raise ClusterUnreachable("gave up after %d attempts in %.0fs; cause: %s"
                                     % (attempts, now - since, _describe(cause)))
        return self.delay(self.attempts - 1)

    def unproven(self, problem):
        """A new session that has not worked yet: its loss continues the run."""
        if self.since is None:
            self.since = self.clock.seconds()
        self._remember(problem)

    def _remember(self, problem):
        """
        Keep the most telling cause of the run for the give-up line: gRPC
        core sometimes reports a stream the server refused (a session cap,
        say) as INTERNAL "Internal error from Core" when the client was
        already writing on it, so such a report does not replace a cause
        the server gave in words.
        """
        if not (_coreInternal(problem) and self.problem is not None):
            self.problem = problem

    def healthy(self):
        self.since, self.attempts, self.problem = None, 0, None


def _coreInternal(problem):
    if isinstance(problem, Failure):
        problem = problem.value
    return (isinstance(problem, RemoteError) and problem.status is Status.INTERNAL
            and "from Core" in problem.message)


def _describe(problem):
    if isinstance(problem, Failure):
        problem = problem.value
    if isinstance(problem, RemoteError):
        return "%s: %s" % (problem.status.name, problem.message)
    return str(problem) or type(problem).__name__


class _Session:
    """The client's end of C{Bidirectional_s_and_c} on the current master1."""

    def __init__(self, client):
        self.client = client
        self.stream = None
        self.beats = None
        self.closing = False
        self.ended = None

    @property
    def clock(self):
        return self.client.clock

    def makeConnection(self, stream):
        self.stream = stream
        stream.send(pb.ClientMessage(open=self.client._openRequest()))
        self.beats = Heartbeat(self.clock, HEARTBEAT, 3 * HEARTBEAT,
                               lambda: stream.send(_BEAT), self._silent)

    def _silent(self, seconds):
        log.info("master silent for {s:.1f}s", s=seconds)
        self.stream.abort()

    def messageReceived(self, message):
        self.beats.heard()
        kind = message.WhichOneof("kind")
        if kind == "post":
            self.client._received(Post.fromProto(message.post))
        elif kind == "ready":
            self.client._timelineReady()
        elif kind == "heartbeat" and not self.client.inTimeline:
            # A session that has lasted a heartbeat works.
            self.client.reconnects.healthy()

    def send(self, message):
        if self.stream is not None:
            self.stream.send(message)

    def close(self):
        """Abandon the session now (its master is being replaced)."""
        self.closing = True
        if self.stream is not None:
            self.stream.abort()

    def finish(self, timeout=1.0):
        """
        End the session in order: what is queued (the last ack) is sent
        first.  The Deferred fires when the server has ended it too, or
        after C{timeout}.
        """
        self.closing = True
        if self.stream is None:
            return defer.succeed(None)
        self.stream.close()
        self.ended = defer.Deferred()
        return self.ended.addTimeout(timeout, self.clock).addErrback(lambda f: None)

    def connectionLost(self, reason):
        if self.beats is not None:
            self.beats.stop()
        self.stream = None
        if self.ended is not None and not self.ended.called:
            self.ended.callback(None)
        if not self.closing:
            self.client._sessionLost(self, reason)


class Client:
    """
    A user of the cluster, who logs in with C{password} (the first login of
    a name creates the account with it).  C{onReconnect(address)} is called
    when a failover starts; C{onPost(post)} with each timeline post, once,
    in order.  C{tls} (a L{grpcbridge.TLS}: the cluster's CA) secures its
    channels; by default, the process's (L{grpcbridge.useTLS}, else
    $SNS_TLS_CA).
    """

    def __init__(self, routers, user, password, clock=None, onReconnect=None, onPost=None,
                 tls=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.routers = list(routers)
        self.user = user
        self.password = password
        self.tls = tls
        self._renewal = None
        self._changing = False
        self.onReconnect = onReconnect or (lambda address: None)
        self.onPost = onPost or (lambda post: None)
        self.master1 = None
        self.master2 = None
        self.channel = None
        self.stub = None
        self.token = None
        self.session = None
        self.inTimeline = False
        self.cursor = None
        self.shown = {}  # ids of posts shown, oldest first (bounded)
        self._ready = None
        self._failover = None
        self.epoch = 0
        self._ackCall = None
        self.closed = False
        self.reconnects = Reconnects(clock)
        self.onLost = lambda error: None

    # -- connecting

    async def _askRouter(self, exclude=()):
        request = pb.MasterRequest(user=self.user, exclude_vms=sorted(exclude))
        problems = []
        for address in self.routers:
            channel = self._channel(address)
            try:
                reply = await grpcbridge.call(pbg.RouterStub(channel).Onetime_c_to_r,
                                              request, timeout=CALL_TIMEOUT)
                return reply
            except RemoteError as e:
                problems.append("router %s: %s" % (address, e.message))
            finally:
                await grpcbridge.closeChannel(channel)
        raise ClusterUnreachable("; ".join(problems))

    def _channel(self, address):
        if self.tls is None:
            return grpcbridge.channel(address)
        return grpcbridge.channel(address, self.tls)

    @staticmethod
    def _master(address):
        return Master(address.vm, address.address) if address.address else None

    async def _login(self, master):
        if self.channel is not None:
            await grpcbridge.closeChannel(self.channel)
        self.channel = self._channel(master.address)
        self.stub = pbg.SNSStub(self.channel)
        reply = None
        if self.token is not None:
            # A token is good on every master: renewing it costs no hashing.
            try:
                reply = await grpcbridge.call(self.stub.Login, pb.LoginRequest(user=self.user),
                                              timeout=CALL_TIMEOUT,
                                              metadata=auth.sessionMetadata(self.token))
            except RemoteError as e:
                if e.status != Status.UNAUTHENTICATED:
                    raise
        attempt = 0
        while reply is None:
            try:
                reply = await grpcbridge.call(
                    self.stub.Login, pb.LoginRequest(user=self.user, password=self.password),
                    timeout=CALL_TIMEOUT)
            except RemoteError as e:
                if e.status == Status.UNAUTHENTICATED:
                    raise InvalidPassword(e.status, e.message)
                if e.status != Status.RESOURCE_EXHAUSTED or attempt >= 6:
                    raise
                # Too many logins at once (password hashing is bounded):
                # back off, then again.
                await deferLater(self.clock, 0.1 * 2 ** attempt, lambda: None)
                attempt += 1
        self.master1 = master
        self.epoch += 1
        self._newToken(reply)
        self._openSession()
        return reply

    def _openSession(self):
        self.session = _Session(self)
        grpcbridge.openStream(self.stub.Bidirectional_s_and_c, self.session,
                              metadata=auth.sessionMetadata(self.token))

    def _newToken(self, reply):
        """Keep the token, and renew it at half its life while we run."""
        self.token = reply.token
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        self._renewal = None
        if reply.expires and not self.closed:
            wait = max(1.0, (reply.expires - self.clock.seconds()) / 2)
            self._renewal = self.clock.callLater(wait, self._renew)

    def _renew(self):
        self._renewal = None
        d = grpcbridge.call(self.stub.Login, pb.LoginRequest(user=self.user),
                            timeout=CALL_TIMEOUT, metadata=auth.sessionMetadata(self.token))
        d.addCallbacks(self._newToken,
                       lambda f: log.info("renewing the session token failed: {why}",
                                          why=f.getErrorMessage()))

    def connect(self):
        """Find two masters and log in on the first.  Fires with LoginReply."""
        return defer.ensureDeferred(self._connect())

    async def _connect(self):
        reply = await self._askRouter()
        try:
            login = await self._login(self._master(reply.master1))
        except RemoteError as e:
            if e.status not in _DEAD:
                raise CommandFailed(e.status, e.message)
            # master1 died between the router's answer and our login.
            self.master1 = self._master(reply.master1)
            self.master2 = self._master(reply.master2)
            await self._failOver()
            return pb.LoginReply(token=self.token)
        self.master2 = self._master(reply.master2)
        return login

    # -- failover

    def _failOver(self):
        """Start a failover, or join the one in progress."""
        d = defer.Deferred()
        if self._failover is not None:
            self._failover.append(d)
            return d
        self._failover = [d]
        defer.ensureDeferred(self._doFailover()).addBoth(self._failoverDone)
        return d

    def _failoverDone(self, result):
        waiters, self._failover = self._failover, None
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    async def _doFailover(self):
        dead = self.master1
        if self.session is not None:
            self.session.close()
            self.session = None
        if self.reconnects.troubled:
            # The last session broke before it worked: not at once again.
            await deferLater(self.clock, self._nextAttempt(dead, self.reconnects.problem),
                             lambda: None)
        candidate = self.master2
        self.master2 = None
        while not self.closed:
            if candidate is None:
                try:
                    reply = await self._askRouter()
                    candidate = self._master(reply.master1)
                    self.master2 = self._master(reply.master2)
                except ClusterUnreachable as e:
                    problem = e
                    candidate = None
            if candidate is not None:
                self.onReconnect(candidate.address)
                try:
                    await self._login(candidate)
                    break
                except RemoteError as e:
                    problem = e
                    candidate = None
            await deferLater(self.clock, self._nextAttempt(dead, problem), lambda: None)
        # Until this session works, losing it is one more failed attempt.
        self.reconnects.unproven("the session with %s broke before it worked"
                                 % (self.master1.address,))
        if self.master2 is None or self.master2.vm == self.master1.vm:
            d = defer.ensureDeferred(self._refillMaster2())
            d.addErrback(lambda f: log.failure("finding a new master2 failed", f))

    def _nextAttempt(self, dead, problem):
        try:
            return self.reconnects.failed(problem)
        except ClusterUnreachable as e:
            raise ClusterUnreachable("failover from %s failed: %s" % (
                dead.address if dead else "?", e))

    async def _refillMaster2(self):
        try:
            reply = await self._askRouter(exclude={self.master1.vm})
        except ClusterUnreachable as e:
            # Not fatal: a failover with no master2 asks the router again.
            log.info("no master2 outside {vm} for now: {why}", vm=self.master1.vm, why=e)
            self.master2 = None
            return
        self.master2 = self._master(reply.master1)

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
                self.reconnects.problem = reason or "the session ended"
            self._failOver().addErrback(self._gaveUp)

    def _gaveUp(self, failure):
        """The session could not be restored: whoever waits for it is told."""
        log.warn("giving up on the session: {why}", why=failure.getErrorMessage())
        if self._ready is not None and not self._ready.called:
            self._ready.errback(failure)
        else:
            self.onLost(failure.value)

    # -- commands

    async def _call(self, name, request, write=False):
        for _attempt in range(8):
            if self._failover is not None:
                await self._failOver()
            if write and self.master2 is not None:
                request.prefer_vm = self.master2.vm
            epoch = self.epoch
            try:
                return await grpcbridge.call(getattr(self.stub, name), request,
                                             timeout=CALL_TIMEOUT,
                                             metadata=auth.sessionMetadata(self.token))
            except RemoteError as e:
                if e.status == Status.RESOURCE_EXHAUSTED:
                    # The master is shedding load: back off, then the same
                    # request (same id) again.
                    await deferLater(self.clock, 0.05 * 2 ** _attempt, lambda: None)
                    continue
                if e.status not in _DEAD:
                    raise CommandFailed(e.status, e.message)
                log.info("{name} on {m} failed: {code}", name=name, m=self.master1,
                         code=e.status.name)
            except defer.CancelledError:
                # A failover closed the channel under this call.
                if self.closed:
                    raise
                log.info("{name} on {m} cancelled by a failover", name=name, m=self.master1)
            if self.epoch == epoch:
                # Nobody has replaced this master yet: we do.
                await self._failOver()
        raise ClusterUnreachable("%s did not succeed after repeated failovers" % (name,))

    def _write(self, name, request):
        request.request_id = uuid.uuid4().hex
        return defer.ensureDeferred(self._call(name, request, write=True))

    def follow(self, target):
        return self._write("Follow", pb.FollowRequest(target=target))

    def unfollow(self, target):
        return self._write("UnFollow", pb.FollowRequest(target=target))

    def post(self, text):
        return self._write("Post", pb.PostRequest(text=text))

    async def _changePassword(self, new):
        request = pb.PasswordRequest(user=self.user, old_password=self.password,
                                     new_password=new, request_id=uuid.uuid4().hex)
        self._changing = True
        try:
            reply = await self._call("Password", request, write=True)
        finally:
            self._changing = False
        self.password = new
        self._newToken(reply)
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

    def list(self):
        return defer.ensureDeferred(self._call("List", pb.ListRequest()))

    def history(self, limit=HISTORY):
        return defer.ensureDeferred(self._call("History", pb.HistoryRequest(limit=limit)))

    # -- the timeline

    def timeline(self):
        """
        Enter timeline mode: C{onPost} gets the recent history, then each new
        post.  The Deferred fires once the history has been delivered.
        """
        self.inTimeline = True
        self._ready = defer.Deferred()
        if self.session is not None:
            self.session.send(pb.ClientMessage(open=self._openRequest()))
        return self._ready

    def _openRequest(self):
        request = pb.SessionOpen(timeline=self.inTimeline, history=HISTORY)
        if self.cursor is not None:
            # Resume a little before the newest post shown: a post with an
            # older time may have reached the new master later than it
            # reached the old one.  What was shown already is skipped.
            request.cursor.time_us = max(0, self.cursor[0] - RESUME_WINDOW_US)
        return request

    def _timelineReady(self):
        self.reconnects.healthy()
        if self._ready is not None and not self._ready.called:
            self._ready.callback(None)

    def _received(self, post):
        if post.id in self.shown:
            return
        self.shown[post.id] = None
        if len(self.shown) > SHOWN_MEMORY:
            del self.shown[next(iter(self.shown))]
        if self.cursor is None or post.key > self.cursor:
            self.cursor = post.key
        self.onPost(post)
        if self._ackCall is None:
            self._ackCall = self.clock.callLater(0.2, self._ack)

    def _ack(self):
        self._ackCall = None
        if self.session is not None and self.cursor is not None:
            self.session.send(pb.ClientMessage(ack=pb.Cursor(
                time_us=self.cursor[0], id=self.cursor[1])))

    @defer.inlineCallbacks
    def close(self):
        """Say how far we read, end the session in order, close the channel."""
        self.closed = True
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        if self._ackCall is not None and self._ackCall.active():
            self._ackCall.cancel()
            self._ack()
        if self.session is not None:
            yield self.session.finish()
        if self.channel is not None:
            yield grpcbridge.closeChannel(self.channel)
