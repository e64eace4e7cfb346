"""
The HTML pages, as twisted.web.template elements over the XHTML files in
C{templates/}.  The flattener escapes every string it is given, so a post,
a user name or a message can never become markup; nothing here builds HTML
by hand, and the pages carry no inline script or style.
"""

import time

from twisted.python.filepath import FilePath
from twisted.web.template import Element, XMLFile, renderer, tags

from snstwist.core.pages import parseListToken

TEMPLATES = FilePath(__file__).sibling("templates")


def _template(name):
    return XMLFile(TEMPLATES.child(name))


def clock(seconds):
    """An event's time as a person reads it: local, to the millisecond."""
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + ".%03d" % (
        int(seconds * 1000) % 1000,)


class _Page(Element):
    """What every page has: the visit's CSRF token and its one-time message."""

    def __init__(self, visit=None, flash=""):
        Element.__init__(self)
        self.visit = visit
        self.note = flash

    @renderer
    def csrf(self, request, tag):
        return tags.input(type="hidden", name="csrf", value=self.visit.csrf)

    @renderer
    def flash(self, request, tag):
        if not self.note:
            tag(hidden="hidden")
        return tag(self.note)


class SignInPage(_Page):
    loader = _template("signin.xml")


class MessagePage(_Page):
    loader = _template("message.xml")

    @renderer
    def message(self, request, tag):
        return tag(self.note)


class TimelinePage(_Page):
    """The person's timeline: newest post first; C{listing} is a ListReply or None."""

    loader = _template("timeline.xml")

    def __init__(self, visit, flash, listing, lines):
        _Page.__init__(self, visit, flash)
        self.person = visit.person
        self.listing = listing
        self.lines = lines

    @renderer
    def user(self, request, tag):
        return tag(self.person.user)

    @renderer
    def status(self, request, tag):
        if not self.person.status:
            tag(hidden="hidden")
        return tag(self.person.status)

    def _names(self, field, which):
        """The names of the first LIST page, and "..." if that list goes on."""
        if self.listing is None:
            return "?"
        names = ", ".join(getattr(self.listing, field))
        token = self.listing.next_page_token
        if token and getattr(parseListToken(token), which) is not None:
            names += ", ..."
        return names

    @renderer
    def users(self, request, tag):
        return tag(self._names("all_users", "users"))

    @renderer
    def followers(self, request, tag):
        return tag(self._names("followers", "followers"))

    @renderer
    def posts(self, request, tag):
        return [tags.li(post["line"], **{"data-sns": "post", "data-id": post["id"]})
                for post in self.lines]


class ClusterPage(Element):
    """The dashboard as it is now; its script keeps it live."""

    loader = _template("cluster.xml")

    def __init__(self, snapshot):
        Element.__init__(self)
        self.snapshot = snapshot

    @renderer
    def router(self, request, tag):
        return tag("router " + self.snapshot["router"] if self.snapshot["router"] else "")

    @renderer
    def error(self, request, tag):
        if not self.snapshot["error"]:
            tag(hidden="hidden")
        return tag(self.snapshot["error"])

    @renderer
    def servers(self, request, tag):
        rows = []
        for s in self.snapshot["servers"]:
            rows.append(tags.tr(
                [tags.td(str(s[k])) for k in ("vm", "role", "pid", "address", "clients",
                                              "updates", "lag")],
                tags.td("%.1fs ago" % (s["seen"],)),
                **{"data-sns": "vm", "data-vm": s["vm"], "data-role": s["role"],
                   "class": s["role"]}))
        for vm in self.snapshot["down"]:
            rows.append(tags.tr(tags.td(vm), tags.td("down", colspan="7"),
                                **{"data-sns": "vm", "data-vm": vm, "data-role": "down",
                                   "class": "down"}))
        return rows

    @renderer
    def events(self, request, tag):
        return [tags.li(tags.time(clock(e["time"])), " ", e["text"],
                        **{"data-sns": "event", "data-kind": e["kind"],
                           "class": "event-" + e["kind"]})
                for e in self.snapshot["events"]]

    @renderer
    def postsPath(self, request, tag):
        return tag(d=self.snapshot["chart"]["posts"])

    @renderer
    def lagPath(self, request, tag):
        return tag(d=self.snapshot["chart"]["lag"])

    @renderer
    def postsTop(self, request, tag):
        return tag("%s posts/s" % (self.snapshot["chart"]["postsTop"],))

    @renderer
    def lagTop(self, request, tag):
        return tag("lag %s" % (self.snapshot["chart"]["lagTop"],))
