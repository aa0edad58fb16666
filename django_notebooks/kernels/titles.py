"""Process titles, so that ``ps`` and ``top`` tell the bridge's processes
apart: the kernel host, each kernel (by notebook and session), and what a
cell started by forking (``multiprocessing``)."""

from __future__ import annotations

import setproctitle

PREFIX = "django-notebooks"


def set_title(title: str) -> None:
    setproctitle.setproctitle(title)


def kernel_host(socket_path: str) -> str:
    return f"{PREFIX} kernel-host {socket_path}"


def kernel(slug: str, session_id: str) -> str:
    return f"{PREFIX} kernel {slug} {session_id}"


def spare(slug: str) -> str:
    """A kernel forked ahead for notebook ``slug``, for no session yet."""
    return f"{PREFIX} spare kernel {slug}"


def started_by_cell(slug: str, session_id: str) -> str:
    return f"{PREFIX} process started by a cell of {slug} {session_id}"


def is_kernel(command_line: bytes) -> bool:
    """Whether a process's command line (``/proc/<pid>/cmdline``) is a
    kernel process's title."""
    return command_line.startswith(f"{PREFIX} kernel ".encode())


def is_spare(command_line: bytes) -> bool:
    """Whether a process's command line is a spare kernel's title."""
    return command_line.startswith(f"{PREFIX} spare kernel ".encode())
