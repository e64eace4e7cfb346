"""
The live posts of one session, gathered while its stream is busy.

A server's stream writes one message at a time: gRPC takes the next only
once the last was written.  At 1,000 posts a second a follower's stream fell
behind one message per post (13 ms p50, 220 ms p90 in its queue), each
message costing both processes a write or a read of its own.  So a live post
is queued with L{Stream.gather}: on an idle stream it leaves on the loop's
next turn, alone, as a send would (nothing is added at a low rate); while
the message before it is still queued, it joins that message if that one is
a gathering of posts, and they leave together as one L{pb.PostBatch}.
The stream keeps the order: only the last message queued is joined, so a
heartbeat, a report of what the pushes cover or a catch-up page never
overtakes a post sent before it.

Bounded in posts, as the stream was when each post was a message: a reader
with L{MAX_SESSION_QUEUE} posts not yet taken by the stream's writer is cut
off.
"""

from twisted.logger import Logger

from snstwist.core.limits import MAX_SESSION_QUEUE, PUSH_BATCH
from snstwist.rpc import sns_pb2 as pb

log = Logger()

_POST = pb.ServerPush.DESCRIPTOR.fields_by_name["post"]
_BATCHED = pb.PostBatch.DESCRIPTOR.fields_by_name["posts"]
# A post in a PostBatch is encoded as a ServerPush holding it alone: a batch
# is the single pushes' bytes, after the tag and length of ServerPush.posts.
assert _POST.number == _BATCHED.number and _POST.message_type is _BATCHED.message_type
_TAG = bytes([pb.ServerPush.DESCRIPTOR.fields_by_name["posts"].number << 3 | 2])


def _varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def batchOf(pushes):
    """
    One ServerPush (encoded) carrying the posts of C{pushes}, each an
    encoded ServerPush of one post, in their order.
    """
    body = b"".join(pushes)
    return _TAG + _varint(len(body)) + body


class LivePosts:
    """
    A session's live posts on C{stream}; C{cutOff()} when its reader has
    fallen L{most} posts behind.
    """

    most = MAX_SESSION_QUEUE
    batch = PUSH_BATCH

    def __init__(self, stream, cutOff):
        self.stream = stream
        self.cutOff = cutOff
        self.waiting = 0  # posts queued, not yet taken by the stream's writer

    def post(self, push):
        """Queue a live post (C{push}: its ServerPush, encoded once for every session)."""
        if self.waiting >= self.most:
            log.warn("cutting off slow reader {peer}: {n} live posts waiting",
                     peer=self.stream.peer, n=self.waiting)
            self.cutOff()
            return
        self.waiting += 1
        self.stream.gather("posts", (push,), self._message, self.batch)

    def _message(self, pushes):
        """The message of the posts gathered, now that the writer takes them."""
        self.waiting -= len(pushes)
        return pushes[0] if len(pushes) == 1 else batchOf(pushes)
