"""
sns-web in this process, over real HTTP on 127.0.0.1, with a fake cluster
client (the real one is exercised by the browser tests): safety headers,
cookies, CSRF, escaping, the CLI's sentences, bounds, live streams; and the
dashboard's view of a fake router.
"""

import re
from io import BytesIO
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from snstwist.client.client import CommandFailed, InvalidPassword
from snstwist.core import errors
from snstwist.core.model import Post
from snstwist.rpc import sns_pb2 as pb
from snstwist.rpc import sns_pb2_grpc as pbg
from snstwist.web import app, dashboard, live, people
from tests.test_grpcbridge import GrpcTestCase, servicer
from tests.test_integration import inlineAsync


class FakeClient:
    """What sns-web asks of snstwist.client.client.Client, in memory."""

    users = {"alice", "bob"}

    def __init__(self, user, password=""):
        self.user = user
        self.password = password
        self.onPost = self.onReconnect = None
        self.posts = []
        self.closed = False

    def connect(self):
        if self.password == "wrong":
            return defer.fail(InvalidPassword(errors.Status.UNAUTHENTICATED, "wrong password"))
        self.users.add(self.user)
        return defer.succeed(pb.LoginReply())

    def timeline(self):
        return defer.succeed(None)

    def post(self, text):
        if len(text) > 1000:  # as the cluster refuses it
            return defer.fail(CommandFailed(errors.Status.INVALID_ARGUMENT,
                                            "a post is 1-1000 characters (got %d)" % (len(text),)))
        post = Post("vm1.x/%d" % (len(self.posts) + 1,), self.user,
                    1795984727000000 + len(self.posts), text)
        self.posts.append(post)
        self.onPost(post)
        return defer.succeed(pb.WriteReply(copies=2))

    def follow(self, name):
        if name == "crowd":  # FOLLOW at the bound; UNFOLLOW of one not followed
            return defer.fail(CommandFailed(errors.Status.FAILED_PRECONDITION, "refused"))
        if name not in self.users:
            return defer.fail(CommandFailed(errors.Status.NOT_FOUND, "no such user"))
        return defer.succeed(pb.WriteReply(copies=2))

    unfollow = follow

    more = ""  # the first LIST page's next_page_token

    def listPage(self, token=""):
        return defer.succeed(pb.ListReply(all_users=sorted(self.users), followers=["bob"],
                                          next_page_token=self.more))

    def close(self):
        self.closed = True
        return defer.succeed(None)


class Browser:
    """A tiny HTTP client with a cookie jar, enough to drive the forms."""

    def __init__(self, url):
        self.url = url
        self.cookies = {}
        self.agent = Agent(reactor)

    async def request(self, method, path, form=None, headers=None):
        h = Headers(headers or {})
        if self.cookies:
            h.addRawHeader(b"cookie", b"; ".join(b"%s=%s" % kv for kv in self.cookies.items()))
        body = None
        if form is not None:
            h.addRawHeader(b"content-type", b"application/x-www-form-urlencoded")
            body = FileBodyProducer(BytesIO(urlencode(form).encode()))
        response = await self.agent.request(method, (self.url + path).encode(), h, body)
        for raw in response.headers.getRawHeaders(b"set-cookie", []):
            name, _, rest = raw.partition(b"=")
            self.cookies[name] = rest.split(b";")[0]
        response.text = (await readBody(response)).decode("utf-8")
        return response

    def get(self, path):
        return self.request(b"GET", path)

    def post(self, path, form):
        return self.request(b"POST", path, form)

    async def csrf(self, path="/"):
        page = await self.get(path)
        return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)

    async def signIn(self, user, password=""):
        token = await self.csrf()
        return await self.post("/signin", {"csrf": token, "user": user, "password": password})


