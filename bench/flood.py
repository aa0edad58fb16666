#!/usr/bin/env python
"""Benchmark: what a misbehaving websocket client makes the web process
hold, the bridge (uvicorn and daphne, kernels in processes) next to bare
marimo, on this machine, in one run.

    python bench/flood.py                 # full run, about a minute
    python bench/flood.py --quick         # smoke run
    python bench/flood.py --out flood.md

Two clients, each on a session of tests/notebooks/outputs.py:

- **a flood**: the client sends 60 KiB text frames as fast as it can, for
  ``--seconds`` or until the server closes the socket;
- **a client that does not read**: it asks the notebook for ``--outputs``
  outputs of 900 KB (Daphne sends no frame over 1 MiB) and reads nothing.

For each server: the web process's resident memory (RSS) before, at its
peak (sampled every 0.1 s) and after (a second later; half a second in
``--quick``), and whether and when the server closed the socket (and with
which code, for the flood). The bridge runs
with ``WEBSOCKET_READ_TIMEOUT`` = ``--read-timeout`` and the default
``MAX_UNREAD_WEBSOCKET_BYTES`` (4 MiB). Bare marimo runs its kernels as
threads of the web process, so what its kernel holds is in its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from bench.servers import (  # noqa: E402
    BareServer,
    command,
    command_parser,
    in_parallel,
    publish,
    stop_on_sigterm,
    stopping,
    work_directory,
)
from tests import live  # noqa: E402
from tests.live import NotebookClient  # noqa: E402

NOTEBOOK = live.ROOT / "tests" / "notebooks" / "outputs.py"
FLOOD_FRAME = "x" * (60 * 1024)
OUTPUT_KB = 900
NOT_READING_LOG = "the page read nothing for"
KINDS = ("bare", "uvicorn", "daphne")


@dataclass
class Server:
    kind: str  # one of KINDS
    name: str
    server: Any
    page: str
    login: bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__)
    parser.add_argument("--seconds", type=float, default=0, help="flood length (12)")
    parser.add_argument(
        "--outputs", type=int, default=0, help="outputs the non-reader is sent (300)"
    )
    parser.add_argument(
        "--read-timeout", type=int, default=0, help="the bridge's read timeout (5 s)"
    )
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (1 if args.quick else 12)
    args.read_timeout = args.read_timeout or (2 if args.quick else 5)
    args.outputs = args.outputs or (40 if args.quick else 300)
    return args


def start(kind: str, workdir: Path, db: Path, read_timeout: int) -> Server:
    if kind == "bare":
        bare = BareServer(workdir / "bare.log", NOTEBOOK, session_ttl=5)
        return Server(kind, "bare marimo (uvicorn)", bare, "/square/", login=False)
    server = live.LiveServer(
        kind,
        db,
        workdir / f"bridge-{kind}.log",
        DJANGO_NOTEBOOKS_TEST_OUTPUTS="1",
        DJANGO_NOTEBOOKS_TEST_ISOLATION="process",
        DJANGO_NOTEBOOKS_TEST_SESSION_TTL="5",
        DJANGO_NOTEBOOKS_TEST_WEBSOCKET_READ_TIMEOUT=str(read_timeout),
    )
    return Server(kind, f"bridge {kind}", server, "/notebooks/outputs/", login=True)


def start_all(
    workdir: Path, db: Path, read_timeout: int, servers: list[Server]
) -> None:
    """Every server, started in parallel; each lands in ``servers`` as soon
    as it listens (whoever stops them finds it there), in KINDS order at the
    end."""

    def starter(kind: str) -> Callable[[], None]:
        return lambda: servers.append(start(kind, workdir, db, read_timeout))

    errors = in_parallel([starter(kind) for kind in KINDS])
    if errors:
        raise errors[0]
    servers.sort(key=lambda server: KINDS.index(server.kind))


def rss_mb(server: Server) -> float:
    return psutil.Process(server.server.process.pid).memory_info().rss / 2**20


class Peak:
    """The web process's RSS, sampled in the background."""

    def __init__(self, server: Server, settle: float) -> None:
        self.server = server
        self.settle = settle
        self.before = self.peak = rss_mb(server)
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb(self.server))
            await asyncio.sleep(0.1)

    async def stop(self) -> tuple[float, float, float]:
        """Before, peak and (``settle`` seconds later) after, in MB."""
        await asyncio.sleep(self.settle)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        after = rss_mb(self.server)
        return self.before, max(self.peak, after), after


