"""
LIST from the client library: one page, or every page put together, as
one reply would have held them (L{snstwist.core.pages}).
"""

from twisted.internet import defer

from snstwist.core.pages import Listing
from snstwist.rpc import sns_pb2 as pb


class Lists:
    """The LIST command of L{snstwist.client.client.Client}, which runs C{_command}."""

    def listPage(self, token=""):
        """One page of LIST (a ListReply): the first, or the one C{token} names."""
        return self._command("List", pb.ListRequest(page_token=token))

    def list(self):
        """LIST whole: every page asked for in turn and put together in one ListReply."""
        return defer.ensureDeferred(self._everyPage())

    async def _everyPage(self):
        listing = Listing(pb.ListReply())
        token = listing.add(await self.listPage())
        while token is not None:
            token = listing.add(await self.listPage(token))
        return listing.reply
