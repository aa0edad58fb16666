"""A kernel process: one notebook session's marimo app, in a process of its
own, forked by the kernel host (``forkserver.py``).

It serves the session's ASGI calls (``tunnel.py``) on the listening socket
its kernel host made for it, and runs the notebook's cells under the
session's limits: a lower CPU priority than the web server, a cap on the
memory it may take, an interrupt on ``SIGINT`` (from its kernel host, when
a cell has run past ``CELL_TIMEOUT``). It is a process group of its own
(and a cgroup's, where there are cgroups), so that its parent ends
whatever its cells started together with it. It tells its parent when a
cell starts and ends, and answers its pings, on its status channel. It
ends by itself once its websocket has been gone for marimo's
``session_ttl``, and when the kernel host goes.

This code runs only in the kernel processes: the test suite's in-process
coverage does not see it; tests/e2e/test_isolation.py runs it.
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

from django_notebooks.kernels import cells, cgroups, pre_run, titles, tunnel, wire

logger = logging.getLogger(__name__)

# Seconds past marimo's session_ttl before an abandoned kernel process ends
# (marimo closes the session itself at the TTL).
PAST_TTL = 1.0
WARM_NOTEBOOK = Path(__file__).with_name("warm_notebook.py")
WARM_UP_TIMEOUT = 30.0
WARM_UP_SESSION = "django-notebooks-warm-up"
# How often the process looks whether it is still wanted.
WATCH_INTERVAL = 0.5
PR_SET_PDEATHSIG = 1
# Kernel processes run at this much lower CPU priority than the web server,
# so that a busy cell cannot starve the server's event loop (the kernel host
# lowers one whose cell runs long further, to the lowest).
NICE_INCREMENT = 10
# Address space a kernel process may map beyond what it holds at its start
# and MEMORY_MB (RLIMIT_AS counts what is reserved, not only what is used):
# the stacks and malloc arenas of the threads marimo starts for a session,
# libraries loaded on first use.
ADDRESS_SPACE_MARGIN_MB = 256
# marimo's threads would each reserve a malloc arena of 64 MB of address
# space; two are enough for one session.
MALLOC_ARENAS = 2
M_ARENA_MAX = -8


# This kernel's notebook slug and session id (a spare's session comes later:
# wire.Assigned), for the titles of what its cells start.
_session: list[str] = ["", ""]


class WarmUpFailed(RuntimeError):
    """The kernel host's warm-up session left threads running."""


def warm(*, run_session: bool = True) -> None:
    """Get the kernel host ready, so that each kernel process starts with
    what a session needs already in memory.

    marimo does much of its work on first use in a process: imports, the
    scan of installed entry points, building its Markdown renderer,
    resolving its message types. A kernel process doing all of it took
    about 170 ms more for its first run than the next session in the same
    process would. So the kernel host runs one session of a small notebook
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
        "query_string": f"session_id={WARM_UP_SESSION}".encode(),
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


async def _warm_up_as_spare() -> None:
    """A spare kernel (forked ahead, for no session yet) runs a session of
    the warm-up notebook, so that the session it is given starts in a
    process that has run one: marimo's first-session work is done, and the
    pages of its host's memory that a session writes to are its own
    already (copy on write), off the session's path."""
    from django_notebooks.marimo.apps import notebook_apps

    app = notebook_apps.app_for(WARM_NOTEBOOK, {"quiet": True})
    try:
        await asyncio.wait_for(_warm_up_session(app), WARM_UP_TIMEOUT)
    except Exception as error:  # slower to start, that is all
        logger.warning("A spare kernel's warm-up failed: %r", error)
    _close_session(WARM_NOTEBOOK, WARM_UP_SESSION)


def _close_session(notebook: Path, session_id: str) -> None:
    """Close a session of a spare's own (its warm-up, a pre-run it gave up)."""
    from django_notebooks.marimo import internals
    from django_notebooks.marimo.apps import notebook_apps

    manager = notebook_apps.session_manager_for(notebook)
    if manager is not None:
        internals.close_session(manager, session_id)


