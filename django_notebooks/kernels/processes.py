"""The web process's kernel processes: one per notebook session.

A session's kernel process is forked when its websocket first connects
(``forkserver.py``) and serves on a Unix socket the web process made for it
in a private folder. Every ASGI call for the session (its websocket, its
kernel calls, its downloads) is relayed there (``tunnel.py``); calls that
belong to no session (the page, marimo's files) are answered by marimo in
the web process, as in thread mode.

The web process decides when a kernel process ends: when the bridge ends
the session (terminate, revocation, idle) it is terminated; when a cell
runs past ``CELL_TIMEOUT`` it is interrupted, then killed if it does not
stop. Whatever ends it, the session's calls learn why (:class:`KernelEnded`).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import connections

from django_notebooks import notices
from django_notebooks.kernels import tunnel
from django_notebooks.kernels.forking import ForkServer, ForkServerFailed
from django_notebooks.notices import Notice
from django_notebooks.sessions import owners

logger = logging.getLogger(__name__)

# Kernel processes run at this much lower CPU priority than the web server,
# so that a busy cell cannot starve the server's event loop; one whose cell
# has run for long goes lower still (demote()).
NICE_INCREMENT = 10
LOWEST_PRIORITY = 19
# Seconds a terminated kernel process gets before it is killed.
TERMINATE_GRACE = 2.0
# Seconds a call waits for the fork server's word on how a process ended.
EXIT_WAIT = 2.0
LISTEN_BACKLOG = 64
# Seconds a session waits for its kernel process to start (the first one
# waits for the fork server too).
START_TIMEOUT = 90.0
MAX_EARLY_EXITS = 100


class KernelEnded(Exception):
    """The session's kernel process has ended; ``notice`` says why, in the
    page's words."""

    def __init__(self, notice: Notice) -> None:
        super().__init__(notice.text)
        self.notice = notice


@dataclass(eq=False)
class KernelProcess:
    """One session's kernel process, seen from the web process."""

    session_id: str
    socket_path: Path
    started_at: float = field(default_factory=time.time)
    pid: int | None = None
    exit_status: int | None = None
    #: Why the web process ended it, when it did.
    ending: Notice | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    #: Its pid, once the fork server has forked it (any thread, any loop).
    pid_answer: concurrent.futures.Future[int] = field(
        default_factory=concurrent.futures.Future
    )

    @property
    def has_exited(self) -> bool:
        return self.exited.is_set()

    async def started(self) -> int:
        """Its pid, once it has started (``ForkServerFailed`` if it did not).

        A caller that stops waiting does not cancel the start: the websocket
        of the same session may still be waiting for it.
        """
        answer = asyncio.shield(asyncio.wrap_future(self.pid_answer))
        pid = await asyncio.wait_for(answer, START_TIMEOUT)
        self.pid = pid
        return pid

    async def call(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Relay one ASGI call to the process."""
        try:
            await self.started()
        except (ForkServerFailed, TimeoutError) as error:
            logger.error("A notebook's kernel process did not start: %s", error)
            raise KernelEnded(notices.KERNEL_CRASHED) from error
        try:
            await tunnel.call(self._connect, scope, receive, send)
        except (tunnel.TunnelClosed, ConnectionError, FileNotFoundError) as error:
            raise KernelEnded(await self.why_ended()) from error

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(str(self.socket_path))

    async def why_ended(self) -> Notice:
        """What to tell the page about the process's end."""
        if self.ending is None:
            # The fork server's word comes a moment after the socket closed.
            await asyncio.to_thread(self.exited.wait, EXIT_WAIT)
        if self.ending is not None:
            return self.ending
        return notices.KERNEL_CRASHED

    def signal(self, number: int) -> bool:
        """Send it a signal, unless it has ended (its pid may be another
        process's by now)."""
        if self.pid is None or self.has_exited:
            return False
        try:
            os.kill(self.pid, number)
        except ProcessLookupError:
            return False
        return True

    def demote(self) -> None:
        """Run it at the lowest CPU priority from now on: its cell has run
        for long, and the kernels of people waiting on a quick answer come
        first. (An unprivileged server cannot raise a priority again.)"""
        if self.pid is None or self.has_exited:
            return
        # On Linux a priority belongs to a thread, and the cell runs on
        # marimo's kernel thread, not the process's main thread.
        for thread in _threads_of(self.pid):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, thread, LOWEST_PRIORITY)

    def interrupt(self) -> bool:
        """Interrupt the cell it runs (SIGINT; the session lives on)."""
        return self.signal(signal.SIGINT)

    def kill(self, notice: Notice) -> None:
        """End it at once, telling the page ``notice``."""
        self.ending = self.ending or notice
        self.signal(signal.SIGKILL)

    def terminate(self, notice: Notice = notices.ADMIN_ENDED) -> None:
        """End it (the bridge ended the session); killed if it lingers. One
        still starting is ended as soon as it has started."""
        self.ending = self.ending or notice
        if self.signal(signal.SIGTERM):
            timer = threading.Timer(TERMINATE_GRACE, self.signal, (signal.SIGKILL,))
            timer.daemon = True
            timer.start()


