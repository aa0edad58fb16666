#!/usr/bin/env python
"""Where does the bridge's extra time per interaction (or per session
open) go?

    pip install py-spy
    python bench/profile_bridge.py [--seconds 20] [--servers uvicorn] [--keep DIR]
    python bench/profile_bridge.py --opens 25     # session opens, 25 at once

Starts bare marimo and the bridge (as bench/run.py does), opens one session
on each, and for each server in turn samples the server process with
``py-spy record`` while one client moves the slider as fast as it can. It
prints the CPU the server spends per interaction (milliseconds of samples,
all threads) split by who is on the stack, for bare marimo and for the bridge,
then the bridge's top functions by inclusive CPU per interaction.

With ``--opens N`` the client instead opens N sessions at once (page GET,
websocket, first ``completed-run``), closes them and starts over, for the
whole sampling window: the numbers are then per session opened, which is
what the "100 sessions at once" measure of bench/run.py is made of. The
report then also shows the busiest single worker thread: a thread that is
busy most of the window is a queue every session waits in.

py-spy samples every thread that is active (on a CPU, or runnable and
waiting for one) at ``--rate`` Hz without pausing the server
(``--nonblocking``). So the numbers are CPU time plus, on a busy machine,
run-queue time: compare the two servers within one run, and run it twice.
Waits (a thread hop queued behind the GIL, the event loop idle) are not
counted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from bench import client, servers  # noqa: E402

# Which package a sample is "in": the innermost frame from one of these
# (stdlib frames such as asyncio count for the package that called them).
PACKAGES = [
    ("django_notebooks", re.compile(r"\(django_notebooks/")),
    ("channels", re.compile(r"\(channels/")),
    ("django", re.compile(r"\(django/")),
    ("asgiref", re.compile(r"\(asgiref/")),
    ("marimo", re.compile(r"\(marimo/")),
    ("starlette", re.compile(r"\(starlette/")),
    (
        "server (uvicorn/daphne/twisted/websockets/httptools)",
        re.compile(
            r"\((uvicorn|daphne|twisted|autobahn|websockets|httptools|uvloop|wsproto|h11)/"
        ),
    ),
]
STDLIB = "stdlib only (thread start/stop, executor, event loop)"


def thread_group(name: str) -> str:
    """py-spy's ``thread (tid): name`` frame -> what the thread is for."""
    name = name.split(": ", 1)[-1]
    if name == "MainThread":
        return "main thread (event loop)"
    if "launch_kernel" in name:
        return "marimo kernel thread"
    if name.startswith("ThreadPoolExecutor") or name.startswith("asyncio_"):
        return "worker threads (sync_to_async, executors)"
    if "(join)" in name:
        return "worker threads (sync_to_async, executors)"
    return "other threads (marimo I/O, ...)"


def package_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in PACKAGES:
            if pattern.search(frame):
                return name
    return STDLIB


# Frames every sample of a thread has: not informative as "top functions".
GENERIC = re.compile(
    r"\((threading\.py|<frozen runpy>|click/|uvicorn/(main|__main__|server)\.py|"
    r"asyncio/(runners|base_events|events)\.py|concurrent/futures/thread\.py|twisted/)"
)


def parse_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) format: ``frame;frame;... count`` per line."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def function_name(frame: str) -> str:
    """``fn (path/to/module.py:123)`` -> ``fn (package/module.py)``."""
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    fn, file = match.groups()
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{fn} ({file})"


async def drive(session: client.Session, stop_at: float) -> int:
    count = 0
    while time.monotonic() < stop_at:
        await session.interact()
        count += 1
    return count


async def drive_opens(target: servers.Target, at_once: int, stop_at: float) -> int:
    """Open ``at_once`` sessions together, close them, again, until ``stop_at``."""
    count = 0
    while time.monotonic() < stop_at:
        sessions = [
            client.Session(target, client.burst_person(i)) for i in range(at_once)
        ]
        try:
            await asyncio.gather(*(s.open() for s in sessions))
            count += at_once
        finally:
            await asyncio.gather(*(s.close() for s in sessions))
    return count


