#!/usr/bin/env python
"""Benchmark: a kernel call that lands on another worker than the one
holding the page's websocket, against one that lands on the holder, in one
run.

    python bench/nearby.py                  # 200 calls each way
    python bench/nearby.py --quick          # smoke run
    python bench/nearby.py --calls 500 --out nearby.md

Two uvicorn workers, A and B, share a database and a Redis channel layer.
alice's page of tests/notebooks/square.py has its websocket on A. Each
measured call moves the slider with a POST to A or to B (interleaved) and
lasts until the page's websocket has the re-run's ``completed-run``, as
bench/run.py's widget round trip. Two layouts:

- one machine: A and B share the machine's kernel host; B reaches the
  session's kernel directly (sessions/nearby.py);
- two machines (a kernel host each, as the tests make them): B forwards the
  call to A through Redis (sessions/relay.py), as every call landing on
  another worker went before the kernel host.

Reported: the median and p95 of each, and B's median over A's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from bench import servers  # noqa: E402
from bench.report import code_revision, load_average, package_version  # noqa: E402
from tests.live import LiveServer, NotebookClient, machines, require_redis  # noqa: E402

PAGE = "/notebooks/square/"


async def round_trip(client: NotebookClient, kernel, slider: str, value: int) -> float:
    kernel.outputs.clear()
    started = time.perf_counter()
    response = await client.post_kernel(
        PAGE,
        "set_ui_element_value",
        kernel.session_id,
        {"objectIds": [slider], "values": [value]},
    )
    if response.status_code != 200:
        raise RuntimeError(f"POST answered {response.status_code}: {response.text}")
    await kernel.read_until_completed()
    return time.perf_counter() - started


async def measure(workers: list[LiveServer], calls: int) -> dict[str, list[float]]:
    holder, other = workers
    timings: dict[str, list[float]] = {"holder": [], "other": []}
    async with NotebookClient(holder.url) as at_a, NotebookClient(other.url) as at_b:
        await at_a.login("alice")
        at_b.http.cookies.update(at_a.http.cookies)
        async with at_a.kernel(PAGE) as kernel:
            await kernel.read_until_completed()
            [slider] = kernel.ui_element_ids()
            for warm in range(5):  # first calls: connections, B's first look
                await round_trip(at_b, kernel, slider, 1 + warm % 2)
                await round_trip(at_a, kernel, slider, 1 + warm % 2)
            for index in range(calls):
                value = 2 + index % 8
                timings["other"].append(await round_trip(at_b, kernel, slider, value))
                timings["holder"].append(
                    await round_trip(at_a, kernel, slider, value + 1)
                )
    return timings


def run_layout(machine_count: int, calls: int, workdir: Path) -> dict[str, list[float]]:
    db = servers.prepare_users(workdir, 0)
    env = {
        "DJANGO_NOTEBOOKS_TEST_CHANNEL_LAYER": "redis",
        "DJANGO_NOTEBOOKS_TEST_REDIS_PREFIX": f"dn-bench-{uuid.uuid4().hex[:8]}",
        "DJANGO_NOTEBOOKS_TEST_ISOLATION": "process",
        "DJANGO_NOTEBOOKS_TEST_FAST_PATH": "1",
    }
    workers: list[LiveServer] = []
    with machines(machine_count) as envs, contextlib.ExitStack() as stack:
        stack.callback(lambda: [worker.stop() for worker in workers])
        for name, index in (("a", 0), ("b", 1)):
            machine = envs[index % machine_count]
            workers.append(
                LiveServer(
                    "uvicorn",
                    db,
                    workdir / f"{machine_count}-{name}.log",
                    **env,
                    **machine,
                )
            )
        return asyncio.run(measure(workers, calls))


def report(results: dict[str, dict[str, list[float]]], calls: int) -> str:
    lines = [
        "# A kernel call on another worker",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"marimo {package_version('marimo')}, django_notebooks at {code_revision()}, "
        f"load average {load_average()}; {calls} calls each way, interleaved; "
        "uvicorn, kernels in processes, the fast path.",
        "",
        "| layout | on the holder, median (ms) | p95 | on the other worker, "
        "median (ms) | p95 | other / holder |",
        "|---|---|---|---|---|---|",
    ]
    for layout, timings in results.items():
        holder, other = timings["holder"], timings["other"]
        lines.append(
            f"| {layout} | {_ms(statistics.median(holder))} | {_ms(_p95(holder))} "
            f"| {_ms(statistics.median(other))} | {_ms(_p95(other))} "
            f"| {statistics.median(other) / statistics.median(holder):.2f}x |"
        )
    return "\n".join(lines) + "\n"


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main() -> int:
    parser = servers.command_parser(__doc__ or "")
    parser.add_argument(
        "--calls", type=int, help="calls each way (default 200, quick 20)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the server logs")
    args = parser.parse_args()
    calls = args.calls or (20 if args.quick else 200)
    require_redis()
    servers.stop_on_sigterm()
    results = {}
    with servers.work_directory("bench-nearby-", args.keep, "nearby") as workdir:
        for layout, machine_count in (("one machine", 1), ("two machines", 2)):
            folder = workdir / str(machine_count)
            folder.mkdir()
            results[layout] = run_layout(machine_count, calls, folder)
    return servers.publish(report(results, calls), args.out)


if __name__ == "__main__":
    servers.command(main)
