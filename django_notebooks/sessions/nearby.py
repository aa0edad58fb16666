"""Kernel calls for a session that another web process of this machine
holds: straight to the session's kernel, not through the channel layer.

The machine's kernel host runs every kernel of the project's web processes
on the machine (kernels/forking.py), so any of them can call any kernel.
A kernel call that lands on a web process that does not hold its session
(no sticky sessions in front of ``--workers 4``) is checked against the
session's record, as the holder would check it: the same login (the record
keeps a hash of the owner: the caller's session key or visitor cookie must
give the same hash) and the same notebook. The host then gives the kernel
to that owner only. Notebook code sees the request of the session's
websocket, as with a call the holder runs (context.SESSIONS_REQUEST).

What is found is kept, per session, for :data:`RECHECK_EVERY` seconds: the
calls in between cost no database query. Each check also writes the
session's last activity, which the holder's idle watch reads
(lifecycle.py). A session no host of this machine runs (another machine
holds it, or its kernel ended) is left to the channel layer (relay.py).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async

from django_notebooks import limits, registry
from django_notebooks.admission import Caller
from django_notebooks.kernels import router
from django_notebooks.kernels.processes import (
    KernelProcess,
    KernelStart,
    kernel_processes,
)
from django_notebooks.sessions import owners, records

# Seconds a session found on this machine is trusted before its record is
# read again (the session may have closed meanwhile; its activity is written
# then too, as a holder writes its own: owners.ACTIVITY_EVERY).
RECHECK_EVERY = owners.ACTIVITY_EVERY
# Sessions remembered at most (the oldest are forgotten first).
REMEMBERED = 4096


@dataclass
class Found:
    """A session of this machine another web process holds."""

    process: KernelProcess
    notebook: str
    #: The owner's user id (``None``: an anonymous visitor) and owner key.
    user_id: object
    owner: str
    checked_at: float


_found: OrderedDict[str, Found] = OrderedDict()
# Sessions no host of this machine runs, and since when that is known (their
# calls go to the channel layer without asking again meanwhile).
_elsewhere: OrderedDict[str, float] = OrderedDict()


class NotTheOwner:
    """The session's record says another login (or another notebook) owns
    it: the caller is a stranger to it, wherever it is held."""


NOT_THE_OWNER = NotTheOwner()


async def kernel_of(
    notebook: registry.Notebook, caller: Caller
) -> KernelProcess | NotTheOwner | None:
    """The kernel of the session ``caller`` names, if another web process of
    this machine holds it for the caller's login and ``notebook``;
    :data:`NOT_THE_OWNER` if the session is another login's; ``None`` if no
    host of this machine runs it (another machine may hold it)."""
    session_id = caller.session_id
    if not session_id or router.isolation() != router.PROCESS:
        return None
    found = _found.get(session_id)
    if (
        found is not None
        and not found.process.has_exited
        and time.monotonic() - found.checked_at < RECHECK_EVERY
    ):
        _found.move_to_end(session_id)
        owner = owners.owner_of_login(found.user_id, caller.session_key, caller.visitor)
        if found.notebook != notebook.slug or owner != found.owner:
            return NOT_THE_OWNER
        return found.process
    _found.pop(session_id, None)
    if time.monotonic() - _elsewhere.get(session_id, -math.inf) < RECHECK_EVERY:
        return None
    record = await database_sync_to_async(records.owner_of)(session_id)
    if record is None:
        return None
    slug, user_id, owner_hash = record
    owner = owners.owner_of_login(user_id, caller.session_key, caller.visitor)
    if (
        slug != notebook.slug
        or owner is None
        or records.owner_hash(owner) != owner_hash
    ):
        return NOT_THE_OWNER
    process = await kernel_processes.reach(session_id, _start(notebook, owner_hash))
    if process is None:
        _remember(_elsewhere, session_id, time.monotonic())
        return None
    _remember(
        _found, session_id, Found(process, slug, user_id, owner, time.monotonic())
    )
    records.write_later(records.used_elsewhere, session_id)
    return process


def _remember(memory: OrderedDict[str, Any], session_id: str, value: Any) -> None:
    memory[session_id] = value
    memory.move_to_end(session_id)
    if len(memory) > REMEMBERED:
        memory.popitem(last=False)


def _start(notebook: registry.Notebook, owner_hash: str) -> KernelStart:
    """What the host is asked for: the notebook's session of that owner,
    running already (nothing is forked)."""
    return KernelStart(
        notebook_file=str(notebook.path),
        slug=notebook.slug,
        user="",
        options={},
        memory_mb=None,
        cell_timeout=None,
        deadline=limits.call_deadline(registry.limits_of(notebook)),
        session_ttl=0,
        log_output=False,
        owner=owner_hash,
    )


def forget_all() -> None:
    """Forget what was found (tests)."""
    _found.clear()
    _elsewhere.clear()
