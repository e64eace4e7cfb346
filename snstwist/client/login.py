"""
The client's login on its master1: the channel to it, the password login
(first time) or the renewal of the session token (after a failover: no
password hashing on the way), and the token's renewal at half its life.
"""

import random

from twisted.internet.task import deferLater
from twisted.logger import Logger

from snstwist.client.errors import InvalidPassword
from snstwist.client.masters import CALL_TIMEOUT
from snstwist.core.backoff import backoffPolicy
from snstwist.core.errors import RemoteError, Status
from snstwist.rpc import auth, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg

log = Logger()

# A master shedding logins (password hashing is bounded) is asked again
# this many times in all.
LOGIN_TRIES = 7


class Login:
    """
    One user's login: C{channel(address)} makes a channel (with the
    client's TLS).  C{stub} and C{token} are those of the current master1.
    """

    def __init__(self, clock, user, password, channel, jitter=random.random):
        self.clock = clock
        self.user = user
        self.password = password
        self._makeChannel = channel
        self._backoff = backoffPolicy(0.1, 3.2, jitter=jitter)
        self.channel = None
        self.stub = None
        self.token = None
        self.closed = False
        self._renewal = None

    async def on(self, master):
        """Log in on C{master}: the L{pb.LoginReply}."""
        if self.channel is not None:
            await grpcbridge.closeChannel(self.channel)
        self.channel = self._makeChannel(master.address)
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
                if e.status != Status.RESOURCE_EXHAUSTED or attempt >= LOGIN_TRIES - 1:
                    raise
                # Too many logins at once: back off, then again.
                await deferLater(self.clock, self._backoff(attempt), lambda: None)
                attempt += 1
        self.newToken(reply)
        return reply

    def metadata(self):
        """What a call on the session says: its token."""
        return auth.sessionMetadata(self.token)

    def newToken(self, reply):
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
                            timeout=CALL_TIMEOUT, metadata=self.metadata())
        d.addCallbacks(self.newToken,
                       lambda f: log.info("renewing the session token failed: {why}",
                                          why=f.getErrorMessage()))

    def stopRenewing(self):
        """The client is closing: the token is not renewed any more."""
        self.closed = True
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()

    def close(self):
        """No more renewals; the channel closed.  Fires when it is."""
        self.stopRenewing()
        channel, self.channel = self.channel, None
        if channel is None:
            return None
        return grpcbridge.closeChannel(channel)
