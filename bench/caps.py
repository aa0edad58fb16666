#!/usr/bin/env python
"""Benchmark: what one anonymous client that opens and closes sessions in a
loop leaves running, the bridge (uvicorn and daphne, kernels in processes,
its default caps and a small MAX_SESSIONS) next to bare marimo, in one run.

    python bench/caps.py                  # full run, about half a minute
    python bench/caps.py --quick          # smoke run
    python bench/caps.py --rounds 200 --out caps.md

One client (one address, one cookie) opens a session of
tests/notebooks/whoami.py (the bridge's public notebook ``hello``), waits
for the notebook's first run and closes it, ``--rounds`` times. Every
closed tab keeps its kernel for marimo's ``session_ttl`` (its default,
120 s, on both sides) in case the page reloads. For each server:

- the kernels alive at the end of the loop, and the most seen after any
  round: the bridge's kernel processes, counted by their process titles;
  bare marimo's sessions, counted by the threads they add to its process
  (it runs kernels as threads and says nowhere how many it holds);
- their memory: USS and PSS summed over the kernel processes, and RSS
  summed (which counts shared pages once per process); for bare marimo,
  what its process grew by during the loop;
- a bystander: a logged-in user (bridge; square.py is for logged-in users)
  or a second client (bare marimo) has a session open before the loop and
  measures its widget round trip; after the loop it opens a new session
  (can it?) and measures the same round trip there: the ratio after /
  before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from bench import servers  # noqa: E402
from bench.client import FRAME_TIMEOUT, Session, login_cookies  # noqa: E402
from bench.report import code_revision, load_average, package_version  # noqa: E402
from django_notebooks import conf, limits  # noqa: E402
from django_notebooks.kernels import titles  # noqa: E402
from django_notebooks.notices import OP as NOTICE  # noqa: E402
from tests import live  # noqa: E402
from tests.live import NotebookClient  # noqa: E402

LOOPED_NOTEBOOK = live.ROOT / "tests" / "notebooks" / "whoami.py"
LOOPED_SLUG = "hello"  # tests/settings.py serves whoami.py to anyone here
BRIDGE_LOOPED_PAGE = f"/notebooks/{LOOPED_SLUG}/"
BARE_LOOPED_PAGE = "/hello/"  # bench/bare_marimo.py's second notebook
# marimo's own default: how long a closed tab's kernel waits for a reload.
MARIMO_SESSION_TTL = 120


@dataclass(frozen=True)
class Caps:
    """The bridge's caps on live kernels in this run: MAX_SESSIONS as asked,
    the rest the library's defaults (tests/settings.py lowers
    MAX_SESSIONS_PER_USER to 5: the servers put the default back)."""

    server: int
    anonymous: int
    per_address: int
    per_person: int

    @classmethod
    def with_max_sessions(cls, max_sessions: int) -> Caps:
        defaults = limits.Limits()
        assert defaults.MAX_SESSIONS_PER_ADDRESS is not None
        anonymous = limits.anonymous_share(max_sessions)
        assert anonymous is not None
        return cls(
            server=max_sessions,
            anonymous=anonymous,
            per_address=defaults.MAX_SESSIONS_PER_ADDRESS,
            per_person=conf.KEYS["MAX_SESSIONS_PER_USER"].default,
        )

    def for_one_visitor(self) -> int:
        """The most kernels one anonymous visitor of one address can hold."""
        return min(self.server, self.anonymous, self.per_address, self.per_person)

    def describe(self) -> str:
        return (
            f"MAX_SESSIONS {self.server}, MAX_ANONYMOUS_SESSIONS {self.anonymous} "
            f"(left out: half of MAX_SESSIONS), MAX_SESSIONS_PER_ADDRESS "
            f"{self.per_address}, MAX_SESSIONS_PER_USER {self.per_person}"
        )


@dataclass
class Server:
    """One server under test: the bystander's target and the looped page."""

    target: servers.Target
    looped_page: str
    # Threads one marimo session adds to bare marimo's process (measured).
    threads_per_session: int = 0
    threads_before: int = 0
    memory_before: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def is_bridge(self) -> bool:
        return self.target.login

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.target.server.process.pid)

    def kernels(self) -> list[psutil.Process]:
        """The bridge's kernel processes of the looped notebook."""
        title = titles.kernel(LOOPED_SLUG, "").encode()
        found = []
        for child in self.process.children(recursive=True):
            with contextlib.suppress(OSError, psutil.Error):
                if Path(f"/proc/{child.pid}/cmdline").read_bytes().startswith(title):
                    if child.status() != psutil.STATUS_ZOMBIE:
                        found.append(child)
        return found

    def kernel_count(self) -> int:
        """Kernels of the looped notebook alive now (bare marimo: sessions,
        from the threads its process gained since the loop started)."""
        if self.is_bridge:
            return len(self.kernels())
        gained = self.process.num_threads() - self.threads_before
        return round(gained / max(1, self.threads_per_session))

    def kernel_memory(self) -> tuple[float, float, float]:
        """USS, PSS and RSS in MB: summed over the looped notebook's kernel
        processes (bridge), or what the server process grew by since the
        loop started (bare marimo)."""
        if self.is_bridge:
            total = [0.0, 0.0, 0.0]
            for kernel in self.kernels():
                with contextlib.suppress(psutil.Error):
                    info = kernel.memory_full_info()
                    for index, value in enumerate((info.uss, info.pss, info.rss)):
                        total[index] += value / 2**20
            return total[0], total[1], total[2]
        now = process_memory(self.process)
        before = self.memory_before
        return now[0] - before[0], now[1] - before[1], now[2] - before[2]


