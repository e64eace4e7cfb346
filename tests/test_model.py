"""
The bounds on what a client or a peer may send, each accepted exactly at the
bound and refused one past it (DESIGN: usernames 1-32 of [A-Za-z0-9_.-],
posts 1-1000 characters of UTF-8, request ids bounded), at the RPC surface
and where peer updates enter.
"""

import string

from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors
from snstwist.core.model import FollowChange, Post, ReadMark, Update, parseUpdateId, updateId
from snstwist.rpc import sns_pb2 as pb
from snstwist.storage.writes import recordRow
from tests.fakes import FakeCallContext, session
from tests.test_auth import login, serverAs

USERNAME_CHARS = string.ascii_letters + string.digits + "_.-"


def assertInvalid(test, call, *args):
    """C{call(*args)} is refused with INVALID_ARGUMENT."""
    e = test.assertRaises(errors.SNSError, call, *args)
    test.assertEqual(errors.statusFor(e)[0], errors.Status.INVALID_ARGUMENT, e.message)
    return e


class UsernameTests(SynchronousTestCase):
    def setUp(self):
        self.service, self.store = serverAs(self, "master")
        self.api = self.service.api

    def login(self, name):
        d = self.api.login(pb.LoginRequest(user=name, password="pw"), FakeCallContext())
        self.store.flush()
        return self.successResultOf(d)

    def test_a_name_of_32_characters_is_accepted(self):
        self.assertTrue(self.login("a" * 32).created)
        self.assertIn("a" * 32, self.service.node.replica.users)

    def test_a_name_of_33_characters_is_refused(self):
        assertInvalid(self, self.api.login, pb.LoginRequest(user="a" * 33, password="pw"),
                      FakeCallContext())
        self.assertNotIn("a" * 33, self.service.node.replica.users)

    def test_a_name_of_one_character_is_accepted(self):
        self.assertTrue(self.login("z").created)

    def test_an_empty_name_is_refused(self):
        assertInvalid(self, self.api.login, pb.LoginRequest(user="", password="pw"),
                      FakeCallContext())

    def test_every_allowed_character_is_accepted(self):
        """Letters, digits, underscore, dot and dash, anywhere in the name."""
        for start in range(0, len(USERNAME_CHARS), 32):
            name = USERNAME_CHARS[start:start + 32]
            self.assertTrue(self.login(name).created, name)
        for c in "_.-":
            self.assertTrue(self.login("x" + c).created, c)
            self.assertTrue(self.login(c + c).created, c)

    def test_characters_outside_the_set_are_refused(self):
        """Spaces, separators, non-ASCII letters and digits, a trailing newline."""
        for name in ("a b", "a/b", "a:b", "a@b", "caf\u00e9", "\u0661", "alice\n", "\nalice",
                     "a\x00", "a+b", "\u212a"):
            with self.subTest(name=name):
                assertInvalid(self, self.api.login, pb.LoginRequest(user=name, password="pw"),
                              FakeCallContext())
        self.assertEqual(self.service.node.replica.users, {"alice"})

    def test_a_follow_target_is_checked_like_a_name(self):
        """FOLLOW of a 33-character or ill-formed name is invalid, not 'unknown user'."""
        token = login(self, self.service, self.store, "alice")
        for target in ("b" * 33, "", "bo b"):
            assertInvalid(self, self.api.follow,
                          pb.FollowRequest(target=target, request_id="f"), session(token))
            assertInvalid(self, self.api.unfollow,
                          pb.FollowRequest(target=target, request_id="u"), session(token))


