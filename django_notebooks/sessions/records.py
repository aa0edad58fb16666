"""The database record of open kernel websockets (``NotebookSession`` rows).

A row is written when a kernel websocket opens and deleted when it closes.
Every server process reads the same table, so a process that receives a
kernel call for a session it does not hold finds there which process does,
and the admin lists live sessions from it. The functions here are
synchronous (they query the database); async callers wrap them in
``database_sync_to_async``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from channels.db import database_sync_to_async
from django.db import IntegrityError
from django.utils import timezone
from django.utils.crypto import salted_hmac

from django_notebooks.models import NotebookSession

# Where Linux shows its processes (elsewhere, whether a pid runs is all that
# is known of it).
PROC = Path("/proc")
# This server process, as rows name it: host and pid, plus a random part so
# that a restarted process that gets the same pid is not taken for the old one.
PROCESS = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def owner_hash(owner: str) -> str:
    """The stored form of an owner key (which holds a session key)."""
    return salted_hmac(
        "django_notebooks.sessions.records.owner", owner, algorithm="sha256"
    ).hexdigest()


def opened(
    session_id: str, *, notebook: str, user: Any, owner: str, channel_name: str
) -> bool:
    """Record that this process's consumer on ``channel_name`` holds the
    session now. ``False`` (and nothing recorded) if another running process
    holds it. The row of a process of this host that has ended (killed:
    it could not delete its rows) is taken over: its kernel, which the
    kernel host keeps, is the page's again."""
    holder = holder_elsewhere(session_id)
    if holder is not None:
        process, since = holder
        if not _has_ended_here(process, since=since):
            return False
        forget_elsewhere(session_id, process)
    now = timezone.now()
    fields = {
        "notebook": notebook,
        "user_id": user.pk if getattr(user, "is_authenticated", False) else None,
        "owner_hash": owner_hash(owner),
        "channel_name": channel_name,
        "process": PROCESS,
        "opened_at": now,
        "last_activity": now,
    }
    # Single statements, not update_or_create()'s transaction: on SQLite a
    # transaction that reads and then writes fails at once ("database is
    # locked") when another process writes, instead of waiting its turn.
    rows = NotebookSession.objects.filter(session_id=session_id)
    if not rows.update(**fields):
        try:
            NotebookSession.objects.create(session_id=session_id, **fields)
        except IntegrityError:  # another connection created it meanwhile
            rows.update(**fields)
    return True


def closed(session_id: str, channel_name: str) -> timedelta | None:
    """Delete the row of a websocket that closed; how long it was open.

    Only the consumer that holds the row deletes it: a reconnect may already
    have replaced it with its own.
    """
    rows = NotebookSession.objects.filter(
        session_id=session_id, channel_name=channel_name, process=PROCESS
    )
    opened_at = rows.values_list("opened_at", flat=True).first()
    if opened_at is None or not rows.delete()[0]:
        return None
    return timezone.now() - opened_at


def kernel_started(session_id: str, pid: int, code: str = "") -> None:
    """The session's kernel runs in process ``pid`` (of this host), forked
    from the code ``code`` (its kernel host's code key)."""
    NotebookSession.objects.filter(session_id=session_id, process=PROCESS).update(
        kernel_pid=pid, kernel_code=code
    )


def touched(session_id: str) -> None:
    """The session was used just now (called at most every ACTIVITY_EVERY)."""
    NotebookSession.objects.filter(session_id=session_id, process=PROCESS).update(
        last_activity=timezone.now()
    )


_pending_writes: set[asyncio.Future[None]] = set()


def touch_later(session_id: str) -> None:
    """Update the session's last activity without making a kernel call wait."""
    write_later(touched, session_id)


