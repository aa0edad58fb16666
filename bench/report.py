"""Statistics, the ratio table and the report of bench/run.py: every row
shows the absolute numbers and, per bridge server, the ratio bridge / bare
marimo measured in the same run. Also what describes a run (machine,
commit, versions), which bench/workers.py's report shares."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from bench.browser import Load, is_frontend
from bench.client import USER
from bench.measure import Burst, Churn, Plan
from bench.servers import BARE_PAGE, BRIDGE_PAGE, NOTEBOOK, ROOT, Target


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


def timing_rows(
    label: str, samples: dict[str, list[float]], key: str = "", p95: bool = False
) -> list[Row]:
    """The median (and the p95) of timings taken in seconds, shown in ms."""
    n = min(len(v) for v in samples.values())
    rows = [
        Row(
            f"{label}: median",
            "ms",
            {k: median(v) * 1000 for k, v in samples.items()},
            note=f"n={n}",
            key=f"{key}-median" if key else "",
        )
    ]
    if p95:
        rows.append(
            Row(
                f"{label}: p95",
                "ms",
                {k: percentile(v, 95) * 1000 for k, v in samples.items()},
                key=f"{key}-p95" if key else "",
            )
        )
    return rows


def burst_rows(
    plan: Plan, rounds: dict[str, list[Burst]], notes: list[str]
) -> list[Row]:
    """Rows of the bursts' rounds (and notes: the wall time of each round,
    the first error)."""
    for name, r in rounds.items():
        notes.append(
            f"{name}: {plan.burst} sessions at once, wall time per round: "
            + ", ".join(f"{b.wall_seconds:.2f} s" for b in r)
        )
        errors = [b.first_error for b in r if b.first_error]
        if errors:
            notes.append(f"{name}: first burst error: {errors[0]}")
    label = f"{plan.burst} sessions at once"

    # Memory and threads from each server's first round: later rounds
    # reuse memory the first one freed and would show less growth.
    def first_round(what: str, unit: str, get: Any, key: str = "") -> Row:
        values = {k: get(r[0]) for k, r in rounds.items()}
        return Row(f"{label}: {what}", unit, values, note="first round", key=key)

    return [
        Row(
            f"{label}: rendered, fewest of a round",
            "",
            {k: min(b.rendered for b in r) for k, r in rounds.items()},
            ratio=False,
            note=f"{plan.burst_rounds} rounds",
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
        first_round(
            "server RSS growth per session",
            "MB",
            lambda b: b.rss_per_session / 2**20,
            key="burst-rss",
        ),
        first_round("server RSS with them open", "MB", lambda b: b.rss_after / 2**20),
        first_round(
            "server threads per session", "", lambda b: round(b.threads_per_session, 2)
        ),
    ]


def page_load_rows(
    plan: Plan, loads: dict[str, dict[str, list[Load]]], notes: list[str]
) -> list[Row]:
    """Rows of the cold and warm page loads (and notes: bytes by type, what
    the warm visit asked the server for, failed requests)."""
    names = list(loads)
    n = plan.browser_rounds

    def stat(kind: str, attr: str, scale: float = 1.0) -> dict[str, float]:
        return {
            k: median([getattr(x, attr) for x in loads[k][kind]]) * scale for k in names
        }

    rows = [
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
        paths = loads[name]["warm"][0].network_paths if loads[name]["warm"] else []
        notes.append(
            f"{name}: warm visit asked the server for {', '.join(paths) or 'nothing'}"
        )
    failed = {
        k: sum(x.failed for x in loads[k]["cold"] + loads[k]["warm"]) for k in names
    }
    if any(failed.values()):
        notes.append(f"failed requests during page loads: {failed}")
    return rows


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
    batches = math.ceil(n / plan.churn_batch)
    half = (batches // 2 if batches >= 4 else 0) * plan.churn_batch
    when = f"{plan.churn_ttl}+{plan.churn_settle:g} s after"

    def row(what: str, unit: str, get: Any, key: str = "", ratio: bool = False) -> Row:
        values = {name: get(c) for name, c in churns.items()}
        return Row(f"{label}: {what}", unit, values, ratio=ratio, key=key)

    def db(snapshot: Any) -> Any:
        return "–" if snapshot.db_connections is None else snapshot.db_connections

    def growth(c: Churn) -> float:
        if c.half and n > half:
            return (c.after.rss - c.half.rss) / (n - half) / 1024
        return math.nan

    return [
        row("rendered", "", lambda c: c.rendered),
        row("errors", "", lambda c: c.errors),
        row("wall time, sum of batches", "s", lambda c: c.seconds, ratio=True),
        row("threads, baseline", "", lambda c: c.baseline.threads),
        row("threads, peak", "", lambda c: c.peak_threads),
        row(f"threads, {when}", "", lambda c: c.after.threads),
        row(
            "threads back within 5 % of baseline",
            "",
            lambda c: within(c.after.threads, c.baseline.threads),
            key="churn-threads",
        ),
        row("RSS, baseline", "MB", lambda c: c.baseline.rss / mb),
        row("RSS, peak", "MB", lambda c: c.peak_rss / mb),
        row(
            f"RSS, halfway ({half} sessions), {when}",
            "MB",
            lambda c: c.half.rss / mb if c.half else math.nan,
        ),
        row(f"RSS, {when}", "MB", lambda c: c.after.rss / mb),
        row("RSS growth in the second half, per session", "KB", growth),
        row(
            "RSS back within 5 % of baseline",
            "",
            lambda c: within(c.after.rss, c.baseline.rss),
            key="churn-rss",
        ),
        row(
            "open DB connections, baseline",
            "",
            lambda c: db(c.baseline),
            key="churn-db-baseline",
        ),
        row("open DB connections, after", "", lambda c: db(c.after), key="churn-db"),
    ]


# --------------------------------------------------------------------------
# The run's description and the report


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
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
        found[name] = package_version(name)
    return found


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def code_revision() -> str:
    """The commit measured, and whether the working tree differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes" if dirty else "")


def machine_header(args: argparse.Namespace, started: datetime.datetime) -> str:
    v = versions()
    load = load_average()
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


def churn_notes(churns: dict[str, Churn], notes: list[str]) -> None:
    """What the churn servers looked like before their warm-up batch, and
    the first error."""
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


def render_report(
    header: str,
    table: str,
    notes: list[str],
    targets_table: str,
    quick: bool,
    seconds: float,
) -> str:
    """The whole report: the run's description, the ratio table, the notes
    and the check of the targets."""
    report = [header, "", table, ""]
    report.append(
        "Ratios are bridge / bare marimo measured in the same run, rounds alternating "
        "between servers; below 1.00x the bridge was faster. Interaction = POST "
        "set_ui_element_value until the `completed-run` frame of its re-run."
    )
    if notes:
        report += ["", "Notes:", *(f"- {note}" for note in notes)]
    report += [
        "",
        "Targets (the project's performance goals; ratios are bridge / bare marimo):",
        "",
        targets_table,
    ]
    if quick:
        report.append("")
        report.append(
            "(--quick: too few samples for the verdicts to mean much; "
            "run the full benchmark.)"
        )
    report.append("")
    report.append(f"Total run time: {seconds:.1f} s.")
    return "\n".join(report) + "\n"
