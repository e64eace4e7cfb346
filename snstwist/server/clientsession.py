"""
The server's end of one client's C{Bidirectional_s_and_c} stream; the hub of
every session of a master is L{snstwist.server.sessions.SessionHub}.

A timeline starts with a catch-up, sent a page at a time by post key, each
page once the client has taken most of the one before: the recent history,
or, for a returning client, everything after its cursor.  A post that
becomes durable meanwhile is sent at once if the catch-up has passed its
key, else with the page that reaches it.

A client that resumes after a failover may also say what its screen covers
(a version vector, as masters reported it): the catch-up then first sends
every post of the timeline up to its cursor whose update that vector lacks,
however old (a post acknowledged with one copy on a VM that was cut off
reaches other VMs late), and skips whatever it covers.  A client that asks
is told what the pushes cover: the VM's durable version vector when the
catch-up ends, and the origins that changed since with each heartbeat (so
everything in it has been sent, or is older than the history).

A session ended for a reason (an expired token, a changed password, a
refused message) says it in a farewell just before the status (L{end}).

A client may post on its session, as its user (L{snstwist.server.sessionposts}).
"""

from twisted.logger import Logger

from snstwist.core import errors
from snstwist.core.limits import CATCH_UP_PAGE, HISTORY, RESUME_GAP_MAX, SESSION_HEARTBEAT
from snstwist.core.model import (
    checkCursor,
    checkHeartbeat,
    checkRequestId,
    checkVersionVector,
)
from snstwist.core.node import durableVector
from snstwist.core.state import VersionVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.server.outbox import LivePosts
from snstwist.server.sessionposts import postOn

log = Logger()

TIMEOUT = 3 * SESSION_HEARTBEAT
_BEAT = pb.ServerPush(heartbeat=pb.Heartbeat()).SerializeToString()  # sent encoded
_FIRST = (0, "")  # before every post key
_LAST = (2 ** 63, "")  # after every post key


class Push:
    """
    The live push of C{post}, encoded (L{encoded}) once for every session
    that sends it, and only when one does: the posting session holds its
    own post's push for the post's answer (L{snstwist.server.sessionposts})
    and most often drops it, so a post nobody else is shown is never
    encoded for a push.
    """

    __slots__ = ("post", "_encoded")

    def __init__(self, post):
        self.post = post
        self._encoded = None

    def encoded(self):
        """The C{ServerPush} of the post, encoded (bytes, sent as they are)."""
        if self._encoded is None:
            self._encoded = pb.ServerPush(post=self.post.toPush()).SerializeToString()
        return self._encoded


def checkClientMessage(message, now_us):
    """
    The bounds of what a client sends on its session: a cursor is a post's
    (time, id), the time within the clock window of C{now_us}; a covered
    version vector has bounded origins; a heartbeat names at most a few users;
    a post has a request id, by which it is answered; an ack riding on a
    message (C{read}) is a cursor as an ack's is.
    """
    if message.HasField("read"):
        checkCursor(message.read.time_us, message.read.id, now_us)
    kind = message.WhichOneof("kind")
    if kind == "post":
        if not message.post.request_id:
            raise errors.InvalidRequest("a post on a session needs a request id")
        checkRequestId(message.post.request_id)
    elif kind == "open":
        if message.open.HasField("cursor"):
            checkCursor(message.open.cursor.time_us, message.open.cursor.id, now_us)
        checkVersionVector(message.open.covered)
    elif kind == "ack":
        checkCursor(message.ack.time_us, message.ack.id, now_us)
    elif kind == "heartbeat":
        checkHeartbeat(message.heartbeat)


def covers(vector, postId):
    """Does the version vector C{vector} hold the update of the post C{postId}?"""
    origin, _, seq = postId.rpartition("/")
    return vector.has(origin, int(seq))



def gapOf(held, covered):
    """
    At most how many of the updates C{held} (a version vector) C{covered}
    lacks: what reading them would cost, found in one pass over the origins
    held (not over the vector a client sent, whatever its size).
    """
    gap = 0
    for origin, mine in held.origins.items():
        theirs = covered.origins.get(origin)
        gap += max(0, mine.top - (theirs.contiguous if theirs is not None else 0))
    return gap

