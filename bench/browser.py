"""Cold and warm page loads in headless Chromium (through Playwright):
requests, bytes received and time until the notebook's output is visible,
counted through the Chrome DevTools protocol (bench/run.py's page loads)."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.client import RENDERED_TEXT, USER, rotated
from bench.measure import Plan
from bench.servers import Target

# The same flags as the browser tests (--headless --no-sandbox --disable-gpu
# --disable-quic ...): one list for both.
from tests.browser.conftest import CHROMIUM_ARGS
from tests.live import USERS

CHROMIUM = "/usr/bin/chromium"


def is_frontend(path: str) -> bool:
    """A file of marimo's frontend: below marimo's ``assets/`` (bare marimo)
    or the bridge's ``_marimo/<version>/`` URL, or any static file type."""
    return (
        "/assets/" in path
        or "/_marimo/" in path
        or path.endswith((".js", ".css", ".woff2", ".png", ".svg", ".ttf"))
    )


@dataclass
class Load:
    requests: int = 0  # requests the page made
    network_requests: int = 0  # of which not answered from the browser cache
    bytes: int = 0  # bytes received on the wire (headers + bodies, encoded)
    failed: int = 0
    render_seconds: float = math.nan  # navigation start -> "square=9" visible
    network_paths: list[str] = field(default_factory=list)  # answered by the server
    # bytes received by kind of content (js, css, font, image, other)
    bytes_by_kind: dict[str, int] = field(default_factory=dict)


def content_kind(mime: str, url: str) -> str:
    mime = mime.lower()
    if "javascript" in mime or url.endswith(".js"):
        return "js"
    if "css" in mime:
        return "css"
    if mime.startswith("font/") or url.endswith((".woff2", ".woff", ".ttf")):
        return "font"
    if mime.startswith("image/"):
        return "image"
    return "other"


async def visit(
    context: Any, url: str, quiet_seconds: float = 0.7, limit: float = 60
) -> Load:
    """Open ``url`` in a new tab of ``context`` and count its network use
    until the notebook rendered and the network stayed quiet a moment."""
    page = await context.new_page()
    load = Load()
    in_flight: set[str] = set()
    urls: dict[str, str] = {}
    cached: set[str] = set()
    kinds: dict[str, str] = {}
    last_event = [time.monotonic()]
    try:
        cdp = await context.new_cdp_session(page)

        def on_request(event: dict[str, Any]) -> None:
            # A redirect re-uses the request id; count it as one more request.
            load.requests += 1
            load.network_requests += 1
            urls[event["requestId"]] = event.get("request", {}).get("url", "")
            in_flight.add(event["requestId"])
            last_event[0] = time.monotonic()

        def on_cached(event: dict[str, Any]) -> None:
            if event["requestId"] not in cached:
                cached.add(event["requestId"])
                load.network_requests -= 1

        def on_response(event: dict[str, Any]) -> None:
            response = event.get("response", {})
            kinds[event["requestId"]] = content_kind(
                response.get("mimeType", ""), urlsplit(response.get("url", "")).path
            )
            if response.get("fromDiskCache") or response.get("fromPrefetchCache"):
                on_cached(event)

        def on_finished(event: dict[str, Any]) -> None:
            received = int(event.get("encodedDataLength") or 0)
            load.bytes += received
            kind = kinds.get(event["requestId"], "other")
            load.bytes_by_kind[kind] = load.bytes_by_kind.get(kind, 0) + received
            in_flight.discard(event["requestId"])
            last_event[0] = time.monotonic()

        def on_failed(event: dict[str, Any]) -> None:
            if not event.get("canceled"):
                load.failed += 1
            in_flight.discard(event["requestId"])
            last_event[0] = time.monotonic()

        cdp.on("Network.requestWillBeSent", on_request)
        cdp.on("Network.requestServedFromCache", on_cached)
        cdp.on("Network.responseReceived", on_response)
        cdp.on("Network.loadingFinished", on_finished)
        cdp.on("Network.loadingFailed", on_failed)
        await cdp.send("Network.enable")

        started = time.perf_counter()
        await page.goto(url, wait_until="commit", timeout=limit * 1000)
        await page.get_by_text(RENDERED_TEXT).first.wait_for(
            state="visible", timeout=limit * 1000
        )
        load.render_seconds = time.perf_counter() - started
        # Lazily loaded chunks (fonts, code for outputs) come after the first
        # render: keep counting until nothing happened for quiet_seconds.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if not in_flight and time.monotonic() - last_event[0] > quiet_seconds:
                break
        await cdp.detach()
        load.network_paths = sorted(
            urlsplit(url).path for rid, url in urls.items() if rid not in cached
        )
    finally:
        await page.close()
    return load


async def browser_log_in(context: Any, target: Target) -> None:
    """Log in through the project's login form (not measured)."""
    page = await context.new_page()
    try:
        await page.goto(f"{target.url}/accounts/login/?next=/notebooks/")
        await page.fill("input[name=username]", USER)
        await page.fill("input[name=password]", USERS[USER][0])
        async with page.expect_navigation():
            await page.click("button[type=submit]")
        if "/accounts/login/" in page.url:
            raise RuntimeError(f"{target.name}: browser login failed")
    finally:
        await page.close()


def chromium_available() -> tuple[bool, str]:
    if not Path(CHROMIUM).exists():
        return False, f"{CHROMIUM} not found"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return False, "the playwright package is not installed"
    return True, ""


async def measure_page_loads(
    targets: list[Target], plan: Plan, notes: list[str]
) -> dict[str, dict[str, list[Load]]]:
    from playwright.async_api import async_playwright

    results: dict[str, dict[str, list[Load]]] = {
        t.name: {"cold": [], "warm": []} for t in targets
    }
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        try:
            # Warm-up: the browser's own first-start costs and the servers'
            # first page render, unmeasured (not in --quick: a smoke run).
            for target in targets if plan.browser_warmup else []:
                context = await browser.new_context()
                try:
                    if target.login:
                        await browser_log_in(context, target)
                    await visit(context, target.url + target.page, quiet_seconds=0.2)
                finally:
                    await context.close()
            for round_number in range(plan.browser_rounds):
                for target in rotated(targets, round_number):
                    # A fresh context is a fresh profile: empty cache.
                    context = await browser.new_context()
                    try:
                        if target.login:
                            await browser_log_in(context, target)
                        results[target.name]["cold"].append(
                            await visit(context, target.url + target.page)
                        )
                        results[target.name]["warm"].append(
                            await visit(context, target.url + target.page)
                        )
                    finally:
                        await context.close()
        finally:
            await browser.close()
    return results
