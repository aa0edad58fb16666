"""The benchmarks still run end to end: ``python bench/run.py --quick``,
``bench/isolation.py --quick``, ``bench/flood.py --quick`` and
``bench/caps.py --quick``.

No timing is asserted: the machine is shared and noisy, and the benchmark's
numbers only mean something as ratios against bare marimo measured in the
same run. These tests check that each benchmark starts its servers, drives
them, prints its tables (run.py: with the token churn of ``--quick`` and the
targets) and stops cleanly; and the behaviours the tables show that do not
depend on timing (the bridge closes a flooding or non-reading client; it
holds a looping visitor to its cap of kernels).
"""

from __future__ import annotations

import re
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


def test_quick_caps_benchmark_holds_a_looping_visitor_to_its_cap_refusing_none_and_lets_a_user_in():
    """``python bench/caps.py --quick``: one anonymous client opens and closes
    sessions in a loop on bare marimo and both bridge servers; on the
    bridge, the kernels it leaves never exceed what one visitor may hold,
    none of its opens is refused (its oldest closed tab makes room), and a
    logged-in user still opens a session afterwards."""
    stdout = run_script(["bench/caps.py", "--quick"], TIMEOUT)
    cap = int(re.search(r"one visitor can hold (\d+)", stdout).group(1))
    rounds = int(re.search(r"opens and closes (\d+) sessions", stdout).group(1))
    assert rounds > cap  # the loop reaches the cap
    header = next(line for line in stdout.splitlines() if line.startswith("| server |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| b") and len(cells) == len(columns):
            rows[cells[0]] = dict(zip(columns, cells, strict=True))
    assert set(rows) == {"bare marimo (uvicorn)", "bridge uvicorn", "bridge daphne"}
    for kind in ("uvicorn", "daphne"):
        row = rows[f"bridge {kind}"]
        assert int(row["most kernels"]) <= cap, row
        assert int(row["kernels at end"]) <= cap, row
        assert (row["ran"], row["refused"]) == (str(rounds), "0"), row
        assert row["bystander opens"] == "yes", row
        assert row["ratio"].endswith("x"), row
    assert rows["bare marimo (uvicorn)"]["ratio"].endswith("x")
