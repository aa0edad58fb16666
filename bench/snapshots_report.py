"""bench/snapshots.py's report: one section per part, each with its
table and the goals, met or not."""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
from typing import Any

from bench.report import (
    code_revision,
    load_average,
    median,
    percentile,
    versions,
)
from bench.snapshots_measure import (
    OPENS_SESSION_TTL,
    POLL,
    Bridge,
    LoadPart,
    Save,
    Visit,
)

# At least 20x bare marimo's session opens per second; a p95 at most 1.5x
# the Django page's; the first output at most 0.5x bare marimo's.
GOALS = {"throughput": 20.0, "p95": 1.5, "first output": 0.5}


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def cpu_per(runs: list[Any], attr: str) -> str:
    """CPU milliseconds per page (or per session opened) over all rounds."""
    done = sum(len(getattr(run, "latencies", None) or run.took) for run in runs)
    used = sum(getattr(run, attr) for run in runs)
    return f"{used / done * 1000:.2f}" if done else "–"


def load_section(part: LoadPart, bridges: list[Bridge]) -> list[str]:
    opens_per_second = [len(o.took) / o.seconds for o in part.opens]
    bare_rate = median(opens_per_second)
    open_times = [t for o in part.opens for t in o.took]
    open_errors = sum(o.errors for o in part.opens)
    lines = [
        f"## 1. A static page, {part.clients} concurrent visitors",
        "",
        f"{part.clients} clients, each on one HTTP/1.1 connection it keeps "
        "(keep-alive, opened before the timing), GET the page one request after "
        f"the other for {part.seconds:g} s, {part.rounds} rounds alternating the "
        f"targets. The static page is {part.page_bytes} bytes; the Django page "
        "(a `TemplateView`, the same server and middleware) is padded to the "
        f"same size. Bare marimo: {part.openers} clients open sessions one after "
        "the other (page GET + websocket until the first `completed-run`, a new "
        f"connection each), its sleep at 0, session_ttl {OPENS_SESSION_TTL} s.",
        "",
        "| target | pages/s (median of rounds) | p50 (ms) | p95 (ms) | errors "
        "| kernel processes, most seen | server CPU per page (ms) "
        "| client CPU per page (ms) |",
        "|---|---|---|---|---|---|---|---|",
        f"| bare marimo: session opens | {bare_rate:.1f} opens/s "
        f"| {median(open_times) * 1000:.0f} | {percentile(open_times, 95) * 1000:.0f} "
        f"| {open_errors} | – | {cpu_per(part.opens, 'server_cpu')} "
        f"| {cpu_per(part.opens, 'client_cpu')} |",
    ]
    for name, crowds in part.crowds.items():
        latencies = [t for c in crowds for t in c.latencies]
        lines.append(
            f"| {name} | {median([len(c.latencies) / c.seconds for c in crowds]):.0f} "
            f"| {median(latencies) * 1000:.1f} | {percentile(latencies, 95) * 1000:.1f} "
            f"| {sum(c.errors for c in crowds)} "
            f"| {max(c.most_kernels for c in crowds)} "
            f"| {cpu_per(crowds, 'server_cpu')} | {cpu_per(crowds, 'client_cpu')} |"
        )
    lines += ["", "Goals:", ""]
    for bridge in bridges:
        static = part.crowds[f"{bridge.name}: static"]
        django = part.crowds[f"{bridge.name}: django"]
        rate = median([len(c.latencies) / c.seconds for c in static])
        static_p95 = percentile([t for c in static for t in c.latencies], 95)
        django_p95 = percentile([t for c in django for t in c.latencies], 95)
        kernels = max(c.most_kernels for c in static)
        errors = sum(c.errors for c in static)
        ratio = rate / bare_rate if bare_rate else math.inf
        lines += [
            f"- {bridge.name}: kernel processes during the load: {kernels} "
            f"(goal 0): {verdict(kernels == 0)}; errors: {errors} (goal 0): "
            f"{verdict(errors == 0)}",
            f"- {bridge.name}: throughput {rate:.0f} pages/s = {ratio:.1f}x bare "
            f"marimo's {bare_rate:.1f} opens/s (goal ≥ {GOALS['throughput']:g}x): "
            f"{verdict(ratio >= GOALS['throughput'])}",
            f"- {bridge.name}: p95 {static_p95 * 1000:.1f} ms = "
            f"{static_p95 / django_p95:.2f}x the Django page's "
            f"{django_p95 * 1000:.1f} ms (goal ≤ {GOALS['p95']:g}x): "
            f"{verdict(static_p95 / django_p95 <= GOALS['p95'])}",
        ]
    for name, crowds in part.crowds.items():
        first = [c.first_error for c in crowds if c.first_error]
        if first:
            lines.append(f"- {name}: first error: {first[0]}")
    first = [o.first_error for o in part.opens if o.first_error]
    if first:
        lines.append(f"- bare marimo opens: first error: {first[0]}")
    return lines


