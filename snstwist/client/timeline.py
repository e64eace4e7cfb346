"""
The client's session with its master1 (C{Bidirectional_s_and_c}) and its
timeline: each post shown once, in the order received; the cursor (the
newest post shown) that a resumed session starts from after a failover; and
the acknowledgements that tell the server how far the user has read (at most
one per L{ACK_DELAY}, riding on a post when one goes before that).

A post is shown once by id and once by (author, request id): the two copies
of a retried post that two VMs accepted have two ids, and a master may send
either.  What the screen covers is a version vector, as the masters reported
it plus the posts shown since: a resumed session sends it, and is sent every
post of the timeline it lacks, however late the post reached the new master.

In timeline mode the client posts on its session (L{Session.post}): each
post goes up the stream with its request id and is answered on it by that
id, its reply carrying the post, which the timeline shows from there (the
master holds back its push of the post to this session).  A post whose
session ends unanswered fails with L{SessionGone}; one unanswered for
L{CALL_TIMEOUT} with DEADLINE_EXCEEDED, as a call would: the client sends
it again with the same request id, applied once.

Nothing here knows about failover: a L{Session} reports that it works or
that it was lost, and the L{Timeline} outlives every session.
"""

import collections

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from snstwist.client.masters import CALL_TIMEOUT
from snstwist.core.errors import RemoteError, Status
from snstwist.core.limits import HISTORY, MAX_EXTRA, MAX_SESSION_POSTS
from snstwist.core.limits import SESSION_HEARTBEAT as HEARTBEAT
from snstwist.core.model import Post
from snstwist.core.state import VersionVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc.heartbeat import Heartbeat

# The session's heartbeat interval is the server's: the deadline on each side
# is three of the other side's intervals.

log = Logger()

RESUME_WINDOW_US = 10 * 1000000
SHOWN_MEMORY = 10000
ACK_DELAY = 0.2  # one ack per this many seconds, however many posts were shown
_BEAT = pb.ClientMessage(heartbeat=pb.Heartbeat())


class SessionGone(Exception):
    """The session a post was sent on ended before its answer: send it again."""


def endOf(farewell):
    """The L{RemoteError} a server's farewell (a SessionEnd) says its stream ends with."""
    try:
        status = Status(farewell.code)
    except ValueError:
        status = Status.UNKNOWN
    return RemoteError(status, farewell.message)


def remember(memory, key):
    """
    Add C{key} to C{memory}, an C{OrderedDict} used as a bounded ordered set
    (the oldest go).  Not a plain dict: the first key of a dict whose oldest
    keys were deleted is found by walking past every deleted slot since it
    was last rebuilt, about 4 us at 10,000 keys, twice for each post shown;
    an C{OrderedDict} drops its oldest at once.
    """
    memory[key] = None
    if len(memory) > SHOWN_MEMORY:
        memory.popitem(last=False)


class Timeline:
    """
    What the user has been shown.  C{onPost(post)} gets each post once;
    C{send(message)} gives a message to the current session, if any.
    """

    def __init__(self, clock, onPost, send):
        self.clock = clock
        self.onPost = onPost
        self.send = send
        self.active = False  # in timeline mode
        self.cursor = None  # (time_us, id) of the newest post shown
        self.shown = collections.OrderedDict()  # ids of posts shown, oldest first (bounded)
        self.requests = collections.OrderedDict()  # (author, request id) of those, the same way
        # What the screen covers: None until a master reports it.
        self.covered = None
        self.ready = None
        self._ackCall = None
        self._acked = None  # the cursor the last ack sent said

    def enter(self):
        """Timeline mode from now on; fires once the history has been delivered."""
        self.active = True
        self.ready = defer.Deferred()
        self.send(pb.ClientMessage(open=self.openRequest()))
        return self.ready

    def openRequest(self):
        """What a session asks for first: history, or the timeline from the cursor."""
        request = pb.SessionOpen(timeline=self.active, history=HISTORY, report=True)
        if self.cursor is not None:
            # Resume a little before the newest post shown: a post with an
            # older time may have reached the new master later than it
            # reached the old one.  What was shown already is skipped.  (A
            # master that knows what the screen covers also sends what it
            # lacks, older than that: the window is for those that do not.)
            request.cursor.time_us = max(0, self.cursor[0] - RESUME_WINDOW_US)
        if self.covered is not None:
            request.covered.CopyFrom(self.covered.toProto())
        return request

    def coveredAlso(self, vector):
        """A master reports (more of) what the screen covers: C{vector}, a VersionVector."""
        reported = VersionVector.fromProto(vector)
        if self.covered is None:
            self.covered = reported
        else:
            self.covered.merge(reported)

    def delivered(self):
        """The history has been delivered."""
        if self.ready is not None and not self.ready.called:
            self.ready.callback(None)

    def failed(self, failure):
        """
        The session could not be restored: if someone still waits for the
        history, they get C{failure} and True is returned.
        """
        if self.ready is not None and not self.ready.called:
            self.ready.errback(failure)
            return True
        return False

    def received(self, post):
        self._cover(post.id)
        request = (post.author, post.request) if post.request else None
        if post.id in self.shown or request in self.requests:
            return
        remember(self.shown, post.id)
        if request is not None:
            remember(self.requests, request)
        if self.cursor is None or post.key > self.cursor:
            self.cursor = post.key
        self.onPost(post)
        if self._ackCall is None:
            self._ackCall = self.clock.callLater(ACK_DELAY, self._ack)

    def answered(self, reply, requestId):
        """
        Our own post C{reply} (a WriteReply) answers, in timeline mode: shown
        from there, whichever way it was posted.  A post retried after a
        failover by a call (the new session not ready yet) may be one the
        new master held already: it is pushed to no session again, and the
        catch-up skips it when the old master's report of what the screen
        covers counted it before its answer (which carries it) was sent.
        """
        if self.active and reply.HasField("post"):
            self.received(Post.fromProto(reply.post, requestId))

    def _cover(self, postId):
        """The screen covers the post C{postId}, shown or a copy of one shown."""
        if self.covered is None:
            return
        origin, _, seq = postId.rpartition("/")
        self.covered.add(origin, int(seq))
        if len(self.covered.origins[origin].extra) > MAX_EXTRA:
            # No master has reported for too long to be believed: forget it
            # (a resume falls back to the window before the cursor).
            self.covered = None

    def _ack(self):
        self._ackCall = None
        read = self.ackRiding()
        if read is not None:
            self.send(pb.ClientMessage(ack=read))

    def ackRiding(self):
        """
        The ack not sent yet (a C{Cursor}: the newest post shown, when it
        is newer than the last ack), taken to ride on a message going now
        (a post) rather than in a message of its own; None when there is
        none.  (The timer left running finds nothing to send then.)
        """
        if self.cursor is None or self.cursor == self._acked:
            return None
        self._acked = self.cursor
        return pb.Cursor(time_us=self.cursor[0], id=self.cursor[1])

    def flush(self):
        """Send the ack that is due now rather than later (the user is leaving)."""
        if self._ackCall is not None and self._ackCall.active():
            self._ackCall.cancel()
            self._ack()