def prepare(fork: wire.Fork) -> None:
    """In the kernel host, before it forks the kernel process for ``fork``:
    build the notebook's marimo app (once per notebook and options; marimo
    reads the notebook file again for each session), so that the kernel
    process finds it built. Building starts no thread."""
    from django_notebooks.marimo.apps import notebook_apps

    notebook_apps.app_for(Path(fork.notebook), fork.options)
    # What is in memory now stays as it is: the kernel processes' garbage
    # collector would otherwise touch, and so copy, all of it.
    gc.freeze()


def run(
    fork: wire.Fork,
    *,
    parent: int,
    listener: socket.socket,
    status: socket.socket,
    output: int | None,
    cgroup: Path | None,
    memory_by_cgroup: bool,
    inherited: list[int],
) -> NoReturn:
    """Be the kernel process (in the kernel host's child, right after the
    fork; the kernel host's guard ends the process if this ever returns).

    ``parent`` is the kernel host's pid, taken before the fork; ``output``
    the pipe for what notebook code prints (``None``: thrown away);
    ``inherited``: the kernel host's descriptors, closed here.
    """
    _die_with_parent(parent)
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    # Its own process group (its parent sets it too, whichever runs first),
    # and its own cgroup: what its cells start ends with it.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if cgroup is not None:
        with contextlib.suppress(OSError):
            cgroups.join(cgroup)
    _session[:] = [fork.slug, fork.session_id]
    titles.set_title(
        titles.kernel(fork.slug, fork.session_id)
        if fork.session_id
        else titles.spare(fork.slug)
    )
    os.register_at_fork(
        after_in_child=lambda: titles.set_title(titles.started_by_cell(*_session))
    )
    _redirect_output(output)
    with contextlib.suppress(OSError):
        os.nice(NICE_INCREMENT)
    _limit_memory(fork.memory_mb, address_space=not memory_by_cgroup)
    cells.reporter = _StatusReporter(status)
    asyncio.run(_serve(fork, listener, status))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _die_with_parent(parent: int) -> None:
    """On Linux, the kernel kills this process if the kernel host dies, even
    by SIGKILL (elsewhere the kernel host kills its children as it exits).
    ``parent``: the kernel host's pid, taken before the fork."""
    if sys.platform.startswith("linux"):
        # The process's own symbols include libc's (find_library would run
        # ldconfig, a subprocess, on every start).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _redirect_output(output: int | None) -> None:
    """Send what notebook code (and anything it starts) prints to
    ``output``, or nowhere; the bridge's own log lines keep going to the
    server's log."""
    server_log = os.fdopen(os.dup(2), "w", buffering=1)
    for handler in _stream_handlers():
        if _fileno(handler.stream) in (1, 2):
            handler.setStream(server_log)
    target = output if output is not None else os.open(os.devnull, os.O_WRONLY)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def _stream_handlers() -> Iterator[logging.StreamHandler[Any]]:
    """The handlers of the root logger and of Django's and the bridge's
    loggers (not marimo's: its log in a kernel is the notebook's)."""
    loggers: list[Any] = [logging.getLogger()]
    for name, found in logging.Logger.manager.loggerDict.items():
        if name.startswith("django") and isinstance(found, logging.Logger):
            loggers.append(found)
    for found in loggers:
        for handler in found.handlers:
            if isinstance(handler, logging.StreamHandler):
                yield handler


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def memory_in_use() -> tuple[int, int]:
    """Bytes of private writable memory (what RLIMIT_DATA counts) and of
    address space (what RLIMIT_AS counts) this process holds now; zeros
    where the system does not say."""
    found = {"VmData:": 0, "VmSize:": 0}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            name = line.split(":", 1)[0] + ":"
            if name in found:
                found[name] = int(line.split()[1]) * 1024
    return found["VmData:"], found["VmSize:"]