def browser_section(
    visits: dict[str, list[Visit]], rounds: int, run_seconds: float
) -> list[str]:
    names = list(visits)
    firsts = {name: [v.output for v in visits[name]] for name in names}
    bare = median(firsts[names[0]])
    lines = [
        "## 2. Outputs first: time to the first output in a cold Chromium",
        "",
        "Headless Chromium, a fresh context (empty cache) per visit; seconds from "
        "the navigation's start until `groups=` is visible. The notebook's run "
        f"takes {run_seconds:g} s (its sleep) on both sides; {rounds} rounds "
        "alternating the targets, after one unmeasured visit each; the bridge "
        "serves `/notebooks/report/` (public, outputs first, its snapshot made, "
        "no spare kernels), bare marimo `/square/`.",
        "",
        f"| target | median (ms) | fastest (ms) | slowest (ms) "
        f"| visits under {run_seconds:g} s | ratio to bare |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        samples = firsts[name]
        lines.append(
            f"| {name} | {median(samples) * 1000:.0f} | {min(samples) * 1000:.0f} "
            f"| {max(samples) * 1000:.0f} "
            f"| {sum(s < run_seconds for s in samples)}/{len(samples)} "
            f"| {median(samples) / bare:.2f}x |"
        )
    lines += [
        "",
        "Where the time went (medians, ms from the navigation's start: the "
        "page's DOMContentLoaded by the browser's clock, the rest as the "
        "script saw the browser's events):",
        "",
        "| target | DOMContentLoaded | websocket opened | its first frame "
        "| first frame with `groups=` | `groups=` visible |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:

        def stage(attr: str, name: str = name) -> str:
            values = [getattr(v, attr) for v in visits[name]]
            values = [x for x in values if not math.isnan(x)]
            return f"{median(values) * 1000:.0f}" if values else "–"

        lines.append(
            f"| {name} | {stage('content_loaded')} | {stage('websocket')} "
            f"| {stage('first_frame')} | {stage('first_output_frame')} "
            f"| {stage('output')} |"
        )
    lines += ["", "Goals:", ""]
    for name in names[1:]:
        ratio = median(firsts[name]) / bare
        lines.append(
            f"- {name}: {ratio:.2f}x bare marimo (goal ≤ "
            f"{GOALS['first output']:g}x): {verdict(ratio <= GOALS['first output'])}"
        )
    return lines


def saves_section(saves: list[Save], interval: float) -> list[str]:
    lines = [
        "## 3. A save of a listed model: when the static page shows it",
        "",
        f"SNAPSHOT_MIN_INTERVAL {interval:g} s; the keeper looks every 2 s "
        "(a save in another process is seen at its next look). Another "
        "process creates an auth group (Django set up before, not timed); the "
        f'page is read every {POLL * 1000:.0f} ms. "late": the save comes more '
        "than the interval after the last making started (not debounced); "
        '"soon": right after the last making\'s page appeared (debounced if '
        "that is sooner than the interval after the making started). Seconds "
        "from the save; the run is the making's (the keeper's \"Made the "
        "snapshot of 'kpis' in X s\", from the snapshot's row to the ms: the "
        "kernel's start, the run, marimo's export). Bound: the interval plus "
        "the run.",
        "",
        "| server | save | came after the last making's start | debounce wait "
        "| making started | run | page stored | page shown "
        "| bound: interval + run | held |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for save in saves:
        bound = interval + save.run
        wait = max(0.0, interval - save.since_start)
        lines.append(
            f"| {save.server} | {save.mode} | {save.since_start:.2f} | {wait:.2f} "
            f"| {save.started_after:.2f} | {save.run:.3f} | {save.stored_after:.2f} "
            f"| {save.shown:.3f} | {bound:.3f} "
            f"| {'yes' if save.shown <= bound else '**no**'} |"
        )
    held = sum(save.shown <= save.run + interval for save in saves)
    lines += [
        "",
        "Goals:",
        "",
        f"- the page showed the new count within the interval plus the run: "
        f"{held} of {len(saves)} saves: {verdict(held == len(saves))}",
    ]
    for server in dict.fromkeys(save.server for save in saves):
        mine = [s for s in saves if s.server == server]
        lines.append(
            f"- {server}: the keeper's reasons: "
            f"{', '.join(dict.fromkeys(s.reason for s in mine))}; makings per "
            f"save: {', '.join(str(s.makings) for s in mine)}"
        )
    return lines


def header(args: Any, started: datetime.datetime, load_at_start: str) -> list[str]:
    v = versions()
    return [
        "# Snapshots: a static page, outputs first, a model save",
        "",
        f"- command: `python bench/snapshots.py {' '.join(sys.argv[1:])}`",
        f"- date: {started.isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, nproc={os.cpu_count()}, load average "
        f"at start {load_at_start}, at the end {load_average()}",
        f"- code: {code_revision()}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- notebook: a copy of tests/notebooks/snapshot.py, run "
        f"{args.run_seconds:g} s on the bridge (kernels in processes, "
        "no spare kernels)",
    ]
