"""The several-workers benchmark still runs end to end:
``python bench/workers.py --quick``.

No timing is asserted (the machine is shared and noisy). The test checks that
the benchmark starts its uvicorn processes on each of channels_redis's two
layers, moves a slider through both the process holding the session and the
other one, drives a CPU-bound notebook on 1 and 2 processes with kernel calls
spread over them (so about half are forwarded), sees every output right, and
stops cleanly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.live import require_redis, run_script

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180

pytestmark = [pytest.mark.e2e, pytest.mark.bench]


def test_quick_workers_benchmark_forwards_without_failures(tmp_path):
    require_redis()
    out = tmp_path / "workers.json"
    stdout = run_script(
        [
            "bench/workers.py",
            "--quick",
            "--no-bare",
            "--pairs",
            "10",
            "--round-seconds",
            "2",
            "--out",
            str(out),
        ],
        TIMEOUT,
    )
    assert "### Forwarded vs local latency" in stdout
    assert "| bridge, 2 workers | 2 |" in stdout
    assert "| bridge, 2 workers (RedisPubSubChannelLayer) | 2 |" in stdout

    results = json.loads(out.read_text())
    assert set(results["latency"]) == {"redis", "redis-pubsub"}
    for by_notebook in results["latency"].values():
        latency = by_notebook["square"]
        assert latency["n"] == 10
        assert len(latency["samples_ms"]["forwarded"]) == 10
    rows = {row["name"]: row for row in results["throughput"]}
    two_workers = ["bridge, 2 workers", "bridge, 2 workers (RedisPubSubChannelLayer)"]
    assert set(rows) == {"bridge, 1 worker", *two_workers}
    for row in rows.values():
        assert row["failures"] == 0, row["problems"]
        assert row["interactions"] > 0
    assert rows["bridge, 1 worker"]["forwarded_share"] == 0
    # Each session sends its calls to the two processes in turn: half of
    # them, give or take one per session, reach the other process.
    sessions = results["plan"]["sessions"]
    for name in two_workers:
        two = rows[name]
        margin = sessions / (2 * two["interactions"])
        assert abs(two["forwarded_share"] - 0.5) <= margin, name
    assert results["notes"] == []  # no traceback in any server log
