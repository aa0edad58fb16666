#!/usr/bin/env python
"""Benchmark: opening a notebook that a spare kernel has run ahead, against
bare marimo, in one run.

    python bench/pre_run.py                   # 20 opens per page, both servers
    python bench/pre_run.py --quick           # smoke run
    python bench/pre_run.py --servers uvicorn --opens 40 --out pre_run.md

The notebook is tests/notebooks/pre_run.py: it sleeps ``--run-seconds``
(default 0.5) in one cell, then shows ``cube=27``. A session open is the
page GET plus the kernel websocket until its first ``completed-run`` (a new
connection each time, as bench/run.py measures it), checked to show
``cube=27``. Measured on:

- bare marimo (bench/bare_marimo.py under uvicorn), at ``/square/``: every
  open runs the notebook;
- the bridge (the test project, kernels in processes, one spare kernel per
  notebook in use), on uvicorn and on daphne (``--servers``), at
  ``/notebooks/pre_run/``, whose spare has run the notebook before the
  visitor comes (their page gets every output at once), and at
  ``/notebooks/pre_run_off/`` (the same file, ``"pre_run": False``), whose
  spare is forked ahead but runs the notebook for its visitor.

Each bridge page runs on a server of its own, with a kernel host of its
own, so that neither page's spares and runs weigh on the other's opens;
``--shared`` serves both pages from one server per kind.

After every open (outside the timing) the script waits until the run that
open caused, its own or its spare's successor's pre-run (the notebook
counts its runs in a file per server), has started and no run has started
for ``--run-seconds`` + 1 s: the next open of the page finds its spare
ready. Every target gets the same wait. Rounds alternate the targets, the
order rotating, so that the machine's slow moments fall on all alike.
Reported: per target the median and p90 in ms, how many opens took less
than the notebook's run (opens that were given a pre-run), and the ratio of
the median to bare marimo's.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from bench import servers  # noqa: E402
from bench.report import code_revision, load_average, package_version  # noqa: E402
from tests.live import (  # noqa: E402
    LiveServer,
    NotebookClient,
    end_kernel_host,
    prepare_database,
)

NOTEBOOK = servers.ROOT / "tests" / "notebooks" / "pre_run.py"
PRE_RUN_PAGE = "/notebooks/pre_run/"
PRE_RUN_OFF_PAGE = "/notebooks/pre_run_off/"
RENDERED = "cube=27"  # the notebook's output for the slider's initial value 3
SESSION_TTL = 5  # seconds a closed session is kept, the same on every server
FRAME_TIMEOUT = 60.0  # seconds to wait for a completed-run
SETTLE_TIMEOUT = 60.0  # seconds to wait for a run to start and end after an open
QUIET = 1.0  # seconds after the notebook's run: no new run started meanwhile
GOALS = {"pre-run": 0.5, "not pre-run": 1.0}  # at most this times bare marimo


@dataclass
class Target:
    """One page on one server, its run counter and its measured opens."""

    name: str
    server: Any  # LiveServer or servers.BareServer
    page: str
    runs_file: Path
    variant: str = ""  # "pre-run", "not pre-run"; "" for bare marimo
    cookies: Any = None  # httpx.Cookies of a logged-in alice (the bridge)
    opened: int = 0  # opens so far, the warm-up's included
    samples: list[float] = field(default_factory=list)  # seconds

    def runs(self) -> int:
        """How many times the notebook ran on this target's server."""
        try:
            return len(self.runs_file.read_text().splitlines())
        except FileNotFoundError:
            return 0


def bridge_env(runs_file: Path, run_seconds: float, host: Path) -> dict[str, str]:
    return {
        "DJANGO_NOTEBOOKS_TEST_ISOLATION": "process",
        "DJANGO_NOTEBOOKS_TEST_SPARES": "1",
        "DJANGO_NOTEBOOKS_TEST_RUNS": str(runs_file),
        "DJANGO_NOTEBOOKS_TEST_RUN_SECONDS": str(run_seconds),
        "DJANGO_NOTEBOOKS_TEST_SESSION_TTL": str(SESSION_TTL),
        # Closed sessions are kept for their TTL: measure opens, not caps.
        "DJANGO_NOTEBOOKS_TEST_MAX_SESSIONS": str(servers.BRIDGE_MAX_SESSIONS),
        "DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS": str(servers.BRIDGE_MAX_SESSIONS),
        # A kernel host of its own: it shares its spares with nothing else.
        "XDG_RUNTIME_DIR": str(host),
    }


