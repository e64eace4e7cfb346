"""
Who may call what: session tokens on the user RPCs, the cluster secret on
the cluster-internal ones.  The servicer functions are called in-process
with a call context carrying the metadata a real call would carry.
"""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist import buddy
from snstwist.core import errors
from snstwist.router import RouterService
from snstwist.rpc import auth
from snstwist.rpc import sns_pb2 as pb
from tests.fakes import FakeCallContext, FakeStream, secret, session
from tests.servers import serverParts

SECRET = "s"


def serverAs(test, role, secret=SECRET):
    """The parts of a server in C{role} ('master' or 'slave'), and its store."""
    service = serverParts(test, role, secret)
    service.node.login("alice")
    service.node.store.flush()
    return service, service.node.store


def login(test, service, store, user, password="pw"):
    d = service.api.login(pb.LoginRequest(user=user, password=password), FakeCallContext())
    store.flush()
    return test.successResultOf(d).token


def forgeries(test, service, store):
    """
    Tokens that must not let anyone act as alice: none, a made-up
    signature, alice's own token with one character changed, alice's token
    from a cluster with another secret, and bob's signature under alice's
    name.
    """
    alice = login(test, service, store, "alice")
    bob = login(test, service, store, "bob")
    other, otherStore = serverAs(test, "master", secret="another-cluster")
    foreign = login(test, other, otherStore, "alice")
    self_ = alice[:-1] + ("0" if alice[-1] != "0" else "1")
    bobsSignature = "alice" + bob[len("bob"):]
    published = auth.makeToken("snstwist-insecure-default-secret", "alice", 2 ** 40)
    return {
        "no token": FakeCallContext(),
        "empty token": session(""),
        "made-up signature": session("alice|%d|0||" % (2 ** 40,) + "0" * 64),
        "one character changed": session(self_),
        "signed by another cluster": session(foreign),
        "another user's signature": session(bobsSignature),
        "a name alone": session("alice"),
        "signed with the old published default": session(published),
    }


def userCalls(service):
    """Every RPC that acts as the caller, as a function of the call context."""
    return {
        "List": lambda ctx: service.api.list(pb.ListRequest(), ctx),
        "Follow": lambda ctx: service.api.follow(
            pb.FollowRequest(target="bob", request_id="r1"), ctx),
        "UnFollow": lambda ctx: service.api.unfollow(
            pb.FollowRequest(target="bob", request_id="r2"), ctx),
        "Post": lambda ctx: service.api.post(pb.PostRequest(text="forged", request_id="r3"), ctx),
        "History": lambda ctx: service.api.history(pb.HistoryRequest(), ctx),
        "Bidirectional_s_and_c": lambda ctx: service.api.session(ctx),
    }


class SessionTokenTests(SynchronousTestCase):
    def test_every_user_rpc_refuses_a_forged_token(self):
        """
        Each RPC that acts as a user refuses each forged token with
        UNAUTHENTICATED, and nothing is written.
        """
        service, store = serverAs(self, "master")
        tokens = forgeries(self, service, store)
        before = service.node.replica.snapshot()
        for rpc, call in userCalls(service).items():
            for name, ctx in tokens.items():
                with self.subTest(rpc=rpc, token=name):
                    e = self.assertRaises(errors.SNSError, call, ctx)
                    self.assertEqual(errors.statusFor(e)[0], errors.Status.UNAUTHENTICATED,
                                     "%s with %s" % (rpc, name))
        store.flush()
        self.assertEqual(service.node.replica.snapshot(), before)

    def test_a_genuine_token_acts_as_its_own_user_only(self):
        """Bob's token posts as bob, alice's as alice; each follows as itself."""
        service, store = serverAs(self, "master")
        alice = login(self, service, store, "alice")
        bob = login(self, service, store, "bob")
        d = service.api.post(pb.PostRequest(text="from bob", request_id="b1"), session(bob))
        store.flush()
        self.assertEqual(self.successResultOf(d).post.author, "bob")
        d = service.api.follow(pb.FollowRequest(target="bob", request_id="a1"), session(alice))
        store.flush()
        self.successResultOf(d)
        self.assertTrue(service.node.replica.isFollowing("alice", "bob"))
        self.assertFalse(service.node.replica.isFollowing("bob", "alice"))
        reply = service.api.list(pb.ListRequest(), session(bob))
        self.assertEqual(list(reply.followers), ["alice"])
        self.assertEqual(service.api.session(session(alice)).user, "alice")

    def test_login_hands_out_a_token_for_the_name_given(self):
        """A token from Login is accepted, and names the user who logged in."""
        service, store = serverAs(self, "master")
        token = login(self, service, store, "carol")
        self.assertEqual(auth.userOf(session(token), SECRET, now=0), "carol")

    def test_a_slave_serves_no_user_rpc(self):
        """Even with a genuine token, a slave answers UNAVAILABLE (not its master)."""
        master, store = serverAs(self, "master")
        token = login(self, master, store, "alice")
        slave, _ = serverAs(self, "slave")
        for rpc, call in userCalls(slave).items():
            with self.subTest(rpc=rpc):
                self.assertRaises(errors.NotMaster, call, session(token))
        self.assertRaises(errors.NotMaster, slave.api.login,
                          pb.LoginRequest(user="alice", password="pw"), FakeCallContext())


