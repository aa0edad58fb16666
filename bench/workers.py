#!/usr/bin/env python
"""Benchmark: the bridge on several server processes (kernel calls forwarded
between them over a Redis channel layer), on this machine, in one run.

    python bench/workers.py                  # full run (about 8 minutes)
    python bench/workers.py --quick          # smoke run (well under a minute)
    python bench/workers.py --out r.json     # also write the results as JSON

1. Forwarded vs local latency: two uvicorn processes A and B of the test
   project (``tests.asgi``) share a SQLite database and a Redis layer
   (channels_redis's RedisChannelLayer, then its RedisPubSubChannelLayer). One
   session of ``tests/notebooks/square.py`` (then one of ``cpu.py``) has its
   kernel websocket on A; its slider is moved by POSTs to A (local) and to
   B (forwarded to A), alternately, and each interaction is timed from the
   POST to the ``completed-run`` frame of the re-run, as is the POST's own
   round trip.
2. Throughput: for 1, 2 and 4 uvicorn processes (plus bare marimo as a
   reference), 8 sessions of ``tests/notebooks/cpu.py`` (about 30 ms of pure
   Python per run) spread over the processes move their sliders as fast as
   they can, each POST going to the next process in turn, so that most are
   forwarded when there are several. Rounds of a fixed time alternate between
   the configurations; the result is interactions completed per second.
   Several processes run on each channel layer.

Every output is checked; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tests.live import (  # noqa: E402
    LiveServer,
    NotebookClient,
    free_port,
    prepare_database,
    square_output,
)


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# The main benchmark's statistics and run description, so both report alike.
bench_run = _load("bench_run", BENCH_DIR / "run.py")
# The notebook's own function gives the answers its outputs must show.
cpu_notebook = _load("bench_cpu_notebook", ROOT / "tests" / "notebooks" / "cpu.py")

USER = "alice"
LATENCY_PAGE = "/notebooks/square/"
CPU_PAGE = "/notebooks/cpu/"  # tests/settings.py serves tests/notebooks/cpu.py here
BARE_PAGE = "/square/"  # bench/bare_marimo.py mounts whatever notebook at /square
CPU_OUTPUT = re.compile(r"cpu n=(\d+) result=(\d+)")
FRAME_TIMEOUT = 30.0
TARGET_ADDED_MS = 2.0  # forwarded median may add at most this, on loopback
# The answers the CPU notebook must show for the values the slider takes.
EXPECTED = {n: cpu_notebook.work(n) for n in (3, 4, 5)}
CLOCK = time.monotonic()


def square_shown(outputs: list[str], value: int) -> bool:
    return square_output(outputs) == [f"square={value * value} user={USER}"]


def cpu_shown(outputs: list[str], value: int) -> bool:
    shown = CPU_OUTPUT.findall(" ".join(outputs))
    return shown == [(str(value), str(EXPECTED[value]))]


# The channel layers processes can share (DJANGO_NOTEBOOKS_TEST_CHANNEL_LAYER).
LAYERS = {
    "redis": "RedisChannelLayer",
    "redis-pubsub": "RedisPubSubChannelLayer",
}

# The notebooks the latency part can use: page and the check of an output.
LATENCY_NOTEBOOKS = {
    "square": (LATENCY_PAGE, square_shown),  # a tiny cell: the relay alone
    "cpu": (CPU_PAGE, cpu_shown),  # the holder's kernel busy while it answers
}


def progress(message: str) -> None:
    print(
        f"[workers {time.monotonic() - CLOCK:5.1f} s] {message}",
        file=sys.stderr,
        flush=True,
    )


@dataclass(frozen=True)
class Plan:
    quick: bool
    pairs: int  # measured (local, forwarded) pairs of interactions
    latency_notebooks: tuple[str, ...]
    layers: tuple[str, ...]
    warmup: int  # unmeasured interactions per session first
    workers: tuple[int, ...]
    sessions: int  # concurrent sessions in the throughput runs
    rounds: int  # throughput rounds per configuration
    round_seconds: float
    bare: bool

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Plan:
        workers = tuple(int(w) for w in args.workers.split(",")) if args.workers else ()
        notebooks = tuple(n for n in args.latency_notebooks.split(",") if n)
        layers = tuple(layer for layer in args.layers.split(",") if layer)
        unknown = set(layers) - set(LAYERS)
        if unknown or not layers:
            raise SystemExit(f"--layers: choose among {', '.join(LAYERS)}")
        if args.quick:
            return cls(
                quick=True,
                pairs=args.pairs or 20,
                latency_notebooks=notebooks or ("square",),
                layers=layers,
                warmup=2,
                workers=workers or (1, 2),
                sessions=args.sessions or 4,
                rounds=args.rounds or 1,
                round_seconds=args.round_seconds or 3,
                bare=not args.no_bare,
            )
        return cls(
            quick=False,
            pairs=args.pairs or 300,
            latency_notebooks=notebooks or ("square", "cpu"),
            layers=layers,
            warmup=10,
            workers=workers or (1, 2, 4),
            sessions=args.sessions or 8,
            rounds=args.rounds or 3,
            round_seconds=args.round_seconds or 15,
            bare=not args.no_bare,
        )


# --------------------------------------------------------------------------
# Servers


def redis_is_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class BareServer(LiveServer):
    """bench/bare_marimo.py under uvicorn, serving ``notebook`` at /square/."""

    def __init__(self, log_path: Path, notebook: Path) -> None:
        self.kind = "uvicorn"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
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
            env=dict(os.environ, BENCH_NOTEBOOK=str(notebook), PYTHONUNBUFFERED="1"),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_listening()


@dataclass
class Deployment:
    """One configuration: its server processes, sharing a database and a
    Redis prefix of their own."""

    name: str
    page: str
    login: bool
    starters: list[Any] = field(default_factory=list)  # each starts one process
    servers: list[Any] = field(default_factory=list)
    prefix: str | None = None
    cookies: Any = None

    def cpu_seconds(self) -> float:
        total = 0.0
        for server in self.servers:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(server.process.pid).cpu_times()
                total += times.user + times.system
        return total


def bridge(
    name: str,
    count: int,
    workdir: Path,
    db: Path,
    page: str,
    tag: str,
    layer: str = "redis",
) -> Deployment:
    """``count`` uvicorn processes of the test project on one database copy
    and one Redis prefix of channel layer ``layer`` (started by start_all)."""
    own_db = workdir / f"db-{tag}.sqlite3"
    shutil.copyfile(db, own_db)
    prefix = f"dn-bench-{uuid.uuid4().hex[:8]}-{tag}"
    env = {
        "DJANGO_NOTEBOOKS_TEST_CHANNEL_LAYER": layer,
        "DJANGO_NOTEBOOKS_TEST_REDIS_PREFIX": prefix,
        # One user opens all the sessions of a run.
        "DJANGO_NOTEBOOKS_TEST_MAX_SESSIONS": "64",
        "DJANGO_NOTEBOOKS_TEST_SESSION_TTL": "10",
    }
    starters = [
        lambda index=index: LiveServer(
            "uvicorn", own_db, workdir / f"{tag}-{index}.log", **env
        )
        for index in range(count)
    ]
    return Deployment(name, page, login=True, starters=starters, prefix=prefix)


def start_all(deployments: list[Deployment]) -> None:
    """Start every process of every deployment in parallel. Each lands in its
    deployment's ``servers`` as soon as it listens, so that whoever stops the
    servers afterwards (also after an error here) finds all that started."""
    errors: list[BaseException] = []

    def start(deployment: Deployment, starter: Any) -> None:
        try:
            deployment.servers.append(starter())
        except BaseException as error:  # raised below, after all have tried
            errors.append(error)

    threads = [
        threading.Thread(target=start, args=(deployment, starter))
        for deployment in deployments
        for starter in deployment.starters
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def stop_all(servers: list[Any]) -> None:
    """SIGTERM every server by its pid, in parallel."""
    threads = [threading.Thread(target=server.stop) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def forget_redis_keys(prefix: str) -> None:
    """Delete this run's channel-layer keys (groups last a day otherwise)."""
    import redis

    with contextlib.suppress(Exception):
        client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