class WebTestCase(unittest.TestCase):
    timeout = 20

    def setUp(self):
        self.clients = []

        def makeClient(user, password):
            client = FakeClient(user, password)
            self.clients.append(client)
            return client

        # No router answers on port 1: the dashboard says so.
        self.service = app.WebService("127.0.0.1:0", ["127.0.0.1:1"], "s", makeClient, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.url = self.service.url.rstrip("/")

    def browser(self):
        return Browser(self.url)


class SafetyTests(WebTestCase):
    @inlineAsync
    async def test_every_page_has_a_content_security_policy_and_no_inline_script(self):
        b = self.browser()
        await b.signIn("alice")
        for path in ("/", "/cluster", "/nowhere", "/static/timeline.js"):
            response = await b.get(path)
            csp = response.headers.getRawHeaders(b"content-security-policy")[0].decode()
            self.assertIn("script-src 'self'", csp)
            self.assertNotIn("unsafe-inline", csp)
            self.assertEqual(response.headers.getRawHeaders(b"x-content-type-options"),
                             [b"nosniff"])
            self.assertIsNone(re.search(r"<script(?![^>]*\ssrc=)", response.text), path)
            self.assertIsNone(re.search(r"\son[a-z]+=|\sstyle=", response.text), path)

    @inlineAsync
    async def test_the_visit_cookie_is_httponly_and_samesite_strict(self):
        response = await self.browser().get("/")
        (cookie,) = response.headers.getRawHeaders(b"set-cookie")
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"SameSite=strict", cookie)
        self.assertTrue(cookie.startswith(people.COOKIE + b"="))

    @inlineAsync
    async def test_a_form_without_the_csrf_token_is_refused_and_does_nothing(self):
        b = self.browser()
        await b.signIn("alice")
        for token in ("", "forged"):
            response = await b.post("/post", {"csrf": token, "text": "not me"})
            self.assertEqual(response.code, 403)
        self.assertEqual(self.clients[0].posts, [])

    @inlineAsync
    async def test_a_token_from_another_visit_is_refused(self):
        mallory = self.browser()
        token = await mallory.csrf()
        alice = self.browser()
        await alice.signIn("alice")
        response = await alice.post("/post", {"csrf": token, "text": "not me"})
        self.assertEqual(response.code, 403)

    @inlineAsync
    async def test_signing_in_gives_the_visit_a_new_cookie(self):
        b = self.browser()
        await b.get("/")
        before = dict(b.cookies)
        await b.signIn("alice")
        self.assertNotEqual(b.cookies[people.COOKIE], before[people.COOKIE])

    @inlineAsync
    async def test_a_script_post_is_shown_as_text(self):
        b = self.browser()
        await b.signIn("alice")
        token = await b.csrf()
        await b.post("/post", {"csrf": token, "text": "<script>alert(1)</script>"})
        page = await b.get("/")
        self.assertIn("alice (", page.text)
        self.assertIn(") &gt;&gt; &lt;script&gt;alert(1)&lt;/script&gt;</li>", page.text)
        self.assertNotIn("<script>alert", page.text)

    @inlineAsync
    async def test_a_body_past_the_bound_is_refused(self):
        b = self.browser()
        await b.signIn("alice")
        token = await b.csrf()
        response = await b.post("/post", {"csrf": token, "text": "x" * (app.MAX_BODY + 1)})
        self.assertEqual(response.code, 413)
        self.assertEqual(self.clients[0].posts, [])


