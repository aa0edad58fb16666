"""bench/workers.py's measurements: forwarded vs local latency on two
processes, and throughput on 1, 2, 4 processes (kernel calls forwarded
between them over a Redis channel layer), with bare marimo as a one-process
reference. Every output is checked."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.client import (
    FRAME_TIMEOUT,
    USER,
    Sample,
    login_cookies,
    move_slider,
    rotated,
)
from bench.report import load_average
from bench.servers import (
    BRIDGE_PAGE,
    CPU_NOTEBOOK,
    CPU_PAGE,
    LAYERS,
    Deployment,
    bare_deployment,
    bridge_deployment,
    deployment_servers,
    forget_redis_keys,
    start_deployments,
    stopping,
)
from bench.workers_report import summarize_latency, summarize_throughput
from tests.live import NotebookClient, square_output

# The notebook's own function gives the answers its outputs must show.
from tests.notebooks.cpu import work

CPU_OUTPUT = re.compile(r"cpu n=(\d+) result=(\d+)")
# The answers the CPU notebook must show for the values the slider takes.
EXPECTED = {n: work(n) for n in (3, 4, 5)}
CLOCK = time.monotonic()


def square_shown(outputs: list[str], value: int) -> bool:
    return square_output(outputs) == [f"square={value * value} user={USER}"]


def cpu_shown(outputs: list[str], value: int) -> bool:
    shown = CPU_OUTPUT.findall(" ".join(outputs))
    return shown == [(str(value), str(EXPECTED[value]))]


# The notebooks the latency part can use: page and the check of an output.
LATENCY_NOTEBOOKS = {
    "square": (BRIDGE_PAGE, square_shown),  # a tiny cell: the relay alone
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
        quick = args.quick
        return cls(
            quick=quick,
            pairs=args.pairs or (20 if quick else 300),
            latency_notebooks=notebooks
            or (("square",) if quick else ("square", "cpu")),
            layers=layers,
            warmup=2 if quick else 10,
            workers=workers or ((1, 2) if quick else (1, 2, 4)),
            sessions=args.sessions or (4 if quick else 8),
            rounds=args.rounds or (1 if quick else 3),
            round_seconds=args.round_seconds or (3 if quick else 15),
            bare=not args.no_bare,
        )


def cpu_work_ms() -> float:
    """How long the notebook's work takes in this process, best of 5: the
    kernel's share of an interaction, roughly (measured before the servers
    start)."""
    took = []
    for _ in range(5):
        started = time.perf_counter()
        work(4)
        took.append(time.perf_counter() - started)
    return min(took) * 1000


# --------------------------------------------------------------------------
# The configurations


def latency_pairs(plan: Plan, workdir: Path, db: Path) -> dict[str, Deployment]:
    """Two processes per channel layer, for the latency part."""
    return {
        layer: bridge_deployment(
            f"latency pair, {LAYERS[layer]}",
            2,
            workdir,
            db,
            BRIDGE_PAGE,
            f"latency-{layer}",
            layer,
        )
        for layer in plan.layers
    }


def throughput_deployments(plan: Plan, workdir: Path, db: Path) -> list[Deployment]:
    """Bare marimo (unless --no-bare) and 1, 2, 4 processes of the bridge
    per channel layer, for the throughput part."""
    deployments: list[Deployment] = []
    if plan.bare:
        deployments.append(bare_deployment(workdir, CPU_NOTEBOOK))
    for count in plan.workers:
        # (One process forwards nothing: its channel layer hardly matters.)
        for layer in plan.layers[:1] if count == 1 else plan.layers:
            name = f"bridge, {count} worker{'s' if count > 1 else ''}"
            if layer != "redis":
                name += f" ({LAYERS[layer]})"
            deployments.append(
                bridge_deployment(
                    name, count, workdir, db, CPU_PAGE, f"w{count}-{layer}", layer
                )
            )
    return deployments


# --------------------------------------------------------------------------
# 1. Forwarded vs local latency


async def measure_latency(
    deployment: Deployment, plan: Plan, notebook: str
) -> tuple[dict[str, list[Sample]], Sample]:
    """Interactions through the process holding the session (local) and
    through the other (forwarded), alternating; and the first forwarded one."""
    page, shown = LATENCY_NOTEBOOKS[notebook]
    home, other = deployment.servers
    if deployment.cookies is None:
        deployment.cookies = await login_cookies(home.url)
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
    return samples, first_forwarded


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
                deployment.cookies = await login_cookies(deployment.servers[0].url)
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
            for deployment in rotated(deployments, round_number):
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


# --------------------------------------------------------------------------
# The run, step by step


async def measure_all(
    plan: Plan,
    pairs: dict[str, Deployment],
    deployments: list[Deployment],
    results: dict[str, Any],
) -> None:
    """The latency part on ``pairs`` (none: skipped), then the throughput
    part on ``deployments`` (none: skipped); the numbers go into ``results``."""
    if pairs:
        results["latency"] = {}
        for layer, pair in pairs.items():
            results["latency"][layer] = {}
            for notebook in plan.latency_notebooks:
                samples, first_forwarded = await measure_latency(pair, plan, notebook)
                measured = summarize_latency(samples, first_forwarded)
                measured["load_average_after"] = load_average()
                results["latency"][layer][notebook] = measured
    if deployments:
        tallies = await measure_throughput(deployments, plan)
        results["throughput"] = summarize_throughput(deployments, tallies)


def on_deployments(
    deployments: list[Deployment],
    work: Callable[[], Coroutine[Any, Any, None]],
    notes: list[str],
) -> None:
    """Start the servers, run ``work()`` and stop the servers, also on
    errors; a traceback in any server log is reported in the notes. The
    channel-layer keys of the run are deleted at the end."""
    try:
        progress(f"starting {sum(len(d.starters) for d in deployments)} processes")
        with stopping(lambda: deployment_servers(deployments), "workers"):
            try:
                start_deployments(deployments)
                asyncio.run(work())
            finally:
                for name, server in deployment_servers(deployments):
                    with contextlib.suppress(Exception):
                        if "Traceback" in server.log():
                            notes.append(
                                f"{name}: a traceback in the log of the "
                                f"process on port {server.port}"
                            )
                progress("stopping the servers")
    finally:
        for deployment in deployments:
            if deployment.prefix:
                forget_redis_keys(deployment.prefix)
