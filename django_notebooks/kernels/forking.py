"""The web process's handle on its fork server (``forkserver.py``): one
process per web process that forks a kernel process for each notebook
session.

Forking the web process itself would copy its threads' half-held locks and
open database connections into the child. Starting a fresh interpreter per
session costs about a second and 50 MB. So the web process starts a fork
server once, as a new interpreter (no threads, no connections); it imports
Django, marimo and the bridge, and then forks a ready kernel process in a
few milliseconds whenever asked (``multiprocessing``'s forkserver works the
same way).

The two talk over a socket pair: requests to fork (with the session's
listening socket passed along), answers with the new pid, and a message
when a kernel process ends. When the web process goes, even killed, the
socket closes, and the fork server kills its kernel processes and exits.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import marshal
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from django_notebooks.kernels import tunnel

logger = logging.getLogger(__name__)

SERVER_MODULE = "django_notebooks.kernels.forkserver"
LENGTH = tunnel.LENGTH
# Seconds the web process waits for the fork server to import everything.
START_TIMEOUT = 60.0


class ForkServerFailed(RuntimeError):
    """The fork server could not start, or has stopped."""


# The wire: the tunnel's frames (a length, then a marshalled dict); a passed
# file descriptor travels with the length's bytes.


def send_message(
    sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None
) -> None:
    frame = tunnel.encode(message)
    if fds:
        socket.send_fds(sock, [frame[: LENGTH.size]], fds)
        sock.sendall(frame[LENGTH.size :])
    else:
        sock.sendall(frame)


def receive_message(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and the descriptors passed with it; ``None`` once the
    other end has closed (or gone: a reset is an end too)."""
    try:
        header, fds, _flags, _address = socket.recv_fds(sock, LENGTH.size, 4)
    except ConnectionError:
        return None, []
    while header and len(header) < LENGTH.size:
        more = sock.recv(LENGTH.size - len(header))
        if not more:
            break
        header += more
    if len(header) < LENGTH.size:
        return None, fds
    (length,) = LENGTH.unpack(header)
    data = b""
    while len(data) < length:
        try:
            chunk = sock.recv(length - len(data))
        except ConnectionError:
            chunk = b""
        if not chunk:
            return None, fds
        data += chunk
    return marshal.loads(data), fds


# The web process's side.


def _settle(answer: concurrent.futures.Future[int], outcome: int | Exception) -> None:
    """Give a fork's waiter its pid or error. One that stopped waiting (a
    cancelled asyncio wrapper cancels the future too) has its process ended:
    no session will ever use it."""
    if not answer.set_running_or_notify_cancel():
        if not isinstance(outcome, Exception):
            with contextlib.suppress(OSError):
                os.kill(outcome, signal.SIGTERM)
        return
    if isinstance(outcome, Exception):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)


class ForkServer:
    """The web process's handle on its fork server (started on first use)."""

    def __init__(
        self,
        on_exit: Callable[[int, int], None],
        on_stopped: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_exit = on_exit
        self._on_stopped = on_stopped
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, concurrent.futures.Future[int]] = {}

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ensure_running(self) -> None:
        """Start the fork server unless it runs (blocks while it starts)."""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return
            self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        path = [entry or os.getcwd() for entry in sys.path]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", SERVER_MODULE, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        ours.settimeout(START_TIMEOUT)
        try:
            ready, _fds = receive_message(ours)
        except OSError:
            ready = None
        if not ready or "error" in ready:
            process.kill()
            process.wait()
            ours.close()
            why = ready["error"] if ready else "it exited while starting"
            raise ForkServerFailed(f"The kernel fork server did not start: {why}")
        ours.settimeout(None)
        self._process, self._control = process, ours
        threading.Thread(
            target=self._read,
            args=(ours,),
            name="django-notebooks-forkserver",
            daemon=True,
        ).start()

    def fork(
        self,
        request: dict[str, Any],
        listener: socket.socket,
        answer: concurrent.futures.Future[int],
    ) -> None:
        """Ask for a kernel process serving on ``listener``; ``answer`` gets
        its pid (or the fork server's error)."""
        self.ensure_running()
        number = next(self._ids)
        self._waiting[number] = answer
        try:
            with self._send_lock:
                assert self._control is not None
                send_message(
                    self._control, {**request, "id": number}, [listener.fileno()]
                )
        except OSError as error:
            self._waiting.pop(number, None)
            raise ForkServerFailed(
                f"The kernel fork server has stopped: {error}"
            ) from error

    def _read(self, control: socket.socket) -> None:
        while True:
            try:
                message, _fds = receive_message(control)
            except OSError:
                message = None
            if message is None:
                break
            if "exited" in message:
                self._on_exit(message["exited"], message["status"])
            elif "id" in message:
                answer = self._waiting.pop(message["id"], None)
                if answer is None:
                    continue
                if "pid" in message:
                    _settle(answer, message["pid"])
                else:
                    _settle(answer, ForkServerFailed(message.get("error", "")))
        for answer in list(self._waiting.values()):
            _settle(answer, ForkServerFailed("The kernel fork server stopped"))
        self._waiting.clear()
        # Its kernel processes die with it (PR_SET_PDEATHSIG, or it killed
        # them as it stopped): none of their exits will be reported.
        self._on_stopped()

    def stop(self) -> None:
        """Stop the fork server; it kills the kernel processes still running."""
        with self._lock:
            process, control = self._process, self._control
            self._process = self._control = None
        if control is not None:
            # shutdown() first: close() alone leaves the socket open while
            # the reader thread waits in recv() on it, and the fork server
            # would never see its end.
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_RDWR)
            control.close()
        if process is not None:
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
