"""
The attacks of an outsider on loopback, tried on real processes, each
refused with a clear status (issue 12): no default secret, operator views
that need the cluster's secret, no fake peer, no fake master, no logging in
as someone else, no token that outlives a password change.
"""

import io
import os

from twisted.internet import defer, reactor
from twisted.python.failure import Failure
from twisted.trial import unittest

from snstwist.client.client import Client, InvalidPassword
from snstwist.client.timeline import endOf
from snstwist.core import errors
from snstwist.rpc import auth, certs, grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from tests.processes import (
    DEADLINE,
    PASSWORD,
    SECRET,
    TWISTD,
    Cluster,
    childEnv,
    killServersUsing,
    spawn,
    waitUntil,
)
from tests.test_integration import inlineAsync


# What anyone could read in the source before issue 12: the default secret.
PUBLISHED_DEFAULT = "snstwist-insecure-default-secret"


def withoutSecret():
    env = childEnv()
    del env["SNS_SECRET"]
    return env


async def refusal(call):
    """The RemoteError a call fails with (the test fails if it succeeds)."""
    try:
        reply = await call
    except errors.RemoteError as e:
        return e
    raise AssertionError("the call succeeded: %r" % (reply,))


class NoDefaultSecretTests(unittest.TestCase):
    timeout = 60

    async def refusesToStart(self, args):
        child = spawn(self, TWISTD + args, env=withoutSecret())
        code = await child.ended
        self.assertNotEqual(code, 0)
        said = child.text + child.err.decode()
        self.assertIn("--secret-file", said)
        self.assertIn("SNS_SECRET", said)

    @inlineAsync
    async def test_router_without_a_secret_refuses_to_start_and_says_how_to_give_one(self):
        await self.refusesToStart(["sns-router", "--listen", "127.0.0.1:0"])

    @inlineAsync
    async def test_server_without_a_secret_refuses_to_start_and_says_how_to_give_one(self):
        data = os.path.abspath(self.mktemp())
        await self.refusesToStart(["sns-server", "--router", "127.0.0.1:1", "--vm", "vm1",
                                   "--data", data])
        self.assertFalse(os.path.exists(os.path.join(data, "sns.sqlite3")))

    @inlineAsync
    async def test_a_short_secret_is_refused(self):
        """A secret of a few characters is as guessable as a published one."""
        env = childEnv(SNS_SECRET="s3cret")
        child = spawn(self, TWISTD + ["sns-router", "--listen", "127.0.0.1:0"], env=env)
        self.assertNotEqual(await child.ended, 0)
        self.assertIn("at least 16", child.text + child.err.decode())


def withoutTLS():
    env = childEnv()
    for name in ("SNS_TLS_CA", "SNS_TLS_CERT", "SNS_TLS_KEY"):
        del env[name]
    return env