def process_memory(process: psutil.Process) -> tuple[float, float, float]:
    info = process.memory_full_info()
    return info.uss / 2**20, info.pss / 2**20, info.rss / 2**20


@dataclass
class Result:
    rounds: int = 0
    ran: int = 0
    refused: list[str] = field(default_factory=list)
    loop_seconds: float = 0.0
    kernels_at_end: int = 0
    kernels_peak: int = 0
    memory: tuple[float, float, float] = (0.0, 0.0, 0.0)
    before_ms: float = 0.0
    bystander_opened: str = ""
    after_ms: float | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = servers.command_parser(__doc__)
    for option, default, meaning in (
        ("--rounds", 0, "sessions opened and closed (100, quick 12)"),
        ("--max-sessions", 20, "the bridge's MAX_SESSIONS (20)"),
        ("--samples", 0, "round trips per median (20, quick 5)"),
    ):
        parser.add_argument(option, type=int, default=default, help=meaning)
    parser.add_argument(
        "--servers", default="uvicorn,daphne", help="bridge servers (uvicorn,daphne)"
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (12 if args.quick else 100)
    args.samples = args.samples or (5 if args.quick else 20)
    args.servers = [kind for kind in args.servers.split(",") if kind]
    return args


def start_servers(
    kinds: list[str], workdir: Path, db: Path, caps: Caps, started: list[Server]
) -> None:
    """Bare marimo and the bridge servers, started in parallel; each lands in
    ``started`` as soon as it listens (whoever stops them finds it there)."""

    def bare() -> None:
        server = servers.BareServer(
            workdir / "bare.log",
            servers.NOTEBOOK,
            session_ttl=MARIMO_SESSION_TTL,
            second_notebook=LOOPED_NOTEBOOK,
        )
        target = servers.Target(
            "bare marimo (uvicorn)", server, servers.BARE_PAGE, login=False
        )
        started.append(Server(target, BARE_LOOPED_PAGE))

    def bridge(kind: str) -> Any:
        def start() -> None:
            server = live.LiveServer(
                kind,
                db,
                workdir / f"bridge-{kind}.log",
                DJANGO_NOTEBOOKS_TEST_ISOLATION="process",
                DJANGO_NOTEBOOKS_TEST_SESSION_TTL=str(MARIMO_SESSION_TTL),
                DJANGO_NOTEBOOKS_TEST_MAX_SESSIONS=str(caps.per_person),
                DJANGO_NOTEBOOKS_TEST_LIMIT_MAX_SESSIONS=str(caps.server),
            )
            target = servers.Target(
                f"bridge {kind}", server, servers.BRIDGE_PAGE, login=True
            )
            started.append(Server(target, BRIDGE_LOOPED_PAGE))

        return start

    errors = servers.in_parallel([bare, *(bridge(kind) for kind in kinds)])
    if errors:
        raise errors[0]
    order = ["bare marimo (uvicorn)", *(f"bridge {kind}" for kind in kinds)]
    started.sort(key=lambda server: order.index(server.name))


async def open_and_close(client: NotebookClient, page: str) -> str | None:
    """One round of the loop: open a session, wait for its first run, close
    the tab. None if the notebook ran; else what refused it."""
    try:
        async with client.kernel(page) as kernel:
            frames = await kernel.read_until_completed(FRAME_TIMEOUT)
    except (websockets.WebSocketException, TimeoutError) as error:
        return f"{type(error).__name__}: {error}"[:120]
    notices = [frame for frame in frames if frame.get("op") == NOTICE]
    return str(notices[0].get("data"))[:120] if notices else None


async def round_trip_ms(session: Session, samples: int) -> float:
    """Median widget round trip (POST to the re-run's ``completed-run``)."""
    return statistics.median([await session.interact() for _ in range(samples)]) * 1000


async def measure(server: Server, args: argparse.Namespace) -> Result:
    result = Result(rounds=args.rounds)
    if server.is_bridge:
        server.target.cookies = [await login_cookies(server.target.url)]
    bystander = Session(server.target)
    threads_idle = server.process.num_threads()
    await bystander.open()
    try:
        await bystander.interact()  # warm
        result.before_ms = await round_trip_ms(bystander, args.samples)
        server.threads_per_session = server.process.num_threads() - threads_idle
        server.threads_before = server.process.num_threads()
        server.memory_before = process_memory(server.process)
        async with NotebookClient(server.target.url) as visitor:
            await visitor.http.get(server.looped_page)  # its visitor cookie
            started = time.monotonic()
            for _ in range(args.rounds):
                refusal = await open_and_close(visitor, server.looped_page)
                if refusal is None:
                    result.ran += 1
                else:
                    result.refused.append(refusal)
                result.kernels_peak = max(result.kernels_peak, server.kernel_count())
            result.loop_seconds = time.monotonic() - started
        result.kernels_at_end = server.kernel_count()
        result.kernels_peak = max(result.kernels_peak, result.kernels_at_end)
        result.memory = server.kernel_memory()
        await bystander_after(server, result, args.samples)
    finally:
        await bystander.close()
    return result


async def bystander_after(server: Server, result: Result, samples: int) -> None:
    """The bystander opens a new session after the loop: whether it could,
    and its round trip there."""
    session = Session(server.target)
    try:
        await session.open()
    except (RuntimeError, websockets.WebSocketException, TimeoutError) as error:
        result.bystander_opened = f"no ({str(error)[:80]})"
        await session.close()
        return
    try:
        result.bystander_opened = "yes"
        result.after_ms = await round_trip_ms(session, samples)
    finally:
        await session.close()


def render(
    results: dict[str, Result],
    caps: Caps,
    args: argparse.Namespace,
    seconds: float,
) -> str:
    lines = [
        f"# Kernel caps benchmark ({datetime.date.today()}, "
        f"{psutil.cpu_count()} cores{', quick' if args.quick else ''})",
        "",
        f"- command: `python bench/caps.py {' '.join(sys.argv[1:])}`".replace(
            "  ", " "
        ),
        f"- load average at the end: {load_average()}; code: {code_revision()}",
        "- versions: "
        + ", ".join(
            f"{name} {package_version(name)}"
            for name in ("marimo", "django", "uvicorn", "daphne")
        ),
        f"- the bridge's caps: {caps.describe()}; one visitor can hold "
        f"{caps.for_one_visitor()}",
        f"- session_ttl {MARIMO_SESSION_TTL} s (marimo's default) on every server",
        "",
        f"## One anonymous client opens and closes {args.rounds} sessions",
        "",
        "| server | ran | refused | loop s | kernels at end | most kernels "
        "| kernels USS MB | PSS MB | RSS MB | bystander opens | round trip "
        "before ms | after ms | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    for name, row in results.items():
        uss, pss, rss = row.memory
        after = "-" if row.after_ms is None else f"{row.after_ms:.1f}"
        ratio = "-" if row.after_ms is None else f"{row.after_ms / row.before_ms:.2f}x"
        lines.append(
            f"| {name} | {row.ran} | {len(row.refused)} | {row.loop_seconds:.1f} "
            f"| {row.kernels_at_end} | {row.kernels_peak} | {uss:.0f} | {pss:.0f} "
            f"| {rss:.0f} | {row.bystander_opened} | {row.before_ms:.1f} | {after} "
            f"| {ratio} |"
        )
    lines += [
        "",
        "Kernels: the bridge's kernel processes of the looped notebook, by "
        "process title; bare marimo's sessions, by the threads its process "
        "gained (one session's threads measured in the same run). Memory: "
        "summed over the bridge's kernel processes; for bare marimo, what its "
        "process grew by during the loop. Bystander: a logged-in user on the "
        "bridge, a second client on bare marimo; round trip = POST "
        "set_ui_element_value to the re-run's completed-run, median of "
        f"{args.samples}, before the loop (a session opened before it) and "
        "after (a session opened after it).",
    ]
    refusals = [f"{n}: {r.refused[0]}" for n, r in results.items() if r.refused]
    if refusals:
        lines += ["", "First refusals: " + "; ".join(refusals)]
    lines += ["", f"Run took {seconds:.0f} s.", ""]
    return "\n".join(lines)


async def run(under_test: list[Server], args: argparse.Namespace) -> dict[str, Result]:
    """One server at a time; each stops once measured (its kernels would
    take the next one's CPU and memory)."""
    results = {}
    for server in under_test:
        results[server.name] = await measure(server, args)
        servers.stop_servers([server.target.server])
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers.stop_on_sigterm()
    clock = time.monotonic()
    caps = Caps.with_max_sessions(args.max_sessions)
    with servers.work_directory("dn-caps-", False, "caps") as workdir:
        db = live.prepare_database(workdir / "db.sqlite3")  # alice
        under_test: list[Server] = []
        with servers.stopping(
            lambda: [(s.name, s.target.server) for s in under_test], "caps"
        ):
            start_servers(args.servers, workdir, db, caps, under_test)
            results = asyncio.run(run(under_test, args))
    text = render(results, caps, args, time.monotonic() - clock)
    return servers.publish(text, args.out)


if __name__ == "__main__":
    servers.command(main)