@contextlib.asynccontextmanager
async def session(server: Server):
    async with NotebookClient(server.server.url) as client:
        if server.login:
            await client.login("alice")
        else:
            await client.http.get(server.page)
        async with client.kernel(server.page) as kernel:
            await kernel.read_until_completed()
            yield kernel


async def flood(server: Server, seconds: float, settle: float) -> dict[str, Any]:
    async with session(server) as kernel:
        memory = Peak(server, settle)
        sent, code, closed_after = 0, None, None
        started = time.monotonic()
        try:
            while time.monotonic() - started < seconds:
                await kernel.websocket.send(FLOOD_FRAME)
                sent += 1
                await asyncio.sleep(0)  # let the client see a close
        except websockets.ConnectionClosed as error:
            closed_after = time.monotonic() - started
            code = error.rcvd.code if error.rcvd else None
        before, peak, after = await memory.stop()
    return {
        "sent": f"{sent} ({sent * len(FLOOD_FRAME) / 2**20:.0f} MB)",
        "closed": "no" if closed_after is None else f"{closed_after:.2f} s, {code}",
        "memory": (before, peak, after),
    }


async def not_reading(
    server: Server, outputs: int, wait: float, settle: float
) -> dict[str, Any]:
    async with session(server) as kernel:
        log_start = len(server.server.log())
        memory = Peak(server, settle)
        count_id, size_id = kernel.ui_element_ids()[:2]
        for widget, value in ((size_id, OUTPUT_KB), (count_id, outputs)):
            response = await kernel.set_ui_value(widget, value)
            assert response.status_code == 200, response.text
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < wait:
            if NOT_READING_LOG in server.server.log()[log_start:]:
                closed_after = time.monotonic() - started
                break
            await asyncio.sleep(0.1)
        before, peak, after = await memory.stop()
        # It hangs up without a closing handshake: the server's close frame
        # waits behind the frames it never read (websockets would wait 10 s).
        kernel.websocket.transport.abort()
    return {
        "asked": f"{outputs} x {OUTPUT_KB} KB",
        "closed": "no" if closed_after is None else f"{closed_after:.1f} s",
        "memory": (before, peak, after),
    }


def render(
    floods: dict[str, dict], readers: dict[str, dict], args: argparse.Namespace
) -> str:
    def mb(values: tuple[float, float, float]) -> str:
        before, peak, after = values
        return f"{before:.0f} | {peak:.0f} (+{peak - before:.1f}) | {after:.0f}"

    lines = [
        f"# Websocket flood benchmark ({datetime.date.today()}, "
        f"{psutil.cpu_count()} cores{', quick' if args.quick else ''})",
        "",
        f"## A client sends 60 KiB frames for {args.seconds:g} s",
        "",
        "| server | frames sent | closed after, code | RSS MB before | peak | after |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in floods.items():
        lines.append(
            f"| {name} | {row['sent']} | {row['closed']} | {mb(row['memory'])} |"
        )
    lines += [
        "",
        "## A client that reads nothing while the notebook sends outputs",
        "",
        f"The bridge's read timeout: {args.read_timeout} s.",
        "",
        "| server | outputs | closed after | RSS MB before | peak | after |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in readers.items():
        lines.append(
            f"| {name} | {row['asked']} | {row['closed']} | {mb(row['memory'])} |"
        )
    return "\n".join(lines) + "\n"


async def run(servers: list[Server], args: argparse.Namespace) -> tuple[dict, dict]:
    floods, readers = {}, {}
    # How long bare marimo (which never closes) gets to close the non-reader,
    # and how long after each client the web process's RSS is read again.
    wait = args.read_timeout + (2 if args.quick else 20)
    settle = 0.5 if args.quick else 1.0
    for server in servers:
        floods[server.name] = await flood(server, args.seconds, settle)
    for server in servers:
        readers[server.name] = await not_reading(server, args.outputs, wait, settle)
    return floods, readers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    clock = time.monotonic()
    with work_directory("dn-flood-", False, "flood") as workdir:
        db = live.prepare_database(workdir / "db.sqlite3")  # alice
        servers: list[Server] = []
        with stopping(lambda: [(s.name, s.server) for s in servers], "flood"):
            start_all(workdir, db, args.read_timeout, servers)
            floods, readers = asyncio.run(run(servers, args))
    text = render(floods, readers, args)
    text += f"\nRun took {time.monotonic() - clock:.0f} s.\n"
    return publish(text, args.out)


if __name__ == "__main__":
    command(main)
