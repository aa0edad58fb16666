#!/usr/bin/env python
"""Benchmark: snapshots (a static notebook's page, outputs first, a save of
a listed model), against bare marimo and a plain Django page, in one run.

    python bench/snapshots.py                 # full run, both servers
    python bench/snapshots.py --quick         # smoke run
    python bench/snapshots.py --servers uvicorn --out snapshots.md

The notebook is a copy of tests/notebooks/snapshot.py: its second cell
sleeps DJANGO_NOTEBOOKS_TEST_RUN_SECONDS, its last shows ``groups=<count
of auth groups> square=16`` (``groups=none`` under bare marimo, which has
no Django). The bridge servers (the test project on uvicorn and daphne,
kernels in processes, no spare kernels, a kernel host and a database of
their own each) serve it as ``kpis`` (public, static, made again on a save
of ``auth.Group``) and ``report`` (public, outputs first), with a run of
``--run-seconds`` (2). Three parts, each against a baseline measured in the
same run, rounds alternating the targets:

1. **A static page under a crowd.** ``--clients`` (200) concurrent
   clients, each on an HTTP/1.1 connection of its own that it keeps
   (keep-alive; opened before the timing), GET ``/notebooks/kpis/`` one
   request after the other for ``--load-seconds``; every answer must be a
   200 of the page's size showing ``groups=``. The same crowd, on the same
   server, GETs an ordinary Django page of the same size
   (``/bench/page-of-size/<bytes>/``: a ``TemplateView``, tests/views.py).
   Meanwhile the server's kernel processes are counted every second. The
   baseline for throughput: the sessions per second bare marimo
   (bench/bare_marimo.py under uvicorn, the same file, its sleep at 0: the
   fastest it opens) can open, ``--openers`` (8) clients each opening one
   after the other (page GET + kernel websocket until the first
   ``completed-run``, a new connection each). Goals: no kernel process and
   no error; pages/s at least 20x bare marimo's opens/s; p95 latency at
   most 1.5x the Django page's.
2. **Outputs first in a browser.** Headless Chromium (/usr/bin/chromium),
   a fresh context (empty cache) per visit: seconds from navigation start
   until ``groups=`` is visible, bare marimo (its sleep at
   ``--run-seconds``) against the bridge's ``/notebooks/report/`` once its
   snapshot is made. Medians; goal: at most 0.5x bare marimo.
3. **A save of a listed model.** Another process (Django set up before,
   not timed) creates an auth group; the page ``/notebooks/kpis/``, read
   every 50 ms, shows the new count after how long? Rounds alternate a save
   at least ``SNAPSHOT_MIN_INTERVAL`` (``--interval``) after the last
   making started (not debounced) and one right after the last making's
   page appeared (debounced). Goal: at most the interval plus the run that
   made the page (the keeper's "Made the snapshot of 'kpis' in X s").
"""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from bench import servers  # noqa: E402
from bench.report import load_average  # noqa: E402
from bench.snapshots_measure import (  # noqa: E402
    CHROMIUM,
    OUTPUTS_FIRST_PAGE,
    Bridge,
    LoadPart,
    Save,
    Visit,
    measure_first_outputs,
    measure_load,
    measure_saves,
    start_servers,
    wait_until_made,
)
from bench.snapshots_report import (  # noqa: E402
    browser_section,
    header,
    load_section,
    saves_section,
)
from tests.live import end_kernel_host  # noqa: E402

PARTS = ("load", "browser", "saves")


@dataclass
class Results:
    load: LoadPart
    bridges: list[Bridge] = field(default_factory=list)
    visits: dict[str, list[Visit]] = field(default_factory=dict)
    saves: list[Save] = field(default_factory=list)