async def log_in(url: str) -> Any:
    async with NotebookClient(url) as client:
        await client.login(USER)
        return client.http.cookies


# --------------------------------------------------------------------------
# 1. Forwarded vs local latency


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


async def measure_latency(
    deployment: Deployment, plan: Plan, notebook: str
) -> dict[str, Any]:
    page, shown = LATENCY_NOTEBOOKS[notebook]
    home, other = deployment.servers
    if deployment.cookies is None:
        deployment.cookies = await log_in(home.url)
    local = NotebookClient(home.url)
    remote = NotebookClient(
        other.url
    )  # its Origin header names B, as a browser's would
    for client in (local, remote):
        client.http.cookies.update(deployment.cookies)
    samples: dict[str, list[Sample]] = {"local": [], "forwarded": []}
    async with local, remote, local.kernel(page) as kernel:
        await kernel.read_until_completed(FRAME_TIMEOUT)
        [slider] = kernel.ui_element_ids()
        value = 3
        progress(f"latency, {notebook}: {plan.pairs} pairs after {plan.warmup} warm-up")

        async def interact(via: NotebookClient) -> Sample:
            nonlocal value
            value = 5 if value == 4 else 4
            sample = await move_slider(kernel, via, page, slider, value)
            if not shown(kernel.outputs, value):
                raise RuntimeError(
                    f"POST to {via.base_url}: re-run for {value} showed {kernel.outputs}"
                )
            return sample

        # The first forwarded call looks the session up in the database;
        # later ones find it in the process's memory.
        first_forwarded = await interact(remote)
        for _ in range(plan.warmup):
            await interact(local)
            await interact(remote)
        for pair in range(plan.pairs):
            order = [("local", local), ("forwarded", remote)]
            for name, via in order if pair % 2 == 0 else order[::-1]:
                samples[name].append(await interact(via))
    return summarize_latency(samples, first_forwarded)


