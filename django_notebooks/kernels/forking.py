"""The web process's handle on a fork server (``forkserver.py``): the process
that forks a kernel process for each notebook session.

Forking the web process itself would copy its threads' half-held locks and
open database connections into the child. Starting a fresh interpreter per
session costs about a second and 50 MB. So the web process starts a fork
server once, as a new interpreter (no threads, no connections); it imports
Django, marimo and the bridge, and then forks a ready kernel process in a
few milliseconds whenever asked (``multiprocessing``'s forkserver works the
same way).

The two talk over a socket pair, in the wire's messages (``wire.py``): the
web process asks for a kernel (:class:`~wire.Fork`) or its end
(:class:`~wire.End`), by the kernel's id, never by pid; the fork server
answers with the kernel's pid and socket (:class:`~wire.Forked`), and
reports each kernel's end (:class:`~wire.Exited`) and what its page should
hear (:class:`~wire.KernelNotice`). When the web process goes, even killed,
the socket closes, and the fork server ends its kernels and exits.

A :class:`ForkServer` is one fork server's life: once it has stopped, the
web process makes a new one, and the kernels of the old one are its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from django_notebooks.kernels import wire

logger = logging.getLogger(__name__)

SERVER_MODULE = "django_notebooks.kernels.forkserver"
# Seconds the web process waits for the fork server to import everything.
START_TIMEOUT = 60.0
# Seconds stop() waits for the fork server to end its kernels and exit.
STOP_TIMEOUT = 5.0
# Kernel ids are unique in the web process, across fork servers.
_kernel_ids = itertools.count(1)


class ForkServerFailed(RuntimeError):
    """The fork server could not start, or has stopped."""


class ForkRefused(RuntimeError):
    """The fork server could not fork a kernel (the system's limit on
    processes or memory, a notebook it could not read)."""


def new_kernel_id() -> int:
    return next(_kernel_ids)


class ForkServer:
    """The web process's handle on one fork server (started by
    :meth:`start`, ended by :meth:`stop` or its own end)."""

    def __init__(
        self,
        *,
        on_exit: Callable[[ForkServer, wire.Exited], None],
        on_notice: Callable[[ForkServer, wire.KernelNotice], None],
        on_stopped: Callable[[ForkServer], None],
    ) -> None:
        self._on_exit = on_exit
        self._on_notice = on_notice
        self._on_stopped = on_stopped
        self._send_lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._waiting: dict[int, concurrent.futures.Future[wire.Forked]] = {}
        self.ready: wire.Ready | None = None
        self.stopped = threading.Event()
        #: stop() was called: its end was asked for.
        self.stopping = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return (
            self._process is not None
            and self._process.poll() is None
            and not self.stopped.is_set()
        )

    def start(self) -> None:
        """Start the fork server and wait until it is ready (blocking)."""
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
        receive = wire.receiver(ours)
        ready = None
        try:
            messages: list[Any] | None = []
            while messages == []:
                messages = receive()
            ready = messages[0] if messages else None
        except (OSError, wire.WireError):
            pass
        if not isinstance(ready, wire.Ready):
            process.kill()
            process.wait()
            ours.close()
            self.stopped.set()
            why = ready.error if isinstance(ready, wire.StartFailed) else None
            raise ForkServerFailed(
                f"The kernel fork server did not start: {why or 'it exited while starting'}"
            )
        ours.settimeout(None)
        self._process, self._control, self.ready = process, ours, ready
        threading.Thread(
            target=self._read,
            args=(receive,),
            name="django-notebooks-forkserver",
            daemon=True,
        ).start()

    def fork(
        self, fork: wire.Fork, answer: concurrent.futures.Future[wire.Forked]
    ) -> None:
        """Ask for a kernel process; ``answer`` gets its :class:`~wire.Forked`
        (or :class:`ForkRefused`, :class:`ForkServerFailed`)."""
        self._waiting[fork.id] = answer
        try:
            self._send(fork)
        except ForkServerFailed:
            self._waiting.pop(fork.id, None)
            raise

    def end(self, kernel_id: int, *, now: bool = False) -> None:
        """Ask for kernel ``kernel_id``'s end (nothing if it has ended)."""
        with contextlib.suppress(ForkServerFailed):
            self._send(wire.End(kernel_id, now))

    def _send(self, message: Any) -> None:
        with self._send_lock:
            control = self._control
            if control is None or self.stopped.is_set():
                raise ForkServerFailed("The kernel fork server has stopped")
            try:
                wire.send(control, message)
            except OSError as error:
                raise ForkServerFailed(
                    f"The kernel fork server has stopped: {error}"
                ) from error

    def _read(self, receive: Callable[[], list[Any] | None]) -> None:
        while True:
            try:
                messages = receive()
            except (OSError, wire.WireError) as error:
                logger.error("The kernel fork server's messages failed: %r", error)
                messages = None
            if messages is None:
                break
            for message in messages:
                self._dispatch(message)
        self.stopped.set()
        for answer in list(self._waiting.values()):
            _settle(answer, ForkServerFailed("The kernel fork server stopped"))
        self._waiting.clear()
        process = self._process
        if process is not None:
            # Reaped here, not left a zombie until the web process exits.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT)
        # Its kernel processes die with it (PR_SET_PDEATHSIG, or it killed
        # them as it stopped): none of their exits will be reported.
        self._on_stopped(self)

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, wire.Exited):
            self._on_exit(self, message)
        elif isinstance(message, wire.KernelNotice):
            self._on_notice(self, message)
        elif isinstance(message, wire.Forked):
            answer = self._waiting.pop(message.id, None)
            if answer is not None:
                _settle(answer, message)
        elif isinstance(message, wire.ForkRefused):
            answer = self._waiting.pop(message.id, None)
            if answer is not None:
                _settle(answer, ForkRefused(message.error))

    def stop(self) -> None:
        """Stop the fork server; it ends the kernel processes still running."""
        self.stopping = True
        with self._send_lock:
            process, control = self._process, self._control
            self._control = None
        self.stopped.set()
        if control is not None:
            # shutdown() first: close() alone leaves the socket open while
            # the reader thread waits in recv() on it, and the fork server
            # would never see its end.
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_RDWR)
            control.close()
        if process is not None:
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _settle(
    answer: concurrent.futures.Future[wire.Forked], outcome: wire.Forked | Exception
) -> None:
    """Give a fork's waiter its answer (unless it has been given one)."""
    if answer.done():
        return
    if isinstance(outcome, Exception):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
