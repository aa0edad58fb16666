"""bench/workers.py's report: the numbers of the latency and throughput
parts (medians, p95, paired differences, ratios; also written as JSON) and
their tables."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from typing import TYPE_CHECKING, Any

from bench.client import Sample
from bench.report import code_revision, median, package_version, percentile, versions
from bench.servers import LAYERS, Deployment

if TYPE_CHECKING:
    from bench.workers_measure import Plan, Tally

TARGET_ADDED_MS = 2.0  # forwarded median may add at most this, on loopback


def summarize_latency(
    samples: dict[str, list[Sample]], first_forwarded: Sample
) -> dict[str, Any]:
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


def summarize_throughput(
    deployments: list[Deployment], tallies: dict[str, Tally]
) -> list[dict[str, Any]]:
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
    v = versions()
    return [
        "## django_notebooks benchmark: several worker processes",
        "",
        f"- command: `{' '.join(['python', 'bench/workers.py', *sys.argv[1:]])}`",
        f"- date: {started.isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, nproc={os.cpu_count()}, "
        f"load average at start {load}",
        f"- code: {code_revision()}",
        "- versions: "
        + ", ".join(
            f"{k} {v[k]}"
            for k in ("python", "django", "channels", "marimo", "uvicorn")
            if k in v
        )
        + f", channels-redis {package_version('channels-redis')}, "
        f"redis-py {package_version('redis')}",
    ]


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


def render_report(
    args: argparse.Namespace,
    plan: Plan,
    results: dict[str, Any],
    started: datetime.datetime,
    load_at_start: str,
    load_at_end: str,
    seconds: float,
) -> list[str]:
    """The report's lines: the run's description, the latency table and
    verdicts, the throughput table, the notes (a count of failures added)."""
    notes: list[str] = results["notes"]
    report = header(args, started, load_at_start)
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
    report += ["", f"Total run time: {seconds:.1f} s."]
    return report


def describe_run(
    results: dict[str, Any],
    started: datetime.datetime,
    load_at_start: str,
    load_at_end: str,
    report: list[str],
) -> None:
    """Add the run's description and the report to the JSON results."""
    results.update(
        command=" ".join(["python", "bench/workers.py", *sys.argv[1:]]),
        date=started.isoformat(timespec="seconds"),
        machine={
            "platform": platform.platform(),
            "nproc": os.cpu_count(),
            "load_average_start": load_at_start,
            "load_average_end": load_at_end,
        },
        code=code_revision(),
        versions=versions(),
        report="\n".join(report),
    )
