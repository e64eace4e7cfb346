"""
Live client sessions on a master: C{Bidirectional_s_and_c}.

A session is opened by a logged-in client and kept alive by heartbeats both
ways.  When the client asks for its timeline, the session sends the recent
history (or everything after the client's cursor, when it resumes), a ready
marker, and from then on every new post of the users it follows (and its own)
as soon as the post is durable here.  The client acknowledges how far it has
read; when the stream breaks the session is deactivated and that cursor kept,
so a returning client can resume where it left off.

A client that stops reading is cut off once its queue is full (the bound is in
L{grpcbridge.Stream}), rather than allowed to grow this process's memory.
"""

from twisted.logger import Logger

from snstwist import errors
from snstwist import sns_pb2 as pb
from snstwist.model import HISTORY, checkCursor, checkHeartbeat

log = Logger()


def checkClientMessage(message, now_us):
    """
    The bounds of what a client sends on its session: a cursor is a post's
    (time, id), the time within the clock window of C{now_us}; a heartbeat
    names at most a few users.
    """
    kind = message.WhichOneof("kind")
    if kind == "open" and message.open.HasField("cursor"):
        cursor = message.open.cursor
        checkCursor(cursor.time_us, cursor.id, now_us)
    elif kind == "ack":
        checkCursor(message.ack.time_us, message.ack.id, now_us)
    elif kind == "heartbeat":
        checkHeartbeat(message.heartbeat)

HEARTBEAT = 2.0
TIMEOUT = 3 * HEARTBEAT
MAX_QUEUE = 1000
READ_MARK_INTERVAL = 1.0
_BEAT = pb.ServerPush(heartbeat=pb.Heartbeat())


class SessionHub:
    """Every live session of this master, by user, and every user's cursor."""

    def __init__(self, node, clock, record=lambda update: None):
        self.node = node
        self.clock = clock
        self.record = record
        self.sessions = {}
        self.cursors = {}
        self.unsaved = {}
        self.saver = None
        self.beat = None

    def count(self):
        return sum(len(s) for s in self.sessions.values())

    def session(self, user):
        return ClientSession(self, user)

    def add(self, session):
        self.sessions.setdefault(session.user, set()).add(session)
        if self.beat is None:
            self.beat = self.clock.callLater(HEARTBEAT, self._heartbeat)

    def remove(self, session):
        live = self.sessions.get(session.user)
        if live is not None:
            live.discard(session)
            if not live:
                del self.sessions[session.user]
        if not self.sessions and self.beat is not None:
            self.beat.cancel()
            self.beat = None

    def _heartbeat(self):
        """
        One timer for every session (a thousand sessions are a thousand
        DelayedCalls otherwise): each gets a heartbeat unless it was sent
        something since the last one, and a silent client is cut off.
        """
        self.beat = None
        now = self.clock.seconds()
        for sessions in list(self.sessions.values()):
            for session in list(sessions):
                session.check(now)
        if self.sessions and self.beat is None:
            self.beat = self.clock.callLater(HEARTBEAT, self._heartbeat)

    def ack(self, user, cursor):
        key = (cursor.time_us, cursor.id)
        if key > self.cursors.get(user, (0, "")):
            self.cursors[user] = key
            self.unsaved[user] = key
            if self.saver is None:
                self.saver = self.clock.callLater(READ_MARK_INTERVAL, self.saveReadMarks)

    def saveReadMarks(self):
        """
        Write (and replicate, through C{record}) how far each user has read,
        at most once per L{READ_MARK_INTERVAL}: a returning client, on any
        master, then gets every post it missed.
        """
        if self.saver is not None and self.saver.active():
            self.saver.cancel()
        self.saver = None
        unsaved, self.unsaved = self.unsaved, {}
        for user, key in unsaved.items():
            update = self.node.markRead(user, key)
            if update is not None:
                self.record(update)

    def publish(self, updates):
        """Push the posts among C{updates} to the live timelines that show them."""
        replica = self.node.replica
        for update in updates:
            post = update.post
            if post is None or not replica.shows(update):
                # A second copy of a retried request is not shown.
                continue
            message = None
            for user in (post.author, *replica.followerSet(post.author)):
                for session in self.sessions.get(user, ()):
                    if session.live:
                        if message is None:
                            message = pb.ServerPush(post=post.toProto())
                        session.push(post.id, message)

    def closeAll(self):
        self.saveReadMarks()
        for sessions in list(self.sessions.values()):
            for session in list(sessions):
                session.stream.close()


class ClientSession:
    """The server's end of one client's C{Bidirectional_s_and_c} stream."""

    def __init__(self, hub, user):
        self.hub = hub
        self.user = user
        self.stream = None
        self.live = False
        self.sentHistory = set()
        self.lastHeard = 0
        self.busy = False

    @property
    def clock(self):
        return self.hub.clock

    def makeConnection(self, stream):
        self.stream = stream
        self.lastHeard = self.clock.seconds()
        self.hub.add(self)

    def check(self, now):
        """The hub's heartbeat: cut off a silent client, or say we are alive."""
        silent = now - self.lastHeard
        if silent > TIMEOUT:
            log.info("client {user} silent for {s:.1f}s: deactivating", user=self.user, s=silent)
            self.live = False
            self.hub.remove(self)
            self.stream.abort()
        elif not self.busy:
            self.stream.send(_BEAT)
        self.busy = False

    def messageReceived(self, message):
        self.lastHeard = self.clock.seconds()
        try:
            checkClientMessage(message, self.hub.node.hlc.physical())
        except errors.SNSError as e:
            log.info("refused a session message of {user}: {e}", user=self.user, e=e.message)
            self.live = False
            self.hub.remove(self)
            self.stream.abort(e)
            return
        kind = message.WhichOneof("kind")
        if kind == "open" and message.open.timeline and not self.live:
            self._startTimeline(message.open)
        elif kind == "ack":
            self.hub.ack(self.user, message.ack)

    def _startTimeline(self, request):
        replica = self.hub.node.replica
        if request.HasField("cursor"):
            posts = replica.timelineAfter(self.user, (request.cursor.time_us, request.cursor.id))
        else:
            posts = replica.timeline(self.user, min(request.history or HISTORY, HISTORY))
            mark = replica.readUpTo(self.user)
            if mark is not None:
                # A returning client: the recent history, and before it
                # anything older that it has not read yet.
                known = {p.id for p in posts}
                missed = [p for p in replica.timelineAfter(self.user, mark)
                          if p.id not in known]
                posts = sorted(missed + posts, key=lambda p: p.key)
        for post in posts:
            self.sentHistory.add(post.id)
            self.stream.send(pb.ServerPush(post=post.toProto()))
        self.stream.send(pb.ServerPush(ready=pb.SessionReady(history=len(posts))))
        self.live = True

    def push(self, postId, message):
        if postId in self.sentHistory:
            # Already sent with the history (it was accepted here just
            # before the timeline opened, and became durable after).
            self.sentHistory.discard(postId)
            return
        self.stream.send(message)
        self.busy = True

    def connectionLost(self, reason):
        self.live = False
        self.hub.remove(self)