class PostTextTests(SynchronousTestCase):
    def setUp(self):
        self.service, self.store = serverAs(self, "master")
        self.api = self.service.api
        self.token = login(self, self.service, self.store, "alice")

    def post(self, text, rid="r"):
        d = self.api.post(pb.PostRequest(text=text, request_id=rid), session(self.token))
        self.store.flush()
        return self.successResultOf(d).post

    def posts(self):
        return [p.text for p in self.service.node.replica.postsBy("alice")]

    def test_a_post_of_1000_characters_is_accepted(self):
        self.assertEqual(self.post("x" * 1000).text, "x" * 1000)

    def test_a_post_of_1001_characters_is_refused_and_not_stored(self):
        assertInvalid(self, self.api.post, pb.PostRequest(text="x" * 1001, request_id="r"),
                      session(self.token))
        self.assertEqual(self.posts(), [])

    def test_the_bound_counts_characters_not_bytes(self):
        """1000 two-byte and 1000 four-byte characters are within the bound."""
        self.assertEqual(self.post("\u00e9" * 1000, "r1").text, "\u00e9" * 1000)
        self.assertEqual(self.post("\U0001f600" * 1000, "r2").text, "\U0001f600" * 1000)
        assertInvalid(self, self.api.post,
                      pb.PostRequest(text="\u00e9" * 1001, request_id="r3"), session(self.token))
        self.assertEqual(len(self.posts()), 2)

    def test_a_post_of_one_character_is_accepted(self):
        self.assertEqual(self.post("x").text, "x")

    def test_an_empty_post_is_refused(self):
        assertInvalid(self, self.api.post, pb.PostRequest(text="", request_id="r"),
                      session(self.token))
        self.assertEqual(self.posts(), [])


class RequestIdTests(SynchronousTestCase):
    def setUp(self):
        self.service, self.store = serverAs(self, "master")
        self.api = self.service.api
        self.token = login(self, self.service, self.store, "alice")

    def test_a_request_id_of_64_characters_is_accepted(self):
        d = self.api.post(pb.PostRequest(text="hi", request_id="r" * 64), session(self.token))
        self.store.flush()
        self.assertEqual(self.successResultOf(d).post.text, "hi")

    def test_a_request_id_of_65_characters_is_refused(self):
        for write in (self.api.post, self.api.follow, self.api.unfollow):
            request = (pb.PostRequest(text="hi", request_id="r" * 65) if write == self.api.post
                       else pb.FollowRequest(target="alice", request_id="r" * 65))
            assertInvalid(self, write, request, session(self.token))
        self.assertEqual(self.service.node.replica.postsBy("alice"), [])


def peerPost(text="hi", author="bob", origin="vm2.x", seq=1):
    u = pb.Update(origin=origin, seq=seq, time_us=5)
    u.post.CopyFrom(pb.Post(id="%s/%d" % (origin, seq), author=author, time_us=5, text=text))
    return u


class PeerUpdateTests(SynchronousTestCase):
    """A peer's update is held to the same bounds as a client's write."""

    def test_a_peer_post_at_the_bound_is_accepted(self):
        self.assertEqual(Update.fromProto(peerPost("x" * 1000)).post.text, "x" * 1000)
        self.assertEqual(Update.fromProto(peerPost(author="b" * 32)).post.author, "b" * 32)

    def test_a_peer_post_past_the_bound_is_refused(self):
        assertInvalid(self, Update.fromProto, peerPost("x" * 1001))
        assertInvalid(self, Update.fromProto, peerPost(""))
        assertInvalid(self, Update.fromProto, peerPost(author="b" * 33))

    def test_a_peer_user_or_follow_with_a_bad_name_is_refused(self):
        u = pb.Update(origin="vm2.x", seq=1, time_us=5)
        u.user.name = "b" * 33
        assertInvalid(self, Update.fromProto, u)
        u = pb.Update(origin="vm2.x", seq=1, time_us=5)
        u.follow.follower, u.follow.followee, u.follow.following = "bob", "a b", True
        assertInvalid(self, Update.fromProto, u)

    def test_an_update_without_origin_or_sequence_is_refused(self):
        assertInvalid(self, Update.fromProto, peerPost(origin=""))
        assertInvalid(self, Update.fromProto, peerPost(seq=0))
        self.assertEqual(Update.fromProto(peerPost(seq=1)).seq, 1)

    def test_a_post_whose_id_is_not_its_update_is_refused(self):
        u = peerPost()
        u.post.id = "vm2.x/2"
        assertInvalid(self, Update.fromProto, u)

    def test_an_update_with_no_change_is_refused(self):
        assertInvalid(self, Update.fromProto, pb.Update(origin="vm2.x", seq=1, time_us=5))

    def test_posts_are_ordered_by_time_then_id(self):
        a = Post(id="vm1.x/2", author="bob", time_us=5, text="a")
        b = Post(id="vm1.x/10", author="bob", time_us=5, text="b")
        c = Post(id="vm1.x/1", author="bob", time_us=6, text="c")
        self.assertEqual(sorted([c, a, b], key=lambda p: p.key), [b, a, c])


