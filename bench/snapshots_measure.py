"""bench/snapshots.py's measurements: the servers (bare marimo twice, the
bridge with its snapshot notebooks), a crowd on one page, bare marimo's
session opens, cold visits in Chromium, and saves of a listed model."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import servers
from bench.client import rotated
from tests.live import (
    LiveServer,
    NotebookClient,
    database_of_its_own,
    prepare_database,
    server_env,
)

NOTEBOOK = servers.ROOT / "tests" / "notebooks" / "snapshot.py"
STATIC_PAGE = "/notebooks/kpis/"
OUTPUTS_FIRST_PAGE = "/notebooks/report/"
DJANGO_PAGE = "/bench/page-of-size/{size}/"  # tests/urls.py, tests/views.py
SNAPSHOTS = ("kpis", "kpis_sales", "report")  # what tests/settings.py registers
FIGURE = re.compile(r"groups=(\d+|none)")
SESSION_TTL = 5  # seconds a closed session is kept (bare marimo, the bridge)
OPENS_SESSION_TTL = 2  # bare marimo's, for the opens/s part (less kept)
REQUEST_TIMEOUT = 60.0  # seconds, one GET of the crowd
FRAME_TIMEOUT = 60.0  # seconds to wait for a completed-run
READY_TIMEOUT = 120.0  # seconds for a server's snapshots to be made
POLL = 0.05  # seconds between two GETs of the page after a save
KERNEL_SAMPLE = 1.0  # seconds between two counts of kernel processes
CHROMIUM = "/usr/bin/chromium"


@dataclass
class Bridge:
    """One bridge server (the test project) with its snapshot notebooks."""

    kind: str  # "uvicorn" or "daphne"
    server: Any  # LiveServer
    db: Path
    env: dict[str, str]  # what the server got, for the saving process

    @property
    def name(self) -> str:
        return f"bridge {self.kind}"


@dataclass
class Crowd:
    """One crowd's run: answers, latencies and what went wrong."""

    target: str
    clients: int
    seconds: float = 0.0  # wall time, first request to the last answer
    latencies: list[float] = field(default_factory=list)  # good answers
    errors: int = 0
    first_error: str = ""
    most_kernels: int = 0  # kernel processes, the most of any count
    server_cpu: float = 0.0  # CPU seconds of the server's web process
    client_cpu: float = 0.0  # CPU seconds of this script (the crowd)

    def error(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or what


@dataclass
class Opens:
    """Bare marimo's session opens, several openers at once."""

    openers: int
    seconds: float = 0.0
    took: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    server_cpu: float = 0.0  # CPU seconds of bare marimo's process (its kernels)
    client_cpu: float = 0.0  # CPU seconds of this script (the openers)


@dataclass
class Save:
    """One save of a group and the page that showed it."""

    server: str
    mode: str  # "late" (not debounced) or "soon" (right after a making)
    since_start: float = math.nan  # save - the last making's start
    started_after: float = math.nan  # save -> the new making's start
    run: float = math.nan  # "Made the snapshot of 'kpis' in X s"
    stored_after: float = math.nan  # save -> the new page stored
    shown: float = math.nan  # save -> the first GET showing the new count
    reason: str = ""  # why the keeper made it ("asked")
    makings: int = 0  # makings of 'kpis' between the save and the page


# --------------------------------------------------------------------------
# The servers


def bridge_env(
    notebook: Path, media: Path, host: Path, run_seconds: float, interval: float
) -> dict[str, str]:
    return {
        "DJANGO_NOTEBOOKS_TEST_ISOLATION": "process",
        "DJANGO_NOTEBOOKS_TEST_SNAPSHOTS": str(notebook),
        "DJANGO_NOTEBOOKS_TEST_SNAPSHOT_INTERVAL": f"{interval:g}",
        "DJANGO_NOTEBOOKS_TEST_MEDIA": str(media),
        "DJANGO_NOTEBOOKS_TEST_RUN_SECONDS": f"{run_seconds:g}",
        "DJANGO_NOTEBOOKS_TEST_SESSION_TTL": str(SESSION_TTL),
        # Outputs first alone: no spare runs the notebook ahead (the test
        # settings' default, said here).
        "DJANGO_NOTEBOOKS_TEST_SPARES": "0",
        # Every browser visit is a new anonymous visitor from 127.0.0.1:
        # measure the page, not the caps.
        "DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS": str(servers.BRIDGE_MAX_SESSIONS),
        "DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_ANONYMOUS_SESSIONS": str(
            servers.BRIDGE_MAX_SESSIONS
        ),
        "DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS_PER_ADDRESS": str(
            servers.BRIDGE_MAX_SESSIONS
        ),
        # A kernel host of its own: nothing else's kernels beside its own.
        "XDG_RUNTIME_DIR": str(host),
    }


def start_servers(
    kinds: list[str],
    workdir: Path,
    run_seconds: float,
    interval: float,
    started: dict[str, Any],
) -> tuple[list[Bridge], Path]:
    """Start bare marimo twice (its sleep at 0 for the opens/s, at
    ``run_seconds`` for the browser) and the bridge servers, in parallel.
    Each lands in ``started`` as soon as it listens, so that whoever stops
    them (also after an error here) finds all that started."""
    notebook = workdir / "kpis.py"
    shutil.copy(NOTEBOOK, notebook)
    db = prepare_database(workdir / "db.sqlite3")
    bridges: list[Bridge] = []

    def bare(name: str, seconds: float, ttl: int) -> Callable[[], None]:
        def start() -> None:
            started[name] = servers.BareServer(
                workdir / f"{name}.log",
                notebook,
                session_ttl=ttl,
                env={"DJANGO_NOTEBOOKS_TEST_RUN_SECONDS": f"{seconds:g}"},
            )

        return start

    def bridge(kind: str) -> Callable[[], None]:
        folder = workdir / kind
        folder.mkdir()
        own_db = database_of_its_own(db, folder, superuser=False)
        # A short folder name: the host's socket path has a length limit.
        host = servers.host_folder(workdir, kind)
        env = bridge_env(notebook, folder / "media", host, run_seconds, interval)

        def start() -> None:
            server = LiveServer(kind, own_db, folder / "server.log", None, **env)
            started[kind] = server
            bridges.append(Bridge(kind, server, own_db, env))

        return start

    errors = servers.in_parallel(
        [
            bare("bare-opens", 0, OPENS_SESSION_TTL),
            bare("bare-run", run_seconds, SESSION_TTL),
            *(bridge(kind) for kind in kinds),
        ]
    )
    if errors:
        raise errors[0]
    bridges.sort(key=lambda b: kinds.index(b.kind))
    return bridges, notebook


def snapshots_made(bridge: Bridge) -> bool:
    log = bridge.server.log()
    return all(f"Made the snapshot of {slug!r}" in log for slug in SNAPSHOTS)


async def wait_until_made(bridges: list[Bridge]) -> None:
    """Start each server's keeper (its first notebook page) and wait until
    it has made every snapshot and their runs' kernels have ended."""
    async with httpx.AsyncClient(timeout=30) as client:
        for bridge in bridges:
            first = await client.get(bridge.server.url + STATIC_PAGE)
            if first.status_code not in (200, 503):
                raise RuntimeError(f"{bridge.name}: {STATIC_PAGE} {first.status_code}")
    deadline = time.monotonic() + READY_TIMEOUT
    for bridge in bridges:
        while not snapshots_made(bridge) or bridge.server.kernel_pids():
            if "could not be made" in bridge.server.log():
                raise RuntimeError(f"{bridge.name}: a snapshot could not be made")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{bridge.name}: the snapshots were not made")
            await asyncio.sleep(0.2)


# --------------------------------------------------------------------------
# 1. A crowd on one page


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 answer: its status, its body, and whether the server
    closes the connection after it."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(chunk[:-2] for chunk in chunks)
    else:
        raise ValueError("an answer with no length")
    return status, body, headers.get("connection", "").lower() == "close"


async def crowd(
    url: str,
    path: str,
    clients: int,
    seconds: float,
    check: Callable[[bytes], bool],
    crowd_result: Crowd,
) -> None:
    """``clients`` clients, each on a connection of its own (opened first,
    not timed), GET ``path`` one request after the other for ``seconds``."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Accept: text/html\r\nUser-Agent: bench-snapshots\r\n\r\n"
    ).encode()

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(host, int(port), limit=2**20)

    connections = await asyncio.gather(*(connect() for _ in range(clients)))
    go = asyncio.Event()
    until = [math.inf]

    async def client(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await go.wait()
        while time.perf_counter() < until[0]:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    writer.write(request)
                    status, body, close = await read_answer(reader)
            except (
                OSError,
                EOFError,  # (asyncio's IncompleteReadError)
                TimeoutError,
                ValueError,
                asyncio.LimitOverrunError,
            ) as error:
                # A new connection, after a pause: a server refusing them
                # is not hammered.
                crowd_result.error(f"{type(error).__name__}: {error}")
                writer.close()
                await asyncio.sleep(0.05)
                with contextlib.suppress(OSError):
                    reader, writer = await connect()
                continue
            took = time.perf_counter() - started
            if status != 200 or not check(body):
                crowd_result.error(f"answer {status}, {len(body)} bytes")
            else:
                crowd_result.latencies.append(took)
            if close:
                writer.close()
                reader, writer = await connect()
        writer.close()

    tasks = [asyncio.create_task(client(r, w)) for r, w in connections]
    await asyncio.sleep(0.1)  # every client waits for the start
    started = time.perf_counter()
    until[0] = started + seconds
    go.set()
    await asyncio.gather(*tasks)
    crowd_result.seconds = time.perf_counter() - started


@contextlib.contextmanager
def cpu_used(server: Any, result: Crowd | Opens) -> Iterator[None]:
    """The CPU time the server's process (not its children: kernels in
    processes, idle here) and this script used while the block ran."""

    def used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    web, me = psutil.Process(server.process.pid), psutil.Process()
    web_before, me_before = used(web), used(me)
    try:
        yield
    finally:
        result.server_cpu = used(web) - web_before
        result.client_cpu = used(me) - me_before


@contextlib.contextmanager
def counting_kernels(server: Any, result: Crowd) -> Iterator[None]:
    """Count the server's kernel processes every KERNEL_SAMPLE seconds
    while the block runs (in a thread: it reads /proc)."""
    stop = threading.Event()

    def count() -> None:
        while True:
            result.most_kernels = max(result.most_kernels, len(server.kernel_pids()))
            if stop.wait(KERNEL_SAMPLE):
                return

    thread = threading.Thread(target=count, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        result.most_kernels = max(result.most_kernels, len(server.kernel_pids()))


async def bare_opens(server: Any, openers: int, seconds: float, result: Opens) -> None:
    """``openers`` clients open sessions one after the other for
    ``seconds``: page GET, websocket, first completed-run (which must show
    ``groups=``), a new connection each."""
    page = servers.BARE_PAGE

    async def opener() -> None:
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                async with NotebookClient(server.url) as client:
                    answer = await client.http.get(page)
                    if answer.status_code != 200:
                        raise RuntimeError(f"page answered {answer.status_code}")
                    async with client.kernel(page) as kernel:
                        await kernel.read_until_completed(FRAME_TIMEOUT)
                    if not any(FIGURE.search(text) for text in kernel.outputs):
                        raise RuntimeError("the first run showed no groups=")
            except Exception as error:
                result.errors += 1
                result.first_error = result.first_error or repr(error)
                continue
            result.took.append(time.perf_counter() - started)

    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(opener() for _ in range(openers)))
    result.seconds = time.perf_counter() - started


@dataclass
class LoadPart:
    """Part 1's settings and results."""

    clients: int
    seconds: float
    rounds: int
    openers: int
    page_bytes: int = 0
    opens: list[Opens] = field(default_factory=list)
    crowds: dict[str, list[Crowd]] = field(default_factory=dict)  # by target


