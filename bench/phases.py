"""bench/run.py's run, step by step: each step measures (bench/measure.py,
bench/browser.py) and makes its rows of the report (bench/report.py).
``main_phase`` runs on the first set of servers, ``churn_phase`` on a second
set started for it; ``on_servers`` starts a set, runs a phase on it and
stops it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench.browser import chromium_available, measure_page_loads
from bench.client import log_in, warm_up
from bench.measure import (
    Plan,
    measure_bursts,
    measure_churn,
    measure_interactions,
    measure_requests,
    measure_session_open,
    people,
)
from bench.report import (
    Row,
    burst_rows,
    churn_notes,
    churn_rows,
    page_load_rows,
    timing_rows,
)
from bench.servers import Target, start_servers, stopping

Outcome = tuple[list[Row], list[str]]  # rows of the table, notes


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


async def burst_step(
    targets: list[Target], plan: Plan, session_ttl: int, notes: list[str]
) -> list[Row]:
    if not (plan.burst and plan.burst_rounds):
        notes.append("many sessions at once: skipped (--quick, or --burst 0)")
        return []
    progress(f"{plan.burst} sessions opened at once")
    rounds = await measure_bursts(targets, plan, session_ttl)
    return burst_rows(plan, rounds, notes)


async def interaction_step(
    targets: list[Target], plan: Plan, concurrency: int, notes: list[str]
) -> list[Row]:
    progress(f"interaction round trips, {concurrency} concurrent session(s)")
    samples = await measure_interactions(targets, plan, concurrency, notes)
    label = f"interaction, {concurrency} session{'s' if concurrency > 1 else ''}"
    return timing_rows(label, samples, key=f"interaction-{concurrency}", p95=True)


async def session_open_step(
    targets: list[Target], plan: Plan, notes: list[str]
) -> list[Row]:
    progress("session open")
    opens = await measure_session_open(targets, plan, notes)
    return timing_rows("session open (page + ws -> first completed-run)", opens)


async def plain_requests_step(
    targets: list[Target], plan: Plan, notes: list[str]
) -> list[Row]:
    progress("plain requests")
    plain = await measure_requests(targets, plan, notes)
    return [
        row for kind, by_target in plain.items() for row in timing_rows(kind, by_target)
    ]


async def page_load_step(
    targets: list[Target], plan: Plan, browser: bool, notes: list[str]
) -> list[Row]:
    if not browser:
        notes.append("page loads in Chromium: skipped (--no-browser)")
        return []
    ok, why = chromium_available()
    if not ok:
        if os.environ.get("CI"):
            raise RuntimeError(f"page loads need Chromium and CI is set: {why}")
        notes.append(
            f"page loads in Chromium: SKIPPED ({why}; install Debian's chromium "
            "and the playwright package to measure them)"
        )
        return []
    progress("page loads in headless Chromium")
    loads = await measure_page_loads(targets, plan, notes)
    return page_load_rows(plan, loads, notes)


async def main_phase(
    targets: list[Target], plan: Plan, session_ttl: int, browser: bool
) -> Outcome:
    """Everything but the churn. The burst runs first, right after the
    warm-up, so that memory freed by the other measurements does not hide
    its growth; its rows come last in the table."""
    notes: list[str] = []
    await log_in(targets, people(plan))
    # Warm every server once (first notebook build, imports) before measuring.
    await warm_up(targets)
    burst = await burst_step(targets, plan, session_ttl, notes)
    rows: list[Row] = []
    for concurrency in plan.concurrency:
        rows += await interaction_step(targets, plan, concurrency, notes)
    rows += await session_open_step(targets, plan, notes)
    rows += await plain_requests_step(targets, plan, notes)
    rows += await page_load_step(targets, plan, browser, notes)
    return rows + burst, notes


async def churn_phase(targets: list[Target], plan: Plan) -> Outcome:
    """The churn, on servers of its own (started with a short session_ttl)."""
    notes: list[str] = []
    progress(
        f"churn: {plan.churn} sessions opened and closed, "
        f"{plan.churn_batch} at a time, session_ttl {plan.churn_ttl} s"
    )
    count = people(plan)
    await log_in(targets, count)
    # Warm every server once (first notebook build, imports), as main_phase does.
    await warm_up(targets, interact=False)
    churns = await measure_churn(targets, plan, count, notes)
    churn_notes(churns, notes)
    return churn_rows(plan, churns), notes


def on_servers(
    phase: Callable[[list[Target]], Coroutine[Any, Any, Outcome]],
    kinds: list[str],
    workdir: Path,
    db: Path,
    session_ttl: int,
    tag: str,
    stop_times: dict[str, float],
) -> tuple[list[Target], list[Row], list[str]]:
    """Start the servers, run ``phase(targets)`` and stop the servers, also
    when it fails or is interrupted."""
    targets: list[Target] = []
    progress(f"starting servers{tag}")
    with stopping(lambda: [(t.name, t.server) for t in targets], "bench", stop_times):
        targets += start_servers(kinds, workdir, db, session_ttl, tag)
        rows, notes = asyncio.run(phase(targets))
    return targets, rows, notes
