"""
A hostile client and a hostile peer against the real servicers, in process.

Every field of every message a client or a peer sends is driven with values
at, just past and far past its bound (tests/strategies.py: unicode, control
characters, extreme integers, empty and repeated lists) into the real
SNS and Cluster servicers (L{ServerParts}), L{SessionHub}, L{ReplicaReceiver},
L{PeerLink}, buddy links and router, on a L{Clock} and a L{MemoryStore}: no
sockets.  For each
input:

- it is answered with a status (an L{errors.SNSError} mapped by the one
  table of errors.py, or OK): never an uncaught exception (INTERNAL);
- a refused input changes nothing: the replicated state, the store and the
  request table are the same before and after;
- an accepted input still replicates: what it wrote goes through the real
  L{PeerLink} in messages no larger than the gRPC limit, is parsed back from
  bytes and applied by a second node's L{ReplicaReceiver}, and the two
  replicas are then equal.

Each test counts what it tried in L{OUTCOMES}, by message and status; with
C{SNS_ADVERSARIAL_REPORT=FILE} the counts are written there (for the issue's
notes).
"""

import collections
import json
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from snstwist import buddy
from snstwist.core import errors
from snstwist.core.limits import (
    CLOCK_WINDOW_US,
    MAX_ADDRESS,
    MAX_ERROR_TEXT,
    MAX_EXCLUDED_VMS,
    MAX_HEARTBEAT_USERS,
    MAX_INCARNATION,
    MAX_MESSAGE_BYTES,
    MAX_ORIGIN,
    MAX_PASSWORD_CHARS,
    MAX_PEER_STREAMS,
    MAX_POST_CHARS,
    MAX_REQUEST_ID,
    MAX_USERNAME,
    UPDATES_PER_MESSAGE,
)
from snstwist.core.model import updateId
from snstwist.router import RouterService
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc.grpcbridge import SECRET_METADATA, SESSION_METADATA
from snstwist.core.node import Node
from snstwist.server.peers import PeerLink, ReplicaReceiver
from snstwist.storage.store import MemoryStore
from tests.fakes import FakeCallContext, FakeStream, secret
from tests.servers import serverParts
from tests.strategies import hostileInts, hostileLists, hostileText, hostileTimes

SECRET = "adversarial-suite-secret"
NOW_S = 1_800_000_000.0
NOW_US = int(NOW_S * 1e6)
NAME_CHARS = "abcXYZ019_.-"
USERS = ("alice", "bob")

OUTCOMES = collections.Counter()


def _report():
    path = os.environ.get("SNS_ADVERSARIAL_REPORT")
    if path:
        table = collections.defaultdict(dict)
        for (message, outcome), n in sorted(OUTCOMES.items()):
            table[message][outcome] = n
        with open(path, "w") as f:
            json.dump({"total": sum(OUTCOMES.values()), "by_message": table}, f, indent=1)


# -- hostile values of each kind of field

def names():
    return hostileText(MAX_USERNAME, NAME_CHARS)


def origins():
    return hostileText(MAX_ORIGIN, NAME_CHARS)


def requestIds():
    return hostileText(MAX_REQUEST_ID)


def times():
    return hostileTimes(NOW_US, CLOCK_WINDOW_US)


@st.composite
def updateIds(draw):
    """Update ids: well formed from hostile parts, or any hostile text."""
    return draw(st.one_of(
        st.builds(lambda o, s: "%s/%d" % (o, s), origins(), hostileInts(64, signed=False)),
        hostileText(MAX_ORIGIN + 21)))


def cursors():
    return st.builds(pb.Cursor, time_us=times(), id=st.one_of(st.just(""), updateIds()))


def heartbeats():
    return st.builds(pb.Heartbeat, clients=hostileInts(32, signed=False),
                     updates=hostileInts(64, signed=False),
                     pending=hostileInts(32, signed=False),
                     users=hostileLists(names(), MAX_HEARTBEAT_USERS),
                     peers=hostileLists(peerStreams(), MAX_PEER_STREAMS),
                     refused=hostileInts(64, signed=False))


def peerStreams():
    return st.builds(pb.PeerStream, vm=names(), lacking=hostileInts(64, signed=False),
                     failures=hostileInts(32, signed=False),
                     last_error=hostileText(MAX_ERROR_TEXT), connected=st.booleans())


def sound(value, hostile):
    """A field's sound C{value}, or a hostile one: so that whole messages pass too."""
    return st.one_of(st.just(value), hostile)


