"""A kernel process: one notebook session's marimo app, in a process of its
own, forked by the fork server (``forkserver.py``).

It serves the session's ASGI calls (``tunnel.py``) on the listening socket
the web process made for it, and runs the notebook's cells under the
session's limits: a lower CPU priority than the web server, a cap on the
memory it may take, an interrupt on SIGINT (from the web process, when a
cell has run past ``CELL_TIMEOUT``). It ends by itself once its websocket
has been gone for marimo's ``session_ttl``, and when the fork server goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from django_notebooks import notices
from django_notebooks.kernels import cells, tunnel

logger = logging.getLogger(__name__)

# Seconds past marimo's session_ttl before an abandoned kernel process ends
# (marimo closes the session itself at the TTL).
END_GRACE = 1.0
# How often the process looks whether it is still wanted.
WATCH_INTERVAL = 0.5
PR_SET_PDEATHSIG = 1


def warm() -> None:
    """Import, in the fork server, what building and serving an app needs,
    so that each kernel process starts with it already in memory."""
    import marimo._server.asgi  # noqa: F401
    import marimo._server.main  # noqa: F401

    from django_notebooks.marimo import apps, orm  # noqa: F401


def main(request: dict[str, Any], listener: socket.socket) -> NoReturn:
    """Run the kernel process (in the fork server's child, after the fork)."""
    status = 0
    try:
        _die_with_parent()
        _lower_priority(request.get("nice", 0))
        _limit_memory(request.get("memory_mb"))
        _use_databases(request.get("databases", {}))
        asyncio.run(_serve(request, listener))
    except BaseException:
        logger.exception("A notebook's kernel process failed")
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _die_with_parent() -> None:
    """On Linux, the kernel kills this process if the fork server dies, even
    by SIGKILL (elsewhere the fork server kills its children as it exits)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _lower_priority(increment: int) -> None:
    if increment:
        with contextlib.suppress(OSError):
            os.nice(increment)


def memory_in_use() -> int:
    """Bytes of private, writable memory this process holds now (what
    RLIMIT_DATA counts), 0 where the system does not say."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def _limit_memory(megabytes: int | None) -> None:
    """Let notebook code allocate ``megabytes`` more than the kernel process
    holds at its start; past that an allocation fails (MemoryError)."""
    if not megabytes:
        return
    limit = memory_in_use() + megabytes * 1024 * 1024
    kind = (
        resource.RLIMIT_DATA if sys.platform.startswith("linux") else resource.RLIMIT_AS
    )
    if kind == resource.RLIMIT_AS:
        limit += resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(kind, (limit, limit))


def _use_databases(names: dict[str, str]) -> None:
    """Use the databases the web process uses (a test run renames them)."""
    from django.conf import settings

    for alias, name in names.items():
        if alias in settings.DATABASES:
            settings.DATABASES[alias]["NAME"] = name


async def _serve(request: dict[str, Any], listener: socket.socket) -> None:
    from django_notebooks.marimo.apps import notebook_apps

    loop = asyncio.get_running_loop()
    app = notebook_apps.app_for(Path(request["notebook"]), request["options"])
    websockets: set[asyncio.StreamWriter] = set()
    last_seen = loop.time()

    def tell_page(notice: notices.Notice) -> None:
        frame = tunnel.encode({"type": "websocket.send", "text": notice.frame()})
        for writer in websockets:
            writer.write(frame)

    @contextlib.contextmanager
    def watch(scope: dict[str, Any], writer: asyncio.StreamWriter) -> Iterator[None]:
        nonlocal last_seen
        if scope.get("type") != "websocket":
            yield
            return
        websockets.add(writer)
        try:
            yield
        finally:
            websockets.discard(writer)
            last_seen = loop.time()

    def out_of_memory() -> None:  # on the kernel thread
        loop.call_soon_threadsafe(tell_page, notices.OUT_OF_MEMORY)

    cells.on_memory_error = out_of_memory
    loop.add_signal_handler(signal.SIGINT, cells.interrupt)
    loop.add_signal_handler(signal.SIGTERM, os._exit, 0)
    server = await asyncio.start_unix_server(
        lambda reader, writer: tunnel.serve_call(app, reader, writer, watch),
        sock=listener,
    )
    keep = request["session_ttl"] + END_GRACE
    async with server:
        while websockets or loop.time() - last_seen < keep:
            await asyncio.sleep(WATCH_INTERVAL)
