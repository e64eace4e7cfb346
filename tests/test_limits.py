"""
The limits of limits.py add up: anything accepted fits in one message.

These are the sums behind the limits, checked on the wire types: the
largest update of every kind, a full batch of them in a replication and a
buddy message, the largest LIST, digest, membership and version vector.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from snstwist.core import errors, limits, model
from snstwist.core.limits import (
    DIGEST_PAGE,
    LIST_PAGE,
    MAX_EXCLUDED_VMS,
    MAX_HEARTBEAT_USERS,
    MAX_MESSAGE_BYTES,
    MAX_ORIGIN,
    MAX_PAGE_TOKEN,
    MAX_POST_CHARS,
    MAX_REQUEST_ID,
    MAX_SEQ,
    MAX_SERVERS,
    MAX_UPDATE_BYTES,
    MAX_USERNAME,
    UPDATES_PER_MESSAGE,
)
from snstwist.core.model import FollowChange, Post, ReadMark, Update, updateId
from snstwist.core.pages import nextListToken
from snstwist.rpc import grpcbridge
from snstwist.rpc import sns_pb2 as pb
from snstwist.core import node as nodes
from snstwist.server import peers
from snstwist.storage.store import MemoryStore

WIDE = "\U0001f600"  # four bytes of UTF-8
NAME = "n" * MAX_USERNAME
ORIGIN = "o" * MAX_ORIGIN
LAST_ID = updateId(ORIGIN, MAX_SEQ)
LAST_TIME = 2**63 - 1


def largestUpdates():
    """The largest update of each kind the bounds allow."""
    common = dict(origin=ORIGIN, seq=MAX_SEQ, time_us=LAST_TIME, request_id="r" * MAX_REQUEST_ID)
    post = Post(id=LAST_ID, author=NAME, time_us=LAST_TIME, text=WIDE * MAX_POST_CHARS)
    return [
        Update(user=NAME, **common),
        Update(post=post, **common),
        Update(follow=FollowChange(NAME, "m" * MAX_USERNAME, True), **common),
        Update(read=ReadMark(NAME, LAST_TIME, LAST_ID), **common),
    ]


class UpdateSizeTests(SynchronousTestCase):
    def test_the_largest_update_of_every_kind_fits_the_bound(self):
        """No update within the bounds takes more than MAX_UPDATE_BYTES."""
        sizes = [u.toProto().ByteSize() for u in largestUpdates()]
        self.assertLessEqual(max(sizes), MAX_UPDATE_BYTES)
        self.assertEqual(max(sizes), MAX_UPDATE_BYTES, "the bound is the post's, exactly")

    def test_a_full_batch_fits_one_replication_message(self):
        """UPDATES_PER_MESSAGE of the largest updates fit one BroadcastPosts message."""
        biggest = largestUpdates()[1].toProto()
        message = pb.ReplicationMessage(updates=pb.UpdateBatch(
            updates=[biggest] * UPDATES_PER_MESSAGE))
        self.assertLessEqual(message.ByteSize(), MAX_MESSAGE_BYTES)

    def test_a_full_batch_fits_one_buddy_message(self):
        """What the master sends its slave (Onetime_s_to_buddy) fits too."""
        biggest = largestUpdates()[1].toProto()
        batch = pb.UpdateBatch(updates=[biggest] * UPDATES_PER_MESSAGE)
        self.assertLessEqual(batch.ByteSize(), MAX_MESSAGE_BYTES)

    def test_replication_batches_are_no_larger(self):
        """The sender batches at most UPDATES_PER_MESSAGE updates per message."""
        self.assertLessEqual(peers.BATCH, UPDATES_PER_MESSAGE)

    def test_an_ack_of_a_full_batch_fits(self):
        """The receiver acks a whole batch in one message."""
        ack = pb.ReplicationMessage(ack=pb.ReplicaAck(ids=[LAST_ID] * UPDATES_PER_MESSAGE))
        self.assertLessEqual(ack.ByteSize(), MAX_MESSAGE_BYTES)

    def test_every_channel_and_server_uses_the_bound(self):
        """Both ends of every gRPC connection send and receive up to MAX_MESSAGE_BYTES."""
        for options in (grpcbridge.CHANNEL_OPTIONS, grpcbridge.SERVER_OPTIONS):
            self.assertEqual(dict(options)["grpc.max_send_message_length"], MAX_MESSAGE_BYTES)
            self.assertEqual(dict(options)["grpc.max_receive_message_length"],
                             MAX_MESSAGE_BYTES)

    def test_a_node_refuses_an_update_too_large_to_replicate(self):
        """
        Should a write escape the bounds, the node refuses it when it is
        made: nothing is applied or stored, no sequence number is used.
        """
        store = MemoryStore()
        node = nodes.Node("vm1", "vm1.a", store, Clock())
        node.login("alice")
        self.patch(nodes, "MAX_UPDATE_BYTES", 100)
        self.assertRaises(errors.InvalidRequest, node.post, "alice", "x" * 200, "r")
        self.assertEqual((node.seq, len(store.durable), node.replica.postsBy("alice")),
                         (1, 1, []))


class ReplySizeTests(SynchronousTestCase):
    def test_a_list_page_fits_with_the_longest_names_and_token(self):
        """A LIST page: LIST_PAGE of the longest names in each list, and the longest token."""
        names = ["%0*d" % (MAX_USERNAME, i) for i in range(LIST_PAGE)]
        token = nextListToken(names, True, names, True)
        reply = pb.ListReply(all_users=names, followers=names, next_page_token=token)
        self.assertEqual(len(token), MAX_PAGE_TOKEN)
        self.assertLessEqual(reply.ByteSize(), MAX_MESSAGE_BYTES)

    def test_a_digest_page_fits_with_the_longest_file_names(self):
        """sns-compare's digest page of DIGEST_PAGE post files, and every other field, fits."""
        files = {"%0*d.txt" % (MAX_USERNAME, i): "f" * 64 for i in range(DIGEST_PAGE)}
        big = 2**64 - 1
        stream = pb.PeerStream(vm=NAME, lacking=big, failures=2**32 - 1,
                               last_error="e" * limits.MAX_ERROR_TEXT, connected=True,
                               sent_updates=big, sent_messages=big, acked_updates=big,
                               ack_messages=big)
        reply = pb.DigestReply(vm=NAME, post_files=files, users="u" * 64, follows="f" * 64,
                               marks="m" * 64, posts=2**64 - 1, updates=2**64 - 1,
                               unreplicated=2**32 - 1, refused=2**64 - 1,
                               peers=[stream] * limits.MAX_PEER_STREAMS, next=max(files))
        self.assertLessEqual(reply.ByteSize(), MAX_MESSAGE_BYTES)

    def test_a_membership_fits_with_the_most_servers(self):
        """The router's membership of MAX_SERVERS servers, each naming its users, fits."""
        info = pb.ServerInfo(vm=NAME, role=pb.MASTER, address="a" * limits.MAX_ADDRESS,
                             peer_address="p" * limits.MAX_ADDRESS, pid=-1,
                             incarnation="i" * limits.MAX_INCARNATION,
                             clients=2**32 - 1, updates=2**64 - 1, pending=2**32 - 1,
                             seen_ago=1e300, users=[NAME] * MAX_HEARTBEAT_USERS)
        message = pb.RouterMessage(membership=pb.Membership(servers=[info] * MAX_SERVERS))
        self.assertLessEqual(message.ByteSize(), MAX_MESSAGE_BYTES)

    def test_a_status_reply_fits_with_the_most_servers_and_streams(self):
        """sns-status: MAX_SERVERS servers, each with every peer stream failing."""
        stream = pb.PeerStream(vm=NAME, lacking=2**64 - 1, failures=2**32 - 1,
                               last_error="e" * limits.MAX_ERROR_TEXT, connected=True)
        info = pb.ServerInfo(vm=NAME, role=pb.MASTER, address="a" * limits.MAX_ADDRESS,
                             peer_address="p" * limits.MAX_ADDRESS, pid=-1,
                             incarnation="i" * limits.MAX_INCARNATION,
                             clients=2**32 - 1, updates=2**64 - 1, pending=2**32 - 1,
                             seen_ago=1e300, users=[NAME] * MAX_HEARTBEAT_USERS,
                             peers=[stream] * limits.MAX_PEER_STREAMS, refused=2**64 - 1)
        reply = pb.StatusReply(servers=[info] * MAX_SERVERS, uptime=1e300)
        self.assertLessEqual(reply.ByteSize(), MAX_MESSAGE_BYTES)

    def test_a_version_vector_fits_with_the_most_origins(self):
        """A hello naming MAX_ORIGINS origins (no gaps) fits one message."""
        have = pb.VersionVector(origins=[pb.OriginRange(origin=ORIGIN, contiguous=MAX_SEQ)]
                                * limits.MAX_ORIGINS)
        message = pb.ReplicationMessage(hello=pb.ReplicaHello(vm=NAME, origin=ORIGIN, have=have))
        self.assertLessEqual(message.ByteSize(), MAX_MESSAGE_BYTES)

    def test_a_router_request_fits(self):
        """The largest Onetime_c_to_r request is small."""
        request = pb.MasterRequest(user=NAME, exclude_vms=[NAME] * MAX_EXCLUDED_VMS)
        self.assertLess(request.ByteSize(), 1024)