class ClientSession:
    """The server's end of one client's C{Bidirectional_s_and_c} stream."""

    # The password generation of the token the session was opened with.
    generation = (0, "")
    # When that token expires (None: never), unless renewed on the same
    # connection (L{SessionHub.renew}); and that connection (the peer).
    expires = None
    peer = None
    # How a post on the session is written (set by the service), and its
    # posts in flight (L{snstwist.server.sessionposts}).
    writePost = None
    posting = None

    def __init__(self, hub, user, host=""):
        self.hub = hub
        self.user = user
        self.host = host
        self.stream = None
        self.pushes = None
        self.live = False
        self.catchingUp = False
        # The catch-up's position: the key of the last post it read.
        self.cursor = None
        self.inclusive = False
        # Resuming by version vector: the first part of the catch-up sends
        # what C{covered} lacks up to C{upto}, the rest goes on from there.
        self.upto = None
        self.covered = None
        self.reporting = False
        # Posts made durable during the catch-up past its position, sent
        # with the page that reaches them (a page read from disk before
        # they were written may not hold them).
        self.held = {}
        self.caughtUp = 0
        self.sentHistory = set()
        self.lastHeard = 0  # on the hub's clock of running time (heartbeat.Asleep)
        self.busy = False

    @property
    def clock(self):
        return self.hub.clock

    def makeConnection(self, stream):
        self.stream = stream
        self.pushes = LivePosts(stream, self.end)
        self.lastHeard = self.hub.asleep.awake()
        self.hub.add(self)

    def check(self, now, report=None):
        """
        The hub's heartbeat: end a session whose token expired (so within a
        heartbeat of its expiry), cut off a silent client, or say we are
        alive (with C{report}, what the pushes cover now, if the client asked).
        """
        silent = self.hub.asleep.awake() - self.lastHeard
        if self.expires is not None and now >= self.expires:
            log.info("ending a session of {user}: its token expired", user=self.user)
            self.end(errors.NotLoggedIn("your session has expired: log in again"))
        elif silent > TIMEOUT:
            log.info("client {user} silent for {s:.1f}s: deactivating", user=self.user, s=silent)
            self.end()
        elif report is not None and self.reporting and self.live:
            self.stream.send(report)
        elif not self.busy:
            self.stream.send(_BEAT)
        self.busy = False

    def end(self, reason=None):
        """
        End the session: with C{reason} (an L{errors.SNSError}), its status
        and, just before, a farewell saying it, which the client reads even
        when its gRPC reports the end as INTERNAL; a client that reads
        nothing meanwhile is cut off after L{TIMEOUT}.  Without a reason
        (a silent client), at once.
        """
        self.live = False
        self.hub.remove(self)
        if reason is None:
            self.stream.abort()
            return
        status, message = errors.statusFor(reason)
        self.stream.end(reason, pb.ServerPush(end=pb.SessionEnd(code=status.value,
                                                                message=message)))
        self.clock.callLater(TIMEOUT, self.stream.abort, reason)

    def messageReceived(self, message):
        self.lastHeard = self.hub.asleep.awake()
        try:
            checkClientMessage(message, self.hub.node.hlc.physical())
        except errors.SNSError as e:
            log.info("refused a session message of {user}: {e}", user=self.user, e=e.message)
            self.end(e)
            return
        kind = message.WhichOneof("kind")
        if kind == "open" and message.open.timeline and not self.live:
            self._startTimeline(message.open)
        elif kind == "ack":
            self.hub.ack(self.user, message.ack)
        elif kind == "post":
            postOn(self, message.post)
        if message.HasField("read"):  # the client's ack, riding on its post
            self.hub.ack(self.user, message.read)

    def _startTimeline(self, request):
        """
        Start the catch-up: from the client's cursor when it resumes (first
        what its covered vector lacks up to there, if it sent one); else the
        recent history, and before it anything older that a returning
        client has not read yet.
        """
        if self.catchingUp:
            return
        replica = self.hub.node.replica
        self.reporting = request.report
        covered = None
        if request.HasField("covered"):
            covered = VersionVector.fromProto(request.covered)
            gap = gapOf(self.hub.node.store.held(), covered)
            if gap > RESUME_GAP_MAX:
                log.info("the timeline of {user} resumes by its cursor alone: its covered"
                         " vector lacks up to {gap} updates (at most {most} are read)",
                         user=self.user, gap=gap, most=RESUME_GAP_MAX)
                covered = None
        if covered is not None:
            # Resumed by a client that knows what its screen covers: first
            # everything up to its cursor (or everything, without one) that
            # it lacks, then what follows the cursor.
            self.covered = covered
            self.upto = _LAST
            if request.HasField("cursor"):
                self.upto = (request.cursor.time_us, request.cursor.id)
            self.cursor, self.inclusive = _FIRST, False
        elif request.HasField("cursor"):
            self.cursor, self.inclusive = (request.cursor.time_us, request.cursor.id), False
        else:
            # The recent history may need windows memory let go (read from
            # disk): a post pushed meanwhile is held for the catch-up.
            self.catchingUp = True
            d = self.hub.node.history.recent(self.user, min(request.history or HISTORY,
                                                            HISTORY))

            def start(recent):
                mark = replica.readUpTo(self.user)
                if recent and (mark is None or mark >= recent[0].key):
                    self.cursor, self.inclusive = recent[0].key, True
                else:
                    self.cursor, self.inclusive = mark, False
                self._sendPage()

            d.addCallback(start)
            d.addErrback(lambda f: log.failure("history of {user} failed", f, user=self.user))
            return
        self.catchingUp = True
        self._sendPage()

    def _sendPage(self):
        """One page of the catch-up; the next once the client has taken most of it."""
        if self.stream is None or not self.catchingUp:
            return
        if self.cursor is None:
            self._sendPosts([])
            return
        node = self.hub.node
        if self.upto is not None:
            # Older pages come from disk; what is not on disk yet is pushed
            # once it is.
            d = node.store.uncovered(node.replica.sources(self.user), self.covered,
                                     self.cursor, self.upto, CATCH_UP_PAGE)
            d.addCallback(lambda updates: [u.post for u in updates])
        else:
            d = node.history.timelinePage(self.user, self.cursor, CATCH_UP_PAGE,
                                          self.inclusive)
        d.addCallback(self._sendPosts)
        d.addErrback(lambda f: log.failure("catch-up of {user} failed", f, user=self.user))

    def _due(self, posts, final):
        """C{posts} (a page) and the posts held for it, in order, without those covered."""
        end = posts[-1].key if not final else self.upto
        due = {p.id: p for p in posts}
        for post in list(self.held.values()):
            if end is None or post.key <= end:
                due.setdefault(post.id, post)
                del self.held[post.id]
        ordered = sorted(due.values(), key=lambda p: p.key)
        if self.covered is not None:
            ordered = [p for p in ordered if not covers(self.covered, p.id)]
        return ordered

    def _sendPosts(self, posts):
        if self.stream is None or not self.catchingUp:
            return
        node = self.hub.node
        final = len(posts) < CATCH_UP_PAGE
        for post in self._due(posts, final):
            if not node.isDurable(post.id):
                # Published (pushed live) once durable: not twice.
                self.sentHistory.add(post.id)
            self.stream.send(pb.ServerPush(post=post.toPush()))
            self.caughtUp += 1
            self.busy = True
        if posts:
            self.cursor, self.inclusive = posts[-1].key, False
        if final and self.upto is not None:
            # What the client's vector lacks is sent: now what follows its cursor.
            self.cursor, self.inclusive, self.upto = self.upto, False, None
        elif final:
            self._ready()
            return
        d = self.stream.drained(CATCH_UP_PAGE // 2)
        d.addCallback(lambda _: self._sendPage())
        d.addErrback(lambda f: log.failure("catch-up of {user} failed", f, user=self.user))

    def _ready(self):
        self.catchingUp = False
        ready = pb.SessionReady(history=self.caughtUp)
        if self.reporting:
            ready.covered.CopyFrom(durableVector(self.hub.node).toProto())
        self.stream.send(pb.ServerPush(ready=ready))
        self.live = True

    def push(self, post, push):
        """
        Send C{post}, live, unless the client has it or the catch-up will
        send it; C{push} is its L{Push}, encoded once for every session that
        sends it (gathered with the posts that follow it while the stream is
        busy: L{LivePosts}).
        """
        if self.covered is not None and covers(self.covered, post.id):
            # The client has it (from another master) or did not want it.
            return
        if post.id in self.sentHistory:
            # Already sent with the history (it was accepted here just
            # before the timeline opened, and became durable after).
            self.sentHistory.discard(post.id)
            return
        if self.catchingUp and (self.cursor is None or post.key > self.cursor or (
                self.inclusive and post.key == self.cursor)):
            # For the page that reaches it (or, with no cursor yet, the
            # catch-up after the recent history being read).
            self.held[post.id] = post
            return
        if self.posting is not None and self.posting.holds(post, push):
            return  # The session's own post in flight: it goes with its answer.
        self.pushes.post(push.encoded())
        self.busy = True

    def connectionLost(self, reason):
        self.live = self.catchingUp = False
        self.hub.remove(self)