def start_targets(
    kinds: list[str],
    shared: bool,
    run_seconds: float,
    workdir: Path,
    started: dict[str, Any],
) -> list[Target]:
    """Start bare marimo and the bridge servers in parallel: the targets.
    Each server lands in ``started`` as soon as it listens, so that whoever
    stops them (also after an error here) finds all that started."""
    db = prepare_database(workdir / "db.sqlite3")
    # bench/servers.BareServer passes this process's environment on.
    os.environ["DJANGO_NOTEBOOKS_TEST_RUN_SECONDS"] = str(run_seconds)
    os.environ["DJANGO_NOTEBOOKS_TEST_RUNS"] = str(workdir / "runs-bare")
    plan: list[tuple[str, str, str, str]] = [("bare", "", "", "")]
    for kind in kinds:
        for variant, page in (
            ("pre-run", PRE_RUN_PAGE),
            ("not pre-run", PRE_RUN_OFF_PAGE),
        ):
            server_name = kind if shared else f"{kind}-{page.split('/')[2]}"
            plan.append((server_name, kind, variant, page))

    def bare() -> None:
        started["bare"] = servers.BareServer(
            workdir / "bare.log", NOTEBOOK, session_ttl=SESSION_TTL
        )

    def bridge(name: str, kind: str, index: int) -> Callable[[], None]:
        # A short folder name: the host's socket path has a length limit.
        host = servers.host_folder(workdir, str(index))

        def start() -> None:
            runs_file = workdir / f"runs-{name}"
            started[name] = LiveServer(
                kind,
                db,
                workdir / f"{name}.log",
                None,  # a free port
                **bridge_env(runs_file, run_seconds, host),
            )

        return start

    names = dict.fromkeys((name, kind) for name, kind, _, _ in plan[1:])
    errors = servers.in_parallel(
        [bare, *(bridge(n, k, i) for i, (n, k) in enumerate(names))]
    )
    if errors:
        raise errors[0]
    targets = [
        Target(
            "bare marimo (uvicorn)",
            started["bare"],
            servers.BARE_PAGE,
            workdir / "runs-bare",
        )
    ]
    for name, kind, variant, page in plan[1:]:
        targets.append(
            Target(
                f"bridge {kind}, {variant}",
                started[name],
                page,
                workdir / f"runs-{name}",
                variant,
            )
        )
    return targets


async def open_once(target: Target) -> float:
    """Page GET, websocket open, first ``completed-run`` (which must show
    ``cube=27``): seconds. The websocket is closed after."""
    async with NotebookClient(target.server.url) as client:
        if target.cookies is not None:
            client.http.cookies.update(target.cookies)
        started = time.perf_counter()
        page = await client.http.get(target.page)
        if page.status_code != 200:
            raise RuntimeError(f"{target.name}: page answered {page.status_code}")
        async with client.kernel(target.page) as kernel:
            await kernel.read_until_completed(FRAME_TIMEOUT)
            took = time.perf_counter() - started
        if not any(RENDERED in text for text in kernel.outputs):
            raise RuntimeError(f"{target.name}: the first run did not show {RENDERED}")
    return took