def versionVectors():
    ranges = st.builds(pb.OriginRange, origin=sound("vm2.x", origins()),
                       contiguous=sound(3, hostileInts(64, signed=False)),
                       extra=sound([5], hostileLists(hostileInts(64, signed=False), 4)))
    return sound(pb.VersionVector(), st.builds(pb.VersionVector,
                                               origins=hostileLists(ranges, 4)))


@st.composite
def updates(draw):
    """One update as a peer may send it: any field hostile, often otherwise sound."""
    origin = draw(st.one_of(st.just("vm2.x"), origins()))
    seq = draw(st.one_of(st.integers(1, 5), hostileInts(64, signed=False)))
    time_us = draw(st.one_of(st.just(NOW_US - 10), times()))
    u = pb.Update(origin=origin, seq=seq, time_us=time_us,
                  request_id=draw(st.one_of(st.just(""), requestIds())))
    kind = draw(st.sampled_from(["user", "post", "follow", "read", "none"]))
    if kind == "user":
        u.user.name = draw(st.one_of(st.sampled_from(USERS + ("carol",)), names()))
    elif kind == "post":
        u.post.id = draw(st.one_of(st.just(updateId(origin, seq)), updateIds()))
        u.post.author = draw(st.one_of(st.sampled_from(USERS), names()))
        u.post.time_us = draw(st.one_of(st.just(time_us), times()))
        u.post.text = draw(st.one_of(st.just("hi"), hostileText(MAX_POST_CHARS)))
    elif kind == "follow":
        u.follow.follower = draw(st.one_of(st.sampled_from(USERS), names()))
        u.follow.followee = draw(st.one_of(st.sampled_from(USERS), names()))
        u.follow.following = draw(st.booleans())
    elif kind == "read":
        u.read.user = draw(st.one_of(st.sampled_from(USERS), names()))
        u.read.time_us = draw(st.one_of(st.just(NOW_US - 20), times()))
        u.read.post_id = draw(st.one_of(st.just(""), updateIds()))
    return u


def serverHellos(message):
    """A ServerHello or a BuddyHello (C{message}), every field hostile."""
    fields = dict(vm=sound("vm2", names()),
                  role=st.sampled_from([1, 2, 1, 0, 7, -1]),
                  address=sound("127.0.0.3:7000", hostileText(MAX_ADDRESS)),
                  pid=sound(4242, hostileInts(32)),
                  incarnation=sound("abc123", hostileText(MAX_INCARNATION)))
    if message is pb.BuddyHello:
        fields["have"] = versionVectors()
    return st.builds(message, **fields)


# -- the world the hostile messages meet

def _nodeState(node, store):
    """Everything a refused input must leave as it was."""
    replica = node.replica
    return (replica.snapshot(), replica.seen.toProto().SerializeToString(deterministic=True),
            sorted(replica.requests), sorted(store.durable), node.seq, node.hlc.last)


class World:
    """
    A master of vm1 (the real parts of a server, on a MemoryStore and a
    Clock) where alice and bob exist, and vm2's node, to replicate to.
    """

    def __init__(self, test, role="master"):
        self.clock = Clock()
        self.clock.advance(NOW_S)
        self.store = MemoryStore()
        self.service = serverParts(test, role, SECRET, store=self.store, clock=self.clock)
        self.node = self.service.node
        if role != "master":
            self.node.mirror = self._mirrorOnDisk
        for user in USERS:
            self.node.login(user)
        self.node.follow("bob", "alice", "setup-1")
        self.node.post("alice", "hello", "setup-2")
        self.settle()
        self.peerStore = MemoryStore()
        self.peer = Node("vm2", "vm2.p", self.peerStore, self.clock)
        self.replicate(test)

    def _mirrorOnDisk(self, updates):
        """
        What a slave mirrors, its master stored on their VM's disk first
        (which is where a catch-up reads it from).
        """
        self.store.persist(updates)
        return Node.mirror(self.node, updates)

    def ctx(self, user="alice"):
        """A call's context: the cluster secret, and C{user}'s session token."""
        token = self.service.admission.loginReply(user).token
        return FakeCallContext({SECRET_METADATA: SECRET, SESSION_METADATA: token})

    def settle(self):
        self.clock.advance(0)
        self.store.flush()
        self.clock.advance(0)

    def state(self):
        return _nodeState(self.node, self.store)

    def replicate(self, test):
        """
        Send vm2 what it lacks through a real PeerLink, as bytes within the
        message limit, into a real ReplicaReceiver; then the replicas must
        be equal.
        """
        link = PeerLink(self.service.replicator, "vm2", "127.0.0.3:1")
        link.stream, link.synced = FakeStream(), True
        link.push(test.successResultOf(self.node.store.missing(self.peer.replica.seen, 10**6)))
        receiver, back = ReplicaReceiver(self.peer, self.clock), FakeStream()
        receiver.makeConnection(back)
        try:
            for message in link.stream.sent:
                wire = message.SerializeToString()
                test.assertLessEqual(len(wire), MAX_MESSAGE_BYTES)
                receiver.messageReceived(pb.ReplicationMessage.FromString(wire))
                self.peerStore.flush()
            test.assertFalse(back.aborted, "vm2 refused what vm1 accepted: %r" % (back.reason,))
        finally:
            receiver.connectionLost(None)
        test.assertEqual(self.peer.replica.snapshot(), self.node.replica.snapshot())
        test.assertEqual(self.peer.replica.seen.count(), self.node.replica.seen.count())