def wrongSecrets():
    return {"no secret": FakeCallContext(), "empty secret": secret(""),
            "wrong secret": secret("not-the-secret"), "a prefix of it": secret(SECRET[:-1]),
            "the secret and more": secret(SECRET + "x"),
            "a session token instead": session(auth.makeToken(SECRET, "alice", 2 ** 40))}


class GenuineTokensTests(SynchronousTestCase):
    """A token checked once is not checked again: what it says is remembered, not trusted more."""

    def test_a_genuine_token_is_checked_once(self):
        tokens = auth.GenuineTokens(SECRET)
        token = auth.makeToken(SECRET, "alice", 100)
        checked = []
        self.patch(auth, "readToken", lambda secret, t: checked.append(t) or "session")
        self.assertEqual([tokens.read(token), tokens.read(token)], ["session", "session"])
        self.assertEqual(checked, [token])

    def test_a_forged_token_is_refused_every_time(self):
        tokens = auth.GenuineTokens(SECRET)
        forged = auth.makeToken("another secret", "alice", 100)
        for _ in range(2):
            self.assertRaises(errors.NotLoggedIn, tokens.read, forged)
        self.assertRaises(errors.NotLoggedIn, tokens.read,
                          auth.makeToken(SECRET, "alice", 100)[:-1] + "0")

    def test_a_remembered_token_still_expires(self):
        tokens = auth.GenuineTokens(SECRET)
        call = session(auth.makeToken(SECRET, "alice", 100))
        self.assertEqual(auth.sessionOf(call, SECRET, 99, tokens=tokens).user, "alice")
        self.assertRaises(errors.NotLoggedIn, auth.sessionOf, call, SECRET, 100, tokens=tokens)

    def test_a_remembered_token_still_dies_with_its_password(self):
        tokens = auth.GenuineTokens(SECRET)
        call = session(auth.makeToken(SECRET, "alice", 100, (5, "vm1/1")))
        self.assertEqual(auth.sessionOf(call, SECRET, 0, lambda user: (5, "vm1/1"),
                                        tokens).user, "alice")
        self.assertRaises(errors.NotLoggedIn, auth.sessionOf, call, SECRET, 0,
                          lambda user: (6, "vm1/2"), tokens)

    def test_tokens_remembered_are_bounded(self):
        tokens = auth.GenuineTokens(SECRET)
        tokens.size = 3
        for n in range(10):
            tokens.read(auth.makeToken(SECRET, "u%d" % (n,), 100))
            self.assertLessEqual(len(tokens._genuine), 3)


