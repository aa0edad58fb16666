"""One browser tab on a server of the test project, for the browser tests:
what went wrong while it was open, screenshots, and logging in through
Django's form."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.live import USERS

FIRST_RENDER_MS = 45_000  # a fresh marimo kernel starts, runs, and renders
UPDATE_MS = 15_000


class Visit:
    """One browser tab, recording what went wrong while it was open."""

    def __init__(self, page, server, shots: Path) -> None:
        self.page = page
        self.server = server
        self.shots = shots
        self.origin = server.url
        self.problems: list[str] = []
        self.responses: list[tuple[int, str, str]] = []  # status, method, url
        self.websockets: list = []
        self.frames_received = 0
        self.last_shot: Path | None = None
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", self._request_failed)
        page.on("response", self._response)
        page.on("console", self._console)
        page.on("websocket", self._websocket)

    def _is_notebook_url(self, url: str) -> bool:
        return url.startswith(self.origin + "/notebooks/")

    def _request_failed(self, request) -> None:
        # Any failure counts: a request to another host means the page tried
        # to reach the internet, one to this host means the bridge broke it.
        self.problems.append(
            f"request failed: {request.method} {request.url} ({request.failure})"
        )

    def _response(self, response) -> None:
        self.responses.append((response.status, response.request.method, response.url))
        if response.status >= 400 and self._is_notebook_url(response.url):
            self.problems.append(
                f"HTTP {response.status}: {response.request.method} {response.url} "
                f"headers={response.headers}"
            )

    def _console(self, message) -> None:
        url = (message.location or {}).get("url", "")
        if message.type == "error" and self._is_notebook_url(url or self.page.url):
            self.problems.append(
                f"console error on {url or self.page.url}: {message.text}"
            )

    def _websocket(self, websocket) -> None:
        self.websockets.append(websocket)

        def received(_payload) -> None:
            self.frames_received += 1

        websocket.on("framereceived", received)
        websocket.on(
            "socketerror",
            lambda error: self.problems.append(
                f"websocket error {websocket.url}: {error}"
            ),
        )

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.last_shot = path
        return path

    def report(self) -> str:
        # The tail of the server's log, without the lines for marimo's assets.
        lines = [
            line for line in self.server.log().splitlines() if "/assets/" not in line
        ]
        log = "\n".join(lines[-60:])
        return (
            f"\n  server: {self.server.kind} at {self.origin}"
            f"\n  page url: {self.page.url}"
            f"\n  screenshot: {self.last_shot}"
            f"\n  problems: {self.problems or 'none'}"
            f"\n  websockets: {[ws.url for ws in self.websockets]}"
            f" ({self.frames_received} frames received)"
            f"\n  server log (tail):\n{log}"
        )

    @contextlib.contextmanager
    def step(self, name: str):
        """Run one step; if it fails, screenshot the page and say why."""
        try:
            yield
        except Exception as error:
            with contextlib.suppress(Exception):
                self.shot(f"failed-{name}")
            raise AssertionError(
                f"step {name!r} failed: {error}{self.report()}"
            ) from error

    def submit_login(
        self, username: str, then: str | None = None, password: str | None = None
    ) -> None:
        """Fill in Django's login form on the page and submit it, then wait
        for the page it goes to (``then``, or wherever that is). The
        password is the test user's unless given."""
        page = self.page
        page.locator("input[name=username]").fill(username)
        page.locator("input[name=password]").fill(password or USERS[username][0])
        url = None if then is None else self.origin + then
        with page.expect_navigation(url=url):
            page.get_by_role("button", name="Log in").click()

    def log_in(self, username: str, then: str | None = None) -> None:
        """Log in through the login page (with ``?next=then``, if given)."""
        with self.step(f"log in as {username}"):
            query = "" if then is None else f"?next={then}"
            self.page.goto(f"{self.origin}/accounts/login/{query}")
            self.submit_login(username, then)

    def login_through_form(self, path: str, username: str) -> None:
        """Open ``path`` anonymously, land on the login form, and submit it."""
        from playwright.sync_api import expect

        with self.step(f"open {path} anonymously"):
            self.page.goto(self.origin + path)
            expect(self.page).to_have_url(f"{self.origin}/accounts/login/?next={path}")
        with self.step(f"log in as {username}"):
            self.submit_login(username, path)


@contextlib.contextmanager
def visiting(
    browser: Any, server: Any, shots: Path, width: int = 1280, height: int = 720
) -> Iterator[Visit | None]:
    """A :class:`Visit` in a new browser context of this size, closed after
    (``None`` where there is no browser, on CI: the test fails, conftest.py)."""
    if isinstance(browser, str):
        yield None
        return
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(30_000)
    try:
        yield Visit(context.new_page(), server, shots)
    finally:
        context.close()
