"""Headless Debian Chromium driven by Playwright, with every non-loopback request blocked."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Route, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # Belt and braces beside the request routing: no host name resolves but loopback.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]
LOOPBACK = {"127.0.0.1", "localhost"}
LOCAL_SCHEMES = {"file", "data", "blob", "about"}


@dataclass
class OfflinePage:
    page: Page
    blocked: list[str] = field(default_factory=list)

    def route(self, route: Route) -> None:
        url = urlsplit(route.request.url)
        if url.scheme in LOCAL_SCHEMES or url.hostname in LOOPBACK:
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort("blockedbyclient")


@contextmanager
def offline_page(width: int = 1400, height: int = 1000) -> Iterator[OfflinePage]:
    """A page of the system Chromium (never a Playwright download) that can reach only
    loopback and local files; `blocked` lists what it tried to fetch from elsewhere."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs the Debian package chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = browser.new_context(
                viewport={"width": width, "height": height}, service_workers="block"
            )
            offline = OfflinePage(context.new_page())
            context.route("**/*", offline.route)
            yield offline
        finally:
            browser.close()
