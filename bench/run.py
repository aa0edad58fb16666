#!/usr/bin/env python
"""Benchmark: django_notebooks (the bridge) against bare marimo, on this
machine, in one run.

    python bench/run.py                      # full run (several minutes)
    python bench/run.py --quick              # smoke run (well under a minute)
    python bench/run.py --servers uvicorn    # bridge on uvicorn only
    python bench/run.py --out results.md     # also write the table to a file

It starts, on free 127.0.0.1 ports:

- bare marimo: ``bench/bare_marimo.py`` (``marimo.create_asgi_app(quiet=True)
  .with_app(path="/square", root=<notebook>)``) under uvicorn, page ``/square/``;
- the bridge: the test project (``tests.asgi:application``) under uvicorn
  and/or daphne, page ``/notebooks/square/`` (login required: alice);

both serving ``tests/notebooks/square.py``. Every measurement alternates
between the servers round by round, so drift of this (shared, noisy) machine
hits all of them alike; the table reports bridge/bare ratios next to the
absolute numbers. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from tests.live import (  # noqa: E402
    USERS,
    LiveServer,
    NotebookClient,
    free_port,
    prepare_database,
    server_env,
)

NOTEBOOK = ROOT / "tests" / "notebooks" / "square.py"
BRIDGE_PAGE = "/notebooks/square/"  # tests/settings.py serves square.py here
BARE_PAGE = "/square/"
USER = "alice"
# More people for the concurrent runs: the bridge caps open sessions per user
# (MAX_SESSIONS_PER_USER), and many sessions at once are many people anyway.
BENCH_USER_PASSWORD = "bench-pw"
BENCH_USERS_SCRIPT = """
import django
django.setup()
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
password = make_password({password!r})  # hashed once, shared: creating users stays fast
User.objects.bulk_create(
    [User(username=f"bench-{{i:02d}}", password=password)
     for i in range(1, {count} + 1)]
)
"""
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RENDERED_TEXT = "square=9"  # the notebook's output for the slider's initial value 3
FRAME_TIMEOUT = 30.0  # seconds to wait for a completed-run


# --------------------------------------------------------------------------
# Settings of one run


@dataclass(frozen=True)
class Plan:
    quick: bool
    interactions: int  # measured interactions per configuration and server
    warmup: int  # unmeasured interactions per session before measuring
    opens: int  # measured session opens per server
    requests: int  # measured plain GETs per kind and server
    browser_rounds: int  # cold + warm page loads per server
    burst: int  # sessions opened at once (0: skipped)
    phase_seconds: float  # time limit of each measured phase
    concurrency: tuple[int, ...] = (1, 8)

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Plan:
        if args.quick:
            return cls(
                quick=True,
                interactions=args.interactions or 20,
                warmup=3,
                opens=args.opens or 4,
                requests=10,
                browser_rounds=args.browser_rounds or 1,
                burst=0,
                phase_seconds=12,
            )
        return cls(
            quick=False,
            interactions=args.interactions or 200,
            warmup=15,
            opens=args.opens or 30,
            requests=100,
            browser_rounds=args.browser_rounds or 5,
            burst=args.burst,
            phase_seconds=300,
        )


# --------------------------------------------------------------------------
# Servers


class BareServer(LiveServer):
    """bench/bare_marimo.py under uvicorn: what marimo documents, nothing more.

    Started like the bridge's LiveServer (same start-up wait, same SIGTERM by
    pid to stop), only with a different command."""

    def __init__(self, log_path: Path, session_ttl: int) -> None:
        self.kind = "uvicorn"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = dict(
            os.environ,
            BENCH_NOTEBOOK=str(NOTEBOOK),
            BENCH_SESSION_TTL=str(session_ttl),
            PYTHONUNBUFFERED="1",
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare_marimo:app",
                "--app-dir",
                str(BENCH_DIR),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_listening()


@dataclass
class Target:
    """One server under test and how a browser reaches its notebook."""

    name: str  # column title
    server: Any
    page: str
    login: bool
    # One logged-in browser per person: alice first, then bench-01, ...
    cookies: list[httpx.Cookies] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def rss(self) -> int:
        """Resident memory of the server process and any children, in bytes."""
        try:
            process = psutil.Process(self.server.process.pid)
            total = process.memory_info().rss
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
            return total
        except psutil.Error:
            return 0

    def threads(self) -> int:
        try:
            return psutil.Process(self.server.process.pid).num_threads()
        except psutil.Error:
            return 0


def start_servers(
    kinds: list[str], workdir: Path, session_ttl: int, users: int
) -> list[Target]:
    """Start bare marimo and the bridge servers in parallel; all or none."""
    db = prepare_database(workdir / "db.sqlite3")
    subprocess.run(
        [
            sys.executable,
            "-c",
            BENCH_USERS_SCRIPT.format(password=BENCH_USER_PASSWORD, count=users),
        ],
        env=server_env(db),
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    starters = {"bare": lambda: BareServer(workdir / "bare.log", session_ttl)}
    for kind in kinds:
        starters[kind] = lambda kind=kind: LiveServer(
            kind,
            db,
            workdir / f"bridge-{kind}.log",
            DJANGO_NOTEBOOKS_TEST_SESSION_TTL=str(session_ttl),
        )
    started: dict[str, Any] = {}
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            started[name] = starters[name]()
        except BaseException as error:  # reported below, after all have tried
            errors.append(error)

    threads = [threading.Thread(target=start, args=(name,)) for name in starters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        stop_servers([*started.values()])
        raise errors[0]
    targets = [Target("bare marimo (uvicorn)", started["bare"], BARE_PAGE, login=False)]
    for kind in kinds:
        targets.append(Target(f"bridge {kind}", started[kind], BRIDGE_PAGE, login=True))
    return targets


def stop_servers(servers: list[Any]) -> dict[str, float]:
    """SIGTERM every server (by pid, in parallel); seconds each took to exit."""
    took: dict[str, float] = {}

    def stop(server: Any) -> None:
        took[f"{server.kind}:{server.port}"] = server.stop()

    threads = [threading.Thread(target=stop, args=(server,)) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return took


# --------------------------------------------------------------------------
# Driving a notebook as marimo's frontend does


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
        await self.kernel.read_until_completed(FRAME_TIMEOUT)
        took = time.perf_counter() - started
        if not any(f"square={self.value**2} " in text for text in self.kernel.outputs):
            raise RuntimeError(
                f"{self.target.name}: first run did not render {RENDERED_TEXT}"
            )
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
        await self.kernel.read_until_completed(FRAME_TIMEOUT)
        took = time.perf_counter() - started
        if not any(f"square={self.value**2} " in text for text in self.kernel.outputs):
            raise RuntimeError(
                f"{self.target.name}: re-run did not render square={self.value**2}"
            )
        return took

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stack.aclose()


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
        async with NotebookClient(bridges[0].url) as client:
            await client.login(username, password)
            return httpx.Cookies(client.http.cookies)

    cookies = await asyncio.gather(*(one(index) for index in range(people)))
    for target in bridges:
        target.cookies = list(cookies)


def people(plan: Plan) -> int:
    """How many different users the run needs: one per concurrent session."""
    return max(*plan.concurrency, plan.burst)


def rotated(items: list[Any], round_number: int) -> list[Any]:
    """The servers in a different order each round, so that none is always first."""
    shift = round_number % len(items)
    return items[shift:] + items[:shift]


# --------------------------------------------------------------------------
# Statistics and the table


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Row:
    label: str
    unit: str  # "ms", "s", "MB", "KB", "" (count)
    values: dict[str, float]  # target name -> value
    ratio: bool = True  # show bridge/bare ratios
    note: str = ""


def fmt(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.2f} MB"
    if unit == "KB":
        return f"{value:.1f} KB"
    return f"{value:g}"


def render_table(targets: list[Target], rows: list[Row]) -> str:
    bare = targets[0]
    header = ["measure", bare.name]
    for target in targets[1:]:
        header += [target.name, f"ratio {target.name.split()[-1]}/bare"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row.label + (f" ({row.note})" if row.note else ""),
            fmt(row.values.get(bare.name), row.unit),
        ]
        base = row.values.get(bare.name)
        for target in targets[1:]:
            value = row.values.get(target.name)
            cells.append(fmt(value, row.unit))
            if (
                row.ratio
                and value is not None
                and base
                and not math.isnan(base)
                and not math.isnan(value)
            ):
                cells.append(f"{value / base:.2f}x")
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# 1. Interaction round trip


async def measure_interactions(
    targets: list[Target], plan: Plan, concurrency: int, notes: list[str]
) -> dict[str, list[float]]:
    sessions = {
        target.name: [Session(target, person) for person in range(concurrency)]
        for target in targets
    }
    samples: dict[str, list[float]] = {target.name: [] for target in targets}
    try:
        for target in targets:
            await asyncio.gather(*(session.open() for session in sessions[target.name]))
        # Warm-up, unmeasured: lazy imports, caches and connection pools in
        # marimo, Django and the client.
        for _ in range(plan.warmup):
            for target in targets:
                await asyncio.gather(*(s.interact() for s in sessions[target.name]))
        rounds = max(1, math.ceil(plan.interactions / concurrency))
        deadline = time.monotonic() + plan.phase_seconds
        done = 0
        for round_number in range(rounds):
            if time.monotonic() > deadline:
                notes.append(
                    f"interactions at {concurrency} sessions stopped at the "
                    f"{plan.phase_seconds:.0f} s limit after {done} of {rounds} rounds"
                )
                break
            for target in rotated(targets, round_number):
                took = await asyncio.gather(
                    *(s.interact() for s in sessions[target.name])
                )
                samples[target.name].extend(took)
            done += 1
    finally:
        for target in targets:
            await asyncio.gather(
                *(session.close() for session in sessions[target.name])
            )
    return samples


# --------------------------------------------------------------------------
# 2. Session open


async def measure_session_open(
    targets: list[Target], plan: Plan, notes: list[str]
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {target.name: [] for target in targets}
    for target in targets:  # warm-up
        session = Session(target)
        try:
            await session.open()
        finally:
            await session.close()
    deadline = time.monotonic() + plan.phase_seconds
    for round_number in range(plan.opens):
        if time.monotonic() > deadline:
            notes.append(
                f"session opens stopped at the {plan.phase_seconds:.0f} s limit "
                f"after {round_number} of {plan.opens} rounds"
            )
            break
        for target in rotated(targets, round_number):
            session = Session(target)
            try:
                samples[target.name].append(await session.open())
            finally:
                await session.close()
    return samples


# --------------------------------------------------------------------------
# 2b. Plain HTTP requests below the page: the per-request cost alone


# marimo's page loads its frontend from ./assets/ (or from wherever the
# asset_url option points): the entry script is assets/index-<hash>.js.
ENTRY_SCRIPT = re.compile(r'src="([^"]*assets/index-[^"]+\.js)"')


async def measure_requests(
    targets: list[Target], plan: Plan, notes: list[str]
) -> dict[str, dict[str, list[float]]]:
    """GET ``health`` (a tiny JSON answer) and the page's entry script (the
    biggest asset): one keep-alive connection per server, rounds alternating."""
    clients = {}
    paths: dict[str, dict[str, str]] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        for target in targets:
            client = httpx.AsyncClient(
                base_url=target.url,
                timeout=30,
                cookies=target.cookies[0] if target.login else None,
            )
            clients[target.name] = client
            page = await client.get(target.page)
            match = ENTRY_SCRIPT.search(page.text)
            if page.status_code != 200 or not match:
                raise RuntimeError(f"{target.name}: no entry script in the page")
            script = urljoin(target.page, match.group(1))
            size = len((await client.get(script)).content)
            paths[target.name] = {
                "GET health": target.page + "health",
                f"GET entry script ({size / 1000:.0f} KB)": script,
            }
        kinds = list(paths[targets[0].name])
        samples = {kind: {t.name: [] for t in targets} for kind in kinds}
        deadline = time.monotonic() + plan.phase_seconds
        for round_number in range(-3, plan.requests):  # 3 rounds of warm-up
            if time.monotonic() > deadline:
                notes.append(
                    f"plain requests stopped at the {plan.phase_seconds:.0f} s limit "
                    f"after {round_number} of {plan.requests} rounds"
                )
                break
            for target in rotated(targets, round_number):
                for kind, path in zip(kinds, paths[target.name].values(), strict=True):
                    started = time.perf_counter()
                    response = await clients[target.name].get(path)
                    took = time.perf_counter() - started
                    if response.status_code != 200:
                        raise RuntimeError(
                            f"{target.name}: {path} answered {response.status_code}"
                        )
                    if round_number >= 0:
                        samples[kind][target.name].append(took)
    finally:
        for client in clients.values():
            await client.aclose()
    return samples


# --------------------------------------------------------------------------
# 3. Cold and warm page load in headless Chromium


@dataclass
class Load:
    requests: int = 0  # requests the page made
    network_requests: int = 0  # of which not answered from the browser cache
    bytes: int = 0  # bytes received on the wire (headers + bodies, encoded)
    failed: int = 0
    render_seconds: float = math.nan  # navigation start -> "square=9" visible
    network_paths: list[str] = field(default_factory=list)  # answered by the server


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
            if response.get("fromDiskCache") or response.get("fromPrefetchCache"):
                on_cached(event)

        def on_finished(event: dict[str, Any]) -> None:
            load.bytes += int(event.get("encodedDataLength") or 0)
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
            # first page render, unmeasured.
            for target in targets:
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


# --------------------------------------------------------------------------
# 4. Many sessions at once


@dataclass
class Burst:
    rendered: int = 0
    errors: int = 0
    wall_seconds: float = math.nan
    rss_per_session: float = math.nan  # bytes
    rss_before: int = 0
    rss_after: int = 0
    threads_per_session: float = math.nan
    first_error: str = ""


async def measure_burst(target: Target, count: int, limit: float = 120) -> Burst:
    burst = Burst()
    sessions = [Session(target, person) for person in range(count)]
    await asyncio.sleep(1)
    burst.rss_before = target.rss()
    threads_before = target.threads()
    started = time.perf_counter()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(s.open() for s in sessions), return_exceptions=True), limit
        )
        burst.wall_seconds = time.perf_counter() - started
        for result in results:
            if isinstance(result, BaseException):
                burst.errors += 1
                burst.first_error = (
                    burst.first_error or f"{type(result).__name__}: {result}"
                )
            else:
                burst.rendered += 1
        await asyncio.sleep(1)  # let the kernels settle before reading memory
        burst.rss_after = target.rss()
        if burst.rendered:
            burst.rss_per_session = (
                burst.rss_after - burst.rss_before
            ) / burst.rendered
            burst.threads_per_session = (
                target.threads() - threads_before
            ) / burst.rendered
    except TimeoutError:
        burst.errors = count - burst.rendered
        burst.first_error = f"not all rendered within {limit:.0f} s"
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return burst


# --------------------------------------------------------------------------
# The run


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for name in (
        "django",
        "channels",
        "daphne",
        "marimo",
        "uvicorn",
        "httpx",
        "websockets",
        "playwright",
    ):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "-"
    return found


def code_revision() -> str:
    """The commit measured, and whether the working tree differed from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes" if dirty else "")