async def measure_load(
    bridges: list[Bridge], bare: Any, part: LoadPart, warm_up: bool
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        page = await client.get(bridges[0].server.url + STATIC_PAGE)
    part.page_bytes = len(page.content)
    size = part.page_bytes
    django_page = DJANGO_PAGE.format(size=size)

    def static_check(body: bytes) -> bool:
        return len(body) == size and b"groups=1 " in body

    def django_check(body: bytes) -> bool:
        return len(body) == size

    jobs: list[tuple[str, Callable[[float, bool], Any]]] = []

    def opens_job(seconds: float, keep: bool) -> Any:
        result = Opens(part.openers)
        if keep:
            part.opens.append(result)

        async def run() -> None:
            with cpu_used(bare, result):
                await bare_opens(bare, part.openers, seconds, result)

        return run()

    jobs.append(("bare opens", opens_job))
    for bridge in bridges:
        for label, path, check in (
            ("static", STATIC_PAGE, static_check),
            ("django", django_page, django_check),
        ):
            name = f"{bridge.name}: {label}"

            def crowd_job(
                seconds: float,
                keep: bool,
                name: str = name,
                server: Any = bridge.server,
                path: str = path,
                check: Callable[[bytes], bool] = check,
            ) -> Any:
                result = Crowd(name, part.clients)
                if keep:
                    part.crowds.setdefault(name, []).append(result)

                async def run() -> None:
                    with cpu_used(server, result), counting_kernels(server, result):
                        await crowd(
                            server.url, path, part.clients, seconds, check, result
                        )

                return run()

            jobs.append((name, crowd_job))
    if warm_up:  # imports, first answers, grown pools: unmeasured
        for _, job in jobs:
            await job(1.0, False)
    for round_number in range(part.rounds):
        for name, job in rotated(jobs, round_number):
            print(f"[snapshots] load round {round_number + 1}: {name}", file=sys.stderr)
            await job(part.seconds, True)


# --------------------------------------------------------------------------
# 2. Outputs first in Chromium


@dataclass
class Visit:
    """One cold visit: seconds from the navigation's start to each stage."""

    output: float = math.nan  # ``groups=`` visible
    content_loaded: float = math.nan  # DOMContentLoaded (the page's scripts ran)
    websocket: float = math.nan  # the page opened the kernel websocket
    first_frame: float = math.nan  # its first frame came
    first_output_frame: float = math.nan  # the first frame with ``groups=``


async def first_output(browser: Any, url: str) -> Visit:
    """A visit in a fresh context (an empty cache): seconds from the
    navigation's start until ``groups=`` is visible, and the stages."""
    visit = Visit()
    context = await browser.new_context()
    try:
        page = await context.new_page()
        started = time.perf_counter()

        def on_frame(payload: str | bytes) -> None:
            now = time.perf_counter() - started
            if math.isnan(visit.first_frame):
                visit.first_frame = now
            text = payload if isinstance(payload, str) else ""
            if math.isnan(visit.first_output_frame) and "groups=" in text:
                visit.first_output_frame = now

        def on_websocket(websocket: Any) -> None:
            if "/ws?" in websocket.url and math.isnan(visit.websocket):
                visit.websocket = time.perf_counter() - started
                websocket.on("framereceived", on_frame)

        page.on("websocket", on_websocket)
        await page.goto(url, wait_until="commit", timeout=60_000)
        await page.get_by_text(FIGURE).first.wait_for(state="visible", timeout=60_000)
        visit.output = time.perf_counter() - started
        # The browser's own clock, from the navigation's start.
        loaded = await page.evaluate(
            "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
        )
        visit.content_loaded = float(loaded) / 1000
        return visit
    finally:
        await context.close()


async def measure_first_outputs(
    targets: list[tuple[str, str]], rounds: int, pause: float, warm_up: bool
) -> dict[str, list[Visit]]:
    """``rounds`` cold visits of every target, the order rotating, after
    one unmeasured visit each if ``warm_up``; ``pause`` seconds after each
    visit, so that its run (bare marimo's, or the bridge's session's behind
    the snapshot) has ended before the next."""
    from playwright.async_api import async_playwright

    from tests.browser.conftest import CHROMIUM_ARGS

    results: dict[str, list[Visit]] = {name: [] for name, _ in targets}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        try:
            for _, url in targets if warm_up else []:
                await first_output(browser, url)
                await asyncio.sleep(pause)
            for round_number in range(rounds):
                for name, url in rotated(targets, round_number):
                    results[name].append(await first_output(browser, url))
                    await asyncio.sleep(pause)
        finally:
            await browser.close()
    return results


# --------------------------------------------------------------------------
# 3. A save and the page that shows it

SAVER = """
import json, sys, time
import django
django.setup()
from django.contrib.auth.models import Group
from django_notebooks.models import NotebookSnapshot
print("ready", flush=True)
name = sys.stdin.readline().strip()
row = NotebookSnapshot.objects.get(notebook="kpis")
saved = time.time()
Group.objects.create(name=name)
print(json.dumps({"saved": saved, "started_at": row.started_at.timestamp(),
                  "count": Group.objects.count()}), flush=True)
"""


class Saver:
    """A process with Django set up that creates a group when told: the
    save is timed, its start-up is not."""

    def __init__(self, bridge: Bridge) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SAVER],
            env=server_env(bridge.db, **bridge.env),
            cwd=servers.ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.process.kill()
            raise RuntimeError("the saving process did not start")

    def save(self, name: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()

    def outcome(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.process.wait(30)
        if not line:
            raise RuntimeError("the saving process failed")
        return dict(json.loads(line))

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_savers(bridges: list[Bridge], count: int) -> dict[str, list[Saver]]:
    """``count`` saving processes per server, started in parallel."""
    savers: dict[str, list[Saver]] = {bridge.kind: [] for bridge in bridges}

    def start(bridge: Bridge) -> Callable[[], None]:
        return lambda: savers[bridge.kind].append(Saver(bridge))

    errors = servers.in_parallel([start(b) for b in bridges for _ in range(count)])
    if errors:
        for saver in (s for mine in savers.values() for s in mine):
            saver.end()
        raise errors[0]
    return savers


def kpis_row(bridge: Bridge) -> dict[str, float]:
    """The server's row of the 'kpis' snapshot: when its last making
    started (``started_at``), when that making's page was stored
    (``made_at``), both in epoch seconds, and how long the making took
    (``seconds``: what the keeper logs as "Made the snapshot of 'kpis' in
    X s", there rounded to 0.1 s)."""
    with contextlib.closing(sqlite3.connect(bridge.db, timeout=30)) as db:
        started_at, made_at, seconds = db.execute(
            "SELECT started_at, made_at, seconds "
            "FROM django_notebooks_notebooksnapshot WHERE notebook = 'kpis'"
        ).fetchone()

    def epoch(text: str) -> float:
        moment = datetime.datetime.fromisoformat(text)
        if moment.tzinfo is None:  # Django's SQLite backend: UTC
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.timestamp()

    return {
        "started_at": epoch(started_at),
        "made_at": epoch(made_at),
        "seconds": float(seconds),
    }


MADE = re.compile(r"Made the snapshot of 'kpis' in ([\d.]+) s")
MAKING = re.compile(r"Making the snapshot of 'kpis' \(([^)]*)\)")


async def shown_count(client: httpx.AsyncClient, url: str) -> int | None:
    answer = await client.get(url + STATIC_PAGE)
    found = FIGURE.search(answer.text) if answer.status_code == 200 else None
    return int(found.group(1)) if found and found.group(1) != "none" else None


async def one_save(
    bridge: Bridge, saver: Saver, mode: str, interval: float, number: int
) -> Save:
    save = Save(bridge.name, mode)
    url = bridge.server.url
    async with httpx.AsyncClient(timeout=30) as client:
        before = await shown_count(client, url)
        if before is None:
            raise RuntimeError(f"{bridge.name}: the page shows no count")
        if mode == "late":  # not debounced: the interval has passed
            wait = kpis_row(bridge)["started_at"] + interval + 0.5 - time.time()
            await asyncio.sleep(max(0.0, wait))
        log_before = bridge.server.log()
        made_before = len(MADE.findall(log_before))
        making_before = len(MAKING.findall(log_before))
        saver.save(f"bench-{bridge.kind}-{number}")
        deadline = time.monotonic() + interval + 60
        while True:
            count = await shown_count(client, url)
            seen = time.time()
            if count is not None and count > before:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{bridge.name}: the new count was never shown")
            await asyncio.sleep(POLL)
    outcome = await asyncio.to_thread(saver.outcome)
    if count != outcome["count"]:
        raise RuntimeError(f"{bridge.name}: shows {count}, not {outcome['count']}")
    save.shown = seen - outcome["saved"]
    save.since_start = outcome["saved"] - outcome["started_at"]
    row = kpis_row(bridge)
    save.started_after = row["started_at"] - outcome["saved"]
    save.stored_after = row["made_at"] - outcome["saved"]
    save.run = row["seconds"]
    log = bridge.server.log()
    made = MADE.findall(log)[made_before:]
    reasons = MAKING.findall(log)[making_before:]
    save.makings = len(made)
    if made and abs(float(made[-1]) - save.run) > 0.051:
        raise RuntimeError(f"{bridge.name}: logged {made[-1]} s, stored {save.run}")
    save.reason = reasons[-1] if reasons else "?"
    return save


async def measure_saves(
    bridges: list[Bridge], rounds: int, interval: float
) -> list[Save]:
    """``rounds`` saves per server: a save after the interval ("late"),
    then one right after the page showed it ("soon"), and so on; the
    servers take turns, a pair of saves each."""
    saves: list[Save] = []
    number = 0
    # Django set up beforehand (not timed): the "soon" save follows at once.
    savers = await asyncio.to_thread(start_savers, bridges, rounds)
    try:
        for round_number in range((rounds + 1) // 2):
            modes = ["late", "soon"][: rounds - 2 * round_number]
            for bridge in rotated(bridges, round_number):
                for mode in modes:
                    number += 1
                    print(
                        f"[snapshots] save {number}: {bridge.name}, {mode}",
                        file=sys.stderr,
                    )
                    saver = savers[bridge.kind].pop()
                    try:
                        saves.append(
                            await one_save(bridge, saver, mode, interval, number)
                        )
                    finally:
                        saver.end()
    finally:
        for saver in (s for mine in savers.values() for s in mine):
            saver.end()
    return saves