def summarize_latency(
    samples: dict[str, list[Sample]], first_forwarded: Sample
) -> dict[str, Any]:
    median, percentile = bench_run.median, bench_run.percentile
    result: dict[str, Any] = {"n": len(samples["local"])}
    for kind in ("total", "post"):
        for side in ("local", "forwarded"):
            values = [getattr(s, kind) * 1000 for s in samples[side]]
            result[f"{kind}_{side}_median_ms"] = median(values)
            result[f"{kind}_{side}_p95_ms"] = percentile(values, 95)
        # Each pair ran back to back: their difference cancels slow moments.
        result[f"{kind}_paired_difference_median_ms"] = median(
            [
                (getattr(f, kind) - getattr(loc, kind)) * 1000
                for loc, f in zip(samples["local"], samples["forwarded"], strict=True)
            ]
        )
        result[f"{kind}_added_median_ms"] = (
            result[f"{kind}_forwarded_median_ms"] - result[f"{kind}_local_median_ms"]
        )
    result["first_forwarded_post_ms"] = first_forwarded.post * 1000
    result["first_forwarded_total_ms"] = first_forwarded.total * 1000
    result["target_added_ms"] = TARGET_ADDED_MS
    result["target_met"] = result["total_added_median_ms"] <= TARGET_ADDED_MS
    result["samples_ms"] = {
        side: [[s.post * 1000, s.total * 1000] for s in values]
        for side, values in samples.items()
    }
    return result


# --------------------------------------------------------------------------
# 2. Throughput on a CPU-bound notebook


