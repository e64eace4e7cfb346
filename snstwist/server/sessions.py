"""
Live client sessions on a master: C{Bidirectional_s_and_c}.

A session is opened by a logged-in client and kept alive by heartbeats both
ways.  When the client asks for its timeline, the session sends the recent
history (or everything after the client's cursor, when it resumes), a ready
marker, and from then on every new post of the users it follows (and its own)
as soon as the post is durable here.  The client acknowledges how far it has
read; when the stream breaks the session is deactivated and that cursor kept,
so a returning client can resume where it left off.

Each session's catch-up, and what its pushes cover, is
L{snstwist.server.clientsession}.  A client that stops reading live posts is
cut off once its queue is full (the bound is in L{grpcbridge.Stream}), rather
than allowed to grow this process's memory.
"""

import collections

from twisted.logger import Logger

from snstwist.core import errors
from snstwist.core.limits import (
    MAX_SESSION_QUEUE,
    MAX_SESSIONS_PER_ADDRESS,
    MAX_SESSIONS_PER_USER,
    PUSHED_MEMORY,
    SESSION_HEARTBEAT,
)
from snstwist.core.node import durableVector
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc.heartbeat import Asleep
from snstwist.server.clientsession import TIMEOUT, ClientSession, Push

log = Logger()


HEARTBEAT = SESSION_HEARTBEAT
MAX_QUEUE = MAX_SESSION_QUEUE
READ_MARK_INTERVAL = 1.0
__all__ = ["SessionHub", "HEARTBEAT", "TIMEOUT", "MAX_QUEUE", "hostOf"]


def hostOf(peer):
    """The IP address of a gRPC peer (C{ipv4:127.0.0.1:5555}, C{ipv6:[::1]:5555})."""
    if not peer:
        return ""
    address = peer.split(":", 1)[1] if peer.startswith(("ipv4:", "ipv6:")) else peer
    return address.rsplit(":", 1)[0]


class SessionHub:
    """Every live session of this master, by user, and every user's cursor."""

    maxPerUser = MAX_SESSIONS_PER_USER
    maxPerAddress = MAX_SESSIONS_PER_ADDRESS

    def __init__(self, node, clock, record=lambda update: None):
        self.node = node
        self.clock = clock
        self.record = record
        self.sessions = {}
        self.addresses = {}
        self.cursors = {}
        self.unsaved = {}
        self.saver = None
        self.beat = None
        # The time this process did not run is no client's silence.
        self.asleep = Asleep(clock, HEARTBEAT)
        self.pushed = collections.OrderedDict()  # request -> id of the copy pushed
        self.changed = set()  # origins of the updates made durable since the last heartbeat

    def count(self):
        return sum(len(s) for s in self.sessions.values())

    def session(self, user, peer=None):
        """A session for C{user} calling from C{peer}, unless either has too many."""
        if len(self.sessions.get(user, ())) >= self.maxPerUser:
            raise errors.TooManySessions(
                "%s has %d sessions open on this master, the most allowed: close one"
                % (user, self.maxPerUser))
        host = hostOf(peer)
        if self.addresses.get(host, 0) >= self.maxPerAddress:
            raise errors.TooManySessions(
                "%d sessions are open from %s on this master, the most allowed"
                % (self.maxPerAddress, host))
        return ClientSession(self, user, host)

    def add(self, session):
        self.sessions.setdefault(session.user, set()).add(session)
        self.addresses[session.host] = self.addresses.get(session.host, 0) + 1
        if self.beat is None:
            self.asleep.started()
            self.beat = self.clock.callLater(HEARTBEAT, self._heartbeat)

    def remove(self, session):
        live = self.sessions.get(session.user)
        if live is not None and session in live:
            live.discard(session)
            if not live:
                del self.sessions[session.user]
            left = self.addresses[session.host] - 1
            if left:
                self.addresses[session.host] = left
            else:
                del self.addresses[session.host]
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
        self.asleep.ticked()
        now = self.clock.seconds()
        report = None
        if self.changed:
            # What the pushes cover now, of the origins that changed: for
            # the sessions that asked (their client merges it).
            changed, self.changed = self.changed, set()
            report = pb.ServerPush(
                covered=durableVector(self.node, changed).toProto()).SerializeToString()
        for sessions in list(self.sessions.values()):
            for session in list(sessions):
                session.check(now, report)
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
            try:
                update = self.node.markRead(user, key)
            except errors.StorageFailed as e:
                # The disk refuses writes for now: try again later.
                log.info("read marks not saved yet: {why}", why=e.message)
                for later, laterKey in unsaved.items():
                    if laterKey > self.unsaved.get(later, (0, "")):
                        self.unsaved[later] = laterKey
                if self.saver is None:
                    self.saver = self.clock.callLater(READ_MARK_INTERVAL, self.saveReadMarks)
                return
            if update is not None:
                self.record(update)

    def durable(self, updates):
        """
        What became durable on this VM (subscribed to the node): a new
        password (here or on another VM) ends the sessions opened under an
        older one, then the posts are pushed to the live timelines.
        """
        replica = self.node.replica
        for update in updates:
            changed = update.password.user if update.password is not None else update.user
            if changed is not None:
                self.revoke(changed, replica.password(changed).key)
        self.publish(updates)

    def publish(self, updates):
        """Push the posts among C{updates} to the live timelines that show them."""
        replica = self.node.replica
        changed = self.changed
        for update in updates:
            changed.add(update.origin)
            post = update.post
            if post is None or not replica.shows(update) or self._pushedOther(update):
                # A second copy of a retried request is not shown: neither a
                # later copy, nor an earlier one that arrives (from a VM that
                # was cut off) after the later one was pushed.
                continue
            push = None
            for user in (post.author, *replica.followerSet(post.author)):
                # (A copy: a push may cut a slow reader's session off.)
                for session in tuple(self.sessions.get(user, ())):
                    if session.live or session.catchingUp:
                        if push is None:
                            # Encoded once, however many sessions send it.
                            push = Push(post)
                        session.push(post, push)

    def renew(self, user, peer, expires):
        """
        C{user} renewed their token on the connection C{peer}: the sessions
        opened on that connection now end at C{expires}.  (Not those on other
        connections: a session opened with a token someone else copied still
        ends when that token does.)
        """
        for session in self.sessions.get(user, ()):
            if session.peer == peer and session.expires is not None:
                session.expires = max(session.expires, expires)

    def revoke(self, user, generation):
        """
        End C{user}'s sessions opened under a password older than
        C{generation} (a password change ends every other session).
        """
        for session in list(self.sessions.get(user, ())):
            if session.generation < generation:
                log.info("ending a session of {user}: the password changed", user=user)
                session.end(errors.NotLoggedIn("your password was changed: log in again"))

    def _pushedOther(self, update):
        """Was another copy of C{update}'s request pushed already?  Remember this one."""
        request = update.request
        if request is None:
            return False
        pushed = self.pushed.get(request)
        if pushed is not None:
            return pushed != update.id
        self.pushed[request] = update.id
        if len(self.pushed) > PUSHED_MEMORY:
            self.pushed.popitem(last=False)
        return False

    def closeAll(self):
        self.saveReadMarks()
        for sessions in list(self.sessions.values()):
            for session in list(sessions):
                session.stream.close()