def write_later(write: Callable[..., None], *args: Any) -> None:
    """Run the database write ``write(*args)`` without making the caller
    wait for it (at once, from a synchronous caller: tests, WSGI)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        write(*args)
        return
    task = loop.create_task(database_sync_to_async(write)(*args))
    _pending_writes.add(task)
    task.add_done_callback(_pending_writes.discard)


def owner_of(session_id: str) -> tuple[str, Any, str] | None:
    """The notebook, user id and owner hash of the row of ``session_id``
    held by another process; ``None`` if no other process holds it."""
    row = (
        NotebookSession.objects.filter(session_id=session_id)
        .exclude(process=PROCESS)
        .values_list("notebook", "user_id", "owner_hash")
        .first()
    )
    return None if row is None else (row[0], row[1], row[2])


def used_elsewhere(session_id: str) -> None:
    """A kernel call reached the session's kernel through this process,
    which does not hold the session: its last activity is now (the idle
    watch of the process holding it reads it: last_activity())."""
    NotebookSession.objects.filter(session_id=session_id).update(
        last_activity=timezone.now()
    )


def last_activity(session_id: str) -> datetime | None:
    """When the session was last used, as its row says."""
    return (
        NotebookSession.objects.filter(session_id=session_id)
        .values_list("last_activity", flat=True)
        .first()
    )


def other_process_holds(session_id: str) -> bool:
    """Whether another server process holds this session's websocket."""
    return (
        NotebookSession.objects.filter(session_id=session_id)
        .exclude(process=PROCESS)
        .exists()
    )


def holder_elsewhere(session_id: str) -> tuple[str, datetime] | None:
    """The process (``host:pid:random``) of another server process that
    holds this session, and when it opened it; ``None`` if none does."""
    row = (
        NotebookSession.objects.filter(session_id=session_id)
        .exclude(process=PROCESS)
        .values_list("process", "opened_at")
        .first()
    )
    return None if row is None else (row[0], row[1])


def runs_on_this_host(process: str, *, since: datetime) -> bool:
    """Whether ``process`` (as rows name one) is a process of this host that
    is still running, and has been since ``since`` (when it opened a row).

    A pid that a process started later took over (pids are reused) is not
    that process; neither is a zombie, which has ended.
    """
    host, _, rest = process.partition(":")
    pid, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    started = _start_time(int(pid))
    if started is None:
        return False
    # (Start times count in clock ticks: a little slack.)
    return started <= since.timestamp() + 1.0


def _has_ended_here(process: str, *, since: datetime) -> bool:
    """Whether ``process`` (as rows name one) was a process of this host
    that is no longer running."""
    host = process.partition(":")[0]
    return host == socket.gethostname() and not runs_on_this_host(process, since=since)


def _start_time(pid: int) -> float | None:
    """When process ``pid`` of this host started (seconds since the epoch);
    ``None`` if it is not running. Without ``/proc`` only whether it runs is
    known: then ``0.0``, as if it had always run."""
    if not PROC.is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # another user's process: running
        return 0.0
    try:
        # Fields after the parenthesised name: state is the 3rd field of
        # stat, the start time (ticks after boot) the 22nd.
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        state, ticks = fields[0], int(fields[19])
        booted = next(
            int(line.split()[1])
            for line in (PROC / "stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    if state == "Z":
        return None
    return booted + ticks / os.sysconf("SC_CLK_TCK")


def forget_elsewhere(session_id: str, process: str) -> None:
    """Delete the row of a session whose process, ``process``, no longer
    answers (not a row another process may have written since)."""
    NotebookSession.objects.filter(session_id=session_id, process=process).exclude(
        process=PROCESS
    ).delete()


def forget_this_process() -> None:
    """Delete this process's rows (it is stopping and closes its sessions)."""
    NotebookSession.objects.filter(process=PROCESS).delete()


def sessions_elsewhere(owner: str, notebook: str) -> list[str]:
    """The ids of one login's sessions of one notebook held by other processes."""
    return list(
        NotebookSession.objects.filter(owner_hash=owner_hash(owner), notebook=notebook)
        .exclude(process=PROCESS)
        .values_list("session_id", flat=True)
    )
