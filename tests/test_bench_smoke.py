"""The benchmarks still run end to end: ``python bench/run.py --quick``
and ``python bench/isolation.py --quick``.

No timing is asserted: the machine is shared and noisy, and the benchmark's
numbers only mean something as ratios against bare marimo measured in the
same run. This test only checks that the benchmark starts its servers,
drives both, prints its table (with the token churn of ``--quick``) and the
targets, and stops cleanly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.live import run_script

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180

pytestmark = [pytest.mark.e2e, pytest.mark.bench]


def test_quick_benchmark_prints_a_ratio_table():
    stdout = run_script(["bench/run.py", "--quick", "--servers", "uvicorn"], TIMEOUT)
    assert "ratio" in stdout
    assert "| interaction, 1 session: median" in stdout
    # The churn ran on its own servers, every session rendered, and the
    # server was read after it.
    assert "| churn 20 (10 at a time, ttl 2 s): rendered | 20 | 20 |" in stdout
    assert "| churn 20 (10 at a time, ttl 2 s): errors | 0 | 0 |" in stdout
    assert "open DB connections, after" in stdout
    assert "| target | bridge uvicorn |" in stdout


def test_quick_isolation_benchmark_compares_both_modes():
    """``python bench/isolation.py --quick``: both modes and bare marimo
    render every session, and the busy-loop table has both modes."""
    stdout = run_script(["bench/isolation.py", "--quick"], TIMEOUT)
    assert "| bare marimo | 10 | 0 |" in stdout
    assert "| bridge, process | 10 | 0 |" in stdout
    assert "| bridge, thread | 10 | 0 |" in stdout
    assert "| bridge, process | " in stdout.split("busy loop", 1)[1]
    assert "| bridge, thread | " in stdout.split("busy loop", 1)[1]


def test_quick_flood_benchmark_shows_every_server_under_both_clients():
    """``python bench/flood.py --quick``: the flood and the non-reader on
    bare marimo and both bridge servers, the bridge closing both."""
    stdout = run_script(["bench/flood.py", "--quick"], TIMEOUT)
    flood, not_reading = stdout.split("reads nothing", 1)
    for kind in ("uvicorn", "daphne"):
        assert f"| bridge {kind} | " in flood
        assert ", 4420 |" in flood.split(f"| bridge {kind} | ", 1)[1].split("\n")[0]
        row = not_reading.split(f"| bridge {kind} | ", 1)[1].split("\n")[0]
        assert "| no |" not in row, row
    assert "| bare marimo (uvicorn) | " in flood
    assert "| bare marimo (uvicorn) | " in not_reading