class Session:
    """
    The client's end of C{Bidirectional_s_and_c} on the current master1.
    C{working()} is called when it has shown that it works;
    C{lost(session, reason)} when it broke (not when we closed it).
    """

    def __init__(self, clock, timeline, working, lost):
        self.clock = clock
        self.timeline = timeline
        self.working = working
        self.lost = lost
        self.stream = None
        self.beats = None
        self.closing = False
        self.ended = None
        self.farewell = None  # why the server said it ends the stream
        self.ready = False  # the timeline's history has come
        self.posts = {}  # request id -> (Deferred, when sent), oldest first
        self.busy = False  # a post sent since the last heartbeat

    def makeConnection(self, stream):
        self.stream = stream
        stream.send(pb.ClientMessage(open=self.timeline.openRequest()))
        self.beats = Heartbeat(self.clock, HEARTBEAT, 3 * HEARTBEAT, self._beat, self._silent)

    def _beat(self):
        if not self.busy:
            # (A session that sent a post since the last beat has said it is alive.)
            self.stream.send(_BEAT)
        self.busy = False
        # Posts unanswered for as long as a call may take time out as a call does.
        late = self.clock.seconds() - CALL_TIMEOUT
        while self.posts:
            requestId, (d, sent) = next(iter(self.posts.items()))
            if sent > late:
                break
            del self.posts[requestId]
            d.errback(RemoteError(Status.DEADLINE_EXCEEDED, "no answer to a post in %gs"
                                  % (CALL_TIMEOUT,)))

    def takesPosts(self):
        """May a post go on this session now?  (In timeline mode, with room.)"""
        return (self.ready and self.stream is not None and not self.closing
                and len(self.posts) < MAX_SESSION_POSTS)

    def post(self, request):
        """
        Send C{request} (a C{PostRequest} with its request id) on the
        session: a Deferred of its C{WriteReply}, or of the L{RemoteError}
        it was refused with, or L{SessionGone}.
        """
        d = defer.Deferred()
        self.posts[request.request_id] = (d, self.clock.seconds())
        # An ack due goes with the post: one message fewer.
        self.stream.send(pb.ClientMessage(post=request, read=self.timeline.ackRiding()))
        self.busy = True
        return d

    def _answered(self, answer):
        waiting = self.posts.pop(answer.request_id, None)
        if waiting is None:
            return  # timed out already
        if not answer.HasField("reply"):
            waiting[0].errback(endOf(answer.refused))
            return
        try:
            # Our own post: the master sent it with its answer, not pushed.
            self.timeline.answered(answer.reply, answer.request_id)
        finally:
            # Answered even if showing it failed (which breaks the session).
            waiting[0].callback(answer.reply)

    def _silent(self, seconds):
        log.info("master silent for {s:.1f}s", s=seconds)
        self.stream.abort()

    def messageReceived(self, message):
        self.beats.heard()
        kind = message.WhichOneof("kind")
        if kind == "answer":
            self._answered(message.answer)
        elif kind == "post":
            self.timeline.received(Post.fromProto(message.post))
        elif kind == "posts":
            # Live posts that the master batched while our stream was busy.
            for post in message.posts.posts:
                self.timeline.received(Post.fromProto(post))
        elif kind == "ready":
            if message.ready.HasField("covered"):
                self.timeline.coveredAlso(message.ready.covered)
            self.ready = True
            self.working()
            self.timeline.delivered()
        elif kind == "covered":
            self.timeline.coveredAlso(message.covered)
        elif kind == "end":
            self.farewell = message.end
        elif kind == "heartbeat" and not self.timeline.active:
            # A session that has lasted a heartbeat works.
            self.working()

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
        if self.farewell is not None:
            # What the server said, rather than what gRPC may report (an
            # INTERNAL for a heartbeat of ours that raced the status).
            reason = Failure(endOf(self.farewell))
        if self.beats is not None:
            self.beats.stop()
        self.stream = None
        if self.ended is not None and not self.ended.called:
            self.ended.callback(None)
        if not self.closing:
            self.lost(self, reason)
        # Posts unanswered go again (once a failover, if any, is done).
        posts, self.posts = self.posts, {}
        for d, _ in posts.values():
            d.errback(SessionGone("the session ended before the post was answered"))
