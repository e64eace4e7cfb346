"""
Headless Chromium for the browser tests, driven by Playwright's sync API.

Playwright's sync objects belong to the thread that made them and block it,
so every browser call runs on one thread of its own (L{Browser.run}) and
comes back to the reactor as a Deferred: the reactor (and the cluster the
test talks to through it) never waits on the browser.

The browser is Debian's C{chromium} package at L{CHROMIUM} (C{.ci/run}
installs it); without it, or without Playwright, L{unavailable} says why in
one line and the browser tests skip.
"""

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from twisted.internet import defer

CHROMIUM = os.environ.get("SNS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage"]
WAIT_MS = 30000


def unavailable():
    """Why no browser test can run here, or None when one can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no Playwright for Python (pip install playwright): browser tests skipped"
    if not os.access(CHROMIUM, os.X_OK):
        return "no Chromium at %s (apt-get install chromium): browser tests skipped" % (
            CHROMIUM,)
    return None


class Browser:
    """One headless Chromium; each L{page} has its own cookies (a person of its own)."""

    def __init__(self):
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="browser")
        self.playwright = None
        self.chromium = None

    def run(self, function, *args):
        """Run C{function(*args)} on the browser's thread; a Deferred of its result."""
        future = self.thread.submit(function, *args)
        return defer.Deferred.fromFuture(asyncio.wrap_future(future))

    def start(self):
        def launch():
            from playwright.sync_api import sync_playwright
            self.playwright = sync_playwright().start()
            self.chromium = self.playwright.chromium.launch(
                executable_path=CHROMIUM, args=ARGS, headless=True)
        return self.run(launch)

    def page(self, width=1000, height=700):
        def make():
            context = self.chromium.new_context(viewport={"width": width, "height": height})
            context.set_default_timeout(WAIT_MS)
            return context.new_page()
        return self.run(make)

    @defer.inlineCallbacks
    def stop(self):
        def close():
            if self.chromium is not None:
                self.chromium.close()
            if self.playwright is not None:
                self.playwright.stop()
        try:
            yield self.run(close)
        finally:
            self.thread.shutdown(wait=False)