class EchoTests(SynchronousTestCase):
    def test_an_error_shows_at_most_a_few_characters_of_the_input(self):
        """A 20 KB name is refused with a short message that says how long it was."""
        e = self.assertRaises(errors.InvalidUsername, model.checkUsername, "x" * 20000)
        self.assertLess(len(e.message), 200)
        self.assertIn("20000 characters", e.message)

    def test_a_short_input_is_shown_whole(self):
        """A short bad value is quoted as it is."""
        e = self.assertRaises(errors.InvalidRequest, model.checkRequestId, "has space")
        self.assertIn("'has space'", e.message)


class UserCapTests(SynchronousTestCase):
    def test_a_new_user_past_the_maximum_is_refused_and_the_others_log_in(self):
        """RESOURCE_EXHAUSTED for a new name at MAX_USERS; existing users go on."""
        self.patch(nodes, "MAX_USERS", 2)
        node = nodes.Node("vm1", "vm1.a", MemoryStore(), Clock())
        node.login("alice")
        node.login("bob")
        e = self.assertRaises(errors.TooMany, node.login, "carol")
        self.assertEqual((errors.statusFor(e)[0], node.login("alice"), sorted(node.replica.users)),
                         (errors.Status.RESOURCE_EXHAUSTED, None, ["alice", "bob"]))