def _limit_memory(megabytes: int | None, *, address_space: bool) -> None:
    """Let notebook code allocate ``megabytes`` more than the kernel process
    holds at its start; past that an allocation fails (``MemoryError``, or
    ``OSError(ENOMEM)`` for a mapping).

    ``RLIMIT_DATA`` counts private memory exactly; shared mappings
    (``mmap(-1, n)``, ``multiprocessing.shared_memory``) escape it, so
    unless a cgroup limits the memory (``address_space`` false),
    ``RLIMIT_AS`` caps everything the process maps, with a margin for
    the address space that threads reserve.
    """
    if not megabytes:
        return
    data, size = memory_in_use()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        limit = data + megabytes * 1024 * 1024
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if address_space or not sys.platform.startswith("linux"):
        limit = size + (megabytes + ADDRESS_SPACE_MARGIN_MB) * 1024 * 1024
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class _StatusReporter:
    """The kernel's side of its status channel: cells started and ended
    (from the kernel thread) and answers to pings (from the event loop)."""

    def __init__(self, status: socket.socket) -> None:
        self.status = status
        self._lock = threading.Lock()

    def send(self, sent: Any) -> None:
        with self._lock, contextlib.suppress(OSError):
            wire.send(self.status, sent)

    def started(self) -> None:
        self.send(wire.CellStarted())

    def ended(self, *, interrupted: bool, out_of_memory: bool) -> None:
        self.send(wire.CellEnded(interrupted, out_of_memory))


async def _serve(
    fork: wire.Fork, listener: socket.socket, status: socket.socket
) -> None:
    from django_notebooks import context
    from django_notebooks.marimo.apps import notebook_apps

    loop = asyncio.get_running_loop()
    # Built already, by the kernel host (prepare()): found in its cache.
    marimo_app = notebook_apps.app_for(Path(fork.notebook), fork.options)
    # A spare of a notebook that does not read its visitor runs it now.
    ahead = (
        pre_run.PreRun(
            marimo_app, lambda: _close_session(Path(fork.notebook), pre_run.SESSION_ID)
        )
        if fork.pre_run and not fork.session_id
        else None
    )
    # A call through another web process than the one holding the websocket
    # runs with the websocket's request (context.SESSIONS_REQUEST).
    app = context.SessionsRequest(ahead or marimo_app)
    websockets = 0
    last_seen = loop.time()
    parent_gone = asyncio.Event()
    # A spare (no session yet) waits for one however long its host keeps it.
    has_session = asyncio.Event()
    if fork.session_id:
        has_session.set()
    reporter = cells.reporter
    assert isinstance(reporter, _StatusReporter)
    decoder = wire.Decoder()

    def answer_pings() -> None:
        try:
            data = status.recv(wire.READ_SIZE, socket.MSG_DONTWAIT)
            messages = decoder.feed(data) if data else None
        except BlockingIOError:
            return
        except (OSError, wire.WireError):
            messages = None
        if messages is None:  # the kernel host has gone
            loop.remove_reader(status.fileno())
            parent_gone.set()
            return
        for message in messages:
            if isinstance(message, wire.Ping):
                reporter.send(wire.Pong(message.number))
            elif isinstance(message, wire.Assigned):
                assign(message)

    def assign(assigned: wire.Assigned) -> None:
        """A spare is a session's kernel now: its page is on its way."""
        nonlocal last_seen
        _session[1] = assigned.session_id
        titles.set_title(titles.kernel(fork.slug, assigned.session_id))
        last_seen = loop.time()
        has_session.set()

    @contextlib.contextmanager
    def watch(scope: dict[str, Any]) -> Iterator[None]:
        nonlocal websockets, last_seen
        if scope.get("type") != "websocket":
            yield
            return
        websockets += 1
        if websockets == 1:
            reporter.send(wire.PageOpened())
        try:
            yield
        finally:
            websockets -= 1
            last_seen = loop.time()
            if not websockets:
                reporter.send(wire.PageClosed())

    loop.add_reader(status.fileno(), answer_pings)
    loop.add_signal_handler(signal.SIGINT, cells.interrupt)
    loop.add_signal_handler(signal.SIGTERM, os._exit, 0)
    server = await asyncio.start_unix_server(
        lambda reader, writer: tunnel.serve_call(app, reader, writer, watch),
        sock=listener,
    )
    if ahead is not None:
        ahead.start()
    elif not fork.session_id:
        await _warm_up_as_spare()
    keep = fork.session_ttl + PAST_TTL
    try:
        while not parent_gone.is_set() and (
            websockets or not has_session.is_set() or loop.time() - last_seen < keep
        ):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(parent_gone.wait(), WATCH_INTERVAL)
    finally:
        # Not wait_closed(): since Python 3.12 it waits for every connection
        # to close, and web processes keep theirs open between calls. The
        # process ends next: its connections go with it.
        server.close()
