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
import gc
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from django_notebooks import notices
from django_notebooks.kernels import cells, tunnel

logger = logging.getLogger(__name__)

# Seconds past marimo's session_ttl before an abandoned kernel process ends
# (marimo closes the session itself at the TTL).
END_GRACE = 1.0
WARM_NOTEBOOK = Path(__file__).with_name("warm_notebook.py")
WARM_UP_TIMEOUT = 30.0
# How often the process looks whether it is still wanted.
WATCH_INTERVAL = 0.5
PR_SET_PDEATHSIG = 1


class WarmUpFailed(RuntimeError):
    """The fork server's warm-up session left threads running."""


def warm(*, run_session: bool = True) -> None:
    """Get the fork server ready, so that each kernel process starts with
    what a session needs already in memory.

    marimo does much of its work on first use in a process: imports, the
    scan of installed entry points, building its Markdown renderer,
    resolving its message types. A kernel process doing all of it took
    about 170 ms more for its first run than the next session in the same
    process would. So the fork server runs one session of a small notebook
    of its own, then closes it and waits for its threads to end: a process
    may fork only while no other thread runs.
    """
    import marimo._server.asgi  # noqa: F401
    import marimo._server.main  # noqa: F401

    from django_notebooks.marimo import apps, orm  # noqa: F401

    if not run_session:
        return
    app = apps.notebook_apps.app_for(WARM_NOTEBOOK, {"quiet": True})
    try:
        asyncio.run(asyncio.wait_for(_warm_up_session(app), WARM_UP_TIMEOUT))
    finally:
        apps.notebook_apps.close_all_sessions()
    deadline = time.monotonic() + WARM_UP_TIMEOUT
    while threading.active_count() > 1:
        if time.monotonic() > deadline:
            names = [thread.name for thread in threading.enumerate()]
            raise WarmUpFailed(f"threads still running after the warm-up: {names}")
        time.sleep(0.01)


async def _warm_up_session(app: Any) -> None:
    """One session of the warm-up notebook, to its first completed run."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    ran = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if '"completed-run"' in (message.get("text") or ""):
            ran.set()

    scope = {
        "type": "websocket",
        "path": "/ws",
        "root_path": "",
        "query_string": b"session_id=django-notebooks-warm-up",
        "headers": [(b"host", b"localhost")],
        "user": {"username": "", "is_authenticated": False, "display_name": ""},
        "meta": {},
    }
    session = asyncio.create_task(app(scope, inbox.get, send))
    try:
        await ran.wait()
    finally:
        await inbox.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait({session}, timeout=5)
        session.cancel()


def prepare(request: dict[str, Any]) -> None:
    """In the fork server, before it forks the kernel process for
    ``request``: build the notebook's marimo app (once per notebook and
    options; marimo reads the notebook file again for each session), so
    that the kernel process finds it built. Building starts no thread."""
    from django_notebooks.marimo.apps import notebook_apps

    notebook_apps.app_for(Path(request["notebook"]), request["options"])
    # What is in memory now stays as it is: the kernel processes' garbage
    # collector would otherwise touch, and so copy, all of it.
    gc.freeze()


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
    # The process's own symbols include libc's (find_library would run
    # ldconfig, a subprocess, on every start).
    libc = ctypes.CDLL(None, use_errno=True)
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
    # Built already, by the fork server (prepare()): found in its cache.
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
