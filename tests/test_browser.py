"""
sns-web in a real browser (headless Chromium, see tests/browser.py) against
a real sns-cluster: people sign in, follow, post and see posts arrive live;
a master is SIGKILLed and the pages go on without a reload; a post of markup
shows as text; the dashboard shows the promotion and the new slave.

Set SNS_SCREENSHOTS=DIR to keep the screenshots (the README's
docs/timeline.png and docs/cluster.png come from here).
"""

import os
import signal
import time

from twisted.internet import reactor
from twisted.logger import Logger
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from snstwist.rpc import sns_pb2 as pb
from tests.browser import Browser, unavailable
from tests.processes import Cluster, killPid, masterOf, waitUntil
from tests.test_integration import inlineAsync

log = Logger()

SKIP = unavailable()
MARK = "window.snsMark"


# -- what a person does on a page (these run on the browser's thread)

def signIn(page, url, user):
    page.goto(url)
    page.fill("[data-sns=user]", user)
    page.fill("[data-sns=password]", "secret of " + user)
    page.click("[data-sns=signin]")
    page.wait_for_selector("[data-sns=me]")
    page.wait_for_selector("[data-sns=live].on")


def follow(page, name):
    page.fill("[data-sns=follow-name]", name)
    page.click("[data-sns=follow-submit]")
    page.wait_for_selector("[data-sns=flash]:has-text('Command completed successfully')")
    page.wait_for_selector("[data-sns=live].on")


def post(page, text):
    page.fill("[data-sns=post-text]", text)
    page.click("[data-sns=post-submit]")
    page.wait_for_selector("[data-sns=live].on")


def postLine(page, text):
    """Wait for the post holding C{text}; its element's text."""
    item = page.locator("[data-sns=post]", has_text=text)
    item.wait_for()
    return item.text_content()


def count(page, selector):
    return page.locator(selector).count()


def mark(page):
    """Something only this page load has: a reload would lose it."""
    page.evaluate(MARK + " = 42")


def marked(page):
    return page.evaluate(MARK) == 42


def screenshot(page, name):
    where = os.environ.get("SNS_SCREENSHOTS")
    if where:
        page.screenshot(path=os.path.join(where, name), full_page=True)


class BrowserTestCase(unittest.TestCase):
    timeout = 240
    if SKIP:
        skip = SKIP

    async def start(self):
        self.cluster = await Cluster(self, vms=2, web=True).start()
        self.url = "http://%s/" % (self.cluster.web,)
        self.web = self.cluster.web

        async def answers():
            try:
                response = await Agent(reactor).request(b"GET", self.url.encode())
                await readBody(response)
                return response.code == 200
            except Exception:
                return False

        await waitUntil(answers, "sns-web to answer")
        self.browser = Browser()
        self.addCleanup(self.browser.stop)
        await self.browser.start()

    async def page(self, user=None):
        page = await self.browser.page()
        if user is not None:
            await self.browser.run(signIn, page, self.url, user)
        return page

    async def masterOf(self, user):
        """The master holding C{user}'s live session (that of sns-web's client)."""
        return await masterOf(self.cluster, user)


class TimelineTests(BrowserTestCase):
    @inlineAsync
    async def test_a_post_appears_live_on_a_followers_page_and_after_a_master_kill(self):
        """
        bob follows alice; alice's posts appear on bob's page as they are
        made, also after bob's master is SIGKILLed, with no reload.
        """
        await self.start()
        run = self.browser.run
        alice = await self.page("alice")
        bob = await self.page("bob")
        await run(follow, bob, "alice")
        await run(mark, bob)
        await run(post, alice, "hello from alice")
        line = await run(postLine, bob, "hello from alice")
        self.assertRegex(line, r"^alice \(\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\) >> "
                               r"hello from alice$")

        master = await self.masterOf("bob")
        killPid(master.pid, signal.SIGKILL)
        await run(post, alice, "after the kill")
        await run(postLine, bob, "after the kill")
        self.assertTrue(await run(marked, bob), "bob's page was reloaded")
        self.assertTrue(any(s.vm == master.vm and s.role == pb.MASTER and s.pid != master.pid
                            for s in (await self.cluster.status()).servers))
        await run(screenshot, bob, "timeline.png")

    @inlineAsync
    async def test_a_script_post_shows_as_text(self):
        """Markup in a post is text, on the live page and on a fresh one."""
        await self.start()
        run = self.browser.run
        mallory = await self.page("mallory")
        victim = await self.page("victim")
        await run(follow, victim, "mallory")
        text = "<script>window.pwned = 1</script><b>bold</b><img src=x onerror=pwned=2>"
        await run(post, mallory, text)
        for page in (victim, mallory):
            line = await run(postLine, page, "<script>")
            self.assertTrue(line.endswith(" >> " + text), line)
            self.assertIsNone(await run(page.evaluate, "window.pwned"))
            self.assertEqual(await run(count, page, "[data-sns=posts] b, [data-sns=posts] img"),
                             0)


