"""
The requests a replica remembers: (requester, request id) -> the earliest
update of that request known, for the requests seen last.  Bounded in count
(L{REMEMBERED_REQUESTS}) and in bytes (L{REMEMBERED_BYTES}): past either,
the least recently used are forgotten first, and the store answers for them
(L{snstwist.core.history.History.knowRequests}).
"""

import collections
import sys

from snstwist.core.window import postBytes

REMEMBERED_REQUESTS = 10000
# A remembered post of 1,000 four-byte characters costs about 9 KB (its text,
# and its encoding once it was sent): 10,000 of them would be ~90 MB.
REMEMBERED_BYTES = 16 * 1024 * 1024
# What a remembered update costs besides its text and hash: the Update, its
# strings and key, the entry here.
UPDATE_OVERHEAD = 600


def rememberedBytes(update):
    """
    The memory a remembered update costs (an estimate that errs high): with
    its post's encoding (the UTF-8 text again) whether made yet or not.
    """
    size = UPDATE_OVERHEAD + sys.getsizeof(update.request_id)
    if update.post is not None:
        size += postBytes(update.post) + len(update.post.text.encode("utf-8"))
    if update.hash:
        size += 2 * sys.getsizeof(update.hash)
    if update.password is not None:
        size += 2 * sys.getsizeof(update.password.hash)
    return size


class RememberedRequests:
    """The remembered copies of requests, the most recently used last."""

    def __init__(self, count=REMEMBERED_REQUESTS, bytes=REMEMBERED_BYTES):
        self.count = count
        self.limit = bytes
        self.bytes = 0
        self._entries = collections.OrderedDict()  # request -> (update, its bytes)

    def __len__(self):
        return len(self._entries)

    def __contains__(self, request):
        return request in self._entries

    def __iter__(self):
        return iter(self._entries)

    def get(self, request):
        entry = self._entries.get(request)
        return entry[0] if entry is not None else None

    def remember(self, update):
        """
        Remember C{update} as the copy of its request if it is the earliest
        known; either way the request is now the most recently used.
        """
        request = update.request
        current = self._entries.get(request)
        if current is None or update.key < current[0].key:
            size = rememberedBytes(update)
            self.bytes += size - (current[1] if current is not None else 0)
            self._entries[request] = (update, size)
        self._entries.move_to_end(request)
        while len(self._entries) > self.count or (self.bytes > self.limit
                                                  and len(self._entries) > 1):
            self.forgetOldest()

    def forgetOldest(self):
        """Forget the least recently used request."""
        _, (_, size) = self._entries.popitem(last=False)
        self.bytes -= size

    def emptied(self):
        """A new, empty memory with the same bounds."""
        return RememberedRequests(self.count, self.limit)