def measure(
    args: Any, parts: set[str], workdir: Path, started: dict[str, Any], results: Results
) -> None:
    """Start the servers, wait for their snapshots, measure the parts."""
    began = time.monotonic()

    def progress(what: str) -> None:
        print(f"[snapshots] {time.monotonic() - began:5.1f} s: {what}", file=sys.stderr)

    results.bridges, _ = start_servers(
        args.servers, workdir, args.run_seconds, args.interval, started
    )
    bridges = results.bridges
    progress("servers listening")
    asyncio.run(wait_until_made(bridges))
    progress("snapshots made")
    if "load" in parts:
        asyncio.run(
            measure_load(bridges, started["bare-opens"], results.load, not args.quick)
        )
        progress("load measured")
    if "browser" in parts:
        targets = [("bare marimo (uvicorn)", started["bare-run"].url + "/square/")]
        targets += [(b.name, b.server.url + OUTPUTS_FIRST_PAGE) for b in bridges]
        results.visits = asyncio.run(
            measure_first_outputs(
                targets,
                args.browser_rounds,
                0 if args.quick else args.run_seconds + 0.5,
                not args.quick,
            )
        )
        progress("browser visits measured")
    if "saves" in parts:
        results.saves = asyncio.run(
            measure_saves(bridges, args.save_rounds, args.interval)
        )
        progress("saves measured")


def main() -> int:
    parser = servers.command_parser(__doc__ or "")
    parser.add_argument(
        "--servers",
        default="uvicorn,daphne",
        help="bridge servers, comma-separated (default uvicorn,daphne)",
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="what to measure, comma-separated (default load,browser,saves)",
    )
    parser.add_argument("--clients", type=int, default=200, help="the crowd (200)")
    parser.add_argument(
        "--load-seconds", type=float, help="seconds per crowd (default 8, quick 1)"
    )
    parser.add_argument("--load-rounds", type=int, help="crowd rounds (3, quick 1)")
    parser.add_argument(
        "--openers", type=int, default=8, help="bare marimo's openers at once (8)"
    )
    parser.add_argument(
        "--browser-rounds", type=int, help="browser rounds (default 7, quick 1)"
    )
    parser.add_argument(
        "--save-rounds", type=int, help="saves per server (default 4, quick 1)"
    )
    parser.add_argument(
        "--run-seconds",
        type=float,
        default=2.0,
        help="how long the notebook's run sleeps (default 2)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        help="SNAPSHOT_MIN_INTERVAL (default 10, the package's; quick 2)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the server logs")
    args = parser.parse_args()
    quick = args.quick
    args.load_seconds = args.load_seconds or (1.0 if quick else 8.0)
    args.load_rounds = args.load_rounds or (1 if quick else 3)
    args.browser_rounds = args.browser_rounds or (1 if quick else 7)
    args.save_rounds = args.save_rounds or (1 if quick else 4)
    args.interval = args.interval or (2.0 if quick else 10.0)
    args.servers = [kind.strip() for kind in args.servers.split(",") if kind.strip()]
    if set(args.servers) - {"uvicorn", "daphne"} or not args.servers:
        parser.error("--servers: uvicorn and/or daphne")
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if parts - set(PARTS) or not parts:
        parser.error(f"--parts: some of {', '.join(PARTS)}")
    notes = []
    if "browser" in parts and not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            parser.error(f"{CHROMIUM} not found")
        notes.append(f"part 2 skipped: {CHROMIUM} not found")
        parts.discard("browser")
    began = time.monotonic()
    started_at = datetime.datetime.now(datetime.UTC)
    load_at_start = load_average()
    servers.stop_on_sigterm()
    hosts: set[int] = set()
    results = Results(
        LoadPart(args.clients, args.load_seconds, args.load_rounds, args.openers)
    )
    with servers.work_directory("bench-snapshots-", args.keep, "snapshots") as workdir:
        started: dict[str, Any] = {}
        try:
            with servers.stopping(lambda: list(started.items()), "snapshots"):
                try:
                    measure(args, parts, workdir, started, results)
                finally:
                    # While the servers run: a kernel host outlives its server.
                    for name, server in list(started.items()):
                        if name.startswith("bare") or server.process.poll() is not None:
                            continue
                        hosts.update(server.kernel_hosts())
        finally:
            for host in hosts:
                end_kernel_host(host)
    lines = header(args, started_at, load_at_start)
    if "load" in parts:
        lines += ["", *load_section(results.load, results.bridges)]
    if results.visits:
        lines += [
            "",
            *browser_section(results.visits, args.browser_rounds, args.run_seconds),
        ]
    if "saves" in parts:
        lines += ["", *saves_section(results.saves, args.interval)]
    lines += ["", *(f"Note: {note}." for note in notes)]
    if quick:
        lines += [
            "(--quick: too few samples for the verdicts to mean much; "
            "run the full benchmark.)",
            "",
        ]
    lines.append(f"Total run time: {time.monotonic() - began:.0f} s.")
    return servers.publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    servers.command(main)