def signInWrongly(page, url, user):
    page.goto(url)
    page.fill("[data-sns=user]", user)
    page.fill("[data-sns=password]", "not the secret of " + user)
    page.click("[data-sns=signin]")
    # The sign-in page again, this time with its message shown.
    return page.wait_for_selector("[data-sns=flash]:not([hidden])").text_content()


class PasswordTests(BrowserTestCase):
    @inlineAsync
    async def test_a_wrong_password_is_refused_in_the_clis_words(self):
        """The first sign-in made the account; a wrong password is refused."""
        await self.start()
        await self.page("carol")
        intruder = await self.page()
        flash = await self.browser.run(signInWrongly, intruder, self.url, "carol")
        self.assertEqual(flash, "Command failed with invalid password")
        self.assertEqual(await self.browser.run(count, intruder, "[data-sns=me]"), 0)


class DashboardTests(BrowserTestCase):
    @inlineAsync
    async def test_the_dashboard_shows_a_master_kill_the_promotion_and_the_new_slave(self):
        """
        Kill vm1's master: the open dashboard shows its slave promoted and a
        new slave, live, without a reload.
        """
        await self.start()
        run = self.browser.run
        writer = await self.page("writer")
        for n in range(5):
            await run(post, writer, "post %d" % (n,))
        page = await self.page()
        await run(page.goto, self.url + "cluster")
        await run(page.wait_for_selector, "[data-sns=live].on")
        # Both VMs' slaves registered (and so in the router's status below).
        for vm in ("vm1", "vm2"):
            await run(page.wait_for_selector,
                      "tr[data-sns=vm][data-vm=%s][data-role=slave]" % (vm,))
        await run(mark, page)
        servers = {(s.vm, s.role): s for s in (await self.cluster.status()).servers}
        master, slave = servers["vm1", pb.MASTER], servers["vm1", pb.SLAVE]

        killed = time.time()
        killPid(master.pid, signal.SIGKILL)
        await run(page.wait_for_selector,
                  "[data-sns=event][data-kind=promoted]:has-text('slave %d promoted')"
                  % (slave.pid,))
        promotedSeen = time.time()
        await run(page.wait_for_selector,
                  "tr[data-vm=vm1][data-role=master]:has(td:text-is('%d'))" % (slave.pid,))
        await run(page.wait_for_selector, "[data-sns=event][data-kind=respawned]")
        await run(page.wait_for_selector, "tr[data-vm=vm1][data-role=slave]")
        slaveSeen = time.time()
        self.assertTrue(await run(marked, page), "the dashboard was reloaded")
        newSlave = await run(lambda: page.locator(
            "tr[data-vm=vm1][data-role=slave] td:nth-child(3)").text_content())
        self.assertNotIn(int(newSlave), (master.pid, slave.pid))

        status = await self.cluster.status()
        events = {e.kind: e.time for e in status.events if e.vm == "vm1"}
        log.info("master kill on the dashboard: router saw deactivation +{d:.0f} ms,"
                 " promotion +{p:.0f} ms, new slave +{r:.0f} ms; the page showed the"
                 " promotion at +{ps:.0f} ms and the new slave at +{rs:.0f} ms",
                 d=1000 * (events["deactivated"] - killed),
                 p=1000 * (events["promoted"] - killed),
                 r=1000 * (events["respawned"] - killed),
                 ps=1000 * (promotedSeen - killed), rs=1000 * (slaveSeen - killed))
        await run(screenshot, page, "cluster.png")
