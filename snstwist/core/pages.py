"""
Pages of names: how LIST and the digest send more names than one message
holds.

A page begins after the last name of the page before it, by name and not
by offset, so a name added between two pages (a user signing up) is either
in a later page or, if it sorts before the boundary, in none: never in two.
Both ends use this module: the servers to read a page token and write the
next, the client library and C{sns-compare} to walk the pages.  Pure
values and functions: no I/O.
"""

import attrs

from snstwist.core import errors
from snstwist.core.limits import MAX_PAGE_TOKEN, USERNAME, excerpt

# A LIST page token is "<users part>/<followers part>"; each part is one of:
FIRST = ""   # from the first name
DONE = "*"   # this list was sent whole
AFTER = ">"  # followed by the last name sent: from the name after it


@attrs.frozen
class ListPosition:
    """Where the next LIST page begins in each list: a name to go past, or None (done)."""

    users: str | None = FIRST
    followers: str | None = FIRST

    def done(self):
        return self.users is None and self.followers is None


def checkDigestAfter(after):
    """Where a digest page begins: "" or a post file's name (C{<user>.txt})."""
    if not isinstance(after, str) or not (
            after == "" or (after.endswith(".txt") and USERNAME.match(after[:-4]))):
        raise errors.InvalidRequest("invalid page start %s: give \"\" or the next of a digest"
                                    % (excerpt(after),))
    return after


def _part(text):
    if text == FIRST:
        return FIRST
    if text == DONE:
        return None
    if text.startswith(AFTER) and USERNAME.match(text[1:]):
        return text[1:]
    raise ValueError(text)


def parseListToken(token):
    """The L{ListPosition} a page token names; INVALID_ARGUMENT if it names none."""
    if not isinstance(token, str) or len(token) > MAX_PAGE_TOKEN:
        raise errors.InvalidRequest("a page token is at most %d characters"
                                    % (MAX_PAGE_TOKEN,))
    if token == "":
        return ListPosition()
    try:
        users, followers = token.split("/")
        return ListPosition(_part(users), _part(followers))
    except ValueError:
        raise errors.InvalidRequest(
            "invalid page token %s: give the next_page_token of a LIST reply"
            % (excerpt(token),))


def _partToken(page, more):
    return AFTER + page[-1] if more else DONE


def nextListToken(users, moreUsers, followers, moreFollowers):
    """
    The token of the page after one that sent C{users} and C{followers}
    (each with whether more of its list follow); "" when both lists are done.
    """
    if not moreUsers and not moreFollowers:
        return ""
    return _partToken(users, moreUsers) + "/" + _partToken(followers, moreFollowers)


class Listing:
    """
    The pages of one LIST put together, as one reply would have held them.
    Each page's names must come after the names before them (a page
    boundary is a name): one that does not (a server not paging, or a
    broken one) is left out rather than shown twice.  L{add} returns the
    token of the next page to ask for, or None when there is none.
    """

    def __init__(self, reply):
        self.reply = reply
        self.asked = {""}

    def add(self, page):
        for mine, theirs in ((self.reply.all_users, page.all_users),
                             (self.reply.followers, page.followers)):
            last = mine[-1] if mine else ""
            for name in theirs:
                if name > last:
                    mine.append(name)
                    last = name
        token = page.next_page_token
        if not token or token in self.asked:
            # The last page; or one that sends us back to a page we had.
            return None
        self.asked.add(token)
        return token
