"""
The site of C{sns-web}: its resources, its forms and its safety headers.

    GET  /                 sign-in page, or the timeline once signed in
    POST /signin           user (and password): sign in
    POST /signout
    POST /post             text: post it
    POST /follow           name, action=follow|unfollow
    GET  /live/timeline    Server-Sent Events: the person's new posts
    GET  /cluster          the dashboard
    GET  /live/cluster     Server-Sent Events: the cluster, four times a second
    GET  /static/...       the style sheet and the scripts

Every response carries a Content-Security-Policy that allows scripts,
styles and connections to this site only (and no inline script at all);
every POST must carry the visit's CSRF token; request bodies are bounded.
"""


from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.filepath import FilePath
from twisted.web import resource, server, static
from twisted.web.template import renderElement

from snstwist.client.client import CommandFailed
from snstwist.commands.cli import INVALID_USERNAME
from snstwist.core.limits import MAX_CONNECTIONS_PER_ADDRESS
from snstwist.web import live, pages
from snstwist.web.dashboard import ClusterWatch
from snstwist.web.people import STREAMS_PER_PERSON, SignInFailed, Visits, postData, sentence

log = Logger()

STATIC = FilePath(__file__).sibling("static")
MAX_BODY = 16 * 1024
TIMELINE_STREAMS = 400
CLUSTER_STREAMS = 32

SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        b" connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"same-origin",
    b"cross-origin-opener-policy": b"same-origin",
}


class SafeRequest(server.Request):
    """
    A request whose response always carries L{SECURITY_HEADERS}, and whose
    body is refused past L{MAX_BODY} bytes (413) instead of being buffered.
    """

    bodySize = 0
    tooLarge = False

    def gotLength(self, length):
        if length is not None and length > MAX_BODY:
            self.tooLarge = True
            length = 0
        server.Request.gotLength(self, length)

    def handleContentChunk(self, data):
        self.bodySize += len(data)
        if self.bodySize > MAX_BODY:
            self.tooLarge = True
        if not self.tooLarge:
            server.Request.handleContentChunk(self, data)

    def process(self):
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        if self.tooLarge:
            self.setResponseCode(413)
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            self.write(b"request body too large\n")
            self.finish()
            return
        server.Request.process(self)


