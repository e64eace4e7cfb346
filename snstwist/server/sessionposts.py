"""
Posts on a client's own session stream (C{ClientMessage.post}), answered on
that stream (C{ServerPush.answer}).

A unary call is the dearest thing gRPC does for a post, at both ends; a
message on the stream a client in timeline mode holds open anyway costs a
fraction of it.  So such a client posts on its session: each post carries
its request id and goes through the same write path as the C{Post} call
(L{snstwist.server.admission.Writes}: applied once per (user, request id),
answered once durable here and on another VM, the same checks, rate tokens
and bounds), and is answered by that id, in the order the writes complete,
with the reply the call would return or the status it would end with.

The session's own post reaches its timeline with its answer (the reply
carries the post), so its live push to this session is not sent: one
message a post fewer, and not even encoded: the push is held while the post
is in flight (L{SessionPosts.holds}) as a L{Push}, encoded only if it is
sent after all, which it is just before a refusal (the post may be
stored here, and shown to others); one that comes after the answer (another
VM's copy was durable before this one's, or there is no other VM) is
dropped, for the last L{MAX_SESSION_POSTS} posts answered.

Bounded: at most L{MAX_SESSION_POSTS} posts in flight on one session; past
that a post is refused (RESOURCE_EXHAUSTED) at once, and each answer is a
message in the stream's bounded queue, so a client that floods and does not
read is cut off like any slow reader.  Nothing here blocks.
"""

from twisted.logger import Logger

from snstwist.core import errors
from snstwist.core.limits import MAX_SESSION_POSTS
from snstwist.rpc import sns_pb2 as pb

log = Logger()


def refusal(requestId, error):
    """The answer refusing the post C{requestId} with C{error} (an L{errors.SNSError})."""
    status, message = errors.statusFor(error)
    return pb.ServerPush(answer=pb.PostAnswer(
        request_id=requestId, refused=pb.SessionEnd(code=status.value, message=message)))


def answerOf(update, copies):
    """
    The answer to a post on a session, C{update} held by C{copies} VMs: the
    stream's message itself, its C{WriteReply} (with the post) written in
    place, so that the post is copied once, not once per message around it.
    (The same reply as L{admission.writeReply}; its request id is set by
    L{SessionPosts._answer}.)
    """
    push = pb.ServerPush()
    reply = push.answer.reply
    reply.id = update.id
    reply.copies = copies
    if update.post is not None:
        reply.post.CopyFrom(update.encoding().post)
    return push


def postOn(session, request):
    """
    C{request}, a post on C{session} (a L{ClientSession}): written by the
    session's C{writePost}; refused, ending the session, where none is set.
    """
    if session.posting is None:
        if session.writePost is None:
            session.end(errors.InvalidRequest("this server takes no posts on a session"))
            return
        session.posting = SessionPosts(session, session.writePost)
    session.posting.received(request)


class SessionPosts:
    """
    The posts in flight on one L{ClientSession}: C{write(session, request)}
    applies one (a Deferred of its C{WriteReply}; raises an
    L{errors.SNSError} to refuse it at once).
    """

    most = MAX_SESSION_POSTS

    def __init__(self, session, write):
        self.session = session
        self.write = write
        self.waiting = 0  # posts in flight (a request sent twice counts twice)
        # Request id -> the live push of its post held for its answer, or None.
        self.inFlight = {}
        # The posts answered before their push came (the newest, bounded).
        self.answered = {}

    def received(self, request):
        """A post (a C{PostRequest} with its request id) on the session."""
        requestId = request.request_id
        if self.waiting >= self.most:
            self._send(refusal(requestId, errors.Overloaded(
                "%d posts in flight on this session, the most allowed: wait for their"
                " answers" % (self.waiting,))))
            return
        self.waiting += 1
        fresh = requestId not in self.inFlight
        if fresh:
            self.inFlight[requestId] = None
        try:
            d = self.write(self.session, request, answerOf)
        except errors.SNSError as e:
            self.waiting -= 1
            if fresh:
                del self.inFlight[requestId]
            self._send(refusal(requestId, e))
            return
        d.addCallbacks(self._answer, self._refuse, (requestId,), None, (requestId,))

    def holds(self, post, push):
        """
        Keep C{push}, the live push of C{post} (a L{Push}, not encoded yet),
        for the answer to the session's own post in flight that it is;
        False if it is not one.
        """
        if (not self.inFlight and not self.answered) or post.author != self.session.user:
            return False
        request = post.request
        if request in self.inFlight:
            self.inFlight[request] = push
            return True
        if request in self.answered:
            del self.answered[request]
            return True
        return False

    def _answer(self, push, requestId):
        """C{push}: the answer's message (L{answerOf}), but for its request id."""
        self.waiting -= 1
        if self.inFlight.pop(requestId, b"") is None and self.session.live:
            # Not pushed yet: the client shows the post from this answer.
            self.answered[requestId] = None
            if len(self.answered) > self.most:
                del self.answered[next(iter(self.answered))]
        push.answer.request_id = requestId
        self._send(push)

    def _refuse(self, failure, requestId):
        self.waiting -= 1
        held = self.inFlight.pop(requestId, None)
        error = failure.value
        if not isinstance(error, errors.SNSError) or isinstance(error, errors.RemoteError):
            # Not an answer to this post (as the Post call's handler says).
            log.failure("unexpected error in a post of {user}", failure, user=self.session.user)
            if not isinstance(error, errors.SNSError):
                error = errors.SNSError("internal error")
        if held is not None and self.session.live:
            self.session.pushes.post(held.encoded())
        self._send(refusal(requestId, error))

    def _send(self, message):
        stream = self.session.stream
        if stream is not None:
            stream.send(message)
            self.session.busy = True
