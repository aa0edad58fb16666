"""The project's performance targets, checked per bridge server against
the rows of bench/run.py's report: met / **not met**, with the value."""

from __future__ import annotations

import math
from typing import Any

from bench.measure import Plan
from bench.report import Row, fmt, is_number
from bench.servers import Target


def ratio_at_most(limit: float) -> Any:
    def check(value: Any, base: Any, row: Row, rows: dict[str, Row], name: str):
        if not (is_number(value) and is_number(base) and base):
            return None, "n/a"
        ratio = value / base
        shown = f"{ratio:.2f}x"
        if (round(ratio, 2) <= limit) != (ratio <= limit):
            shown = f"{ratio:.3f}x"  # rounding would hide why
        return ratio <= limit, shown

    return check


def value_check(test: Any, show: Any = None) -> Any:
    def check(value: Any, base: Any, row: Row, rows: dict[str, Row], name: str):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None, "n/a"
        return bool(test(value, rows, name)), (show or fmt)(value, row.unit)

    return check


def change_only(value: str, unit: str) -> str:
    """``+1.2 %`` out of ``yes (+1.2 %)``."""
    return value[value.find("(") + 1 : -1] if "(" in value else value


TARGETS: list[tuple[str, str, Any]] = [
    (
        "interaction, 1 session: median ≤ 1.05x",
        "interaction-1-median",
        ratio_at_most(1.05),
    ),
    ("interaction, 1 session: p95 ≤ 1.10x", "interaction-1-p95", ratio_at_most(1.10)),
    (
        "interaction, 8 sessions: median ≤ 1.05x",
        "interaction-8-median",
        ratio_at_most(1.05),
    ),
    ("interaction, 8 sessions: p95 ≤ 1.10x", "interaction-8-p95", ratio_at_most(1.10)),
    ("cold page load: bytes ≤ 0.35x", "cold-bytes", ratio_at_most(0.35)),
    ("cold page load: time to first output ≤ 1.00x", "cold-render", ratio_at_most(1.0)),
    (
        "repeat visit: frontend from the cache, not revalidated",
        "warm-frontend",
        value_check(lambda v, rows, name: v == 0, lambda v, u: f"{v:g} asked"),
    ),
    (
        "repeat visit: ≤ 10 requests to the server",
        "warm-network",
        value_check(lambda v, rows, name: v <= 10),
    ),
    (
        "{burst} sessions at once: all rendered",
        "burst-rendered",
        value_check(
            lambda v, rows, name: v > 0 and rows["burst-errors"].values[name] == 0,
            lambda v, u: f"{v:g} rendered",
        ),
    ),
    (
        "{burst} sessions at once: 0 errors",
        "burst-errors",
        value_check(lambda v, rows, name: v == 0),
    ),
    ("{burst} sessions at once: time ≤ 1.10x", "burst-seconds", ratio_at_most(1.10)),
    ("{burst} sessions at once: RSS/session ≤ 1.05x", "burst-rss", ratio_at_most(1.05)),
    (
        "churn: threads back within 5 %",
        "churn-threads",
        value_check(
            lambda v, rows, name: str(v).startswith("yes"),
            change_only,
        ),
    ),
    (
        "churn: RSS back within 5 %",
        "churn-rss",
        value_check(
            lambda v, rows, name: str(v).startswith("yes"),
            change_only,
        ),
    ),
    (
        "churn: no DB connection left",
        "churn-db",
        value_check(
            lambda v, rows, name: (
                is_number(v) and v <= rows["churn-db-baseline"].values[name]
            ),
            lambda v, u: f"{v} open after",
        ),
    ),
]


def render_targets(targets: list[Target], rows: list[Row], plan: Plan) -> str:
    by_key = {row.key: row for row in rows if row.key}
    bare = targets[0].name
    bridges = [t.name for t in targets[1:]]
    lines = [
        "| target | " + " | ".join(bridges) + " |",
        "|---|" + "---|" * len(bridges),
    ]
    for label, key, check in TARGETS:
        row = by_key.get(key)
        cells = []
        for name in bridges:
            if row is None:
                cells.append("not measured")
                continue
            met, shown = check(
                row.values.get(name), row.values.get(bare), row, by_key, name
            )
            verdict = (
                "not measured" if met is None else ("met" if met else "**not met**")
            )
            cells.append(f"{verdict} ({shown})")
        label = label.format(burst=plan.burst or "many")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