def answer(world, call):
    """
    Run C{call} (a servicer function on its request); its status name: OK,
    or the code errors.py maps its L{errors.SNSError} to.  Any other
    exception escapes: that is the INTERNAL this suite hunts.
    """
    try:
        result = call()
    except errors.SNSError as e:
        return errors.statusFor(e)[0].name
    if isinstance(result, defer.Deferred):
        world.settle()
        box = []
        result.addBoth(box.append)
        if not box:
            return "NO ANSWER"
        if isinstance(box[0], Failure):
            box[0].trap(errors.SNSError)
            return errors.statusFor(box[0].value)[0].name
    return "OK"


def streamOutcome(stream):
    """How a stream protocol answered: OK, or the status it ended the stream with."""
    if not stream.aborted:
        return "OK"
    if stream.reason is None:
        return "CUT"  # a client-side stream can not send a status: it is dropped
    return errors.statusFor(stream.reason)[0].name


ACCEPTED = {"OK", "OK (some refused)"}
STATUSES = ACCEPTED | {"CUT", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND",
                       "ALREADY_EXISTS", "FAILED_PRECONDITION", "UNAUTHENTICATED",
                       "UNAVAILABLE"}


class AdversarialTestCase(SynchronousTestCase):
    def tearDown(self):
        _report()

    def check(self, world, message, call):
        """
        Drive one hostile input into C{world}: C{call} returns how it was
        answered.  Count it under C{message}.  Refused: nothing changed.
        Accepted: it replicates.
        """
        before = world.state()
        outcome = call()
        world.settle()
        OUTCOMES[(message, outcome)] += 1
        self.assertIn(outcome, STATUSES, "%s answered %s" % (message, outcome))
        if outcome in ACCEPTED:
            world.replicate(self)
        else:
            self.assertEqual(world.state(), before, "%s refused, yet changed state" % (message,))
        return outcome


def _unary(world, method, request, user="alice"):
    servicer = world.service.internal if method == "onetimeSToBuddy" else world.service.api
    return lambda: answer(world, lambda: getattr(servicer, method)(request, world.ctx(user)))


