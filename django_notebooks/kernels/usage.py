"""What a kernel process uses, for the admin's live sessions page: CPU
seconds and private memory, read from ``/proc`` (Linux).

The admin may run in another server process than the kernel, even on
another host: figures are given only for a process of this host that is a
kernel process (its process title says so: ``titles.py``), never for
whatever process took over a stale pid.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from django_notebooks.kernels import titles


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    #: Memory no other process shares (USS: private clean + dirty pages).
    private_bytes: int


def usage(pid: int, *, spare: bool = False) -> Usage | None:
    """The kernel process ``pid``'s use, or ``None`` if it is not one here
    (with ``spare``: a spare kernel's)."""
    proc = Path("/proc") / str(pid)
    is_one = titles.is_spare if spare else titles.is_kernel
    try:
        if not is_one((proc / "cmdline").read_bytes()):
            return None
        # utime and stime: fields 14 and 15, after the parenthesised name.
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        private = 0
        for line in (proc / "smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                private += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return Usage(ticks / os.sysconf("SC_CLK_TCK"), private)


def spares() -> dict[int, Usage]:
    """What the spare kernels of this host that run as this user use, by
    pid (forked ahead by the kernel hosts, for no session yet)."""
    found = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if entry.stat().st_uid != os.getuid():
                    continue
                used = usage(int(entry.name), spare=True)
                if used is not None:
                    found[int(entry.name)] = used
    return found
