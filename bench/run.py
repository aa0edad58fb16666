#!/usr/bin/env python
"""Benchmark: django_notebooks (the bridge) against bare marimo, on this
machine, in one run.

    python bench/run.py                      # full run (several minutes)
    python bench/run.py --quick              # smoke run (well under a minute)
    python bench/run.py --servers uvicorn    # bridge on uvicorn only
    python bench/run.py --out results.md     # also write the table to a file

It starts, on free 127.0.0.1 ports:

- bare marimo: ``bench/bare_marimo.py`` (``marimo.create_asgi_app(quiet=True)
  .with_app(path="/square", root=<notebook>)``) under uvicorn, page ``/square/``;
- the bridge: the test project (``tests.asgi:application``) under uvicorn
  and/or daphne, page ``/notebooks/square/`` (login required: alice);

both serving ``tests/notebooks/square.py``. Every measurement alternates
between the servers round by round, so drift of this (shared, noisy) machine
hits all of them alike; the table reports bridge/bare ratios next to the
absolute numbers. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from bench.measure import Plan, people  # noqa: E402
from bench.phases import churn_phase, main_phase, on_servers  # noqa: E402
from bench.report import machine_header, render_report, render_table  # noqa: E402
from bench.servers import (  # noqa: E402
    BRIDGE_KINDS,
    prepare_users,
    stop_on_sigterm,
    work_directory,
)
from bench.targets import render_targets  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (CI)")
    parser.add_argument(
        "--servers",
        default="uvicorn,daphne",
        help="bridge servers, comma-separated: uvicorn,daphne (default both), "
        "each with kernels in processes; uvicorn-thread,daphne-thread with "
        'ISOLATION = "thread"',
    )
    parser.add_argument(
        "--out", type=Path, help="also write the markdown report to this file"
    )
    parser.add_argument(
        "--interactions",
        type=int,
        default=0,
        help="measured interactions per configuration (default 200, quick 20)",
    )
    parser.add_argument(
        "--opens", type=int, default=0, help="measured session opens per server"
    )
    parser.add_argument(
        "--browser-rounds",
        type=int,
        default=0,
        help="cold + warm page loads per server (default 5, quick 1)",
    )
    parser.add_argument(
        "--burst", type=int, default=100, help="sessions opened at once (full run)"
    )
    parser.add_argument(
        "--burst-rounds",
        type=int,
        default=2,
        help="rounds of the burst per server, alternating (default 2)",
    )
    parser.add_argument(
        "--churn",
        type=int,
        default=None,
        help="sessions opened and closed per server in the churn phase "
        "(default 500, quick 20; 0 skips it)",
    )
    parser.add_argument(
        "--churn-batch",
        type=int,
        default=25,
        help="churn sessions open at the same time (default 25, quick 10)",
    )
    parser.add_argument(
        "--churn-ttl",
        type=int,
        default=0,
        help="session_ttl of the churn servers, seconds (default 5, quick 2)",
    )
    parser.add_argument(
        "--session-ttl",
        type=int,
        default=10,
        help="marimo session_ttl for both servers, seconds (default 10)",
    )
    parser.add_argument(
        "--no-browser", action="store_true", help="skip the Chromium page loads"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the server logs and print where"
    )
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    for kind in kinds:
        if kind not in BRIDGE_KINDS:
            parser.error(
                f"unknown server {kind!r}: choose from {', '.join(BRIDGE_KINDS)}"
            )
    if not kinds:
        parser.error("--servers needs at least one of uvicorn, daphne")
    args.kinds = list(dict.fromkeys(kinds))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.for_args(args)
    started_at = datetime.datetime.now().astimezone()
    clock = time.monotonic()
    stop_on_sigterm()
    stop_times: dict[str, float] = {}
    with work_directory("dn-bench-", args.keep_logs, "bench") as workdir:
        db = prepare_users(workdir, people(plan))
        targets, rows, notes = on_servers(
            lambda targets: main_phase(
                targets, plan, args.session_ttl, browser=not args.no_browser
            ),
            args.kinds,
            workdir,
            db,
            args.session_ttl,
            "",
            stop_times,
        )
        if plan.churn:
            # Fresh servers with a short session_ttl: the churn's baseline is
            # then not the high-water mark of the phases before it.
            _, churn_rows, churn_notes = on_servers(
                lambda targets: churn_phase(targets, plan),
                args.kinds,
                workdir,
                db,
                plan.churn_ttl,
                " for the churn",
                stop_times,
            )
            rows += churn_rows
            notes += churn_notes
        else:
            notes.append("churn: skipped (--churn 0)")

    slow_stops = {k: v for k, v in stop_times.items() if v > 5}
    if slow_stops:
        notes.append(f"servers slow to stop on SIGTERM (s): {slow_stops}")
    text = render_report(
        machine_header(args, started_at),
        render_table(targets, rows),
        notes,
        render_targets(targets, rows, plan),
        quick=plan.quick,
        seconds=time.monotonic() - clock,
    )
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