class ClientMessageTests(AdversarialTestCase):
    """What a logged-in (or not) client sends: every unary request and the session."""

    @given(user=names())
    def test_login(self, user):
        world = World(self)
        self.check(world, "LoginRequest", _unary(world, "login", pb.LoginRequest(
            user=user, password="a password")))

    @given(user=st.one_of(st.sampled_from(USERS), names()),
           old=hostileText(MAX_PASSWORD_CHARS), new=hostileText(MAX_PASSWORD_CHARS),
           rid=requestIds())
    def test_password(self, user, old, new, rid):
        world = World(self)
        request = pb.PasswordRequest(user=user, old_password=old, new_password=new,
                                     request_id=rid)
        self.check(world, "PasswordRequest", _unary(world, "password", request))

    @given(target=st.one_of(st.sampled_from(USERS), names()), rid=requestIds(),
           prefer=st.one_of(st.just(""), names()), method=st.sampled_from(["follow", "unfollow"]))
    def test_follow_and_unfollow(self, target, rid, prefer, method):
        world = World(self)
        request = pb.FollowRequest(target=target, request_id=rid, prefer_vm=prefer)
        self.check(world, "FollowRequest", _unary(world, method, request, user="bob"))

    @given(text=hostileText(MAX_POST_CHARS), rid=requestIds(),
           prefer=st.one_of(st.just(""), names()))
    def test_post(self, text, rid, prefer):
        world = World(self)
        request = pb.PostRequest(text=text, request_id=rid, prefer_vm=prefer)
        self.check(world, "PostRequest", _unary(world, "post", request))

    @given(rid=requestIds(), user=st.sampled_from(USERS))
    def test_a_request_id_is_the_users_own(self, rid, user):
        """The same id from the other user is a new post, stored and shown."""
        world = World(self)
        first = self.check(world, "PostRequest", _unary(
            world, "post", pb.PostRequest(text="one", request_id=rid), user="alice"))
        second = self.check(world, "PostRequest", _unary(
            world, "post", pb.PostRequest(text="two", request_id=rid), user="bob"))
        self.assertEqual(first, second)
        if first == "OK":
            self.assertEqual([p.text for p in world.node.replica.postsBy("bob")], ["two"])

    @given(limit=hostileInts(32, signed=False))
    def test_history(self, limit):
        world = World(self)
        self.check(world, "HistoryRequest",
                   _unary(world, "history", pb.HistoryRequest(limit=limit)))

    @given(token=st.one_of(hostileText(80), st.builds(
        lambda a, b: a + "/" + b, *[st.one_of(st.just(""), st.just("*"),
                                              st.builds(">".__add__, names()))] * 2)))
    def test_list_page_token(self, token):
        world = World(self)
        self.check(world, "ListRequest",
                   _unary(world, "list", pb.ListRequest(page_token=token)))

    @given(token=hostileText(80))
    def test_a_hostile_session_token(self, token):
        world = World(self)
        ctx = world.ctx()
        ctx.metadata[SESSION_METADATA] = token

        self.check(world, "session token",
                   lambda: answer(world, lambda: world.service.api.list(pb.ListRequest(), ctx)))

    @given(message=st.one_of(
        st.builds(lambda o: pb.ClientMessage(open=o), st.builds(
            pb.SessionOpen, timeline=st.booleans(), history=hostileInts(32, signed=False),
            cursor=st.one_of(st.none(), cursors()))),
        st.builds(lambda b: pb.ClientMessage(heartbeat=b), heartbeats()),
        st.builds(lambda c: pb.ClientMessage(ack=c), cursors()),
        st.just(pb.ClientMessage())))
    def test_session_messages(self, message):
        world = World(self)
        hub = world.service.sessions

        def call():
            session, stream = hub.session("alice"), FakeStream()
            session.makeConnection(stream)
            session.messageReceived(message)
            outcome = streamOutcome(stream)
            session.connectionLost(None)
            # Read marks are written (and replicated) once a second.
            hub.saveReadMarks()
            return outcome

        self.check(world, "ClientMessage." + (message.WhichOneof("kind") or "empty"), call)

    @given(user=st.one_of(st.just(""), names()),
           exclude=hostileLists(st.one_of(st.just("vm1"), names()), MAX_EXCLUDED_VMS))
    def test_router_request(self, user, exclude):
        world = RouterWorld()
        request = pb.MasterRequest(user=user, exclude_vms=exclude)
        self.check(world, "MasterRequest",
                   lambda: answer(world, lambda: world.router.onetimeCToR(request, world.ctx)))


class RouterWorld:
    """A real RouterService (not started) with vm1's master registered."""

    def __init__(self):
        self.clock = Clock()
        self.router = RouterService("127.0.0.1:0", SECRET, clock=self.clock)
        self.registry = self.router.registry
        self.ctx = secret(SECRET)
        link = self.router.serverLink(self.ctx)
        link.makeConnection(FakeStream())
        link.messageReceived(pb.ServerMessage(hello=pb.ServerHello(
            vm="vm1", role=pb.MASTER, address="127.0.0.2:7000", pid=10, incarnation="a1")))

    def state(self):
        return sorted((k, r.identity, r.clients, r.updates, r.pending, r.users)
                      for k, r in self.registry.servers.items())

    def settle(self):
        pass

    def replicate(self, test):
        """What the router pushes to every server must still fit one message."""
        test.assertLessEqual(pb.RouterMessage(membership=self.registry.membership()).ByteSize(),
                             MAX_MESSAGE_BYTES)


