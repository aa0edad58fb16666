"""The fork server process: run as ``python -m
django_notebooks.kernels.forkserver <fd>`` by its web process
(``forking.py``), it gets ready once and then forks a kernel process
(``child.py``) for each request on the socket ``fd``.

It reports each kernel process's exit. When its web process goes (the
socket closes, or its parent changes) it kills its kernel processes and
exits. This code runs only in the fork server: the test suite's in-process
coverage does not see it; tests/e2e/test_isolation.py runs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
from typing import Any

from django_notebooks.kernels.forking import receive_message, send_message

logger = logging.getLogger(__name__)

COLD = "--cold"  # start without the warm-up session
# Seconds between checks that the web process still runs.
PARENT_CHECK_INTERVAL = 1.0


def _warm(run_session: bool) -> None:
    """Import what every kernel process needs, once, before any fork."""
    import django

    django.setup()
    import marimo  # noqa: F401

    from django_notebooks.kernels import child

    child.warm(run_session=run_session)
    from django.db import connections

    # A connection inherited by two processes would mix their traffic.
    connections.close_all()


def _fork_kernel(
    request: dict[str, Any],
    fds: list[int],
    control: socket.socket,
    wake_pipe: tuple[int, int],
) -> int:
    """Fork the kernel process ``request`` asks for; its pid."""
    from django_notebooks.kernels import child

    if len(fds) != 1:
        raise ValueError(f"a request with {len(fds)} file descriptors, not 1")
    child.prepare(request)
    if threading.active_count() > 1:
        # Forking now would copy another thread's half-held locks.
        raise RuntimeError("the fork server has threads running")
    pid = os.fork()
    if pid == 0:  # the kernel process
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wake_pipe:
            os.close(fd)
        control.close()
        child.main(request, socket.socket(fileno=fds[0]))
    os.close(fds[0])
    return pid


def _serve(control: socket.socket) -> None:
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    os.set_blocking(wake_read, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda number, frame: None)
    children: set[int] = set()

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            with contextlib.suppress(OSError):  # the web process may be gone
                send_message(control, {"exited": pid, "status": status})

    web_process = os.getppid()
    while True:
        readable, _, _ = select.select(
            [control.fileno(), wake_read], [], [], PARENT_CHECK_INTERVAL
        )
        if os.getppid() != web_process:
            # The web process has gone though its socket did not close (a
            # child it forked without exec holds a copy): stop all the same.
            break
        if wake_read in readable:
            while True:
                try:
                    if not os.read(wake_read, 512):
                        break
                except BlockingIOError:
                    break
            reap()
        if control.fileno() not in readable:
            continue
        request, fds = receive_message(control)
        if request is None:
            break
        try:
            pid = _fork_kernel(request, fds, control, (wake_read, wake_write))
        except Exception as error:
            # Refused (no listener, a notebook that cannot be read, a fork
            # the system refused): that session runs without a process of
            # its own; the others, and this server, go on.
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            answer: dict[str, Any] = {"id": request.get("id"), "error": repr(error)}
        else:
            children.add(pid)
            answer = {"id": request["id"], "pid": pid}
        try:
            send_message(control, answer)
        except OSError:
            break
    # The web process has gone: its sessions go with it.
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def main(argv: list[str]) -> None:
    control = socket.socket(fileno=int(argv[1]))
    # Ctrl+C in a terminal reaches the whole process group: the web server
    # decides when this process ends (by closing the socket).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cold = COLD in argv
    try:
        _warm(run_session=not cold)
    except BaseException as error:
        from django_notebooks.kernels.child import WarmUpFailed

        if isinstance(error, WarmUpFailed) and not cold:
            # Its threads cannot be made to end: start again, and fork
            # without the warm-up session (kernel processes start slower).
            logger.warning("%s; the fork server starts again without it", error)
            os.execv(sys.executable, [sys.executable, "-m", __name__, argv[1], COLD])
        send_message(control, {"error": f"{type(error).__name__}: {error}"})
        raise
    send_message(control, {"ready": True})
    _serve(control)
    # Nothing to tidy at exit: the exit hooks the warm-up installed (closing
    # marimo sessions, deleting a server's session records) are the web
    # process's business.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
