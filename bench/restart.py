#!/usr/bin/env python
"""Benchmark: a restart of the web server under load. Open sessions, each
with a widget moved; SIGTERM the server and start it again; how long until
every page is back on a kernel, and whether it is its own, as it was.

    python bench/restart.py                 # 20 sessions, both servers
    python bench/restart.py --quick         # smoke run
    python bench/restart.py --sessions 40 --out restart.md

Side by side, in one run, for uvicorn and daphne: kernels kept by the
kernel host for a grace period (``KERNEL_HOST_GRACE = 60``, the default),
and kernels that end with the server (``0``, how every restart went before
the kernel host). Each session is a page of tests/notebooks/kept.py, whose
output shows the value of its first slider, set to a value of its own
before the restart, and its kernel's pid.

After the new server listens, every page reconnects its websocket at once
with its session id, as marimo's frontend does (the frontend itself waits
up to 10 s between attempts: that wait is the browser's, not the server's,
and is left out). A page is back when a change of its second slider comes
back as output; it is "as it was" when that output shows its own value of
the first slider and the same kernel pid. Reported: the pages back, those as
they were, and the seconds from the server listening until the last (and
the median) page is back; and how long the server took to stop and to
listen again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository

from bench import servers  # noqa: E402
from bench.report import code_revision, load_average, package_version  # noqa: E402
from tests.live import (  # noqa: E402
    USERS,
    KernelSession,
    LiveServer,
    NotebookClient,
    end_kernel_host,
)

PAGE = "/notebooks/kept/"
PID = re.compile(r"kept=(\d+) moved=(\d+) pid=(\d+)")
FRAME_TIMEOUT = 60.0
PEOPLE = list(USERS)  # four logins; sessions are shared out among them


@dataclass
class Page:
    """One open notebook page: its login, session and what it showed."""

    client: NotebookClient
    session_id: str
    kept: int
    pid: int = 0
    widgets: tuple[str, str] = ("", "")
    back_after: float | None = None
    as_it_was: bool = False


def server_env(grace: int, sessions: int) -> dict[str, str]:
    return {
        "DJANGO_NOTEBOOKS_TEST_KEPT": "1",
        "DJANGO_NOTEBOOKS_TEST_ISOLATION": "process",
        "DJANGO_NOTEBOOKS_TEST_SESSION_TTL": "600",
        "DJANGO_NOTEBOOKS_TEST_HOST_GRACE": str(grace),
        "DJANGO_NOTEBOOKS_TEST_MAX_SESSIONS": str(sessions),
    }


async def output(kernel: KernelSession, wanted: Any) -> re.Match[str]:
    """The first output (from now) that ``wanted(match)`` accepts."""
    deadline = time.monotonic() + FRAME_TIMEOUT
    while True:
        frame = await kernel.recv(max(deadline - time.monotonic(), 0.001))
        data = ((frame.get("data") or {}).get("output") or {}).get("data")
        if frame.get("op") == "cell-op" and isinstance(data, str):
            kernel.outputs.append(data)
            match = PID.search(data)
            if match and wanted(match):
                return match


async def open_page(page: Page, stack: contextlib.AsyncExitStack) -> None:
    kernel = await stack.enter_async_context(page.client.kernel(PAGE))
    page.session_id = kernel.session_id
    await kernel.read_until_completed()
    kept, moved = kernel.ui_element_ids()
    page.widgets = (kept, moved)
    page.pid = int(PID.findall("".join(kernel.outputs))[-1][2])
    response = await kernel.set_ui_value(kept, page.kept)
    assert response.status_code == 200, response.text
    await output(kernel, lambda match: int(match[1]) == page.kept)


async def come_back(page: Page, listening: float) -> None:
    """Reconnect the page and change its second slider; when it came back."""
    try:
        async with page.client.kernel(PAGE, page.session_id) as kernel:
            response = await kernel.set_ui_value(page.widgets[1], 9)
            if response.status_code != 200:
                # A new kernel (its page would say "started again") must run
                # first: the frontend does so, then the change goes through.
                await kernel.read_until_completed(FRAME_TIMEOUT)
                kept, moved = kernel.ui_element_ids()[-2:]
                response = await kernel.set_ui_value(moved, 9)
            match = await output(kernel, lambda match: match[2] == "9")
            page.back_after = time.monotonic() - listening
            page.as_it_was = int(match[1]) == page.kept and int(match[3]) == page.pid
    except Exception as error:  # a page that does not come back is counted
        print(f"[restart] a page did not come back: {error!r}", file=sys.stderr)


async def one_restart(kind: str, grace: int, sessions: int, workdir: Path) -> dict:
    db = servers.prepare_users(workdir, 0)
    env = server_env(grace, sessions)
    server = LiveServer(kind, db, workdir / f"{kind}-{grace}-first.log", **env)
    again: LiveServer | None = None
    hosts: list[int] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(NotebookClient(server.url))
                for _ in PEOPLE
            ]
            for person, client in zip(PEOPLE, clients, strict=True):
                await client.login(person)
            pages = [
                Page(clients[index % len(clients)], "", kept=1 + index % 10)
                for index in range(sessions)
            ]
            async with contextlib.AsyncExitStack() as open_pages:
                await asyncio.gather(*(open_page(p, open_pages) for p in pages))
                hosts = server.kernel_hosts()
                stopping = time.monotonic()
                server.stop()
                stopped = time.monotonic() - stopping
            starting = time.monotonic()
            again = LiveServer(
                kind, db, workdir / f"{kind}-{grace}-again.log", port=server.port, **env
            )
            listening = time.monotonic()
            await asyncio.gather(*(come_back(page, listening) for page in pages))
    finally:
        server.stop()
        if again is not None:
            again.stop()
        for host in hosts:
            end_kernel_host(host)
    back = [page.back_after for page in pages if page.back_after is not None]
    return {
        "sessions": sessions,
        "back": len(back),
        "as_it_was": sum(page.as_it_was for page in pages),
        "last_back": max(back) if back else None,
        "median_back": statistics.median(back) if back else None,
        "stop": stopped,
        "listen": listening - starting,
    }


def report(results: dict[tuple[str, int], dict], sessions: int) -> str:
    lines = [
        "# Restart under load",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"marimo {package_version('marimo')}, django_notebooks at {code_revision()}, "
        f"load average {load_average()}; {sessions} open sessions, each with "
        "a widget moved; SIGTERM, then the server started again on its port.",
        "",
        "| server | kernels | pages back | as they were | last back (s) "
        "| median (s) | stop (s) | listen (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (kind, grace), result in results.items():
        kept = f"kept ({grace} s grace)" if grace else "end with the server"
        lines.append(
            f"| {kind} | {kept} | {result['back']}/{result['sessions']} "
            f"| {result['as_it_was']}/{result['sessions']} "
            f"| {_seconds(result['last_back'])} | {_seconds(result['median_back'])} "
            f"| {result['stop']:.1f} | {result['listen']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> int:
    parser = servers.command_parser(__doc__ or "")
    parser.add_argument(
        "--sessions", type=int, help="open sessions (default 20, quick 4)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the server logs")
    args = parser.parse_args()
    sessions = args.sessions or (4 if args.quick else 20)
    kinds = ["uvicorn"] if args.quick else ["uvicorn", "daphne"]
    servers.stop_on_sigterm()
    results = {}
    with servers.work_directory("bench-restart-", args.keep, "restart") as workdir:
        for kind in kinds:
            for grace in (60, 0):
                folder = workdir / f"{kind}-{grace}"
                folder.mkdir()
                results[kind, grace] = asyncio.run(
                    one_restart(kind, grace, sessions, folder)
                )
    return servers.publish(report(results, sessions), args.out)


if __name__ == "__main__":
    servers.command(main)