class ClusterSecretTests(SynchronousTestCase):
    def assertRefused(self, call):
        for name, ctx in wrongSecrets().items():
            with self.subTest(secret=name):
                e = self.assertRaises(errors.SNSError, call, ctx)
                self.assertEqual(errors.statusFor(e)[0], errors.Status.PERMISSION_DENIED,
                                 name)

    def test_onetime_s_to_buddy_needs_the_secret(self):
        """A slave refuses updates from anyone without the secret, and applies none."""
        slave, _ = serverAs(self, "slave")
        update = pb.Update(origin="vm9.x", seq=1, time_us=1)
        update.user.name = "mallory"
        batch = pb.UpdateBatch(updates=[update])
        self.assertRefused(lambda ctx: slave.internal.onetimeSToBuddy(batch, ctx))
        self.assertNotIn("mallory", slave.node.replica.users)
        reply = slave.internal.onetimeSToBuddy(batch, secret(SECRET))
        self.assertEqual(reply.applied, 1)
        self.assertIn("mallory", slave.node.replica.users)

    def test_broadcast_posts_needs_the_secret(self):
        """A master opens no replication stream for a caller without the secret."""
        master, _ = serverAs(self, "master")
        self.assertRefused(master.internal.broadcastPosts)
        receiver = master.internal.broadcastPosts(secret(SECRET))
        stream = FakeStream()
        receiver.makeConnection(stream)
        self.assertEqual(stream.kinds(), ["hello"])
        receiver.connectionLost(None)

    def test_buddy_connection_needs_the_secret(self):
        """A master opens no buddy stream for a caller without the secret."""
        master, _ = serverAs(self, "master")
        self.assertRefused(master.internal.buddyConnection)
        self.assertIsInstance(master.internal.buddyConnection(secret(SECRET)), buddy.MasterLink)

    def test_bidirectional_r_and_s_needs_the_secret(self):
        """A router registers no server that lacks the secret."""
        router = RouterService("127.0.0.1:0", SECRET, clock=Clock())
        self.assertRefused(router.serverLink)
        self.assertIsNotNone(router.serverLink(secret(SECRET)))

    def test_digest_needs_the_secret(self):
        """What a VM holds (post file names are user names) is for the cluster's operators."""
        master, _ = serverAs(self, "master")
        self.assertRefused(lambda ctx: master.internal.digest(pb.DigestRequest(), ctx))

    def test_status_needs_the_secret(self):
        """The router's view (pids, addresses, users online) is for the cluster's operators."""
        router = RouterService("127.0.0.1:0", SECRET, clock=Clock())
        self.assertRefused(lambda ctx: router.status(pb.StatusRequest(), ctx))
        self.assertEqual(list(router.status(pb.StatusRequest(), secret(SECRET)).servers), [])

    def test_the_secret_is_required_whatever_the_role(self):
        """A slave refuses the master's streams for lack of the secret first."""
        slave, _ = serverAs(self, "slave")
        self.assertRefused(slave.internal.broadcastPosts)
        self.assertRefused(slave.internal.buddyConnection)


class ServiceSecretTests(SynchronousTestCase):
    def test_the_server_checks_the_secret_it_was_given(self):
        """A server started with secret X refuses secret Y, however it was set."""
        service = serverParts(self, "master", secret="X")
        self.assertRaises(errors.PermissionDenied, service.internal.buddyConnection, secret("Y"))
        self.assertIsInstance(service.internal.buddyConnection(secret("X")), buddy.MasterLink)


class LoadSecretTests(SynchronousTestCase):
    """Where a process finds the cluster secret, and what it refuses."""

    def secretFile(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_the_file_is_read_and_stripped(self):
        path = self.secretFile("  0123456789abcdef\n")
        self.assertEqual(auth.loadSecret(path, environ={}), "0123456789abcdef")

    def test_the_file_wins_over_the_environment(self):
        path = self.secretFile("from-the-file-0123")
        self.assertEqual(auth.loadSecret(path, environ={"SNS_SECRET": "from-the-env-01234"}),
                         "from-the-file-0123")

    def test_without_a_file_the_environment_is_read(self):
        self.assertEqual(auth.loadSecret(None, environ={"SNS_SECRET": "from-the-env-01234"}),
                         "from-the-env-01234")

    def test_the_process_environment_is_the_default(self):
        self.patch(os, "environ", {"SNS_SECRET": "from-os-environ-0123"})
        self.assertEqual(auth.loadSecret(), "from-os-environ-0123")

    def test_no_secret_at_all_is_refused(self):
        self.assertRaises(auth.MissingSecret, auth.loadSecret, None, environ={})
        self.assertRaises(auth.MissingSecret, auth.loadSecret, None, environ={"SNS_SECRET": " "})

    def test_a_secret_of_16_characters_is_accepted_and_15_refused(self):
        self.assertEqual(auth.loadSecret(self.secretFile("x" * 16), environ={}), "x" * 16)
        self.assertRaises(auth.MissingSecret, auth.loadSecret, self.secretFile("x" * 15),
                          environ={})
        self.assertRaises(auth.MissingSecret, auth.loadSecret, None,
                          environ={"SNS_SECRET": "y" * 15})

    def test_an_unreadable_file_is_refused_with_its_name(self):
        e = self.assertRaises(auth.MissingSecret, auth.loadSecret, "/nonexistent/secret",
                              environ={"SNS_SECRET": "from-the-env-01234"})
        self.assertIn("/nonexistent/secret", str(e))


class OperatorViewTests(SynchronousTestCase):
    def test_a_slave_does_not_answer_digest(self):
        """Digest is a master's view of its VM: a slave says it is not the master."""
        slave, _ = serverAs(self, "slave")
        self.assertRaises(errors.NotMaster, slave.internal.digest, pb.DigestRequest(),
                          secret(SECRET))