class TimelineTests(WebTestCase):
    @inlineAsync
    async def test_signed_in_page_shows_user_lists_and_posts_with_hooks(self):
        b = self.browser()
        await b.signIn("alice")
        token = await b.csrf()
        await b.post("/post", {"csrf": token, "text": "hello"})
        page = await b.get("/")
        for hook in ("post-text", "post-submit", "follow-name", "follow-submit",
                     "unfollow-submit", "post"):
            self.assertIn('data-sns="%s"' % (hook,), page.text)
        self.assertIn('<span data-sns="users">alice, bob</span>', page.text)
        self.assertIn('<span data-sns="followers">bob</span>', page.text)
        self.assertRegex(page.text, r'<li data-sns="post" data-id="vm1.x/1">alice \(\w{3} '
                                    r'\w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\) &gt;&gt; hello</li>')

    @inlineAsync
    async def test_a_list_longer_than_a_page_shows_the_first_page_and_dots(self):
        """The page shows LIST's first page only; a list that goes on ends in '...'."""
        self.patch(FakeClient, "more", ">bob/*")
        b = self.browser()
        await b.signIn("alice")
        page = await b.get("/")
        self.assertIn('<span data-sns="users">alice, bob, ...</span>', page.text)
        self.assertIn('<span data-sns="followers">bob</span>', page.text)

    @inlineAsync
    async def test_sign_in_page_has_its_hooks(self):
        page = await self.browser().get("/")
        for hook in ("user", "password", "signin"):
            self.assertIn('data-sns="%s"' % (hook,), page.text)

    @inlineAsync
    async def test_an_invalid_user_name_gets_the_clis_sentence(self):
        b = self.browser()
        await b.signIn("no spaces")
        page = await b.get("/")
        self.assertIn("Command failed with invalid username", page.text)
        self.assertEqual(self.clients, [])

    @inlineAsync
    async def test_a_wrong_password_gets_the_clis_sentence_and_no_person(self):
        b = self.browser()
        await b.signIn("alice", "wrong")
        page = await b.get("/")
        self.assertIn("Command failed with invalid password", page.text)
        self.assertIn('data-sns="signin"', page.text)
        self.assertTrue(self.clients[0].closed)

    @inlineAsync
    async def test_the_password_reaches_the_client(self):
        await self.browser().signIn("alice", "pass word")
        self.assertEqual(self.clients[0].password, "pass word")

    @inlineAsync
    async def test_following_gets_the_clis_sentences(self):
        b = self.browser()
        await b.signIn("alice")
        for name, action, sentence in (
                ("nobody", "follow", "Input username does not exists, command failed"),
                ("bob", "follow", "Command completed successfully"),
                ("alice", "follow", "Command failed with invalid username"),
                ("bob", "dance", "Command failed with invalid command"),
                ("crowd", "follow", "Command failed with too many follows"),
                ("crowd", "unfollow", "Command failed with not a follower")):
            token = await b.csrf()
            await b.post("/follow", {"csrf": token, "name": name, "action": action})
            page = await b.get("/")
            self.assertIn(sentence, page.text)

    @inlineAsync
    async def test_a_refused_post_says_why_as_the_cli_does(self):
        """A post the cluster refuses gets the CLI's timeline line: "Post failed: " and why."""
        b = self.browser()
        await b.signIn("alice")
        token = await b.csrf()
        await b.post("/post", {"csrf": token, "text": "x" * 1001})
        page = await b.get("/")
        self.assertIn("Post failed: a post is 1-1000 characters (got 1001)", page.text)
        self.assertNotIn("invalid username", page.text)
        self.assertEqual(self.clients[0].posts, [])

    @inlineAsync
    async def test_signing_out_closes_the_client(self):
        b = self.browser()
        await b.signIn("alice")
        token = await b.csrf()
        await b.post("/signout", {"csrf": token})
        self.assertTrue(self.clients[0].closed)
        self.assertIn('data-sns="signin"', (await b.get("/")).text)

    @inlineAsync
    async def test_the_live_stream_needs_a_person(self):
        response = await self.browser().get("/live/timeline")
        self.assertEqual(response.code, 401)


class FakeRequest:
    """Just enough of a request for an EventStream."""

    def __init__(self):
        self.written = []
        self.finished = False
        self.headers = {}
        self.channel = None
        self._finish = defer.Deferred()

    def setHeader(self, name, value):
        self.headers[name] = value

    def write(self, data):
        self.written.append(data)

    def notifyFinish(self):
        return self._finish

    def finish(self):
        self.finished = True
        self._finish.callback(None)


class StreamTests(unittest.SynchronousTestCase):
    def test_events_are_one_json_data_line_each(self):
        self.assertEqual(live.encode("post", {"line": "a\nb </script>"}),
                         b'event: post\ndata: {"line":"a\\nb </script>"}\n\n')

    def test_streams_are_bounded_in_all_and_per_person(self):
        streams = live.Streams(3, Clock())
        mine = set()
        streams.open(FakeRequest(), mine, 2)
        streams.open(FakeRequest(), mine, 2)
        self.assertRaises(live.TooManyStreams, streams.open, FakeRequest(), mine, 2)
        streams.open(FakeRequest())
        self.assertRaises(live.TooManyStreams, streams.open, FakeRequest())

    def test_a_browser_gone_frees_its_stream(self):
        streams = live.Streams(1, Clock())
        mine = set()
        request = FakeRequest()
        streams.open(request, mine, 1)
        request._finish.errback(Exception("connection lost"))
        self.assertEqual((len(streams), len(mine)), (0, 0))
        streams.open(FakeRequest(), mine, 1)

    def test_idle_streams_get_keep_alives(self):
        clock = Clock()
        streams = live.Streams(2, clock)
        streams.startService()
        request = FakeRequest()
        streams.open(request)
        clock.advance(live.KEEPALIVE)
        self.assertEqual(request.written[-1], b": keep-alive\n\n")
        streams.stopService()
        self.assertTrue(request.finished)