class Driver:
    """One session: its websocket on its home process, and one HTTP
    connection per process to send its kernel calls to, in turn."""

    def __init__(self, deployment: Deployment, index: int) -> None:
        self.deployment = deployment
        self.index = index
        self.clients = [NotebookClient(server.url) for server in deployment.servers]
        if deployment.login:
            for client in self.clients:
                client.http.cookies.update(deployment.cookies)
        self.home = index % len(self.clients)
        self.stack = contextlib.AsyncExitStack()
        self.kernel: Any = None
        self.slider = ""
        self.value = 3  # the slider's initial value in cpu.py
        self.calls = 0
        self.forwarded = 0
        self.broken = False

    async def open(self) -> None:
        for client in self.clients:
            await self.stack.enter_async_context(client)
        self.kernel = await self.stack.enter_async_context(
            self.clients[self.home].kernel(self.deployment.page)
        )
        await self.kernel.read_until_completed(FRAME_TIMEOUT)
        self.check()
        [self.slider] = self.kernel.ui_element_ids()

    def check(self) -> None:
        if not cpu_shown(self.kernel.outputs, self.value):
            shown = CPU_OUTPUT.findall(" ".join(self.kernel.outputs))
            raise RuntimeError(
                f"{self.deployment.name}: expected cpu n={self.value}, saw {shown}"
            )

    async def interact(self) -> float:
        """Move the slider (4, 5, 4, ...) through the next process in turn;
        seconds until the re-run's ``completed-run``, its output checked."""
        self.value = 5 if self.value == 4 else 4
        target = (self.index + self.calls) % len(self.clients)
        self.calls += 1
        self.forwarded += target != self.home
        sample = await move_slider(
            self.kernel,
            self.clients[target],
            self.deployment.page,
            self.slider,
            self.value,
        )
        self.check()
        return sample.total

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stack.aclose()


@dataclass
class Tally:
    completed: int = 0
    failures: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    forwarded_share: float = 0.0
    latencies: list[float] = field(default_factory=list)
    per_round: list[float] = field(default_factory=list)
    machine_busy: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def drive_round(drivers: list[Driver], seconds: float, tally: Tally) -> None:
    """Every session interacts back to back for ``seconds``; interactions
    that end after the deadline are finished but not counted."""
    deployment = drivers[0].deployment
    server_cpu, client_cpu = deployment.cpu_seconds(), time.process_time()
    psutil.cpu_percent(None)
    started = time.perf_counter()
    deadline = started + seconds
    completed = 0

    async def loop(driver: Driver) -> None:
        nonlocal completed
        while not driver.broken and time.perf_counter() < deadline:
            try:
                took = await driver.interact()
            except Exception as error:  # counted and reported; the session stops
                driver.broken = True
                tally.failures += 1
                tally.problems.append(f"{type(error).__name__}: {error}"[:300])
                return
            if time.perf_counter() <= deadline:
                completed += 1
                tally.latencies.append(took)

    await asyncio.gather(*(loop(driver) for driver in drivers))
    tally.machine_busy.append(psutil.cpu_percent(None))
    tally.server_cpu += deployment.cpu_seconds() - server_cpu
    tally.client_cpu += time.process_time() - client_cpu
    tally.completed += completed
    tally.seconds += seconds
    tally.per_round.append(completed / seconds)


async def measure_throughput(
    deployments: list[Deployment], plan: Plan
) -> dict[str, Tally]:
    drivers: dict[str, list[Driver]] = {}
    tallies = {d.name: Tally() for d in deployments}
    try:
        for deployment in deployments:
            if deployment.login:
                deployment.cookies = await log_in(deployment.servers[0].url)
            progress(f"{deployment.name}: opening {plan.sessions} sessions")
            drivers[deployment.name] = [
                Driver(deployment, index) for index in range(plan.sessions)
            ]
            await asyncio.gather(*(d.open() for d in drivers[deployment.name]))
            # Warm-up, unmeasured: imports, caches, connections, and the
            # first forwarded call of each session (a database lookup).
            for _ in range(plan.warmup):
                await asyncio.gather(*(d.interact() for d in drivers[deployment.name]))
        for round_number in range(plan.rounds):
            for deployment in bench_run.rotated(deployments, round_number):
                progress(f"round {round_number + 1}/{plan.rounds}: {deployment.name}")
                await drive_round(
                    drivers[deployment.name],
                    plan.round_seconds,
                    tallies[deployment.name],
                )
    finally:
        for group in drivers.values():
            await asyncio.gather(*(driver.close() for driver in group))
    for name, group in drivers.items():
        calls = sum(driver.calls for driver in group)
        tallies[name].forwarded_share = (
            sum(driver.forwarded for driver in group) / calls if calls else 0.0
        )
    return tallies


