"""A cgroup (v2) per kernel process, where the system lets the server make
them: the kernel host's way to end everything a session started, and to
limit the session's memory as the kernel itself counts it.

A process group ends what a cell starts unless it leaves the group
(``setsid()``, as a daemon does); a cgroup holds every descendant whatever
it does, and ``cgroup.kill`` ends them all at once. With the ``memory``
controller, ``memory.max`` caps all the memory the kernel's processes use:
private, shared (``mmap``, ``multiprocessing.shared_memory``) and the
page cache they fill.

The kernel host makes a folder of its own below its cgroup
(``django-notebooks-<pid>``), and a child of it for each kernel. Where it
cannot (no cgroup v2, no write access: most servers not started by systemd
with ``Delegate=yes``), kernels are process groups only, and memory is
limited with ``RLIMIT_DATA`` and ``RLIMIT_AS`` (``child.py``). What is in
force is :func:`mechanisms`; docs: topics/isolation.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
PREFIX = "django-notebooks-"
KERNEL_PREFIX = "kernel-"
# Memory a kernel process writes to for itself, beyond what it shares with
# the kernel host, before any notebook code runs (its share of marimo's
# session: measured about 20 MB): memory.max is MEMORY_MB on top of it.
KERNEL_BASE_MB = 64


def _mount_point(proc: Path) -> tuple[Path, str] | None:
    """Where the cgroup v2 hierarchy is mounted, and the cgroup path its
    mount shows as its root (not ``/`` inside a container)."""
    try:
        lines = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if " - cgroup2 " in line and len(fields) > 4:
            return Path(fields[4]), fields[3]
    return None


def own_cgroup(proc: Path = PROC) -> Path | None:
    """This process's cgroup folder in the v2 hierarchy, if there is one."""
    mount = _mount_point(proc)
    if mount is None:
        return None
    point, mount_root = mount
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            path = line[3:]
            if mount_root != "/" and path.startswith(mount_root):
                path = path[len(mount_root) :]
            return point / path.lstrip("/")
    return None


@dataclass(frozen=True)
class Mechanisms:
    """How kernels are kept in bounds on this machine, in words for the
    log and the admin."""

    #: What ends everything a session started.
    containment: str
    #: What limits a session's memory (MEMORY_MB).
    memory: str


PROCESS_GROUPS = "a process group of its own"
CGROUPS = "a process group and a cgroup (v2) of its own"
RLIMITS = "RLIMIT_DATA and RLIMIT_AS"
MEMORY_MAX = "cgroup memory.max"


class KernelCgroups:
    """The kernel host's cgroup folder, with one child per kernel."""

    def __init__(self, base: Path, memory: bool) -> None:
        self.base = base
        #: Whether children can have memory.max (the memory controller).
        self.memory = memory

    @classmethod
    def create(cls, parent: Path | None = None) -> KernelCgroups | None:
        """Make this process's folder below ``parent`` (its own cgroup by
        default); ``None`` where the system does not allow it. Folders a
        killed kernel host left are emptied and removed first."""
        parent = parent if parent is not None else own_cgroup()
        if parent is None:
            return None
        remove_stale(parent)
        base = parent / f"{PREFIX}{os.getpid()}"
        try:
            base.mkdir()
        except OSError:
            return None
        memory = False
        with contextlib.suppress(OSError):
            if "memory" in (base / "cgroup.controllers").read_text().split():
                (base / "cgroup.subtree_control").write_text("+memory")
                memory = True
        return cls(base, memory)

    @property
    def mechanisms(self) -> Mechanisms:
        return Mechanisms(CGROUPS, MEMORY_MAX if self.memory else RLIMITS)

    def for_kernel(self, kernel_id: int, memory_mb: int | None) -> Path | None:
        """A new cgroup for one kernel (``memory_mb`` on top of its base, if
        the memory controller is there); ``None`` if it cannot be made."""
        path = self.base / f"{KERNEL_PREFIX}{kernel_id}"
        try:
            path.mkdir()
        except OSError:
            return None
        if self.memory and memory_mb:
            try:
                limit = (memory_mb + KERNEL_BASE_MB) * 1024 * 1024
                (path / "memory.max").write_text(str(limit))
                # The out-of-memory killer ends the whole session, not one
                # process a cell started.
                (path / "memory.oom.group").write_text("1")
                (path / "memory.swap.max").write_text("0")
            except OSError:
                pass
        return path

    def close(self) -> None:
        """End every process left in the folder and remove it."""
        remove(self.base)


def join(cgroup: Path) -> None:
    """Move the calling process into ``cgroup`` (in the kernel process,
    before it runs anything)."""
    (cgroup / "cgroup.procs").write_text("0")


def kill(cgroup: Path) -> None:
    """End every process in ``cgroup`` (``cgroup.kill``, or one by one where
    the kernel is older than Linux 5.14)."""
    try:
        (cgroup / "cgroup.kill").write_text("1")
        return
    except FileNotFoundError:
        pass
    except OSError:
        return
    for path in [cgroup, *(p for p in cgroup.rglob("*") if p.is_dir())]:
        with contextlib.suppress(OSError):
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)


def ran_out_of_memory(cgroup: Path) -> bool:
    """Whether the memory limit's out-of-memory killer acted in ``cgroup``."""
    with contextlib.suppress(OSError, ValueError):
        for line in (cgroup / "memory.events").read_text().splitlines():
            name, _, count = line.partition(" ")
            if name == "oom_kill" and int(count) > 0:
                return True
    return False


def remove(cgroup: Path) -> None:
    """End what runs in ``cgroup`` and its children, then remove them (a
    folder can go only once no process is left in it)."""
    if not cgroup.is_dir():
        return
    for child in [p for p in cgroup.iterdir() if p.is_dir()]:
        remove(child)
    kill(cgroup)
    for _ in range(200):  # the killed take a moment to leave
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def remove_stale(parent: Path) -> None:
    """Remove the folders of kernel hosts that no longer run (one killed
    with its web server leaves its folder, and what a cell started and
    moved out of its process group)."""
    with contextlib.suppress(OSError):
        for folder in parent.iterdir():
            owner = folder.name.removeprefix(PREFIX)
            if folder.name.startswith(PREFIX) and owner.isdigit():
                if not is_running(int(owner)):
                    remove(folder)


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mechanisms(parent: Path | None = None) -> Mechanisms:
    """What a kernel host started now would use on this machine: tried by
    making (and removing) a folder, as the kernel host does."""
    probe = KernelCgroups.create(parent)
    if probe is None:
        return Mechanisms(PROCESS_GROUPS, RLIMITS)
    try:
        return probe.mechanisms
    finally:
        probe.close()
