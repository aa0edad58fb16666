"""Which app answers a notebook's calls, by the isolation mode in force, and
ending a session's kernel whichever the mode."""

from __future__ import annotations

import logging
import os
from typing import Any

from django_notebooks import conf, context, limits, notices, refusals, registry
from django_notebooks.kernels.processes import (
    KernelEnded,
    KernelNotAnswering,
    KernelProcess,
    KernelStart,
    kernel_processes,
)
from django_notebooks.marimo import internals, visitor
from django_notebooks.marimo.apps import notebook_apps
from django_notebooks.notices import Notice
from django_notebooks.sessions import owners, records

logger = logging.getLogger(__name__)
PROCESS = "process"
THREAD = "thread"
# The session ids of snapshot runs (snapshots/making.py): they run the
# notebook as it is now, never a spare's run made before.
SNAPSHOT_SESSION_PREFIX = "django-notebooks-snapshot-"


def can_fork() -> bool:
    """Whether this platform can run kernels in processes of their own."""
    return hasattr(os, "fork") and hasattr(os, "register_at_fork")


def isolation() -> str:
    """The mode in force: ``"process"``, or ``"thread"`` where it is set or
    where the platform cannot fork (check W008 says so)."""
    mode = conf.get_settings().ISOLATION
    return mode if mode == THREAD or can_fork() else THREAD


def app_for(notebook: registry.Notebook) -> Any:
    """The ASGI app that answers calls for ``notebook``'s pages and sessions."""
    if isolation() == THREAD:
        return notebook_apps.app_for(notebook.path)
    return SessionRouter(notebook)


def warm() -> None:
    """Connect to the machine's kernel host in the background (starting it
    if none runs), if kernels run in processes: a page's first session then
    does not wait for it."""
    if isolation() == PROCESS:
        kernel_processes.warm()


def process_of(session_id: str | None) -> KernelProcess | None:
    """The live kernel process of a session, in process mode."""
    return kernel_processes.get(session_id)


def end_session(notebook: registry.Notebook, session_id: str, notice: Notice) -> None:
    """End a session's kernel now, whichever the mode (``notice``: why, for
    a page still listening)."""
    process = kernel_processes.get(session_id)
    if process is not None:
        process.end(notice)
        return
    manager = notebook_apps.session_manager_for(notebook.path)
    if manager is not None:
        internals.close_session(manager, session_id)


class SessionRouter:
    """Process mode's app for a notebook: a session's calls go to its kernel
    process (a new session's websocket starts one); the rest to marimo here.

    A call reaches a kernel only when the bridge admitted it for that
    session (``context.admitted_session``: the websocket of its owner, a
    kernel call or download of its owner). A session id in a header alone
    reaches nothing: the page, ``health`` and marimo's files are answered
    here, as for a caller without one.
    """

    def __init__(self, notebook: registry.Notebook) -> None:
        self.notebook = notebook

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        session_id = context.admitted_session(scope)
        if session_id is None:
            await notebook_apps.app_for(self.notebook.path)(scope, receive, send)
            return
        process = kernel_processes.get(session_id)
        if scope["type"] == "websocket":
            if process is None:
                # KernelUnavailable: the consumer refuses the session.
                process = await self._start(session_id, scope)
            await process.call(scope, receive, send)  # KernelEnded: the consumer's
            return
        if process is None:
            await _refuse(send, refusals.SESSION_ENDED)
            return
        started = False

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await process.call(scope, receive, watched_send)
        except KernelEnded:
            if started:
                raise
            await _refuse(send, refusals.SESSION_ENDED)
        except KernelNotAnswering:
            if started:
                raise
            process.tell(notices.NOT_ANSWERING)
            await _refuse(send, refusals.NOT_ANSWERING)

    async def _start(self, session_id: str, scope: dict[str, Any]) -> KernelProcess:
        # This process holds sessions now: their records go when it exits.
        notebook_apps.install_exit_hook()
        session_limits = registry.limits_of(self.notebook)
        options = notebook_apps.options()
        user = scope.get("user") or {}
        binding = owners.bindings.get(session_id)
        owner = records.owner_hash(binding.owner) if binding is not None else ""
        # The caps hold over the machine's sessions: its kernel host counts.
        person = owners.person_of(binding.owner) if binding is not None else ""
        process = await kernel_processes.start(
            session_id,
            KernelStart(
                notebook_file=str(self.notebook.path),
                slug=self.notebook.slug,
                user=str(user.get("username") or "anonymous"),
                options=options,
                memory_mb=session_limits.MEMORY_MB,
                cell_timeout=session_limits.CELL_TIMEOUT,
                deadline=limits.call_deadline(session_limits),
                session_ttl=options.get("session_ttl", 120),
                log_output=conf.get_settings().LOG_NOTEBOOK_OUTPUT,
                owner=owner,
                person=person,
                address=binding.address if binding is not None else None,
                caps=owners.caps_in_force() if person else None,
                pre_run=_pre_run_version(self.notebook, session_id),
            ),
        )
        assert process.pid is not None
        # For the admin's live sessions page (its pid, CPU and memory, and
        # whether it runs the code deployed now).
        code = process.server.code if process.server is not None else ""
        records.write_later(records.kernel_started, session_id, process.pid, code)
        return process


def _pre_run_version(notebook: registry.Notebook, session_id: str) -> str:
    """The notebook file's version, if spare kernels may run it before a
    visitor comes: spares are kept, the notebook allows it and its cells do
    not read the visitor. Empty if not, and for a snapshot's run (it must
    run the notebook now: a spare's run may be older than the data)."""
    if (
        session_id.startswith(SNAPSHOT_SESSION_PREFIX)
        or not notebook.pre_run
        or conf.get_settings().KERNEL_SPARES <= 0
        or visitor.reads_the_visitor(notebook.path)
    ):
        return ""
    return visitor.file_version(notebook.path)


async def _refuse(send: Any, refusal: refusals.Refusal) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": refusal.body()})