def summarize_throughput(
    deployments: list[Deployment], tallies: dict[str, Tally]
) -> list[dict[str, Any]]:
    median, percentile = bench_run.median, bench_run.percentile
    one = next((d.name for d in deployments if d.name == "bridge, 1 worker"), None)
    base = tallies[one].completed / tallies[one].seconds if one else None
    rows = []
    for deployment in deployments:
        tally = tallies[deployment.name]
        rate = tally.completed / tally.seconds if tally.seconds else 0.0
        ms = [t * 1000 for t in tally.latencies]
        rows.append(
            {
                "name": deployment.name,
                "processes": len(deployment.servers),
                "interactions": tally.completed,
                "seconds": tally.seconds,
                "per_second": rate,
                "per_second_by_round": tally.per_round,
                "vs_1_worker": rate / base if base else None,
                "failures": tally.failures,
                "problems": tally.problems[:5],
                "latency_median_ms": median(ms),
                "latency_p95_ms": percentile(ms, 95),
                "forwarded_share": tally.forwarded_share,
                "server_cpu_ms_per_interaction": (
                    tally.server_cpu * 1000 / tally.completed
                    if tally.completed
                    else None
                ),
                # How much of the machine the servers got: with other work
                # on it, W processes may not get W cores.
                "server_cores_used": (
                    tally.server_cpu / tally.seconds if tally.seconds else 0.0
                ),
                "client_cpu_ms_per_interaction": (
                    tally.client_cpu * 1000 / tally.completed
                    if tally.completed
                    else None
                ),
                "machine_busy_percent": median(tally.machine_busy),
            }
        )
    return rows


# --------------------------------------------------------------------------
# The report


def header(
    args: argparse.Namespace, started: datetime.datetime, load: str
) -> list[str]:
    v = bench_run.versions()
    return [
        "## django_notebooks benchmark: several worker processes",
        "",
        f"- command: `{' '.join(['python', 'bench/workers.py', *sys.argv[1:]])}`",
        f"- date: {started.isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, nproc={os.cpu_count()}, "
        f"load average at start {load}",
        f"- code: {bench_run.code_revision()}",
        "- versions: "
        + ", ".join(
            f"{k} {v[k]}"
            for k in ("python", "django", "channels", "marimo", "uvicorn")
            if k in v
        )
        + f", channels-redis {package_version('channels-redis')}, "
        f"redis-py {package_version('redis')}",
    ]


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def fmt_ms(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f} ms" if sign else f"{value:.2f} ms"


LATENCY_LABELS = {
    "square": "square.py (tiny cell)",
    "cpu": "cpu.py (CPU-bound cell)",
}