class PersonTests(unittest.SynchronousTestCase):
    def test_posts_are_kept_bounded_and_pushed_to_the_persons_streams(self):
        client = FakeClient("alice")
        person = people.Person(client)
        request = FakeRequest()
        live.Streams(5, Clock()).open(request, person.streams, 2)
        for n in range(25):
            client.post("post %d" % (n,))
        self.assertEqual(len(person.posts), 20)
        self.assertEqual(person.newest()[0].text, "post 24")
        self.assertIn(b'"line":"alice (', request.written[-1])

    def test_a_failover_is_shown_in_the_clis_words_until_posts_flow_again(self):
        client = FakeClient("alice")
        person = people.Person(client)
        client.onReconnect("127.0.0.3:4000")
        self.assertEqual(person.status, "Reconnecting to 127.0.0.3:4000...")
        request = FakeRequest()
        live.Streams(5, Clock()).open(request, person.streams, 2)
        client.post("back")
        self.assertEqual(person.status, "")
        self.assertEqual(request.written[1], b'event: status\ndata: {"text":""}\n\n')


class ChartTests(unittest.SynchronousTestCase):
    def test_the_scale_top_is_one_two_or_five_times_a_power_of_ten(self):
        self.assertEqual([dashboard.niceTop(v) for v in ([], [0.3], [1.5], [3], [7], [12],
                                                         [260])],
                         [1, 1, 2, 5, 10, 20, 500])

    def test_a_path_spans_the_window_right_to_left(self):
        d = dashboard.path([(0, 0), (dashboard.WINDOW, 10)], dashboard.WINDOW, 10)
        self.assertEqual(d, "M0.0,120.0 L600.0,0.0")


class DashboardTests(GrpcTestCase):
    def status(self, servers, events=()):
        return pb.StatusReply(servers=servers, events=events, time=1000, uptime=5)

    @inlineAsync
    async def test_the_snapshot_shows_servers_events_and_vms_gone(self):
        replies = [self.status(
            [pb.ServerInfo(vm="vm1", role=pb.MASTER, pid=1, address="a:1", incarnation="i1",
                           acknowledged=10, pending=3),
             pb.ServerInfo(vm="vm2", role=pb.MASTER, pid=2, address="b:1", incarnation="i2")],
            [pb.ClusterEvent(time=999, kind="live", vm="vm2", text="master of vm2 live")])]
        replies.append(self.status(
            [pb.ServerInfo(vm="vm1", role=pb.MASTER, pid=1, address="a:1", incarnation="i1",
                           acknowledged=30, pending=1)],
            [pb.ClusterEvent(time=1000.5, kind="deactivated", vm="vm2", text="gone")]))
        replies[1].time = 1002
        service, _ = await self.serve(
            lambda server, openStreams: pbg.add_RouterServicer_to_server(servicer(
                "Router", unary={"Status": lambda request, ctx: replies.pop(0)},
                openStreams=openStreams), server))
        published = []
        watch = dashboard.ClusterWatch([service.address], None, Clock(), published.append)
        await watch.poll()
        await watch.poll()
        snapshot = published[-1]
        self.assertEqual(snapshot["router"], service.address)
        self.assertEqual([(s["vm"], s["role"], s["lag"]) for s in snapshot["servers"]],
                         [("vm1", "master", 1)])
        self.assertEqual(snapshot["down"], ["vm2"])
        self.assertEqual(snapshot["events"], [
            {"time": 1000.5, "kind": "deactivated", "vm": "vm2", "text": "gone"}])
        self.assertEqual(list(watch.samples), [dashboard.Sample(1002, 10.0, 1)])
        await watch.stopService()

    @inlineAsync
    async def test_no_router_is_said_plainly(self):
        published = []
        watch = dashboard.ClusterWatch(["127.0.0.1:1"], None, Clock(), published.append)
        await watch.poll()
        self.assertIn("no router answers (127.0.0.1:1: ", published[-1]["error"])
        await watch.stopService()


class PollingTests(unittest.SynchronousTestCase):
    def test_the_router_is_polled_fast_only_while_someone_watches(self):
        clock = Clock()
        watching = [False]
        watch = dashboard.ClusterWatch([], None, clock, watched=lambda: watching[0])
        watch.startService()
        clock.advance(0)
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [dashboard.SAMPLE])
        watching[0] = True
        clock.advance(dashboard.SAMPLE)
        self.assertEqual([c.getTime() - clock.seconds() for c in clock.getDelayedCalls()],
                         [dashboard.POLL])
        self.successResultOf(watch.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])
