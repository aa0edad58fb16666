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
    burst_rounds: int  # how often, per server
    phase_seconds: float  # time limit of each measured phase
    churn: int  # sessions opened and closed in the churn phase (0: skipped)
    churn_batch: int  # of which open at the same time
    churn_ttl: int  # session_ttl of the churn servers, seconds
    churn_settle: float  # seconds waited after TTL before reading the server
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
                burst_rounds=0,
                phase_seconds=12,
                # A token churn: it proves the phase works, measures little.
                churn=args.churn if args.churn is not None else 20,
                churn_batch=min(args.churn_batch, 10),
                churn_ttl=args.churn_ttl or 2,
                churn_settle=3,
            )
        return cls(
            quick=False,
            interactions=args.interactions or 200,
            warmup=15,
            opens=args.opens or 30,
            requests=100,
            browser_rounds=args.browser_rounds or 5,
            burst=args.burst,
            burst_rounds=args.burst_rounds,
            phase_seconds=300,
            churn=args.churn if args.churn is not None else 500,
            churn_batch=args.churn_batch,
            churn_ttl=args.churn_ttl or 5,
            churn_settle=5,
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
    db_path: Path | None = None  # the bridge's SQLite database

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

    def db_connections(self) -> int | None:
        """Open file descriptors of the SQLite database file in the server
        process: one per open database connection (None: not a bridge)."""
        if self.db_path is None:
            return None
        try:
            wanted = os.path.realpath(self.db_path)
            return sum(
                1
                for f in psutil.Process(self.server.process.pid).open_files()
                if os.path.realpath(f.path) == wanted
            )
        except psutil.Error:
            return -1


def prepare_users(workdir: Path, users: int) -> Path:
    """A fresh SQLite database with the test users and ``bench-01`` ..."""
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
    return db


def start_servers(
    kinds: list[str], workdir: Path, db: Path, session_ttl: int, tag: str = ""
) -> list[Target]:
    """Start bare marimo and the bridge servers in parallel; all or none."""
    starters = {"bare": lambda: BareServer(workdir / f"bare{tag}.log", session_ttl)}
    for kind in kinds:
        starters[kind] = lambda kind=kind: LiveServer(
            kind,
            db,
            workdir / f"bridge-{kind}{tag}.log",
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
        targets.append(
            Target(f"bridge {kind}", started[kind], BRIDGE_PAGE, login=True, db_path=db)
        )
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
        frames = await self.kernel.read_until_completed(FRAME_TIMEOUT)
        took = time.perf_counter() - started
        if not any(f"square={self.value**2} " in text for text in self.kernel.outputs):
            raise RuntimeError(
                f"{self.target.name}: first run did not render {RENDERED_TEXT}; "
                f"received {describe(frames)}"
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
        frames = await self.kernel.read_until_completed(FRAME_TIMEOUT)
        took = time.perf_counter() - started
        if not any(f"square={self.value**2} " in text for text in self.kernel.outputs):
            raise RuntimeError(
                f"{self.target.name}: re-run did not render square={self.value**2}; "
                f"received {describe(frames)}"
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


def sessions_per_user() -> int:
    """The test settings' cap on open notebook sessions per user."""
    from tests.settings import DJANGO_NOTEBOOKS  # plain module constants

    return int(DJANGO_NOTEBOOKS.get("MAX_SESSIONS_PER_USER") or 10**6)


def people(plan: Plan) -> int:
    """How many different users the run needs (alice counts as one).

    The interaction runs give each session its own user; the burst fills
    bench users up to the cap (100 sessions, cap 5: bench-01 ... bench-20);
    a churn batch spreads over the bench users so that nobody has more than
    half the cap open at once, which leaves room for the previous batch's
    websockets still being closed on the server."""
    cap = sessions_per_user()
    return max(
        *plan.concurrency,
        1 + math.ceil(plan.burst / cap),
        1 + math.ceil(plan.churn_batch / max(1, cap // 2)) if plan.churn else 1,
    )


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
    values: dict[str, Any]  # target name -> value (a number, or a short text)
    ratio: bool = True  # show bridge/bare ratios
    note: str = ""
    key: str = ""  # how the targets find the row


def is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not math.isnan(value)
    )


def fmt(value: Any, unit: str) -> str:
    if isinstance(value, str):
        return value
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
            if row.ratio and is_number(value) and is_number(base) and base:
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


def is_frontend(path: str) -> bool:
    """A file of marimo's frontend: below marimo's ``assets/`` (bare marimo)
    or the bridge's ``_marimo/<version>/`` URL, or any static file type."""
    return (
        "/assets/" in path
        or "/_marimo/" in path
        or path.endswith((".js", ".css", ".woff2", ".png", ".svg", ".ttf"))
    )


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
    sessions = [Session(target, burst_person(index)) for index in range(count)]
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
# 5. Churn: many sessions opened and closed; does the server come back?


@dataclass
class Snapshot:
    threads: int
    rss: int  # bytes
    db_connections: int | None  # bridge only

    @classmethod
    def of(cls, target: Target) -> Snapshot:
        return cls(target.threads(), target.rss(), target.db_connections())


@dataclass
class Churn:
    fresh: Snapshot | None = None  # before anything of this phase
    baseline: Snapshot | None = None  # after the warm-up batch expired
    half: Snapshot | None = None  # the same, after the first half of the churn
    after: Snapshot | None = None  # TTL + settle after the last close
    peak_threads: int = 0  # with a batch open
    peak_rss: int = 0
    rendered: int = 0
    errors: int = 0
    seconds: float = 0.0  # sum of the batches' open-to-closed wall times
    first_error: str = ""


async def churn_batch(
    target: Target, start: int, size: int, people_count: int, churn: Churn | None
) -> None:
    """Open ``size`` sessions at once, wait until each rendered, close them
    all (client side: websocket and HTTP connection), and count."""
    sessions = [
        Session(target, churn_person(start + i, people_count)) for i in range(size)
    ]
    started = time.perf_counter()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(s.open() for s in sessions), return_exceptions=True),
            FRAME_TIMEOUT * 2,
        )
    except TimeoutError:
        results = [TimeoutError("batch did not render in time")] * size
    if churn is not None:
        churn.peak_threads = max(churn.peak_threads, target.threads())
        churn.peak_rss = max(churn.peak_rss, target.rss())
    await asyncio.gather(*(s.close() for s in sessions))
    if churn is None:
        return
    churn.seconds += time.perf_counter() - started
    for result in results:
        if isinstance(result, BaseException):
            churn.errors += 1
            churn.first_error = (
                churn.first_error or f"{type(result).__name__}: {result}"
            )
        else:
            churn.rendered += 1


async def measure_churn(
    targets: list[Target], plan: Plan, people_count: int, notes: list[str]
) -> dict[str, Churn]:
    """``plan.churn`` sessions per server, ``plan.churn_batch`` open at a
    time, batches alternating between the servers; then wait until marimo's
    session_ttl has closed every kernel and compare the server with its
    baseline.

    The baseline is read after one unmeasured batch has been opened, closed
    and expired: what a server keeps after its first concurrent sessions
    (thread pools grown to their size, allocator arenas, imports) is a
    one-time cost; what the churn measures is whether sessions leave
    something behind."""
    churns = {target.name: Churn() for target in targets}
    settle = plan.churn_ttl + plan.churn_settle
    for target in targets:
        churns[target.name].fresh = Snapshot.of(target)
    for target in targets:
        await churn_batch(target, 0, plan.churn_batch, people_count, None)
    await asyncio.sleep(settle)
    for target in targets:
        churns[target.name].baseline = Snapshot.of(target)
    batches = math.ceil(plan.churn / plan.churn_batch)
    halfway = batches // 2 if batches >= 4 else 0  # no halfway in a token churn
    deadline = time.monotonic() + plan.phase_seconds
    for number in range(batches):
        if time.monotonic() > deadline:
            notes.append(
                f"churn stopped at the {plan.phase_seconds:.0f} s limit after "
                f"{number} of {batches} batches"
            )
            break
        if number == halfway and halfway:
            # Halfway, the same reading: growth that continues in the second
            # half grows with the number of sessions (a leak); growth that
            # stops is paid once (the allocator keeping its high-water mark).
            await asyncio.sleep(settle)
            for target in targets:
                churns[target.name].half = Snapshot.of(target)
        start = number * plan.churn_batch
        size = min(plan.churn_batch, plan.churn - start)
        for target in rotated(targets, number):
            await churn_batch(target, start, size, people_count, churns[target.name])
    await asyncio.sleep(settle)
    for target in targets:
        churns[target.name].after = Snapshot.of(target)
    return churns


def within(after: float, baseline: float, tolerance: float = 0.05) -> str:
    """``yes (+1.2 %)`` when ``after`` is at most ``tolerance`` above ``baseline``."""
    if not baseline:
        return "yes" if after <= baseline else "no"
    change = (after - baseline) / baseline
    return f"{'yes' if change <= tolerance else 'no'} ({change * 100:+.1f} %)"


def churn_rows(plan: Plan, churns: dict[str, Churn]) -> list[Row]:
    n = plan.churn
    mb = 2**20
    label = f"churn {n} ({plan.churn_batch} at a time, ttl {plan.churn_ttl} s)"

    def each(get: Any) -> dict[str, Any]:
        return {name: get(c) for name, c in churns.items()}

    def db(c: Churn, which: str) -> Any:
        snapshot = getattr(c, which)
        return "–" if snapshot.db_connections is None else snapshot.db_connections

    batches = math.ceil(n / plan.churn_batch)
    half = (batches // 2 if batches >= 4 else 0) * plan.churn_batch
    when = f"{plan.churn_ttl}+{plan.churn_settle:g} s after"
    return [
        Row(f"{label}: rendered", "", each(lambda c: c.rendered), ratio=False),
        Row(f"{label}: errors", "", each(lambda c: c.errors), ratio=False),
        Row(
            f"{label}: wall time, sum of batches",
            "s",
            each(lambda c: c.seconds),
        ),
        Row(
            f"{label}: threads, baseline",
            "",
            each(lambda c: c.baseline.threads),
            ratio=False,
        ),
        Row(f"{label}: threads, peak", "", each(lambda c: c.peak_threads), ratio=False),
        Row(
            f"{label}: threads, {when}",
            "",
            each(lambda c: c.after.threads),
            ratio=False,
        ),
        Row(
            f"{label}: threads back within 5 % of baseline",
            "",
            each(lambda c: within(c.after.threads, c.baseline.threads)),
            ratio=False,
            key="churn-threads",
        ),
        Row(
            f"{label}: RSS, baseline",
            "MB",
            each(lambda c: c.baseline.rss / mb),
            ratio=False,
        ),
        Row(f"{label}: RSS, peak", "MB", each(lambda c: c.peak_rss / mb), ratio=False),
        Row(
            f"{label}: RSS, halfway ({half} sessions), {when}",
            "MB",
            each(lambda c: c.half.rss / mb if c.half else math.nan),
            ratio=False,
        ),
        Row(
            f"{label}: RSS, {when}",
            "MB",
            each(lambda c: c.after.rss / mb),
            ratio=False,
        ),
        Row(
            f"{label}: RSS growth in the second half, per session",
            "KB",
            each(
                lambda c: (
                    (c.after.rss - c.half.rss) / (n - half) / 1024
                    if c.half and n > half
                    else math.nan
                )
            ),
            ratio=False,
        ),
        Row(
            f"{label}: RSS back within 5 % of baseline",
            "",
            each(lambda c: within(c.after.rss, c.baseline.rss)),
            ratio=False,
            key="churn-rss",
        ),
        Row(
            f"{label}: open DB connections, baseline",
            "",
            each(lambda c: db(c, "baseline")),
            ratio=False,
            key="churn-db-baseline",
        ),
        Row(
            f"{label}: open DB connections, after",
            "",
            each(lambda c: db(c, "after")),
            ratio=False,
            key="churn-db",
        ),
    ]


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

    if plan.burst and plan.burst_rounds:
        progress(f"{plan.burst} sessions opened at once")
        rounds: dict[str, list[Burst]] = {target.name: [] for target in targets}
        for round_number in range(plan.burst_rounds):
            for target in rotated(targets, round_number):
                rounds[target.name].append(await measure_burst(target, plan.burst))
                # marimo ends closed sessions session_ttl after their websocket
                # closed: wait for that here, or the teardown of 100 kernels
                # would run during the next server's burst.
                await asyncio.sleep(args.session_ttl + 3)
        # Memory and threads from each server's first round: later rounds
        # reuse memory the first one freed and would show less growth.
        first = {name: r[0] for name, r in rounds.items()}
        label = f"{plan.burst} sessions at once"
        n = plan.burst_rounds
        rows += [
            Row(
                f"{label}: rendered, fewest of a round",
                "",
                {k: min(b.rendered for b in r) for k, r in rounds.items()},
                ratio=False,
                note=f"{n} rounds",
                key="burst-rendered",
            ),
            Row(
                f"{label}: errors, all rounds",
                "",
                {k: sum(b.errors for b in r) for k, r in rounds.items()},
                ratio=False,
                key="burst-errors",
            ),
            Row(
                f"{label}: wall time until all rendered, median",
                "s",
                {k: median([b.wall_seconds for b in r]) for k, r in rounds.items()},
                key="burst-seconds",
            ),
            Row(
                f"{label}: server RSS growth per session",
                "MB",
                {k: b.rss_per_session / 2**20 for k, b in first.items()},
                note="first round",
                key="burst-rss",
            ),
            Row(
                f"{label}: server RSS with them open",
                "MB",
                {k: b.rss_after / 2**20 for k, b in first.items()},
                note="first round",
            ),
            Row(
                f"{label}: server threads per session",
                "",
                {k: round(b.threads_per_session, 2) for k, b in first.items()},
                note="first round",
            ),
        ]
        for name, r in rounds.items():
            notes.append(
                f"{name}: {label}, wall time per round: "
                + ", ".join(f"{b.wall_seconds:.2f} s" for b in r)
            )
            errors = [b.first_error for b in r if b.first_error]
            if errors:
                notes.append(f"{name}: first burst error: {errors[0]}")
    else:
        notes.append("many sessions at once: skipped (--quick, or --burst 0)")
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
                key=f"interaction-{concurrency}-median",
            )
        )
        rows.append(
            Row(
                f"{label}: p95",
                "ms",
                {k: percentile(v, 95) * 1000 for k, v in samples.items()},
                key=f"interaction-{concurrency}-p95",
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
                    key="cold-bytes",
                ),
                Row(
                    "cold page load: time to `square=9` visible",
                    "ms",
                    stat("cold", "render_seconds", 1000),
                    key="cold-render",
                ),
                Row("warm page load: requests", "", stat("warm", "requests")),
                Row(
                    "warm page load: requests to the server",
                    "",
                    stat("warm", "network_requests"),
                    key="warm-network",
                ),
                Row(
                    "warm page load: frontend files asked of the server",
                    "",
                    {
                        k: max(
                            sum(1 for path in x.network_paths if is_frontend(path))
                            for x in loads[k]["warm"]
                        )
                        for k in names
                    },
                    ratio=False,
                    note="most of any visit",
                    key="warm-frontend",
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
                cold = loads[name]["cold"]
                if cold:
                    by_kind = {
                        kind: median([x.bytes_by_kind.get(kind, 0) for x in cold])
                        for kind in ("js", "css", "font", "image", "other")
                    }
                    notes.append(
                        f"{name}: cold visit bytes by type: "
                        + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in by_kind.items())
                    )
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


async def run_churn(targets: list[Target], plan: Plan) -> tuple[list[Row], list[str]]:
    """The churn phase, on servers of its own (see main)."""
    notes: list[str] = []
    print(
        f"[bench] churn: {plan.churn} sessions opened and closed, "
        f"{plan.churn_batch} at a time, session_ttl {plan.churn_ttl} s",
        file=sys.stderr,
        flush=True,
    )
    count = people(plan)
    await log_in(targets, count)
    # Warm every server once (first notebook build, imports), as in run().
    for target in targets:
        session = Session(target)
        try:
            await session.open()
        finally:
            await session.close()
    churns = await measure_churn(targets, plan, count, notes)
    for name, churn in churns.items():
        fresh = churn.fresh
        notes.append(
            f"{name}: churn servers before their warm-up batch: {fresh.threads} "
            f"threads, RSS {fresh.rss / 2**20:.1f} MB"
            + (
                ""
                if fresh.db_connections is None
                else f", {fresh.db_connections} open DB connections"
            )
        )
        if churn.first_error:
            notes.append(f"{name}: first churn error: {churn.first_error}")
    return churn_rows(plan, churns), notes


# --------------------------------------------------------------------------
# Targets (the project's performance goals), checked per bridge server


def ratio_at_most(limit: float) -> Any:
    def check(value: Any, base: Any, row: Row, rows: dict[str, Row], name: str):
        if not (is_number(value) and is_number(base) and base):
            return None, "n/a"
        ratio = value / base
        shown = f"{ratio:.2f}x"
        if (round(ratio, 2) <= limit) != (ratio <= limit):
            shown = f"{ratio:.3f}x"  # rounding would hide why
        return ratio <= limit, shown

    return check


def value_check(test: Any, show: Any = None) -> Any:
    def check(value: Any, base: Any, row: Row, rows: dict[str, Row], name: str):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None, "n/a"
        return bool(test(value, rows, name)), (show or fmt)(value, row.unit)

    return check


def change_only(value: str, unit: str) -> str:
    """``+1.2 %`` out of ``yes (+1.2 %)``."""
    return value[value.find("(") + 1 : -1] if "(" in value else value


TARGETS: list[tuple[str, str, Any]] = [
    (
        "interaction, 1 session: median ≤ 1.05x",
        "interaction-1-median",
        ratio_at_most(1.05),
    ),
    ("interaction, 1 session: p95 ≤ 1.10x", "interaction-1-p95", ratio_at_most(1.10)),
    (
        "interaction, 8 sessions: median ≤ 1.05x",
        "interaction-8-median",
        ratio_at_most(1.05),
    ),
    ("interaction, 8 sessions: p95 ≤ 1.10x", "interaction-8-p95", ratio_at_most(1.10)),
    ("cold page load: bytes ≤ 0.35x", "cold-bytes", ratio_at_most(0.35)),
    ("cold page load: time to first output ≤ 1.00x", "cold-render", ratio_at_most(1.0)),
    (
        "repeat visit: frontend from the cache, not revalidated",
        "warm-frontend",
        value_check(lambda v, rows, name: v == 0, lambda v, u: f"{v:g} asked"),
    ),
    (
        "repeat visit: ≤ 10 requests to the server",
        "warm-network",
        value_check(lambda v, rows, name: v <= 10),
    ),
    (
        "{burst} sessions at once: all rendered",
        "burst-rendered",
        value_check(
            lambda v, rows, name: v > 0 and rows["burst-errors"].values[name] == 0,
            lambda v, u: f"{v:g} rendered",
        ),
    ),
    (
        "{burst} sessions at once: 0 errors",
        "burst-errors",
        value_check(lambda v, rows, name: v == 0),
    ),
    ("{burst} sessions at once: time ≤ 1.10x", "burst-seconds", ratio_at_most(1.10)),
    ("{burst} sessions at once: RSS/session ≤ 1.05x", "burst-rss", ratio_at_most(1.05)),
    (
        "churn: threads back within 5 %",
        "churn-threads",
        value_check(
            lambda v, rows, name: str(v).startswith("yes"),
            change_only,
        ),
    ),
    (
        "churn: RSS back within 5 %",
        "churn-rss",
        value_check(
            lambda v, rows, name: str(v).startswith("yes"),
            change_only,
        ),
    ),
    (
        "churn: no DB connection left",
        "churn-db",
        value_check(
            lambda v, rows, name: (
                is_number(v) and v <= rows["churn-db-baseline"].values[name]
            ),
            lambda v, u: f"{v} open after",
        ),
    ),
]


def render_targets(targets: list[Target], rows: list[Row], plan: Plan) -> str:
    by_key = {row.key: row for row in rows if row.key}
    bare = targets[0].name
    bridges = [t.name for t in targets[1:]]
    lines = [
        "| target | " + " | ".join(bridges) + " |",
        "|---|" + "---|" * len(bridges),
    ]
    for label, key, check in TARGETS:
        row = by_key.get(key)
        cells = []
        for name in bridges:
            if row is None:
                cells.append("not measured")
                continue
            met, shown = check(
                row.values.get(name), row.values.get(bare), row, by_key, name
            )
            verdict = (
                "not measured" if met is None else ("met" if met else "**not met**")
            )
            cells.append(f"{verdict} ({shown})")
        label = label.format(burst=plan.burst or "many")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        "--burst", type=int, default=100, help="sessions opened at once (full run)"
    )
    parser.add_argument(
        "--burst-rounds",
        type=int,
        default=2,
        help="rounds of the burst per server, alternating (default 2)",
    )
    parser.add_argument(
        "--churn",
        type=int,
        default=None,
        help="sessions opened and closed per server in the churn phase "
        "(default 500, quick 20; 0 skips it)",
    )
    parser.add_argument(
        "--churn-batch",
        type=int,
        default=25,
        help="churn sessions open at the same time (default 25, quick 10)",
    )
    parser.add_argument(
        "--churn-ttl",
        type=int,
        default=0,
        help="session_ttl of the churn servers, seconds (default 5, quick 2)",
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


def run_phase(
    phase: Any,
    kinds: list[str],
    workdir: Path,
    db: Path,
    session_ttl: int,
    tag: str,
    stop_times: dict[str, float],
) -> tuple[list[Target], list[Row], list[str]]:
    """Start the servers, run ``phase(targets)`` (a coroutine function) and
    stop the servers, also when it fails or is interrupted."""
    targets: list[Target] = []
    try:
        print(f"[bench] starting servers{tag}", file=sys.stderr, flush=True)
        targets = start_servers(kinds, workdir, db, session_ttl, tag)
        rows, notes = asyncio.run(phase(targets))
    except BaseException:
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
            stop_times.update(stop_servers([t.server for t in targets]))
    return targets, rows, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.for_args(args)
    started_at = datetime.datetime.now().astimezone()
    clock = time.monotonic()

    # A SIGTERM to this script stops its servers too (via the finally blocks).
    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)

    workdir = Path(tempfile.mkdtemp(prefix="dn-bench-"))
    stop_times: dict[str, float] = {}
    try:
        db = prepare_users(workdir, people(plan))
        targets, rows, notes = run_phase(
            lambda targets: run(args, targets, plan),
            args.kinds,
            workdir,
            db,
            args.session_ttl,
            "",
            stop_times,
        )
        if plan.churn:
            # Fresh servers with a short session_ttl: the churn's baseline is
            # then not the high-water mark of the phases before it.
            _, churn, churn_notes = run_phase(
                lambda targets: run_churn(targets, plan),
                args.kinds,
                workdir,
                db,
                plan.churn_ttl,
                " for the churn",
                stop_times,
            )
            rows += churn
            notes += churn_notes
        else:
            notes.append("churn: skipped (--churn 0)")
    finally:
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
    report += [
        "",
        "Targets (the project's performance goals; ratios are bridge / bare marimo):",
        "",
        render_targets(targets, rows, plan),
    ]
    if plan.quick:
        report.append("")
        report.append(
            "(--quick: too few samples for the verdicts to mean much; "
            "run the full benchmark.)"
        )
    report.append("")
    report.append(f"Total run time: {time.monotonic() - clock:.1f} s.")
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
