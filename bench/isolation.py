#!/usr/bin/env python
"""Benchmark: what kernel isolation costs and what it protects, on this
machine, in one run: the bridge with ISOLATION = "process" and "thread"
side by side (uvicorn), and bare marimo where it serves the same notebook.

    python bench/isolation.py                # full run (a few minutes)
    python bench/isolation.py --quick        # smoke run
    python bench/isolation.py --out isolation.md

It reports:

- memory: N sessions of tests/notebooks/square.py opened at once on each
  server; how many rendered, the errors, and the memory each session adds:
  USS (memory no other process shares) and PSS (shared memory split among
  its sharers) of the kernel processes in process mode, the growth of the
  server process in thread mode and in bare marimo;
- a busy neighbour: another user's widget round trip (square.py) and a
  Django page (the notebook index), idle and while one session runs a
  pure-Python loop (tests/notebooks/misbehave.py); each as a median, and
  the ratio during / idle.

The round trip and the session open, both modes against bare marimo, are in
``bench/run.py --servers uvicorn,uvicorn-thread``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from bench.client import Session, log_in  # noqa: E402
from bench.servers import (  # noqa: E402
    BARE_PAGE,
    BRIDGE_MAX_SESSIONS,
    BRIDGE_PAGE,
    NOTEBOOK,
    BareServer,
    Target,
    command,
    command_parser,
    prepare_users,
    publish,
    stop_on_sigterm,
    stopping,
    work_directory,
)
from tests import live  # noqa: E402
from tests.live import NotebookClient  # noqa: E402

BUSY_PAGE = "/notebooks/misbehave/"
INDEX_PAGE = "/notebooks/"
MODES = ("process", "thread")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__)
    parser.add_argument(
        "--sessions", type=int, default=0, help="sessions at once (100)"
    )
    parser.add_argument(
        "--samples", type=int, default=0, help="samples per median (40)"
    )
    args = parser.parse_args(argv)
    args.sessions = args.sessions or (10 if args.quick else 100)
    args.samples = args.samples or (8 if args.quick else 40)
    return args


def start(kind: str, workdir: Path, db: Path) -> Target:
    if kind == "bare":
        server: Any = BareServer(workdir / "bare.log", NOTEBOOK, session_ttl=600)
        return Target("bare marimo", server, BARE_PAGE, login=False)
    server = live.LiveServer(
        "uvicorn",
        db,
        workdir / f"bridge-{kind}.log",
        DJANGO_NOTEBOOKS_TEST_ISOLATION=kind,
        DJANGO_NOTEBOOKS_TEST_MISBEHAVE="1",
        DJANGO_NOTEBOOKS_TEST_SESSION_TTL="600",
        DJANGO_NOTEBOOKS_TEST_MAX_SESSIONS="1000",
        DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS=str(BRIDGE_MAX_SESSIONS),
        # The busy loop must run through the measurement.
        DJANGO_NOTEBOOKS_TEST_LIMIT_CELL_TIMEOUT="3600",
    )
    return Target(f"bridge, {kind}", server, BRIDGE_PAGE, login=True, db_path=db)


def memory(pid: int) -> tuple[int, int]:
    """USS and PSS of a process, in bytes."""
    info = psutil.Process(pid).memory_full_info()
    return info.uss, info.pss


def kernel_pids(target: Target) -> list[int]:
    """The kernel processes below a bridge server (the fork server's children)."""
    server = psutil.Process(target.server.process.pid)
    return [kernel.pid for child in server.children() for kernel in child.children()]


async def memory_phase(target: Target, count: int) -> dict[str, Any]:
    """Open ``count`` sessions at once; what rendered and what each costs."""
    server_pid = target.server.process.pid
    warm = Session(target)
    await warm.open()
    await warm.close()
    await asyncio.sleep(1)
    before_uss, before_pss = memory(server_pid)
    sessions = [Session(target, person=1 + i // 5) for i in range(count)]
    started = time.perf_counter()
    results = await asyncio.gather(
        *(s.open() for s in sessions), return_exceptions=True
    )
    took = time.perf_counter() - started
    errors = [r for r in results if isinstance(r, BaseException)]
    await asyncio.sleep(1)
    after_uss, after_pss = memory(server_pid)
    kernels = kernel_pids(target) if target.login else []
    kernel_memory = [memory(pid) for pid in kernels]
    for session in sessions:
        await session.close()
    opened = count - len(errors)
    row: dict[str, Any] = {
        "rendered": opened,
        "errors": len(errors),
        "first_error": repr(errors[0])[:200] if errors else "",
        "seconds": took,
        "server_uss": (after_uss - before_uss) / max(opened, 1),
        "server_pss": (after_pss - before_pss) / max(opened, 1),
        "kernels": len(kernels),
    }
    if kernel_memory:
        row["kernel_uss"] = statistics.median(uss for uss, _ in kernel_memory)
        row["kernel_pss"] = statistics.median(pss for _, pss in kernel_memory)
    return row


async def median_round_trip(session: Session, samples: int) -> float:
    return statistics.median([await session.interact() for _ in range(samples)])


async def median_page(target: Target, samples: int) -> float:
    client = Session(target, person=2).client
    took = []
    async with client:
        for _ in range(samples):
            started = time.perf_counter()
            response = await client.http.get(INDEX_PAGE)
            took.append(time.perf_counter() - started)
            assert response.status_code == 200, response.status_code
    return statistics.median(took)


async def busy_phase(target: Target, samples: int) -> dict[str, float]:
    """Another user's round trip and a Django page, idle and beside a loop."""
    neighbour = Session(target, person=1)
    await neighbour.open()
    try:
        await median_round_trip(neighbour, 3)  # warm
        idle_trip = await median_round_trip(neighbour, samples)
        idle_page = await median_page(target, samples)
        async with NotebookClient(target.url) as client:
            client.http.cookies.update(target.cookies[3])
            async with client.kernel(BUSY_PAGE) as kernel:
                await kernel.read_until_completed()
                dropdown = kernel.ui_element_ids()[-1]
                response = await kernel.set_ui_value(dropdown, ["loop"])
                assert response.status_code == 200, response.text
                await asyncio.sleep(1)
                busy_trip = await median_round_trip(neighbour, samples)
                busy_page = await median_page(target, samples)
    finally:
        await neighbour.close()
    return {
        "idle_trip": idle_trip,
        "busy_trip": busy_trip,
        "idle_page": idle_page,
        "busy_page": busy_page,
    }


def mb(value: float) -> str:
    return f"{value / 1024 / 1024:.1f}"


def render(
    memory_rows: dict[str, dict[str, Any]],
    busy_rows: dict[str, dict[str, float]],
    args: argparse.Namespace,
    seconds: float,
) -> str:
    lines = [
        f"# Kernel isolation benchmark ({datetime.date.today()}, "
        f"{psutil.cpu_count()} cores{', quick' if args.quick else ''})",
        "",
        f"## {args.sessions} sessions opened at once (square.py)",
        "",
        "| server | rendered | errors | seconds | per session: kernel USS MB | kernel PSS MB | server growth USS MB | server growth PSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in memory_rows.items():
        lines.append(
            f"| {name} | {row['rendered']} | {row['errors']} | {row['seconds']:.1f} "
            f"| {mb(row['kernel_uss']) if 'kernel_uss' in row else '-'} "
            f"| {mb(row['kernel_pss']) if 'kernel_pss' in row else '-'} "
            f"| {mb(row['server_uss'])} | {mb(row['server_pss'])} |"
        )
    errors = [f"{n}: {r['first_error']}" for n, r in memory_rows.items() if r["errors"]]
    if errors:
        lines += ["", "First errors: " + "; ".join(errors)]
    lines += [
        "",
        "## Another user while one session runs a busy loop",
        "",
        "| server | round trip idle ms | during ms | ratio | Django page idle ms | during ms | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in busy_rows.items():
        lines.append(
            f"| {name} | {row['idle_trip'] * 1000:.1f} | {row['busy_trip'] * 1000:.1f} "
            f"| {row['busy_trip'] / row['idle_trip']:.2f}x "
            f"| {row['idle_page'] * 1000:.1f} | {row['busy_page'] * 1000:.1f} "
            f"| {row['busy_page'] / row['idle_page']:.2f}x |"
        )
    lines += ["", f"Run took {seconds:.0f} s.", ""]
    return "\n".join(lines)


async def run(targets: list[Target], args: argparse.Namespace) -> tuple[dict, dict]:
    await log_in([t for t in targets if t.login], people=4 + args.sessions // 5)
    memory_rows = {}
    for target in targets:
        memory_rows[target.name] = await memory_phase(target, args.sessions)
    busy_rows = {}
    for target in targets:
        if target.login:
            busy_rows[target.name] = await busy_phase(target, args.samples)
    return memory_rows, busy_rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    clock = time.monotonic()
    with work_directory("dn-isolation-", False, "isolation") as workdir:
        db = prepare_users(workdir, 4 + args.sessions // 5)
        targets: list[Target] = []
        with stopping(lambda: [(t.name, t.server) for t in targets], "isolation"):
            for kind in ("bare", *MODES):
                targets.append(start(kind, workdir, db))
            memory_rows, busy_rows = asyncio.run(run(targets, args))
    text = render(memory_rows, busy_rows, args, time.monotonic() - clock)
    return publish(text, args.out)


if __name__ == "__main__":
    command(main)