def formValue(request, name):
    """A form field as text ('' when absent or not UTF-8)."""
    raw = request.args.get(name.encode("ascii"), [b""])[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return ""


def redirect(request, where=b"/"):
    request.setResponseCode(303)
    request.setHeader(b"location", where)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.write(b"see " + where + b"\n")
    request.finish()


def page(request, element, code=200):
    request.setResponseCode(code)
    request.setHeader(b"cache-control", b"no-store")
    return renderElement(request, element)


def respond(request, work):
    """
    Run the coroutine C{work} for C{request}; a crash becomes a 500 page
    (and a log line), a browser gone meanwhile is simply not answered.
    """
    finished = []
    request.notifyFinish().addBoth(finished.append)

    def crashed(failure):
        log.failure("handling {uri} failed", failure, uri=request.uri)
        if not finished:
            page(request, pages.MessagePage(flash="Something went wrong here; try again"),
                 code=500)

    defer.ensureDeferred(work).addErrback(crashed)
    return server.NOT_DONE_YET


class _Site(resource.Resource):
    """A resource of this site, knowing the application."""

    def __init__(self, app):
        resource.Resource.__init__(self)
        self.app = app


class _Form(_Site):
    """A POST form: refused without the visit's CSRF token."""

    isLeaf = True
    needsPerson = True

    def render_POST(self, request):
        visit = self.app.visits.find(request)
        if visit is None or not visit.checkCsrf(formValue(request, "csrf")):
            request.setHeader(b"cache-control", b"no-store")
            return page(request, pages.MessagePage(
                flash="This form has expired: go back, reload the page and try again"),
                code=403)
        if self.needsPerson and visit.person is None:
            return redirect(request)
        return respond(request, self.handle(request, visit))


class SignIn(_Form):
    needsPerson = False

    async def handle(self, request, visit):
        try:
            await self.app.visits.signIn(request, visit, formValue(request, "user"),
                                         formValue(request, "password"))
        except SignInFailed as e:
            visit.flash = str(e)
        redirect(request)


class SignOut(_Form):
    needsPerson = False

    async def handle(self, request, visit):
        await self.app.visits.signOut(visit)
        redirect(request)


class Post(_Form):
    async def handle(self, request, visit):
        text = formValue(request, "text")
        if text.strip():
            try:
                await visit.person.client.post(text)
            except Exception as e:
                # What the cluster said, as the CLI says it in timeline mode:
                # a post's INVALID_ARGUMENT is its length, not a username.
                refused = type(e) is CommandFailed
                visit.flash = "Post failed: " + (e.message if refused else sentence(e))
        redirect(request)


class Follow(_Form):
    async def handle(self, request, visit):
        person = visit.person
        name = formValue(request, "name").strip()
        action = formValue(request, "action")
        if action not in ("follow", "unfollow"):
            visit.flash = "Command failed with invalid command"
        elif name == person.user or not name or len(name) > 32:
            visit.flash = INVALID_USERNAME
        else:
            method = person.client.follow if action == "follow" else person.client.unfollow
            try:
                await method(name)
                visit.flash = "Command completed successfully"
            except Exception as e:
                visit.flash = sentence(e, action.upper())
        redirect(request)


class Home(_Site):
    """The sign-in page, or the timeline of the person signed in."""

    isLeaf = True

    def render_GET(self, request):
        visit = self.app.visits.visit(request)
        if visit.person is None:
            return page(request, pages.SignInPage(visit, visit.takeFlash()))
        return respond(request, self._timeline(request, visit))

    async def _timeline(self, request, visit):
        try:
            # The first page only: a page is the most a person reads here.
            listing = await visit.person.client.listPage()
        except Exception as e:
            listing = None
            visit.flash = visit.flash or sentence(e)
        lines = [postData(p) for p in visit.person.newest()]
        page(request, pages.TimelinePage(visit, visit.takeFlash(), listing, lines))


class TimelineStream(_Site):
    isLeaf = True

    def render_GET(self, request):
        visit = self.app.visits.find(request)
        if visit is None or visit.person is None:
            request.setResponseCode(401)
            return b"sign in first\n"
        person = visit.person
        try:
            stream = self.app.timelineStreams.open(request, person.streams,
                                                   STREAMS_PER_PERSON)
        except live.TooManyStreams as e:
            request.setResponseCode(503)
            return ("%s\n" % (e,)).encode()
        # What the page may have missed between its rendering and now; the
        # page skips the posts it shows already.
        for post in person.posts:
            stream.send("post", postData(post))
        stream.send("status", {"text": person.status})
        return server.NOT_DONE_YET


class Cluster(_Site):
    isLeaf = True

    def render_GET(self, request):
        return page(request, pages.ClusterPage(self.app.watch.snapshot()))


class ClusterStream(_Site):
    isLeaf = True

    def render_GET(self, request):
        try:
            stream = self.app.clusterStreams.open(request)
        except live.TooManyStreams as e:
            request.setResponseCode(503)
            return ("%s\n" % (e,)).encode()
        stream.send("cluster", self.app.watch.snapshot())
        return server.NOT_DONE_YET


class Static(static.File):
    """The static files, without directory listings."""

    def directoryListing(self):
        return resource.NoResource()


class PerAddress(WrappingFactory):
    """
    C{factory}'s connections, at most C{limit} from one address: past it a
    new connection is closed as soon as it is accepted.
    """

    def __init__(self, factory, limit=MAX_CONNECTIONS_PER_ADDRESS):
        WrappingFactory.__init__(self, factory)
        self.limit = limit
        self.counts = {}

    def buildProtocol(self, addr):
        if self.counts.get(addr.host, 0) >= self.limit:
            log.warn("refused a connection from {host}: {n} open from it already",
                     host=addr.host, n=self.limit)
            return None
        self.counts[addr.host] = self.counts.get(addr.host, 0) + 1
        return WrappingFactory.buildProtocol(self, addr)

    def unregisterProtocol(self, p):
        WrappingFactory.unregisterProtocol(self, p)
        host = p.getPeer().host
        self.counts[host] -= 1
        if not self.counts[host]:
            del self.counts[host]


class WebService(MultiService):
    """C{sns-web}: the site on C{listen}, a client of the cluster at C{routers}."""

    def __init__(self, listen, routers, secret, makeClient, reactor):
        MultiService.__init__(self)
        self.listen = listen
        self.reactor = reactor
        self.port = None
        self.visits = Visits(reactor, makeClient)
        self.visits.setServiceParent(self)
        self.timelineStreams = live.Streams(TIMELINE_STREAMS, reactor)
        self.timelineStreams.setServiceParent(self)
        self.clusterStreams = live.Streams(CLUSTER_STREAMS, reactor)
        self.clusterStreams.setServiceParent(self)
        self.watch = ClusterWatch(routers, secret, reactor,
                                  lambda snapshot: self.clusterStreams.send("cluster", snapshot),
                                  lambda: len(self.clusterStreams) > 0)
        self.watch.setServiceParent(self)

    def root(self):
        root = resource.Resource()
        root.putChild(b"", Home(self))
        for name, child in ((b"signin", SignIn), (b"signout", SignOut), (b"post", Post),
                            (b"follow", Follow), (b"cluster", Cluster)):
            root.putChild(name, child(self))
        livePart = resource.Resource()
        livePart.putChild(b"timeline", TimelineStream(self))
        livePart.putChild(b"cluster", ClusterStream(self))
        root.putChild(b"live", livePart)
        root.putChild(b"static", Static(STATIC.path))
        return root

    def startService(self):
        MultiService.startService(self)
        site = server.Site(self.root())
        site.requestFactory = SafeRequest
        site.displayTracebacks = False
        host, port = self.listen.rsplit(":", 1)
        self.port = self.reactor.listenTCP(int(port), PerAddress(site),
                                           interface=host.strip("[]"))
        log.info("sns-web at {url}", url=self.url)

    @property
    def url(self):
        host = self.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "", "::", "[::]"):
            host = "127.0.0.1"
        return "http://%s:%d/" % (host, self.port.getHost().port)

    def stopService(self):
        d = defer.maybeDeferred(MultiService.stopService, self)
        if self.port is not None:
            port, self.port = self.port, None
            d.addCallback(lambda _: port.stopListening())
        return d