async def settle(target: Target, before: int, run_seconds: float) -> None:
    """Wait until the run the open caused has started (the open's own, or
    the next spare's pre-run; a pre-run page's first open causes both) and
    no run has started for ``run_seconds`` + QUIET: every run has ended."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    wanted = before + (2 if target.variant == "pre-run" and target.opened == 1 else 1)
    while target.runs() < wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{target.name}: {target.runs() - before} runs after an open, "
                f"not {wanted - before}, in {SETTLE_TIMEOUT:.0f} s"
            )
        await asyncio.sleep(0.05)
    seen, quiet_since = target.runs(), time.monotonic()
    while time.monotonic() - quiet_since < run_seconds + QUIET:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.name}: runs kept starting after an open")
        await asyncio.sleep(0.05)
        if target.runs() != seen:
            seen, quiet_since = target.runs(), time.monotonic()


async def one_open(target: Target, run_seconds: float) -> float:
    before = target.runs()
    took = await open_once(target)
    target.opened += 1
    await settle(target, before, run_seconds)
    return took


async def measure(
    targets: list[Target], opens: int, run_seconds: float, hosts: set[int]
) -> None:
    for target in targets:
        if target.variant:
            async with NotebookClient(target.server.url) as client:
                await client.login("alice")
                target.cookies = client.http.cookies
    for target in targets:  # warm-up: imports, the page's first spare
        await one_open(target, run_seconds)
    for target in targets:
        if target.variant:
            hosts.update(target.server.kernel_hosts())
    for round_number in range(opens):
        shift = round_number % len(targets)
        for target in targets[shift:] + targets[:shift]:
            target.samples.append(await one_open(target, run_seconds))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def report(targets: list[Target], opens: int, run_seconds: float, shared: bool) -> str:
    bare = statistics.median(targets[0].samples)
    layout = (
        "both bridge pages on one server per kind"
        if shared
        else "each bridge page on a server (and kernel host) of its own"
    )
    lines = [
        "# Session open of a pre-run notebook",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"django_notebooks at {code_revision()}, marimo {package_version('marimo')}, "
        f"Django {package_version('django')}, load average {load_average()} "
        f"(at the end), {os.cpu_count()} CPUs. tests/notebooks/pre_run.py with "
        f"RUN_SECONDS {run_seconds:g} (one cell sleeps that long); {opens} opens "
        "per target (page GET + websocket until the first completed-run, a new "
        "connection each), rounds alternating, after one unmeasured open each; "
        f"kernels in processes, KERNEL_SPARES 1, session_ttl {SESSION_TTL} s; "
        f"{layout}.",
        "",
        "| target | page | median (ms) | p90 (ms) "
        f"| opens under {run_seconds:g} s | ratio to bare |",
        "|---|---|---|---|---|---|",
    ]
    for target in targets:
        samples = target.samples
        under = sum(took < run_seconds for took in samples)
        lines.append(
            f"| {target.name} | `{target.page}` "
            f"| {statistics.median(samples) * 1000:.1f} "
            f"| {percentile(samples, 90) * 1000:.1f} | {under}/{len(samples)} "
            f"| {statistics.median(samples) / bare:.2f}x |"
        )
    lines += [
        "",
        "Goal: pre-run ≤ 0.5x bare marimo; not pre-run ≤ 1.0x.",
        "",
    ]
    for target in targets[1:]:
        ratio = statistics.median(target.samples) / bare
        goal = GOALS[target.variant]
        verdict = "met" if ratio <= goal else "missed"
        lines.append(f"- {target.name}: {ratio:.2f}x (goal ≤ {goal:.1f}x): {verdict}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = servers.command_parser(__doc__ or "")
    parser.add_argument(
        "--opens", type=int, help="measured opens per target (default 20, quick 3)"
    )
    parser.add_argument(
        "--servers",
        default="uvicorn,daphne",
        help="bridge servers, comma-separated (default uvicorn,daphne)",
    )
    parser.add_argument(
        "--run-seconds",
        type=float,
        default=0.5,
        help="how long the notebook's run sleeps (default 0.5)",
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="both bridge pages on one server per kind",
    )
    parser.add_argument("--keep", action="store_true", help="keep the server logs")
    args = parser.parse_args()
    opens = args.opens or (3 if args.quick else 20)
    kinds = [kind.strip() for kind in args.servers.split(",") if kind.strip()]
    unknown = set(kinds) - {"uvicorn", "daphne"}
    if unknown or not kinds:
        parser.error(f"--servers: uvicorn and/or daphne, not {args.servers!r}")
    servers.stop_on_sigterm()
    hosts: set[int] = set()
    with servers.work_directory("bench-pre-run-", args.keep, "pre_run") as workdir:
        started: dict[str, Any] = {}
        try:
            with servers.stopping(lambda: list(started.items()), "pre_run"):
                try:
                    targets = start_targets(
                        kinds, args.shared, args.run_seconds, workdir, started
                    )
                    asyncio.run(measure(targets, opens, args.run_seconds, hosts))
                finally:
                    # While the servers run: a kernel host outlives its server.
                    for name, server in list(started.items()):
                        if name != "bare" and server.process.poll() is None:
                            hosts.update(server.kernel_hosts())
        finally:
            for host in hosts:
                end_kernel_host(host)
        text = report(targets, opens, args.run_seconds, args.shared)
    return servers.publish(text, args.out)


if __name__ == "__main__":
    servers.command(main)
