"""The client side: driving a notebook as marimo's frontend does (page GET,
websocket until ``completed-run``, POST ``set_ui_element_value``), and the
logins (alice, and bench-01 ... for the concurrent measurements)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.servers import BENCH_USER_PASSWORD, Target
from tests.live import USERS, NotebookClient

USER = "alice"
RENDERED_TEXT = "square=9"  # the notebook's output for the slider's initial value 3
FRAME_TIMEOUT = 30.0  # seconds to wait for a completed-run


def describe(frames: list[dict[str, Any]], limit: int = 600) -> str:
    """A short account of websocket frames, for an error message: each
    frame's op and, for cell outputs, their type and the start of their data."""
    parts = []
    for frame in frames:
        data = frame.get("data") or {}
        part = str(frame.get("op"))
        output = data.get("output") if isinstance(data, dict) else None
        if isinstance(output, dict):
            part += f"({output.get('mimetype')}: {str(output.get('data'))[:80]!r})"
        parts.append(part)
    text = ", ".join(parts)
    return text if len(text) <= limit else text[:limit] + " ..."


class Session:
    """One notebook session: its own HTTP connection, websocket and id."""

    def __init__(self, target: Target, person: int = 0) -> None:
        self.target = target
        self.client = NotebookClient(target.url)
        if target.login:
            self.client.http.cookies.update(target.cookies[person])
        self.stack = contextlib.AsyncExitStack()
        self.kernel: Any = None
        self.slider: str | None = None
        self.value = 3  # the slider's initial value in square.py

    async def open(self) -> float:
        """Page GET, websocket open, first ``completed-run``: seconds."""
        await self.stack.enter_async_context(self.client)
        started = time.perf_counter()
        page = await self.client.http.get(self.target.page)
        if page.status_code != 200:
            raise RuntimeError(f"{self.target.name}: page answered {page.status_code}")
        self.kernel = await self.stack.enter_async_context(
            self.client.kernel(self.target.page)
        )
        took = await self._completed(started, "first run")
        [self.slider] = self.kernel.ui_element_ids()
        return took

    async def interact(self) -> float:
        """Move the slider to a new value; seconds from the POST to the
        ``completed-run`` that ends the re-run. The value alternates 4, 5, 4,
        ... so every POST changes it and really re-runs the dependent cell."""
        self.value = 5 if self.value == 4 else 4
        self.kernel.outputs.clear()
        started = time.perf_counter()
        response = await self.kernel.set_ui_value(self.slider, self.value)
        if response.status_code != 200:
            raise RuntimeError(
                f"{self.target.name}: POST answered {response.status_code}: "
                f"{response.text[:200]}"
            )
        return await self._completed(started, "re-run")

    async def _completed(self, started: float, run: str) -> float:
        """Seconds from ``started`` to the next ``completed-run``, whose run
        must have shown the slider's value squared (``RENDERED_TEXT`` first)."""
        frames = await self.kernel.read_until_completed(FRAME_TIMEOUT)
        took = time.perf_counter() - started
        if not any(f"square={self.value**2} " in text for text in self.kernel.outputs):
            raise RuntimeError(
                f"{self.target.name}: {run} did not render square={self.value**2}; "
                f"received {describe(frames)}"
            )
        return took

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stack.aclose()


async def warm_up(targets: list[Target], interact: bool = True) -> None:
    """Open a session on every server once (first notebook build, imports),
    and move its slider once, before measuring."""
    for target in targets:
        session = Session(target)
        try:
            await session.open()
            if interact:
                await session.interact()
        finally:
            await session.close()


async def login_cookies(url: str, username: str = USER, password: str | None = None):
    """The session cookies of ``username`` logged in through the login form."""
    async with NotebookClient(url) as client:
        await client.login(username, password)
        return httpx.Cookies(client.http.cookies)


async def log_in(targets: list[Target], people: int) -> None:
    """Log ``people`` users in through the login form (alice, bench-01, ...).

    The bridge servers share one database, so a login is valid on all of
    them: each person logs in once, on the first bridge server."""
    bridges = [target for target in targets if target.login]
    if not bridges:
        return

    async def one(index: int) -> httpx.Cookies:
        username = USER if index == 0 else f"bench-{index:02d}"
        password = USERS[USER][0] if index == 0 else BENCH_USER_PASSWORD
        return await login_cookies(bridges[0].url, username, password)

    cookies = await asyncio.gather(*(one(index) for index in range(people)))
    for target in bridges:
        target.cookies = list(cookies)


def sessions_per_user() -> int:
    """The test settings' cap on open notebook sessions per user."""
    from tests.settings import DJANGO_NOTEBOOKS  # plain module constants

    return int(DJANGO_NOTEBOOKS.get("MAX_SESSIONS_PER_USER") or 10**6)


def burst_person(index: int) -> int:
    """Whose login the burst's session number ``index`` uses: bench users,
    each up to the cap (alice stays out: her warm-up session may still be
    closing)."""
    return 1 + index // sessions_per_user()


def churn_person(index: int, count: int) -> int:
    """Whose login a churn session uses: the bench users in turn."""
    return 1 + index % max(1, count - 1)


def rotated(items: list[Any], round_number: int) -> list[Any]:
    """The servers in a different order each round, so that none is always first."""
    shift = round_number % len(items)
    return items[shift:] + items[:shift]


# --------------------------------------------------------------------------
# bench/workers.py: a POST through any process, the websocket read meanwhile


@dataclass
class Sample:
    post: float  # seconds, POST to its response
    total: float  # seconds, POST to the completed-run of the re-run


async def move_slider(
    kernel: Any, via: NotebookClient, page: str, slider: str, value: int
) -> Sample:
    """POST the slider's new value through ``via`` while reading the session's
    websocket, as marimo's page does: it shows the re-run's output when the
    websocket brings it, whether or not the POST has been answered yet."""
    kernel.outputs.clear()
    started = time.perf_counter()

    async def run_done() -> float:
        await kernel.read_until_completed(FRAME_TIMEOUT)
        return time.perf_counter()

    run = asyncio.create_task(run_done())
    try:
        response = await via.post_kernel(
            page,
            "set_ui_element_value",
            kernel.session_id,
            {"objectIds": [slider], "values": [value]},
        )
        answered = time.perf_counter()
        if response.status_code != 200:
            raise RuntimeError(
                f"POST to {via.base_url}: HTTP {response.status_code} "
                f"{response.text[:200]}"
            )
        done = await run
    finally:
        run.cancel()  # nothing left to cancel unless the POST failed
    return Sample(answered - started, done - started)
