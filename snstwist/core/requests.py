"""
The requests a replica remembers: (requester, request id) -> the earliest
update of that request known, for the requests seen last.  Bounded in count
(L{REMEMBERED_REQUESTS}) and in bytes (L{REMEMBERED_BYTES}): past either,
the least recently used are forgotten first, and the store answers for them
(L{snstwist.core.history.History.knowRequests}).

Most requests a master sees are new, and proving that without the disk is
what L{RememberedRequests.isNew} is for.  For each requester it may hold a
floor: a request id that every id of that requester's requests stored here
and not remembered compares at most equal to (as strings).  A floor is
learnt from the store (the greatest request id it holds of that requester,
L{RememberedRequests.learnFloor}) and raised past each id forgotten since;
every copy applied since is remembered until forgotten.  So a request id
above its requester's floor and not remembered has no copy here.  Clients
make their ids grow with time (L{snstwist.client.client.requestId}): each
new one is above the floor and needs no lookup; a retry of one forgotten,
or stored before this memory began, is not, and the store answers for it.
Ids of any other shape are looked up as before: the rule is about strings,
not about what a client put in them.
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
        # requester -> the greatest id of its requests stored and not
        # remembered, as the store said it (and raised by what was forgotten
        # since); a requester without one is looked up.  Both are bounded by
        # the users.
        self._floors = {}
        # requester -> the greatest of its request ids forgotten here.
        self._forgotten = {}

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
        (requester, requestId), (_, size) = self._entries.popitem(last=False)
        self.bytes -= size
        if requestId > self._forgotten.get(requester, ""):
            self._forgotten[requester] = requestId
            if requester in self._floors and requestId > self._floors[requester]:
                self._floors[requester] = requestId

    def isNew(self, request):
        """
        Is C{request} ((requester, request id)) surely not stored here, nor
        remembered: its id above its requester's floor?  False means "ask
        the store", not "stored".
        """
        requester, requestId = request
        floor = self._floors.get(requester)
        return floor is not None and requestId > floor and request not in self._entries

    def knowsFloor(self, requester):
        return requester in self._floors

    def learnFloor(self, requester, greatest):
        """
        The store, read after this memory began, holds no request of
        C{requester} with an id above C{greatest} ("" for none): what this
        memory does not remember of it is at most that, or forgotten.
        """
        floor = max(greatest, self._forgotten.get(requester, ""), self._floors.get(requester, ""))
        self._floors[requester] = floor

    def emptied(self):
        """A new, empty memory with the same bounds."""
        return RememberedRequests(self.count, self.limit)


class WritingRequests:
    """
    The copies of requests a node is writing (not on disk yet), the earliest
    of each request: memory may forget a request before its copy is on
    disk, where a lookup (which sees what is committed) would find it.
    """

    def __init__(self):
        self._copies = {}  # (requester, request id) -> update

    def started(self, updates):
        """C{updates} are being written: what L{finished} takes once they are."""
        requested = [(u.request, u) for u in updates if u.request_id]
        for request, u in requested:
            earlier = self._copies.get(request)
            if earlier is None or u.key < earlier.key:
                self._copies[request] = u
        return requested

    def finished(self, requested):
        for request, u in requested:
            if self._copies.get(request) is u:
                del self._copies[request]

    def copyOf(self, request):
        """The earliest copy of C{request} being written, or None."""
        return self._copies.get(request)