def _threads_of(pid: int) -> list[int]:
    """The thread ids of process ``pid`` (Linux), or just ``pid``."""
    try:
        return [int(name) for name in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


class KernelProcesses:
    """This web process's kernel processes, by session id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_session: dict[str, KernelProcess] = {}
        self._by_pid: dict[int, KernelProcess] = {}
        self._directory: Path | None = None
        self._warming = threading.Lock()
        # Exits reported before the pid's answer reached its start (bounded:
        # one whose start gave up is never claimed).
        self._early_exits: dict[int, int] = {}
        self.fork_server = ForkServer(
            on_exit=self._exited, on_stopped=self._fork_server_stopped
        )

    def warm(self) -> None:
        """Start the fork server in the background unless it runs."""
        if self.fork_server.running or self._warming.locked():
            return

        def start() -> None:
            with self._warming:
                try:
                    self.fork_server.ensure_running()
                except ForkServerFailed as error:
                    logger.error("%s", error)

        threading.Thread(
            target=start, name="django-notebooks-warm", daemon=True
        ).start()

    def get(self, session_id: str | None) -> KernelProcess | None:
        """The kernel process of ``session_id``, started or starting, unless
        it has ended."""
        if not session_id:
            return None
        process = self._by_session.get(session_id)
        return None if process is None or process.has_exited else process

    def all(self) -> list[KernelProcess]:
        return [p for p in list(self._by_session.values()) if not p.has_exited]

    async def start(
        self,
        session_id: str,
        *,
        notebook_file: Path,
        options: dict[str, Any],
        memory_mb: int | None,
        session_ttl: float,
    ) -> KernelProcess:
        """Fork a kernel process for a new session (or, when the session's
        websocket came twice at once, wait for the one starting)."""
        starting = self.get(session_id)
        if starting is not None:
            await starting.started()
            return starting
        listener, path = self._listener()
        process = KernelProcess(session_id=session_id, socket_path=path)
        with self._lock:
            self._by_session[session_id] = process
        request = {
            "notebook": str(notebook_file),
            "options": options,
            "memory_mb": memory_mb,
            "session_ttl": session_ttl,
            "nice": NICE_INCREMENT,
            "databases": {
                alias: str(connections.settings[alias]["NAME"])
                for alias in connections.settings
            },
        }
        try:
            try:
                # The first call starts the fork server: not on the event loop.
                await asyncio.to_thread(
                    self.fork_server.fork, request, listener, process.pid_answer
                )
            except BaseException as error:
                process.pid_answer.set_exception(
                    error if isinstance(error, Exception) else ForkServerFailed()
                )
                raise
            finally:
                listener.close()  # the kernel process holds it now
            pid = await process.started()
        except BaseException:
            self._forget(process)
            raise
        with self._lock:
            self._by_pid[pid] = process
            early = self._early_exits.pop(pid, None)
        if early is not None:  # it ended before its pid was known here
            self._exited(pid, early)
        elif process.ending is not None:  # ended while it was starting
            process.terminate(process.ending)
        return process

    def _forget(self, process: KernelProcess) -> None:
        """A process that did not start (or whose start was given up)."""
        with self._lock:
            if self._by_session.get(process.session_id) is process:
                del self._by_session[process.session_id]
        process.exited.set()
        with contextlib.suppress(OSError):
            process.socket_path.unlink()

    def _listener(self) -> tuple[socket.socket, Path]:
        if self._directory is None:
            with self._lock:
                if self._directory is None:
                    # Private to the server's user (mkdtemp makes it 0700).
                    self._directory = Path(tempfile.mkdtemp(prefix="django-notebooks-"))
                    atexit.register(self._remove_directory)
        path = self._directory / f"{secrets.token_hex(8)}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(LISTEN_BACKLOG)
        return listener, path

    def _exited(self, pid: int, status: int) -> None:
        """The fork server says ``pid`` has ended (on its reader thread)."""
        with self._lock:
            process = self._by_pid.pop(pid, None)
            if process is None:
                self._early_exits[pid] = status
                while len(self._early_exits) > MAX_EARLY_EXITS:
                    del self._early_exits[next(iter(self._early_exits))]
                return
            if self._by_session.get(process.session_id) is process:
                del self._by_session[process.session_id]
        # Its place under the caps on sessions is free now.
        owners.bindings.kernel_ended(process.session_id)
        process.exit_status = status
        process.exited.set()
        with contextlib.suppress(OSError):
            process.socket_path.unlink()
        if process.ending is None and os.WIFSIGNALED(status):
            logger.warning(
                "The kernel process of notebook session %s (pid %s) was ended "
                "by signal %s",
                process.session_id,
                pid,
                os.WTERMSIG(status),
            )

    def _fork_server_stopped(self) -> None:
        """The fork server has gone, and its kernel processes with it."""
        with self._lock:
            ended = list(self._by_session.values())
            self._by_session.clear()
            self._by_pid.clear()
        for process in ended:
            owners.bindings.kernel_ended(process.session_id)
            process.exited.set()
            with contextlib.suppress(OSError):
                process.socket_path.unlink()

    def end_sessions(self) -> None:
        """End every kernel process (the fork server stays ready)."""
        for process in self.all():
            process.terminate(notices.SESSION_LOST)

    def _remove_directory(self) -> None:
        """Remove the sockets' folder (at exit; the fork server, seeing its
        web process go, kills the kernel processes that listened there)."""
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


kernel_processes = KernelProcesses()
