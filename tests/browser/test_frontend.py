"""marimo's real frontend in headless Chromium, against a real daphne or
uvicorn server: log in through Django's form, load the notebook through the
bridge, and drive a UI element over the kernel websocket."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.live import USERS

pytestmark = pytest.mark.browser

FIRST_RENDER_MS = 45_000  # a fresh marimo kernel starts, runs, and renders
UPDATE_MS = 15_000
SQUARE_OUTPUT = re.compile(r"square=\d+ user=")


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

    def login_through_form(self, path: str, username: str) -> None:
        """Open ``path`` anonymously, land on the login form, and submit it."""
        from playwright.sync_api import expect

        page = self.page
        with self.step(f"open {path} anonymously"):
            page.goto(self.origin + path)
            expect(page).to_have_url(f"{self.origin}/accounts/login/?next={path}")
        with self.step(f"log in as {username}"):
            page.locator("input[name=username]").fill(username)
            page.locator("input[name=password]").fill(USERS[username][0])
            with page.expect_navigation(url=self.origin + path):
                page.get_by_role("button", name="Log in").click()


@pytest.fixture
def visit(browser, notebook_server, tmp_path):
    if isinstance(browser, str):  # no browser, on CI: the test fails (conftest.py)
        yield None
        return
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        yield Visit(page, notebook_server, tmp_path)
    finally:
        context.close()


def test_logged_in_user_drives_the_real_frontend(visit):
    from playwright.sync_api import expect

    page = visit.page
    visit.login_through_form("/notebooks/square/", "alice")

    with visit.step("first render"):
        output = page.get_by_text(SQUARE_OUTPUT)
        expect(output).to_have_text("square=9 user=alice", timeout=FIRST_RENDER_MS)
        slider = page.get_by_role("slider")
        expect(slider).to_have_count(1)
        expect(slider).to_have_attribute("aria-valuenow", "3")
    visit.shot("square-9")

    with visit.step("slider ArrowRight"):
        slider.focus()
        page.keyboard.press("ArrowRight")
        expect(slider).to_have_attribute("aria-valuenow", "4")
        expect(output).to_have_text("square=16 user=alice", timeout=UPDATE_MS)

    with visit.step("slider End"):
        page.keyboard.press("End")
        expect(slider).to_have_attribute("aria-valuenow", "10")
        expect(output).to_have_text("square=100 user=alice", timeout=UPDATE_MS)
    shot = visit.shot("square-100")

    notebook = f"{visit.origin}/notebooks/square/"
    kernel_ws = notebook.replace("http", "ws", 1) + "ws?session_id="
    kernel_sockets = [ws.url for ws in visit.websockets if ws.url.startswith(kernel_ws)]
    assert len(kernel_sockets) == 1, f"expected one kernel websocket{visit.report()}"
    assert visit.frames_received > 0, f"no websocket frames arrived{visit.report()}"
    # marimo's frontend comes from the bridge's compressed copy, not from
    # marimo's uncompressed one below each notebook.
    frontend = f"{visit.origin}/notebooks/_marimo/"
    assets = [
        url
        for status, _, url in visit.responses
        if status == 200 and url.startswith(frontend)
    ]
    assert assets, f"marimo's assets were not loaded through the bridge{visit.report()}"
    assert not [
        url for _, _, url in visit.responses if url.startswith(notebook + "assets/")
    ], f"assets were loaded from marimo's uncompressed copy{visit.report()}"
    kernel_posts = [
        (status, url)
        for status, method, url in visit.responses
        if method == "POST" and url.startswith(notebook + "api/kernel/")
    ]
    assert kernel_posts and all(status == 200 for status, _ in kernel_posts), (
        f"kernel calls: {kernel_posts}{visit.report()}"
    )
    hosts = {urlsplit(url).netloc for _, _, url in visit.responses}
    foreign = hosts - {urlsplit(visit.origin).netloc}
    assert not foreign, f"the page reached other hosts: {foreign}{visit.report()}"
    assert not visit.problems, (
        f"problems while the notebook ran (screenshot {shot}){visit.report()}"
    )


def test_user_without_access_sees_a_403_page(visit):
    from playwright.sync_api import expect

    page = visit.page
    # The login redirects back to the notebook, which bob may not open.
    visit.login_through_form("/notebooks/sales/", "bob")
    with visit.step("403 page"):
        expect(page).to_have_url(f"{visit.origin}/notebooks/sales/")
        expect(page.locator("h1")).to_have_text("403 Forbidden")
    shot = visit.shot("sales-403")

    notebook = f"{visit.origin}/notebooks/sales/"
    page_loads = [
        (status, method) for status, method, url in visit.responses if url == notebook
    ]
    assert page_loads == [(302, "GET"), (403, "GET")], (
        f"{page_loads} (screenshot {shot}){visit.report()}"
    )
    below = [
        url
        for _, _, url in visit.responses
        if url.startswith(notebook) and url != notebook
    ]
    assert not below, f"the 403 page loaded notebook resources: {below}{visit.report()}"
    assert not visit.websockets, f"the 403 page opened a websocket{visit.report()}"
    assert page.get_by_role("slider").count() == 0, (
        f"a notebook rendered anyway{visit.report()}"
    )
    expected = (
        f"HTTP 403: GET {notebook} ",
        f"console error on {notebook}: Failed to load resource: "
        "the server responded with a status of 403",
    )
    unexpected = [p for p in visit.problems if not p.startswith(expected)]
    assert not unexpected, f"unexpected problems (screenshot {shot}){visit.report()}"
