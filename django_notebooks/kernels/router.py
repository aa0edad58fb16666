"""Which app answers a notebook's calls, by the isolation mode in force, and
ending a session's kernel whichever the mode."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from django_notebooks import conf, context, registry
from django_notebooks.kernels.forking import ForkServerFailed
from django_notebooks.kernels.processes import (
    KernelEnded,
    KernelProcess,
    kernel_processes,
)
from django_notebooks.marimo import internals, routes
from django_notebooks.marimo.apps import notebook_apps
from django_notebooks.notices import Notice
from django_notebooks.sessions import owners, records

logger = logging.getLogger(__name__)
PROCESS = "process"
THREAD = "thread"
ENDED_BODY = json.dumps(
    {"error": "This notebook session has ended. Reload the page to start it again."}
).encode()


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
    """Start this process's fork server in the background, if kernels run
    in processes and it has not started: a page's first session then does
    not wait for it."""
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
        process.terminate(notice)
        return
    manager = notebook_apps.session_manager_for(notebook.path)
    if manager is not None:
        internals.close_session(manager, session_id)


def session_of(scope: dict[str, Any]) -> str | None:
    """The marimo session an ASGI call belongs to, if any: a websocket's
    ``session_id`` query parameter, a kernel call's header, or the session
    whose kernel made a downloaded file."""
    named = context.session_id_in(scope)
    if named is not None or scope["type"] == "websocket":
        return named
    root = scope.get("root_path", "")
    name = routes.virtual_file_name(scope.get("path", "")[len(root) + 1 :])
    return owners.bindings.session_holding_file(name) if name else None


class SessionRouter:
    """Process mode's app for a notebook: a session's calls go to its kernel
    process (a new session's websocket starts one); the rest to marimo here."""

    def __init__(self, notebook: registry.Notebook) -> None:
        self.notebook = notebook

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        session_id = session_of(scope)
        process = kernel_processes.get(session_id)
        if process is None and session_id and scope["type"] == "websocket":
            try:
                process = await self._start(session_id)
            except ForkServerFailed as error:
                # Notebooks still run, without isolation, rather than not at all.
                logger.error(
                    "Running notebook session %s as a thread in the server process: %s",
                    session_id,
                    error,
                )
        if process is None:
            await notebook_apps.app_for(self.notebook.path)(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await process.call(scope, receive, send)  # KernelEnded: the consumer's
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
            await send(
                {
                    "type": "http.response.start",
                    "status": 410,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": ENDED_BODY})

    async def _start(self, session_id: str) -> KernelProcess:
        # This process holds sessions now: their records go when it exits.
        notebook_apps.install_exit_hook()
        limits = registry.limits_of(self.notebook)
        options = notebook_apps.options()
        process = await kernel_processes.start(
            session_id,
            notebook_file=self.notebook.path,
            options=options,
            memory_mb=limits.MEMORY_MB,
            session_ttl=options.get("session_ttl", 120),
        )
        assert process.pid is not None
        # For the admin's live sessions page (its pid, CPU and memory).
        records.write_later(records.kernel_started, session_id, process.pid)
        return process
