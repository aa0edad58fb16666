"""Limits on notebook sessions: the ``LIMITS`` key of ``DJANGO_NOTEBOOKS``
and a notebook's (or directory's) own ``limits`` option.

Each limit is a positive whole number, or ``None`` for no limit. The
server-wide ones (how many sessions one server process holds) only make
sense for the whole server; the per-session ones a notebook may set for
itself, over the project's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

# A notebook's ``limits`` may set these (they apply to each of its sessions).
SESSION_LIMITS = frozenset({"CELL_TIMEOUT", "MEMORY_MB", "IDLE_TIMEOUT"})
# Only ``LIMITS`` may set these (they count the sessions of a server process).
SERVER_LIMITS = frozenset(
    {"MAX_SESSIONS", "MAX_SESSIONS_PER_ADDRESS", "MAX_ANONYMOUS_SESSIONS"}
)

EXPECTED = "a positive whole number, or None for no limit"

# Seconds a cell gets to stop once interrupted at CELL_TIMEOUT before its
# kernel process is killed.
CELL_STOP_GRACE = 5
# What bounds a kernel call when no CELL_TIMEOUT does (see call_deadline()).
UNTIMED_CELL_SECONDS = 600
# Seconds a kernel call may take beyond what a cell can hold its kernel up.
CALL_MARGIN = 5


@dataclass(frozen=True)
class Limits:
    """The limits in force (docs: topics/limits)."""

    #: Seconds one cell may run before it is interrupted (process isolation
    #: only: marimo cannot interrupt a kernel thread).
    CELL_TIMEOUT: int | None = 120
    #: Megabytes of memory a session's notebook code may allocate on top of
    #: what its kernel process starts with (process isolation, Linux).
    MEMORY_MB: int | None = 1024

    #: Seconds an open session may go without a widget change before it is
    #: closed (marimo's own ``session_ttl`` only starts once the tab closes).
    IDLE_TIMEOUT: int | None = 3600
    #: Sessions whose kernel lives in one server process: open pages, and
    #: closed tabs whose kernel waits out marimo's ``session_ttl``.
    MAX_SESSIONS: int | None = 100
    #: Anonymous sessions with a live kernel per client address
    #: (``scope["client"]``).
    MAX_SESSIONS_PER_ADDRESS: int | None = 20
    #: Anonymous sessions with a live kernel in one server process, all
    #: visitors together: the rest of MAX_SESSIONS is kept for logged-in
    #: users. Left out of ``LIMITS``, half of MAX_SESSIONS
    #: (:func:`anonymous_share`).
    MAX_ANONYMOUS_SESSIONS: int | None = 50


NAMES = tuple(field.name for field in fields(Limits))


def _is_limit(value: Any) -> bool:
    return value is None or (
        isinstance(value, int) and not isinstance(value, bool) and value > 0
    )


def problems(value: Any, *, where: str, allowed: frozenset[str]) -> list[str]:
    """What is wrong with a limits dict, one sentence each (empty if nothing).

    ``where`` names the dict in the sentences, e.g. ``DJANGO_NOTEBOOKS['LIMITS']``.
    """
    if not isinstance(value, Mapping):
        return [f"{where} is {value!r} ({type(value).__name__}), not a dict."]
    found = []
    for name in value:
        if name not in allowed:
            if name in SERVER_LIMITS:
                found.append(
                    f"{where} sets {name!r}, which counts the sessions of a "
                    "whole server process: set it in DJANGO_NOTEBOOKS['LIMITS']."
                )
            else:
                found.append(
                    f"{where} has an unknown key {name!r} (known: {sorted(allowed)})."
                )
        elif not _is_limit(value[name]):
            found.append(f"{where}[{name!r}] is {value[name]!r}; use {EXPECTED}.")
    return found


def is_valid_setting(value: Any) -> bool:
    """Whether ``value`` is a valid ``LIMITS``."""
    return not problems(value, where="LIMITS", allowed=frozenset(NAMES))


def from_setting(value: Mapping[str, Any]) -> Limits:
    """The ``LIMITS`` value as :class:`Limits` (unset keys: the defaults;
    ``MAX_ANONYMOUS_SESSIONS`` follows the project's ``MAX_SESSIONS``)."""
    limits = Limits(**value)
    if "MAX_ANONYMOUS_SESSIONS" in value:
        return limits
    return replace(limits, MAX_ANONYMOUS_SESSIONS=anonymous_share(limits.MAX_SESSIONS))


def anonymous_share(max_sessions: int | None) -> int | None:
    """``MAX_ANONYMOUS_SESSIONS`` where the project leaves it out: half of
    ``MAX_SESSIONS`` (at least one), so that a project that lowers
    ``MAX_SESSIONS`` still keeps half of it for logged-in users; no cap
    when ``MAX_SESSIONS`` is none either."""
    return None if max_sessions is None else max(1, max_sessions // 2)


def with_option(limits: Limits, option: Mapping[str, Any] | None) -> Limits:
    """``limits`` with a notebook's own ``limits`` option over them."""
    return replace(limits, **option) if option else limits


def call_deadline(limits: Limits) -> float:
    """Seconds a call into a session's kernel (a widget change, a download)
    may wait for the kernel's answer before the caller is told that the
    notebook is not answering.

    A kernel answers a call at once unless a cell holds Python's GIL in C
    code; such a cell is interrupted at ``CELL_TIMEOUT`` and its kernel
    killed ``CELL_STOP_GRACE`` seconds later. So a call that waits longer
    than that (plus a margin) waits for a kernel that has stopped answering
    (stopped, deadlocked), not for a slow one. Every process asks a session's
    kernel with the same deadline: a call forwarded from another server
    process waits as long as a local one.
    """
    cell = limits.CELL_TIMEOUT or UNTIMED_CELL_SECONDS
    return float(cell + CELL_STOP_GRACE + CALL_MARGIN)