def latency_table(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    rows = [
        "| channel layer | notebook | measure | local (POST to A) "
        "| forwarded (POST to B) | added | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for layer, by_notebook in results.items():
        rows += [f"| {LAYERS[layer]} {row}" for row in latency_rows(by_notebook)]
    return rows


def latency_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    labels = {
        "total": "interaction (POST -> completed-run on the websocket)",
        "post": "POST round trip (request -> response)",
    }
    for notebook, result in results.items():
        name = f"{LATENCY_LABELS[notebook]}, n={result['n']}"
        for kind, label in labels.items():
            for stat in ("median", "p95"):
                loc = result[f"{kind}_local_{stat}_ms"]
                fwd = result[f"{kind}_forwarded_{stat}_ms"]
                rows.append(
                    f"| {name} | {label}: {stat} | {fmt_ms(loc)} | {fmt_ms(fwd)} | "
                    f"{fmt_ms(fwd - loc, sign=True)} | {fwd / loc:.2f}x |"
                )
            paired = result[f"{kind}_paired_difference_median_ms"]
            rows.append(
                f"| {name} | {label}: median of the paired differences | | | "
                f"{fmt_ms(paired, sign=True)} | |"
            )
    return rows


def latency_verdict(layer: str, notebook: str, lat: dict[str, Any]) -> str:
    verdict = "met" if lat["target_met"] else "**not met**"
    return (
        f"- {LAYERS[layer]}, {LATENCY_LABELS[notebook]}: target (forwarding adds "
        f"at most {TARGET_ADDED_MS:.0f} ms to the median interaction) {verdict} "
        f"({lat['total_added_median_ms']:+.2f} ms; median of the paired "
        f"differences {lat['total_paired_difference_median_ms']:+.2f} ms). The "
        f"first forwarded call (the session looked up in the database) took "
        f"{lat['first_forwarded_post_ms']:.1f} ms to answer."
    )


def throughput_table(rows: list[dict[str, Any]], plan: Plan) -> list[str]:
    out = [
        f"| configuration ({plan.sessions} sessions) | processes | interactions/s "
        "| vs 1 worker | failures | interaction median | p95 | calls forwarded "
        "| server CPU per interaction | server CPU used | client CPU per interaction |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row['vs_1_worker']:.2f}x" if row["vs_1_worker"] else "–"
        out.append(
            f"| {row['name']} | {row['processes']} | {row['per_second']:.1f} "
            f"| {ratio} | {row['failures']} | {fmt_ms(row['latency_median_ms'])} "
            f"| {fmt_ms(row['latency_p95_ms'])} | {row['forwarded_share'] * 100:.0f} % "
            f"| {fmt_ms(row['server_cpu_ms_per_interaction'])} "
            f"| {row['server_cores_used']:.2f} cores "
            f"| {fmt_ms(row['client_cpu_ms_per_interaction'])} |"
        )
    return out


# --------------------------------------------------------------------------
# Running it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="measured local+forwarded pairs (default 300, quick 20)",
    )
    parser.add_argument(
        "--latency-notebooks",
        default="",
        help="notebooks of the latency part: square (a tiny cell), cpu (about "
        "30 ms of work) (default square,cpu; quick square)",
    )
    parser.add_argument(
        "--layers",
        default=",".join(LAYERS),
        help="channel layers between the processes: redis (channels_redis's "
        "RedisChannelLayer), redis-pubsub (its RedisPubSubChannelLayer) "
        "(default both)",
    )
    parser.add_argument(
        "--workers",
        default="",
        help="worker counts for the throughput runs (default 1,2,4; quick 1,2)",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=0,
        help="concurrent sessions in the throughput runs (default 8, quick 4)",
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="throughput rounds (default 3, quick 1)"
    )
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=0,
        help="length of one throughput round (default 15, quick 3)",
    )
    parser.add_argument(
        "--no-bare", action="store_true", help="skip the bare marimo reference"
    )
    parser.add_argument(
        "--skip-latency", action="store_true", help="run the throughput part only"
    )
    parser.add_argument(
        "--skip-throughput", action="store_true", help="run the latency part only"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the server logs and print where"
    )
    return parser.parse_args(argv)


def run_with(deployments: list[Deployment], work: Any, notes: list[str]) -> Any:
    """Start the servers, run ``work()`` (a coroutine) and stop the servers,
    also on errors; a traceback in any server log is reported in the notes."""
    try:
        progress(f"starting {sum(len(d.starters) for d in deployments)} processes")
        start_all(deployments)
        return asyncio.run(work())
    except BaseException:
        for deployment in deployments:
            for server in deployment.servers:
                with contextlib.suppress(Exception):
                    print(
                        f"[workers] --- log of {deployment.name} "
                        f"(port {server.port}, tail) ---\n{server.log()[-3000:]}",
                        file=sys.stderr,
                    )
        raise
    finally:
        for deployment in deployments:
            for server in deployment.servers:
                with contextlib.suppress(Exception):
                    if "Traceback" in server.log():
                        notes.append(
                            f"{deployment.name}: a traceback in the log of the "
                            f"process on port {server.port}"
                        )
        progress("stopping the servers")
        stop_all([server for d in deployments for server in d.servers])
        for deployment in deployments:
            if deployment.prefix:
                forget_redis_keys(deployment.prefix)


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.for_args(args)
    if not redis_is_up():
        print(
            "bench/workers.py needs Redis on 127.0.0.1:6379 (the channel layer "
            "between the server processes).",
            file=sys.stderr,
        )
        return 2

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    started_at = datetime.datetime.now().astimezone()
    clock = time.monotonic()
    load_at_start = load_average()
    results: dict[str, Any] = {
        "plan": plan.__dict__,
        "notes": [],
        "cpu_work_ms": cpu_work_ms(),
    }
    notes: list[str] = results["notes"]
    workdir = Path(tempfile.mkdtemp(prefix="dn-bench-workers-"))
    try:
        db = prepare_database(workdir / "db.sqlite3")
        pairs = {
            layer: bridge(
                f"latency pair, {LAYERS[layer]}",
                2,
                workdir,
                db,
                LATENCY_PAGE,
                f"latency-{layer}",
                layer,
            )
            for layer in plan.layers
        }
        deployments: list[Deployment] = []
        if not args.skip_throughput:
            if plan.bare:
                path = ROOT / "tests" / "notebooks" / "cpu.py"
                deployments.append(
                    Deployment(
                        "bare marimo, 1 process",
                        BARE_PAGE,
                        login=False,
                        starters=[lambda: BareServer(workdir / "bare.log", path)],
                    )
                )
            for count in plan.workers:
                # (One process forwards nothing: its channel layer hardly matters.)
                for layer in plan.layers[:1] if count == 1 else plan.layers:
                    name = f"bridge, {count} worker{'s' if count > 1 else ''}"
                    if layer != "redis":
                        name += f" ({LAYERS[layer]})"
                    deployments.append(
                        bridge(
                            name,
                            count,
                            workdir,
                            db,
                            CPU_PAGE,
                            f"w{count}-{layer}",
                            layer,
                        )
                    )
        everything = (
            deployments if args.skip_latency else [*pairs.values(), *deployments]
        )

        async def work() -> None:
            if not args.skip_latency:
                results["latency"] = {}
                for layer, pair in pairs.items():
                    results["latency"][layer] = {}
                    for notebook in plan.latency_notebooks:
                        measured = await measure_latency(pair, plan, notebook)
                        measured["load_average_after"] = load_average()
                        results["latency"][layer][notebook] = measured
            if deployments:
                tallies = await measure_throughput(deployments, plan)
                results["throughput"] = summarize_throughput(deployments, tallies)

        run_with(everything, work, notes)
    finally:
        if args.keep_logs:
            print(f"[workers] server logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    load_at_end = load_average()
    report = header(args, started_at, load_at_start)
    report.append(f"- load average at the end: {load_at_end}")
    if "latency" in results:
        report += [
            "",
            "### Forwarded vs local latency",
            "",
            *latency_table(results["latency"]),
            "",
        ]
        for layer, by_notebook in results["latency"].items():
            for notebook, lat in by_notebook.items():
                report.append(latency_verdict(layer, notebook, lat))
    if "throughput" in results:
        report += [
            "",
            f"### Throughput, CPU-bound notebook (about {results['cpu_work_ms']:.0f} ms of "
            f"pure Python per run here; {os.cpu_count()} cores)",
            "",
            *throughput_table(results["throughput"], plan),
            "",
            f"{plan.rounds} round(s) of {plan.round_seconds:.0f} s per configuration, "
            "alternating; kernel calls go to the processes in turn.",
        ]
        failures = sum(row["failures"] for row in results["throughput"])
        if failures:
            notes.append(f"throughput: {failures} failed interaction(s)")
    if notes:
        report += ["", "Notes:", *(f"- {note}" for note in notes)]
    report += ["", f"Total run time: {time.monotonic() - clock:.1f} s."]
    print("\n".join(report))
    results.update(
        command=" ".join(["python", "bench/workers.py", *sys.argv[1:]]),
        date=started_at.isoformat(timespec="seconds"),
        machine={
            "platform": platform.platform(),
            "nproc": os.cpu_count(),
            "load_average_start": load_at_start,
            "load_average_end": load_at_end,
        },
        code=bench_run.code_revision(),
        versions=bench_run.versions(),
        report="\n".join(report),
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    failed = any(row["failures"] for row in results.get("throughput", []))
    return 1 if failed else 0


def cpu_work_ms() -> float:
    """How long the notebook's work takes in this process, best of 5: the
    kernel's share of an interaction, roughly (measured before the servers
    start)."""
    took = []
    for _ in range(5):
        started = time.perf_counter()
        cpu_notebook.work(4)
        took.append(time.perf_counter() - started)
    return min(took) * 1000


if __name__ == "__main__":
    sys.exit(main())