class PeerMessageTests(AdversarialTestCase):
    """What another VM's master, a buddy or a server sends: with the secret, hostile."""

    @given(batch=hostileLists(updates(), UPDATES_PER_MESSAGE))
    def test_replicated_updates(self, batch):
        """A batch on BroadcastPosts: refused whole, or each update applied or refused."""
        world = World(self)
        message = pb.ReplicationMessage(updates=pb.UpdateBatch(updates=batch))
        if message.ByteSize() > MAX_MESSAGE_BYTES:
            return  # gRPC refuses it before any of our code sees it

        def call():
            receiver, stream = world.service.internal.broadcastPosts(world.ctx()), FakeStream()
            receiver.makeConnection(stream)
            receiver.messageReceived(message)
            world.settle()
            receiver.connectionLost(None)
            outcome = streamOutcome(stream)
            acked = [i for m in stream.sent if m.WhichOneof("kind") == "ack"
                     for i in m.ack.ids]
            if outcome == "OK" and len(set(acked)) < len({(u.origin, u.seq) for u in batch}):
                return "OK (some refused)"
            return outcome

        self.check(world, "UpdateBatch on BroadcastPosts", call)

    @given(message=st.one_of(
        st.builds(lambda h: pb.ReplicationMessage(hello=h), st.builds(
            pb.ReplicaHello, vm=sound("vm2", names()), origin=sound("vm2.x", origins()),
            have=versionVectors())),
        st.builds(lambda ids: pb.ReplicationMessage(ack=pb.ReplicaAck(ids=ids)),
                  hostileLists(sound("vm2.x/1", updateIds()), UPDATES_PER_MESSAGE)),
        st.builds(lambda b: pb.ReplicationMessage(heartbeat=b), heartbeats())))
    def test_replication_stream_messages(self, message):
        """Hello, ack and heartbeat, into both ends of BroadcastPosts."""
        world = World(self)
        kind = message.WhichOneof("kind")

        def receiverEnd():
            receiver, stream = world.service.internal.broadcastPosts(world.ctx()), FakeStream()
            receiver.makeConnection(stream)
            receiver.messageReceived(message)
            receiver.connectionLost(None)
            return streamOutcome(stream)

        def senderEnd():
            link = PeerLink(world.service.replicator, "vm2", "127.0.0.3:1")
            link.stream = FakeStream()
            link.received(message)
            for sent in link.stream.sent:
                self.assertLessEqual(sent.ByteSize(), MAX_MESSAGE_BYTES)
            return streamOutcome(link.stream)

        self.check(world, "ReplicationMessage.%s to the receiver" % (kind,), receiverEnd)
        self.check(world, "ReplicationMessage.%s to the sender" % (kind,), senderEnd)

    @given(batch=hostileLists(updates(), UPDATES_PER_MESSAGE))
    def test_updates_to_the_slave(self, batch):
        """Onetime_s_to_buddy into a slave: refused whole, or mirrored."""
        world = World(self, role="slave")
        request = pb.UpdateBatch(updates=batch)
        if request.ByteSize() > MAX_MESSAGE_BYTES:
            return
        self.check(world, "UpdateBatch on Onetime_s_to_buddy",
                   _unary(world, "onetimeSToBuddy", request))

    @given(message=st.one_of(
        st.builds(lambda h: pb.BuddyMessage(hello=h), serverHellos(pb.BuddyHello)),
        st.builds(lambda b: pb.BuddyMessage(heartbeat=b), heartbeats()),
        st.builds(lambda s: pb.BuddyMessage(stopping=s), st.booleans())),
        end=st.sampled_from(["master", "slave"]))
    def test_buddy_messages(self, message, end):
        """BuddyConnection, either end: a bad message cuts the buddy off."""
        world = World(self)
        seen = []
        if end == "master":
            link = buddy.MasterLink(world.clock, lambda: pb.BuddyHello(vm="vm1"),
                                    lambda link, hello: seen.append(hello),
                                    lambda hello, why: seen.append(why), seen.append)
        else:
            link = buddy.SlaveLink(world.clock, lambda: pb.BuddyHello(vm="vm1"),
                                   seen.append, lambda: seen.append("stopping"),
                                   lambda link: None)
            link.start()

        def call():
            stream = FakeStream()
            link.makeConnection(stream)
            link.messageReceived(message)
            if end == "slave":
                # Done with the master: the stream's end is not a lost master.
                link.close()
            link.connectionLost(None)
            return streamOutcome(stream)

        self.check(world, "BuddyMessage.%s to the %s" % (message.WhichOneof("kind"), end), call)

    @given(message=st.one_of(
        st.builds(lambda h: pb.ServerMessage(hello=h), serverHellos(pb.ServerHello)),
        st.builds(lambda b: pb.ServerMessage(heartbeat=b), heartbeats())))
    def test_server_messages_to_the_router(self, message):
        """Bidirectional_r_and_s: what a server says to the router."""
        world = RouterWorld()

        def call():
            link, stream = world.router.serverLink(world.ctx), FakeStream()
            link.makeConnection(stream)
            link.messageReceived(message)
            return streamOutcome(stream)

        self.check(world, "ServerMessage.%s to the router" % (message.WhichOneof("kind"),), call)