class UpdateIdTests(SynchronousTestCase):
    def test_an_update_id_is_its_origin_and_sequence_number(self):
        self.assertEqual(updateId("vm1.a1b2", 12), "vm1.a1b2/12")
        self.assertEqual(parseUpdateId("vm1.a1b2/12"), ("vm1.a1b2", 12))

    def test_an_origin_is_a_vm_name_and_an_incarnation(self):
        """An origin is bounded like a VM name: a slash in it is refused."""
        assertInvalid(self, parseUpdateId, "a/b/3")
        assertInvalid(self, parseUpdateId, "o" * 58 + "/3")
        self.assertEqual(parseUpdateId("o" * 57 + "/3"), ("o" * 57, 3))

    def test_a_malformed_update_id_is_refused(self):
        for bad in ("", "12", "/12", "vm1/", "vm1/x", "vm1/-1", "vm1/1.5"):
            assertInvalid(self, parseUpdateId, bad)


class WireTests(SynchronousTestCase):
    """Every kind of update crosses the wire (to a peer, to a slave) unchanged."""

    def test_each_kind_of_update_round_trips(self):
        post = Post(id="vm2.x/2", author="bob", time_us=7, text="hi\\nthere")
        for update in (Update(origin="vm2.x", seq=1, time_us=5, user="bob"),
                       Update(origin="vm2.x", seq=2, time_us=7, post=post, request_id="r"),
                       Update(origin="vm2.x", seq=3, time_us=8,
                              follow=FollowChange("bob", "alice", True)),
                       Update(origin="vm2.x", seq=4, time_us=9,
                              follow=FollowChange("bob", "alice", False)),
                       Update(origin="vm2.x", seq=5, time_us=10,
                              read=ReadMark("bob", 7, "vm2.x/2"))):
            self.assertEqual(Update.fromProto(pb.Update.FromString(
                update.toProto().SerializeToString())), update)


class EncodingTests(SynchronousTestCase):
    """An update is encoded once, whoever needs its encoding."""

    def test_encoding_is_made_once_and_equals_a_fresh_one(self):
        update = Update(origin="vm2.x", seq=1, time_us=5, user="bob")
        self.assertIs(update.encoding(), update.encoding())
        self.assertEqual(update.encoding(), update.toProto())
        self.assertIsNot(update.toProto(), update.encoding())

    def test_a_batch_made_of_encodings_leaves_them_unchanged(self):
        update = Update(origin="vm2.x", seq=1, time_us=5, user="bob")
        batch = pb.UpdateBatch(updates=[update.encoding()])
        batch.updates[0].user.name = "carol"
        self.assertEqual(update.encoding().user.name, "bob")

    def test_a_post_is_encoded_once_on_the_write_path(self):
        """The size check, the record's row, the replication batch and the reply."""
        service, store = serverAs(self, "master")
        bob = login(self, service, store, "bob")
        built = []
        toProto = Update.toProto
        self.patch(Update, "toProto", lambda u: built.append(u.id) or toProto(u))
        d = service.api.post(pb.PostRequest(text="once", request_id="b1"), session(bob))
        store.flush()
        reply = self.successResultOf(d)
        self.assertEqual(reply.post.text, "once")
        update = service.node.replica.byRequest("bob", "b1")
        row = recordRow(update)
        pb.UpdateBatch(updates=[update.encoding()])
        self.assertEqual(built, [update.id])
        self.assertEqual(Update.fromProto(pb.Update.FromString(row[-1])), update)