def machine_header(args: argparse.Namespace, started: datetime.datetime) -> str:
    v = versions()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join(
        [
            "## django_notebooks benchmark: bridge vs bare marimo",
            "",
            f"- command: `python bench/run.py {' '.join(sys.argv[1:])}`".replace(
                "  ", " "
            ),
            f"- date: {started.isoformat(timespec='seconds')}",
            f"- machine: {platform.platform()}, nproc={os.cpu_count()}, "
            f"load average at start {load}",
            f"- code: {code_revision()}",
            "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"- notebook: {NOTEBOOK.relative_to(ROOT)} (bare: `{BARE_PAGE}`, "
            f"bridge: `{BRIDGE_PAGE}`, logged in as {USER})",
        ]
    )


async def run(
    args: argparse.Namespace, targets: list[Target], plan: Plan
) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    names = [t.name for t in targets]

    def progress(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    await log_in(targets, people(plan))

    # Warm every server once (first notebook build, imports) before measuring.
    for target in targets:
        session = Session(target)
        try:
            await session.open()
            await session.interact()
        finally:
            await session.close()

    if plan.burst:
        progress(f"{plan.burst} sessions opened at once")
        bursts: dict[str, Burst] = {}
        for target in targets:
            bursts[target.name] = await measure_burst(target, plan.burst)
            await asyncio.sleep(2)
        rows += [
            Row(
                f"{plan.burst} sessions at once: rendered",
                "",
                {k: b.rendered for k, b in bursts.items()},
                ratio=False,
            ),
            Row(
                f"{plan.burst} sessions at once: errors",
                "",
                {k: b.errors for k, b in bursts.items()},
                ratio=False,
            ),
            Row(
                f"{plan.burst} sessions at once: wall time until all rendered",
                "s",
                {k: b.wall_seconds for k, b in bursts.items()},
            ),
            Row(
                f"{plan.burst} sessions at once: server RSS growth per session",
                "MB",
                {k: b.rss_per_session / 2**20 for k, b in bursts.items()},
            ),
            Row(
                f"{plan.burst} sessions at once: server RSS with them open",
                "MB",
                {k: b.rss_after / 2**20 for k, b in bursts.items()},
            ),
            Row(
                f"{plan.burst} sessions at once: server threads per session",
                "",
                {k: round(b.threads_per_session, 2) for k, b in bursts.items()},
            ),
        ]
        for name, b in bursts.items():
            if b.first_error:
                notes.append(f"{name}: first burst error: {b.first_error}")
    else:
        notes.append("many sessions at once: skipped in --quick")
    burst_rows, rows = rows, []

    for concurrency in plan.concurrency:
        progress(f"interaction round trips, {concurrency} concurrent session(s)")
        samples = await measure_interactions(targets, plan, concurrency, notes)
        n = min(len(v) for v in samples.values())
        label = f"interaction, {concurrency} session{'s' if concurrency > 1 else ''}"
        rows.append(
            Row(
                f"{label}: median",
                "ms",
                {k: median(v) * 1000 for k, v in samples.items()},
                note=f"n={n}",
            )
        )
        rows.append(
            Row(
                f"{label}: p95",
                "ms",
                {k: percentile(v, 95) * 1000 for k, v in samples.items()},
            )
        )

    progress("session open")
    opens = await measure_session_open(targets, plan, notes)
    n = min(len(v) for v in opens.values())
    rows.append(
        Row(
            "session open (page + ws -> first completed-run): median",
            "ms",
            {k: median(v) * 1000 for k, v in opens.items()},
            note=f"n={n}",
        )
    )

    progress("plain requests")
    plain = await measure_requests(targets, plan, notes)
    for kind, by_target in plain.items():
        n = min(len(v) for v in by_target.values())
        rows.append(
            Row(
                f"{kind}: median",
                "ms",
                {k: median(v) * 1000 for k, v in by_target.items()},
                note=f"n={n}",
            )
        )

    if args.no_browser:
        notes.append("page loads in Chromium: skipped (--no-browser)")
    else:
        ok, why = chromium_available()
        if not ok:
            if os.environ.get("CI"):
                raise RuntimeError(f"page loads need Chromium and CI is set: {why}")
            notes.append(
                f"page loads in Chromium: SKIPPED ({why}; install Debian's chromium "
                "and the playwright package to measure them)"
            )
        else:
            progress("page loads in headless Chromium")
            loads = await measure_page_loads(targets, plan, notes)
            n = plan.browser_rounds

            def stat(kind: str, attr: str, scale: float = 1.0) -> dict[str, float]:
                return {
                    k: median([getattr(x, attr) for x in loads[k][kind]]) * scale
                    for k in names
                }

            rows += [
                Row(
                    "cold page load: requests",
                    "",
                    stat("cold", "requests"),
                    note=f"n={n}",
                ),
                Row(
                    "cold page load: bytes received",
                    "MB",
                    stat("cold", "bytes", 1 / 1e6),
                ),
                Row(
                    "cold page load: time to `square=9` visible",
                    "ms",
                    stat("cold", "render_seconds", 1000),
                ),
                Row("warm page load: requests", "", stat("warm", "requests")),
                Row(
                    "warm page load: requests to the server",
                    "",
                    stat("warm", "network_requests"),
                ),
                Row(
                    "warm page load: bytes received",
                    "KB",
                    stat("warm", "bytes", 1 / 1e3),
                ),
                Row(
                    "warm page load: time to `square=9` visible",
                    "ms",
                    stat("warm", "render_seconds", 1000),
                ),
            ]
            for name in names:
                paths = (
                    loads[name]["warm"][0].network_paths if loads[name]["warm"] else []
                )
                notes.append(
                    f"{name}: warm visit asked the server for "
                    f"{', '.join(paths) or 'nothing'}"
                )
            failed = {
                k: sum(x.failed for x in loads[k]["cold"] + loads[k]["warm"])
                for k in names
            }
            if any(failed.values()):
                notes.append(f"failed requests during page loads: {failed}")

    return rows + burst_rows, notes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (CI)")
    parser.add_argument(
        "--servers",
        default="uvicorn,daphne",
        help="bridge servers, comma-separated: uvicorn,daphne (default both)",
    )
    parser.add_argument(
        "--out", type=Path, help="also write the markdown report to this file"
    )
    parser.add_argument(
        "--interactions",
        type=int,
        default=0,
        help="measured interactions per configuration (default 200, quick 20)",
    )
    parser.add_argument(
        "--opens", type=int, default=0, help="measured session opens per server"
    )
    parser.add_argument(
        "--browser-rounds",
        type=int,
        default=0,
        help="cold + warm page loads per server (default 5, quick 1)",
    )
    parser.add_argument(
        "--burst", type=int, default=30, help="sessions opened at once (full run)"
    )
    parser.add_argument(
        "--session-ttl",
        type=int,
        default=10,
        help="marimo session_ttl for both servers, seconds (default 10)",
    )
    parser.add_argument(
        "--no-browser", action="store_true", help="skip the Chromium page loads"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the server logs and print where"
    )
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    for kind in kinds:
        if kind not in ("uvicorn", "daphne"):
            parser.error(f"unknown server {kind!r}: choose from uvicorn, daphne")
    if not kinds:
        parser.error("--servers needs at least one of uvicorn, daphne")
    args.kinds = list(dict.fromkeys(kinds))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.for_args(args)
    started_at = datetime.datetime.now().astimezone()
    clock = time.monotonic()

    # A SIGTERM to this script stops its servers too (via the finally below).
    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)

    workdir = Path(tempfile.mkdtemp(prefix="dn-bench-"))
    targets: list[Target] = []
    stop_times: dict[str, float] = {}
    try:
        print("[bench] starting servers", file=sys.stderr, flush=True)
        targets = start_servers(args.kinds, workdir, args.session_ttl, people(plan))
        rows, notes = asyncio.run(run(args, targets, plan))
    except Exception:
        for target in targets:
            with contextlib.suppress(Exception):
                tail = target.server.log()[-3000:]
                if tail.strip():
                    print(
                        f"[bench] --- log of {target.name} (tail) ---\n{tail}",
                        file=sys.stderr,
                    )
        raise
    finally:
        if targets:
            stop_times = stop_servers([t.server for t in targets])
        if args.keep_logs:
            print(f"[bench] server logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    report = [machine_header(args, started_at), "", render_table(targets, rows), ""]
    report.append(
        "Ratios are bridge / bare marimo measured in the same run, rounds alternating "
        "between servers; below 1.00x the bridge was faster. Interaction = POST "
        "set_ui_element_value until the `completed-run` frame of its re-run."
    )
    slow_stops = {k: v for k, v in stop_times.items() if v > 5}
    if slow_stops:
        notes.append(f"servers slow to stop on SIGTERM (s): {slow_stops}")
    if notes:
        report += ["", "Notes:", *(f"- {note}" for note in notes)]
    report.append("")
    report.append(f"Total run time: {time.monotonic() - clock:.1f} s.")
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
