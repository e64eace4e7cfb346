"""
Passwords and the rates of trying them: argon2id off the reactor, token
buckets, failed logins slowed per user and per address, tokens that end.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors, limits
from snstwist.rpc import auth
from snstwist.rpc import sns_pb2 as pb
from snstwist.server.passwords import FailedLogins, Hasher, TokenBuckets
from tests.fakes import FakeCallContext, session
from tests.test_auth import serverAs


class HasherTests(unittest.TestCase):
    def setUp(self):
        self.hasher = Hasher()
        self.addCleanup(self.hasher.stop)

    @defer.inlineCallbacks
    def test_a_hash_is_argon2id_and_verifies_only_its_password(self):
        hashed = yield self.hasher.hash("hunter2")
        self.assertTrue(hashed.startswith("$argon2id$"))
        self.assertNotIn("hunter2", hashed)
        self.assertTrue((yield self.hasher.verify(hashed, "hunter2")))
        self.assertFalse((yield self.hasher.verify(hashed, "hunter3")))
        self.assertFalse((yield self.hasher.verify("not a hash", "hunter2")))
        self.assertFalse((yield self.hasher.verify("", "hunter2")))

    def test_past_the_queue_bound_hashing_is_refused_at_once(self):
        hasher = Hasher(queue=1)
        self.addCleanup(hasher.stop)
        first = hasher.hash("one")
        e = self.assertRaises(errors.Overloaded, hasher.hash, "two")
        self.assertEqual(errors.statusFor(e)[0], errors.Status.RESOURCE_EXHAUSTED)
        return first


class TokenBucketTests(SynchronousTestCase):
    def test_a_burst_then_the_rate(self):
        """BURST requests at once, then one per 1/RATE seconds."""
        clock = Clock()
        buckets = TokenBuckets(clock, rate=2.0, burst=3, what="posts")
        for _ in range(3):
            buckets.take("alice")
        e = self.assertRaises(errors.RateLimited, buckets.take, "alice")
        self.assertEqual(errors.statusFor(e)[0], errors.Status.RESOURCE_EXHAUSTED)
        buckets.take("bob")  # one user's flood is not another's
        clock.advance(0.5)
        buckets.take("alice")
        self.assertRaises(errors.RateLimited, buckets.take, "alice")
        clock.advance(100)
        for _ in range(3):
            buckets.take("alice")
        self.assertRaises(errors.RateLimited, buckets.take, "alice")

    def test_only_the_most_recent_keys_are_kept(self):
        clock = Clock()
        buckets = TokenBuckets(clock, rate=1.0, burst=1, what="posts", limit=2)
        for key in ("a", "b", "c"):
            buckets.take(key)
        self.assertEqual(list(buckets.buckets), ["b", "c"])


class FailedLoginTests(SynchronousTestCase):
    def test_each_failure_doubles_the_wait_for_the_user_and_the_address(self):
        clock = Clock()
        failed = FailedLogins(clock)
        failed.check("alice", "10.0.0.1")
        failed.failed("alice", "10.0.0.1")
        self.assertRaises(errors.RateLimited, failed.check, "alice", "10.0.0.2")
        self.assertRaises(errors.RateLimited, failed.check, "bob", "10.0.0.1")
        failed.check("bob", "10.0.0.2")
        clock.advance(limits.FAILED_LOGIN_DELAY)
        failed.check("alice", "10.0.0.1")
        failed.failed("alice", "10.0.0.1")
        clock.advance(limits.FAILED_LOGIN_DELAY)
        self.assertRaises(errors.RateLimited, failed.check, "alice", "10.0.0.1")
        clock.advance(limits.FAILED_LOGIN_DELAY)
        failed.check("alice", "10.0.0.1")
        failed.succeeded("alice", "10.0.0.1")
        failed.check("alice", "10.0.0.1")

    def test_the_wait_is_bounded(self):
        clock = Clock()
        failed = FailedLogins(clock)
        for _ in range(30):
            failed.failed("alice", "a")
        clock.advance(limits.FAILED_LOGIN_MAX_DELAY)
        failed.check("alice", "a")


def login(service, store, user, password, peer="ipv4:10.0.0.1:1"):
    ctx = FakeCallContext()
    ctx.peer = peer
    d = defer.maybeDeferred(service.api.login, pb.LoginRequest(user=user, password=password), ctx)
    store.flush()
    return d


class ServerLoginTests(SynchronousTestCase):
    def test_the_first_login_creates_the_account_and_later_ones_need_its_password(self):
        service, store = serverAs(self, "master")
        self.assertTrue(self.successResultOf(login(service, store, "dora", "pw1")).created)
        self.assertFalse(self.successResultOf(login(service, store, "dora", "pw1")).created)
        self.failureResultOf(login(service, store, "dora", "pw2", "ipv4:10.0.0.2:1"),
                             errors.WrongPassword)

    def test_a_failed_login_slows_the_next_attempt(self):
        service, store = serverAs(self, "master")
        login(service, store, "dora", "pw1")
        self.failureResultOf(login(service, store, "dora", "bad"), errors.WrongPassword)
        f = self.failureResultOf(login(service, store, "dora", "pw1"), errors.RateLimited)
        self.assertIn("failed logins", f.getErrorMessage())
        service.node.clock.advance(limits.FAILED_LOGIN_DELAY)
        self.successResultOf(login(service, store, "dora", "pw1"))

    def test_logins_from_one_address_are_rate_limited(self):
        service, store = serverAs(self, "master")
        for i in range(int(limits.LOGINS_PER_ADDRESS_BURST)):
            self.successResultOf(login(service, store, "u%d" % i, "pw"))
        self.failureResultOf(login(service, store, "late", "pw"), errors.RateLimited)
        self.successResultOf(login(service, store, "late", "pw", "ipv4:10.0.0.9:1"))

    def test_an_empty_password_is_invalid(self):
        service, store = serverAs(self, "master")
        self.failureResultOf(login(service, store, "dora", ""), errors.InvalidPassword)

    def test_posts_per_user_are_rate_limited(self):
        service, store = serverAs(self, "master")
        token = self.successResultOf(login(service, store, "dora", "pw")).token
        for i in range(int(limits.POSTS_PER_USER_RATE * limits.POSTS_PER_USER_BURST_SECONDS)):
            d = service.api.post(pb.PostRequest(text="p%d" % i, request_id="r%d" % i),
                             session(token))
            store.flush()
            self.successResultOf(d)
        e = self.assertRaises(errors.RateLimited, service.api.post,
                              pb.PostRequest(text="one too many", request_id="x"),
                              session(token))
        self.assertIn("posts", e.message)
        service.node.clock.advance(1 / limits.POSTS_PER_USER_RATE)
        service.api.post(pb.PostRequest(text="later", request_id="y"), session(token))

    def test_a_token_expires(self):
        service, store = serverAs(self, "master")
        token = self.successResultOf(login(service, store, "dora", "pw")).token
        service.api.list(pb.ListRequest(), session(token))
        service.node.clock.advance(limits.TOKEN_LIFETIME)
        e = self.assertRaises(errors.NotLoggedIn, service.api.list, pb.ListRequest(),
                              session(token))
        self.assertIn("expired", e.message)

    def test_a_live_token_is_renewed_without_the_password(self):
        service, store = serverAs(self, "master")
        token = self.successResultOf(login(service, store, "dora", "pw")).token
        service.node.clock.advance(limits.TOKEN_LIFETIME / 2)
        ctx = session(token)
        renewed = service.api.login(pb.LoginRequest(user="dora"), ctx)
        self.assertGreater(auth.readToken(service.admission.secret, renewed.token).expires,
                           auth.readToken(service.admission.secret, token).expires)
        self.assertRaises(errors.NotLoggedIn, service.api.login, pb.LoginRequest(user="eve"), ctx)

    def openSession(self, service, token, peer=FakeCallContext.peer):
        """A live session of C{token}'s user on connection C{peer}: (session, stream)."""
        from tests.fakes import FakeStream
        ctx = session(token)
        ctx.peer = peer
        live = service.api.session(ctx)
        stream = FakeStream()
        live.makeConnection(stream)
        return live, stream

    def shortToken(self, service, user, seconds):
        """A token of C{user} (logged in already) that expires in C{seconds}."""
        return auth.makeToken(service.admission.secret, user,
                              int(service.node.clock.seconds() + seconds),
                              service.admission.generation(user))

    def talk(self, service, sessions, seconds):
        """C{seconds} go by, in which the clients of C{sessions} heartbeat every second."""
        for _ in range(int(seconds)):
            for live in sessions:
                live.messageReceived(pb.ClientMessage(heartbeat=pb.Heartbeat()))
            service.node.clock.advance(1)

    def test_a_live_session_ends_when_its_token_expires(self):
        """
        The timeline stream of a token that expires is ended within a
        heartbeat, UNAUTHENTICATED (errors.NotLoggedIn) saying why: what the
        client answers by logging in again.
        """
        service, store = serverAs(self, "master")
        self.successResultOf(login(service, store, "dora", "pw"))
        live, stream = self.openSession(service, self.shortToken(service, "dora", 20))
        self.talk(service, [live], 19)
        self.assertFalse(stream.aborted)
        self.talk(service, [live], 1 + limits.SESSION_HEARTBEAT)
        self.assertTrue(stream.aborted)
        self.assertIsInstance(stream.reason, errors.NotLoggedIn)
        self.assertIn("expired", stream.reason.message)
        self.assertEqual(errors.statusFor(stream.reason)[0], errors.Status.UNAUTHENTICATED)
        self.assertEqual(service.sessions.count(), 0)

    def test_a_renewal_on_the_same_connection_keeps_its_session(self):
        """
        A client renews its token on the connection of its timeline: that
        session goes on under the new token.  One opened elsewhere with the
        old token (a copied token) still ends with the old one.
        """
        service, store = serverAs(self, "master")
        self.successResultOf(login(service, store, "dora", "pw"))
        token = self.shortToken(service, "dora", 20)
        mine, myStream = self.openSession(service, token, "ipv4:127.0.0.1:5555")
        copied, copiedStream = self.openSession(service, token, "ipv4:10.6.6.6:4242")
        self.talk(service, [mine, copied], 10)
        renewal = session(token)
        renewal.peer = "ipv4:127.0.0.1:5555"
        renewed = service.api.login(pb.LoginRequest(user="dora"), renewal)
        self.talk(service, [mine, copied], 10 + limits.SESSION_HEARTBEAT)
        self.assertTrue(copiedStream.aborted)
        self.assertIn("expired", copiedStream.reason.message)
        self.assertFalse(myStream.aborted)
        self.assertEqual(mine.expires, renewed.expires)

    def test_a_password_change_revokes_older_tokens_and_sessions(self):
        service, store = serverAs(self, "master")
        old = self.successResultOf(login(service, store, "dora", "pw")).token
        from tests.fakes import FakeStream
        live = service.api.session(session(old))
        stream = FakeStream()
        live.makeConnection(stream)
        d = service.api.password(pb.PasswordRequest(user="dora", old_password="pw",
                                                new_password="pw2", request_id="c1"),
                             FakeCallContext())
        store.flush()
        new = self.successResultOf(d).token
        self.assertTrue(stream.aborted)
        e = self.assertRaises(errors.NotLoggedIn, service.api.list, pb.ListRequest(), session(old))
        self.assertIn("password was changed", e.message)
        service.api.list(pb.ListRequest(), session(new))
        self.failureResultOf(login(service, store, "dora", "pw", "ipv4:10.0.0.3:1"),
                             errors.WrongPassword)

    def test_a_password_change_needs_the_old_password(self):
        service, store = serverAs(self, "master")
        login(service, store, "dora", "pw")
        d = defer.maybeDeferred(service.api.password, pb.PasswordRequest(
            user="dora", old_password="guess", new_password="mine"), FakeCallContext())
        self.failureResultOf(d, errors.WrongPassword)
