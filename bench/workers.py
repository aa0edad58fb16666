#!/usr/bin/env python
"""Benchmark: the bridge on several server processes (kernel calls forwarded
between them over a Redis channel layer), on this machine, in one run.

    python bench/workers.py                  # full run (about 8 minutes)
    python bench/workers.py --quick          # smoke run (well under a minute)
    python bench/workers.py --out r.json     # also write the results as JSON

1. Forwarded vs local latency: two uvicorn processes A and B of the test
   project (``tests.asgi``) share a SQLite database and a Redis layer
   (channels_redis's RedisChannelLayer, then its RedisPubSubChannelLayer). One
   session of ``tests/notebooks/square.py`` (then one of ``cpu.py``) has its
   kernel websocket on A; its slider is moved by POSTs to A (local) and to
   B (forwarded to A), alternately, and each interaction is timed from the
   POST to the ``completed-run`` frame of the re-run, as is the POST's own
   round trip.
2. Throughput: for 1, 2 and 4 uvicorn processes (plus bare marimo as a
   reference), 8 sessions of ``tests/notebooks/cpu.py`` (about 30 ms of pure
   Python per run) spread over the processes move their sliders as fast as
   they can, each POST going to the next process in turn, so that most are
   forwarded when there are several. Rounds of a fixed time alternate between
   the configurations; the result is interactions completed per second.
   Several processes run on each channel layer.

Every output is checked; see bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from bench.report import load_average  # noqa: E402
from bench.servers import LAYERS, stop_on_sigterm, work_directory  # noqa: E402
from bench.workers_measure import (  # noqa: E402
    Plan,
    cpu_work_ms,
    latency_pairs,
    measure_all,
    on_deployments,
    throughput_deployments,
)
from bench.workers_report import describe_run, render_report  # noqa: E402
from tests.live import prepare_database, redis_is_up  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="measured local+forwarded pairs (default 300, quick 20)",
    )
    parser.add_argument(
        "--latency-notebooks",
        default="",
        help="notebooks of the latency part: square (a tiny cell), cpu (about "
        "30 ms of work) (default square,cpu; quick square)",
    )
    parser.add_argument(
        "--layers",
        default=",".join(LAYERS),
        help="channel layers between the processes: redis (channels_redis's "
        "RedisChannelLayer), redis-pubsub (its RedisPubSubChannelLayer) "
        "(default both)",
    )
    parser.add_argument(
        "--workers",
        default="",
        help="worker counts for the throughput runs (default 1,2,4; quick 1,2)",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=0,
        help="concurrent sessions in the throughput runs (default 8, quick 4)",
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="throughput rounds (default 3, quick 1)"
    )
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=0,
        help="length of one throughput round (default 15, quick 3)",
    )
    parser.add_argument(
        "--no-bare", action="store_true", help="skip the bare marimo reference"
    )
    parser.add_argument(
        "--skip-latency", action="store_true", help="run the throughput part only"
    )
    parser.add_argument(
        "--skip-throughput", action="store_true", help="run the latency part only"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the server logs and print where"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.for_args(args)
    if not redis_is_up():
        print(
            "bench/workers.py needs Redis on 127.0.0.1:6379 (the channel layer "
            "between the server processes).",
            file=sys.stderr,
        )
        return 2
    stop_on_sigterm()
    started_at = datetime.datetime.now().astimezone()
    clock = time.monotonic()
    load_at_start = load_average()
    results: dict[str, Any] = {
        "plan": plan.__dict__,
        "notes": [],
        "cpu_work_ms": cpu_work_ms(),
    }
    with work_directory("dn-bench-workers-", args.keep_logs, "workers") as workdir:
        db = prepare_database(workdir / "db.sqlite3")
        pairs = {} if args.skip_latency else latency_pairs(plan, workdir, db)
        deployments = (
            [] if args.skip_throughput else throughput_deployments(plan, workdir, db)
        )
        on_deployments(
            [*pairs.values(), *deployments],
            lambda: measure_all(plan, pairs, deployments, results),
            results["notes"],
        )

    load_at_end = load_average()
    report = render_report(
        args,
        plan,
        results,
        started_at,
        load_at_start,
        load_at_end,
        time.monotonic() - clock,
    )
    print("\n".join(report))
    describe_run(results, started_at, load_at_start, load_at_end, report)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    failed = any(row["failures"] for row in results.get("throughput", []))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