class TLSTests(unittest.TestCase):
    timeout = 120

    @inlineAsync
    async def test_a_router_without_tls_refuses_to_start_and_says_how_to_get_it(self):
        child = spawn(self, TWISTD + ["sns-router", "--listen", "127.0.0.1:0"],
                      env=withoutTLS())
        self.assertNotEqual(await child.ended, 0)
        said = child.text + child.err.decode()
        for words in ("--tls-cert", "sns-admin certs", "--insecure"):
            self.assertIn(words, said)

    @inlineAsync
    async def test_sns_client_without_the_ca_says_how_to_give_it(self):
        child = spawn(self, ["-m", "snstwist.commands.cli", "-r", "127.0.0.1:1", "-u", "alice"],
                      env=withoutTLS())
        self.assertEqual(await child.ended, 2)
        self.assertIn("--tls-ca", child.err.decode())

    @inlineAsync
    async def test_sns_client_given_a_ca_file_that_is_no_certificate_says_which(self):
        """
        A --tls-ca file that is not a PEM certificate (a key given for it,
        say) is a usage error naming the option, before any call: gRPC
        would say only that it could not make a handshaker.
        """
        bad = os.path.abspath(self.mktemp())
        with open(bad, "wb") as f:
            f.write(b"not a certificate\n")
        child = spawn(self, ["-m", "snstwist.commands.cli", "-r", "127.0.0.1:1", "-u", "alice",
                             "--tls-ca", bad], env=withoutTLS())
        self.assertEqual(await child.ended, 2)
        said = child.err.decode()
        self.assertIn("--tls-ca: not a PEM certificate", said)
        self.assertIn("sns-admin certs", said)
        self.assertNotIn("handshaker", said)

    @inlineAsync
    async def test_nobody_talks_to_the_cluster_in_clear_or_without_trusting_its_ca(self):
        """
        A plain-text channel, or one that trusts another CA, gets no answer
        from the router: the connection itself fails (UNAVAILABLE).
        """
        cluster = await Cluster(self, vms=1).start()
        other = os.path.abspath(self.mktemp())
        otherCA, _ = certs.makeCA(other)
        for tls in (None, grpcbridge.TLS.load(otherCA)):
            channel = grpcbridge.channel(cluster.router, tls)
            self.addCleanup(grpcbridge.closeChannel, channel)
            e = await refusal(grpcbridge.call(
                pbg.RouterStub(channel).Status, pb.StatusRequest(), timeout=10,
                metadata=auth.secretMetadata(SECRET)))
            self.assertEqual(e.status, errors.Status.UNAVAILABLE)

    def test_sns_admin_certs_makes_a_ca_and_a_certificate_it_signed(self):
        from cryptography import x509

        from snstwist.commands import admin
        directory = os.path.abspath(self.mktemp())
        out = io.BytesIO()
        self.assertEqual(admin.main(["certs", "--dir", directory, "--name", "vm1",
                                     "--host", "10.0.0.11", "--host", "vm1.example"],
                                    stdout=out), 0)
        self.assertIn(b"--tls-cert", out.getvalue())
        with open(os.path.join(directory, "ca.pem"), "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(directory, "vm1.pem"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn(grpcbridge.CLUSTER_NAME, names.get_values_for_type(x509.DNSName))
        self.assertIn("vm1.example", names.get_values_for_type(x509.DNSName))
        self.assertEqual(os.stat(os.path.join(directory, "vm1.key")).st_mode & 0o077, 0)
        self.assertEqual(os.stat(os.path.join(directory, "ca.key")).st_mode & 0o077, 0)


class ClusterAttackTests(unittest.TestCase):
    """One cluster, attacked from outside by someone without its secret."""

    timeout = 120

    @inlineAsync
    async def test_status_without_the_secret_is_permission_denied(self):
        cluster = await Cluster(self, vms=1).start()
        channel = grpcbridge.channel(cluster.router)
        self.addCleanup(grpcbridge.closeChannel, channel)
        stub = pbg.RouterStub(channel)
        for metadata in (None, auth.secretMetadata(PUBLISHED_DEFAULT)):
            e = await refusal(grpcbridge.call(stub.Status, pb.StatusRequest(), timeout=10,
                                              metadata=metadata))
            self.assertEqual(e.status, errors.Status.PERMISSION_DENIED)
            self.assertIn("secret", e.message)

    @inlineAsync
    async def test_digest_without_the_secret_is_permission_denied(self):
        cluster = await Cluster(self, vms=1).start()
        master = (await cluster.masters())["vm1"]
        channel = grpcbridge.channel(master.address)
        self.addCleanup(grpcbridge.closeChannel, channel)
        stub = pbg.ClusterStub(channel)
        for metadata in (None, auth.secretMetadata(PUBLISHED_DEFAULT)):
            e = await refusal(grpcbridge.call(stub.Digest, pb.DigestRequest(), timeout=10,
                                              metadata=metadata))
            self.assertEqual(e.status, errors.Status.PERMISSION_DENIED)

    @inlineAsync
    async def test_sns_status_and_sns_compare_need_the_secret_file(self):
        """Without a secret they say how to give one; with --secret-file they answer."""
        cluster = await Cluster(self, vms=1).start()
        secretFile = os.path.join(cluster.base, "secret")
        with open(secretFile) as f:
            self.assertEqual(f.read().strip(), SECRET)
        for module in ("snstwist.commands.status", "snstwist.commands.compare"):
            refused = spawn(self, ["-m", module, "-r", cluster.router], env=withoutSecret())
            self.assertEqual(await refused.ended, 2)
            self.assertIn("--secret-file", refused.err.decode())
            answered = spawn(self, ["-m", module, "-r", cluster.router,
                                    "--secret-file", secretFile], env=withoutSecret())
            self.assertEqual(await answered.ended, 0, answered.err.decode())
        self.assertIn("vm1", answered.text)

    @inlineAsync
    async def test_a_fake_peer_can_not_inject_posts(self):
        """
        BroadcastPosts with no secret, or the published default, is refused,
        even from a process with a certificate of the cluster's CA: the
        secret is a second factor on the cluster port.
        """
        cluster = await Cluster(self, vms=1).start()
        master = (await cluster.masters())["vm1"]
        for metadata in ((), auth.secretMetadata(PUBLISHED_DEFAULT)):
            ended = defer.Deferred()
            fake = _FakePeer(ended)
            channel = grpcbridge.channel(master.peer_address)
            self.addCleanup(grpcbridge.closeChannel, channel)
            grpcbridge.openStream(pbg.ClusterStub(channel).BroadcastPosts, fake,
                                  metadata=metadata)
            reason = await ended
            self.assertEqual(reason.status, errors.Status.PERMISSION_DENIED, reason.message)
        self.assertEqual(cluster.postFiles("vm1"), {})

    @inlineAsync
    async def test_a_fake_master_can_not_register_with_the_router(self):
        """
        Bidirectional_r_and_s with the published default secret is refused
        (on the router's cluster port, with a certificate of the cluster's CA).
        """
        cluster = await Cluster(self, vms=1).start()
        ended = defer.Deferred()
        fake = _FakeMaster(ended)
        channel = grpcbridge.channel(cluster.routerPeer)
        self.addCleanup(grpcbridge.closeChannel, channel)
        grpcbridge.openStream(pbg.RouterStub(channel).Bidirectional_r_and_s, fake,
                              metadata=auth.secretMetadata(PUBLISHED_DEFAULT))
        reason = await ended
        self.assertEqual(reason.status, errors.Status.PERMISSION_DENIED, reason.message)
        status = await cluster.status()
        self.assertNotIn("fake", {s.vm for s in status.servers})


class AccountAttackTests(unittest.TestCase):
    """Passwords and tokens, on a real two-VM cluster."""

    timeout = 120

    @inlineAsync
    async def test_logging_in_as_someone_else_needs_their_password(self):
        """
        alice's account is made with her password; logging in as alice with
        another one prints one line and exits 1; her own works.
        """
        cluster = await Cluster(self, vms=2).start()
        alice = await cluster.run("alice", "LIST\n")
        self.assertEqual(alice.lines[0], "Command completed successfully", alice.err)
        mallory = await cluster.run("alice", "LIST\nFOLLOW bob\n", password="guess")
        self.assertEqual((mallory.lines, mallory.exitCode),
                         (["Command failed with invalid password"], 1))
        again = await cluster.run("alice", "LIST\n")
        self.assertEqual((again.lines[0], again.exitCode),
                         ("Command completed successfully", 0))

    @inlineAsync
    async def test_a_wrong_password_is_refused_with_no_command_typed(self):
        """
        sns-client logs in as it starts: with an empty stdin, a wrong
        password still prints its one line and exits 1; the right one
        prints nothing and exits 0.
        """
        cluster = await Cluster(self, vms=1).start()
        made = await cluster.run("alice", "")
        self.assertEqual((made.lines, made.exitCode), ([], 0), made.err)
        wrong = await cluster.run("alice", "", password="guess")
        self.assertEqual((wrong.lines, wrong.exitCode),
                         (["Command failed with invalid password"], 1))

    @inlineAsync
    async def test_a_token_forged_with_the_published_default_is_unauthenticated(self):
        cluster = await Cluster(self, vms=1).start()
        await cluster.run("alice", "LIST\n")
        master = (await cluster.masters())["vm1"]
        channel = grpcbridge.channel(master.address)
        self.addCleanup(grpcbridge.closeChannel, channel)
        forged = auth.makeToken(PUBLISHED_DEFAULT, "alice", 2 ** 40)
        e = await refusal(grpcbridge.call(pbg.SNSStub(channel).Post,
                                          pb.PostRequest(text="forged", request_id="f"),
                                          timeout=10, metadata=auth.sessionMetadata(forged)))
        self.assertEqual(e.status, errors.Status.UNAUTHENTICATED)
        self.assertEqual(cluster.postFiles("vm1"), {})

    @inlineAsync
    async def test_a_timeline_ends_with_its_token_unless_renewed_on_its_connection(self):
        """
        On a master whose tokens last 6 s, alice opens two sessions with
        one token: one on her own connection, where she renews the token
        whenever the master heartbeats (every 2 s), and one on another
        connection (as whoever copied the token would).  The copy ends
        UNAUTHENTICATED when the token expires; hers goes on past that
        moment, under the renewed tokens.
        """
        cluster = await Cluster(self, vms=1).start()
        data = os.path.abspath(self.mktemp())
        # Last of all (cleanups run last first): the master's SIGTERM stops
        # its slave and spare; should it be SIGKILLed instead (not stopped
        # in time), its slave takes over and spawns: kill whatever runs on
        # the data, by pid.
        self.addCleanup(killServersUsing, data)
        spawn(self, TWISTD + ["--logfile=" + data + ".log", "sns-server",
                              "--router", cluster.routerPeer, "--vm", "vm9",
                              "--listen", "127.0.0.9:0", "--data", data,
                              "--token-lifetime", "6"], env=childEnv())

        async def vm9():
            return (await cluster.masters()).get("vm9")

        master = await waitUntil(vm9, "vm9's master to register")
        mine = grpcbridge.channel(master.address)
        self.addCleanup(grpcbridge.closeChannel, mine)
        # Other credentials (no client certificate): another connection.
        other = grpcbridge.channel(master.address, grpcbridge.TLS(grpcbridge.defaultTLS().ca))
        self.addCleanup(grpcbridge.closeChannel, other)
        login = await grpcbridge.call(pbg.SNSStub(mine).Login,
                                      pb.LoginRequest(user="alice", password=PASSWORD),
                                      timeout=10)
        tokens, failed = [login], []

        def renew():
            d = grpcbridge.call(pbg.SNSStub(mine).Login, pb.LoginRequest(user="alice"),
                                timeout=10, metadata=auth.sessionMetadata(tokens[-1].token))
            d.addCallbacks(tokens.append, failed.append)

        hers, copied = _Session(renew), _Session()
        for channel, session in ((mine, hers), (other, copied)):
            stream = grpcbridge.openStream(pbg.SNSStub(channel).Bidirectional_s_and_c,
                                           session, metadata=auth.sessionMetadata(login.token))
            self.addCleanup(stream.abort)
        reason = await copied.ended
        self.assertEqual(reason.status, errors.Status.UNAUTHENTICATED)
        self.assertIn("expired", reason.message)
        # The master checks every session in one pass: hers, had the
        # renewals not carried it on, would have ended in the pass that
        # ended the copy, and heard nothing more.
        await hers.heard(len(hers.received) + 1)
        self.assertFalse(hers.ended.called)
        self.assertEqual(failed, [])
        self.assertGreater(tokens[-1].expires, login.expires)

    @inlineAsync
    async def test_a_password_change_revokes_every_older_token_on_every_vm(self):
        """
        alice changes her password from one client: her other client's
        live session ends, its old token is refused by both VMs' masters,
        the old password is refused and the new one works.
        """
        cluster = await Cluster(self, vms=2).start()
        other = Client([cluster.router], "alice", PASSWORD, clock=reactor)
        await other.connect()
        self.addCleanup(other.close)
        oldToken = other.token
        changer = Client([cluster.router], "alice", PASSWORD, clock=reactor)
        await changer.connect()
        self.addCleanup(changer.close)
        ended = defer.Deferred()
        # Its session's end is told here instead of starting a failover.
        other.session.lost = lambda session, reason: ended.called or ended.callback(
            reason.value)
        await changer.changePassword("a brand new password")
        reason = await ended
        self.assertEqual(reason.status, errors.Status.UNAUTHENTICATED)
        self.assertIn("password was changed", reason.message)
        await changer.list()  # the changer's own session goes on

        async def refusedEverywhere():
            codes = []
            for master in (await cluster.masters()).values():
                channel = grpcbridge.channel(master.address)
                try:
                    await grpcbridge.call(pbg.SNSStub(channel).List, pb.ListRequest(),
                                          timeout=10, metadata=auth.sessionMetadata(oldToken))
                    codes.append(None)
                except errors.RemoteError as e:
                    codes.append(e.status)
                finally:
                    await grpcbridge.closeChannel(channel)
            return codes == [errors.Status.UNAUTHENTICATED] * 2

        await waitUntil(refusedEverywhere, "both VMs to refuse the old token")
        stale = Client([cluster.router], "alice", PASSWORD, clock=reactor)
        self.addCleanup(stale.close)
        with self.assertRaises(InvalidPassword):
            await stale.connect()
        fresh = await cluster.run("alice", "LIST\n", password="a brand new password")
        self.assertEqual(fresh.lines[0], "Command completed successfully", fresh.err)

    @inlineAsync
    async def test_the_password_command_changes_the_password(self):
        """PASSWORD, then the new password on the next line, from a pipe."""
        cluster = await Cluster(self, vms=1).start()
        change = await cluster.run("carol", "PASSWORD\nsecond password\nLIST\n")
        self.assertEqual(change.lines[:2], ["Command completed successfully"] * 2, change.err)
        self.assertEqual(change.exitCode, 0)
        old = await cluster.run("carol", "LIST\n")
        self.assertEqual((old.lines, old.exitCode),
                         (["Command failed with invalid password"], 1))
        new = await cluster.run("carol", "LIST\n", password="second password")
        self.assertEqual(new.lines[0], "Command completed successfully")


class _Ending:
    def __init__(self, ended):
        self.ended = ended

    def messageReceived(self, message):
        pass

    def connectionLost(self, reason):
        self.ended.callback(reason.value if reason is not None else None)


class _Session(_Ending):
    """
    A client's session stream that answers each message with a heartbeat
    (so it is never cut off as silent), and calls C{onMessage()};
    C{heard(n)} fires once it has received C{n} messages, and fails if the
    stream ends first.  As sns-client does, it ends for the reason the
    server's farewell gives, if one came (its heartbeat answering the
    farewell may race the status, which grpc then reports as INTERNAL).
    """

    def __init__(self, onMessage=lambda: None):
        _Ending.__init__(self, defer.Deferred())
        self.onMessage = onMessage
        self.received = []
        self.waiting = []
        self.farewell = None

    def makeConnection(self, stream):
        self.stream = stream

    def messageReceived(self, message):
        if message.WhichOneof("kind") == "end":
            self.farewell = message.end
            return
        self.received.append(message)
        self.stream.send(pb.ClientMessage(heartbeat=pb.Heartbeat()))
        self.onMessage()
        for n, d in list(self.waiting):
            if len(self.received) >= n:
                self.waiting.remove((n, d))
                d.callback(None)

    def connectionLost(self, reason):
        if self.farewell is not None:
            reason = Failure(endOf(self.farewell))
        _Ending.connectionLost(self, reason)
        for _, d in self.waiting:
            d.errback(AssertionError("the session ended: %s" % (reason,)))
        self.waiting = []

    def heard(self, n):
        if len(self.received) >= n:
            return defer.succeed(None)
        if self.ended.called:
            return defer.fail(AssertionError("the session ended"))
        d = defer.Deferred()
        self.waiting.append((n, d))
        return d.addTimeout(DEADLINE, reactor)


class _FakePeer(_Ending):
    """
    A would-be peer VM.  It sends nothing: the stream is refused as it
    opens, before the server reads a message (a message written while the
    refusal is on its way makes grpc end the call INTERNAL instead, which
    would hide the status this test is about).
    """

    def makeConnection(self, stream):
        pass


class _FakeMaster(_FakePeer):
    """A would-be master (refused before its hello, like a fake peer)."""


class CheckPemTests(unittest.SynchronousTestCase):
    """L{certs.checkPem}: which of the three files is not what it must be."""

    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        ca, caKey = certs.makeCA(directory)
        cert, key = certs.makeNode(directory, "vm1", ca=ca, caKey=caKey)
        self.files = {}
        for name, path in (("ca", ca), ("cert", cert), ("key", key)):
            with open(path, "rb") as f:
                self.files[name] = f.read()

    def test_the_clusters_own_files_pass(self):
        certs.checkPem(self.files["ca"], self.files["cert"], self.files["key"])
        certs.checkPem(self.files["ca"])

    def test_each_wrong_file_is_named(self):
        ca, cert, key = self.files["ca"], self.files["cert"], self.files["key"]
        for given, option in (((key, None, None), "--tls-ca"),
                              ((b"", None, None), "--tls-ca"),
                              ((ca, key, key), "--tls-cert"),
                              ((ca, cert, cert), "--tls-key"),
                              ((ca, cert, b"\xff" * 40), "--tls-key")):
            e = self.assertRaises(ValueError, certs.checkPem, *given)
            self.assertTrue(str(e).startswith(option + ": "), (given, str(e)))