async def profile_target(
    target: servers.Target, seconds: float, rate: int, out: Path, opens: int = 0
) -> tuple[int, Path, float]:
    session = client.Session(target)
    await session.open()
    try:
        for _ in range(20):  # warm-up
            await session.interact()
        if opens:
            await drive_opens(target, opens, time.monotonic() + 2)  # warm-up
        raw = (
            out
            / f"{target.name.replace(' ', '-').replace('(', '').replace(')', '')}.txt"
        )
        spy = await asyncio.create_subprocess_exec(
            "py-spy",
            "record",
            "--pid",
            str(target.server.process.pid),
            "--rate",
            str(rate),
            "--duration",
            str(int(seconds)),
            "--nonblocking",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(raw),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        await asyncio.sleep(1.0)  # py-spy attaches
        started = time.monotonic()
        if opens:
            count = await drive_opens(target, opens, started + seconds - 1.5)
        else:
            count = await drive(session, started + seconds - 1.5)
        driven = time.monotonic() - started
        _, err = await asyncio.wait_for(spy.communicate(), seconds + 30)
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
        return count, raw, driven
    finally:
        await session.close()


def report(
    results: dict[str, tuple[int, Path, float]],
    rate: int,
    top: int,
    unit: str = "interaction",
) -> str:
    per_sample_ms = 1000 / rate
    cells: dict[str, collections.Counter] = {}
    functions: dict[str, collections.Counter] = {}
    counts: dict[str, int] = {}
    busiest: dict[str, tuple[str, float]] = {}  # worker thread, share of the window
    for name, (count, raw, driven) in results.items():
        counts[name] = count
        cells[name] = collections.Counter()
        functions[name] = collections.Counter()
        per_thread: collections.Counter = collections.Counter()
        for frames, samples in parse_raw(raw):
            thread = (
                frames[0]
                if frames and frames[0].startswith("thread (")
                else "thread (?): ?"
            )
            code = [f for f in frames if not f.startswith(("thread (", "process "))]
            ms = samples * per_sample_ms / count
            cells[name][(thread_group(thread), package_of(code))] += ms
            for fn in {function_name(f) for f in code if not GENERIC.search(f)}:
                functions[name][fn] += ms
            if thread_group(thread).startswith("worker"):
                per_thread[thread] += samples
        if per_thread:
            thread, samples = per_thread.most_common(1)[0]
            busiest[name] = (thread, samples / rate / max(driven, 1e-9))

    names = list(results)
    lines = [
        f"| server CPU per {unit}, ms (thread: package) | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    keys = sorted(
        {k for n in names for k in cells[n]},
        key=lambda k: -max(cells[n][k] for n in names),
    )
    for key in keys:
        values = [cells[n][key] for n in names]
        if max(values) >= 0.05:
            lines.append(
                f"| {key[0]}: {key[1]} | "
                + " | ".join(f"{v:.2f}" for v in values)
                + " |"
            )
    lines.append(
        "| **total** | "
        + " | ".join(f"**{sum(cells[n].values()):.2f}**" for n in names)
        + " |"
    )
    lines.append(
        f"| {unit}s sampled | " + " | ".join(str(counts[n]) for n in names) + " |"
    )
    lines.append(
        "| busiest single worker thread, share of the window | "
        + " | ".join(
            f"{busiest[n][1] * 100:.0f} % ({busiest[n][0].split(': ', 1)[-1]})"
            if n in busiest
            else "–"
            for n in names
        )
        + " |"
    )

    bare = names[0]
    for name in names[1:]:
        diff = collections.Counter(
            {fn: v - functions[bare].get(fn, 0.0) for fn, v in functions[name].items()}
        )
        lines += [
            "",
            f"Functions with the most extra inclusive CPU per {unit}, "
            f"{name} minus {bare} (ms):",
            "",
            f"| function | {name} | {bare} | extra |",
            "|---|---|---|---|",
        ]
        for fn, extra in diff.most_common(top):
            lines.append(
                f"| `{fn}` | {functions[name][fn]:.2f} "
                f"| {functions[bare].get(fn, 0.0):.2f} | {extra:+.2f} |"
            )
    return "\n".join(lines)


async def main_async(
    args: argparse.Namespace, targets: list[servers.Target], out: Path
) -> dict:
    await client.log_in(targets, people(args))
    results = {}
    for target in targets:
        print(
            f"[profile] sampling {target.name} for {args.seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        results[target.name] = await profile_target(
            target, args.seconds, args.rate, out, args.opens
        )
    return results


def people(args: argparse.Namespace) -> int:
    """Logins needed: alice, plus bench users for the opens (up to the cap each)."""
    return 1 + (client.burst_person(args.opens - 1) if args.opens else 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument(
        "--servers", default="uvicorn", help="bridge servers: uvicorn,daphne"
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--opens",
        type=int,
        default=0,
        help="profile session opens, this many at once (default: interactions)",
    )
    parser.add_argument(
        "--keep", type=Path, help="keep py-spy's raw stacks in this directory"
    )
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="dn-profile-"))
    out = args.keep or workdir
    out.mkdir(parents=True, exist_ok=True)
    targets: list[servers.Target] = []
    try:
        try:
            db = servers.prepare_users(workdir, people(args))
            targets = servers.start_servers(
                [k for k in args.servers.split(",") if k],
                workdir,
                db,
                2 if args.opens else 10,
            )
            results = asyncio.run(main_async(args, targets, out))
        finally:
            if targets:
                servers.stop_servers([t.server for t in targets])
        unit = "session open" if args.opens else "interaction"
        print(report(results, args.rate, args.top, unit))
    finally:
        # Server logs and the database; py-spy's stacks too unless --keep.
        shutil.rmtree(workdir, ignore_errors=True)
    if args.keep:
        print(f"\nRaw stacks (py-spy collapsed format) in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
