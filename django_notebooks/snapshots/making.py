"""Making a snapshot: one run of a notebook with no visitor, then its page.

The run is a session like a visitor's, through the same app (a kernel
process of its own in process mode, under the notebook's limits), but
nobody's: ``mo.app_meta().request.user`` is the anonymous user, or the
user the ``snapshot`` option's ``as_user`` names. Its websocket is driven
here; what marimo sends it until the run completes is kept (the frames a
page would be sent). Then marimo's own export of the session, its HTML
export route (``POST api/export/html``, part of the app
``marimo.create_asgi_app`` makes, as the kernel routes are), gives the
static page: every output, widgets shown as they were, and marimo's
frontend loading from where the bridge serves it.

A run in which a cell raised, that did not complete within
``SNAPSHOT_TIMEOUT``, or whose export failed is a failure
(:class:`SnapshotFailed`): the caller keeps the old snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.urls import reverse

from django_notebooks import conf, context, notices
from django_notebooks.kernels import router
from django_notebooks.marimo import frontend, headless
from django_notebooks.marimo.forwarding import answer_of
from django_notebooks.registry import Notebook

logger = logging.getLogger(__name__)

# marimo's errors that are not the notebook failing: mo.stop() and what it
# skips (the same list as the load check's, marimo/headless.py).
NOT_FAILURES = frozenset({"ancestor-stopped", "ancestor-prevented", "interruption"})
# A run's session id: no visitor's session can have it (theirs are random),
# and it takes no pre-run spare (whose run may be older than the data).
SESSION_PREFIX = router.SNAPSHOT_SESSION_PREFIX
# What a run may show, at most: a snapshot is stored and sent whole.
MAX_FRAMES_BYTES = 32 * 1024 * 1024


class SnapshotFailed(Exception):
    """The run or its export failed; the message says why, in plain words."""


@dataclass(frozen=True)
class Made:
    """A run's outcome: the static page and the frames of the run."""

    html: str
    frames: tuple[str, ...]
    seconds: float


def make(notebook: Notebook) -> Made:
    """Run ``notebook`` with no visitor and export its page (synchronous:
    for a thread of its own or a management command; it runs its own
    event loop)."""
    return asyncio.run(amake(notebook))


async def amake(notebook: Notebook) -> Made:
    """:func:`make`, in the caller's event loop."""
    timeout = conf.get_settings().SNAPSHOT_TIMEOUT
    user = await sync_to_async(_run_user)(notebook)
    started = time.monotonic()
    try:
        return await asyncio.wait_for(_run(notebook, user, started), timeout)
    except TimeoutError:
        raise SnapshotFailed(
            f"The run did not complete within {timeout:g} seconds (SNAPSHOT_TIMEOUT)."
        ) from None


def _run_user(notebook: Notebook) -> dict[str, Any]:
    """``request.user`` for the run: ``as_user``'s, or nobody's."""
    assert notebook.snapshot is not None
    username = notebook.snapshot.as_user
    if username is None:
        return context.user_context(AnonymousUser())
    model = get_user_model()
    try:
        user = model._default_manager.get_by_natural_key(username)
    except model.DoesNotExist:
        raise SnapshotFailed(
            f"The snapshot's as_user {username!r} is not a user."
        ) from None
    return context.user_context(user)


class _Run:
    """The run's websocket, as marimo's app sees it."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.frames: list[str] = []
        self.size = 0
        self.completed = asyncio.Event()
        #: (cell id, what it raised) for each cell that raised.
        self.failures: list[tuple[str, str]] = []
        #: The notebook's cell ids, in file order (from "kernel-ready").
        self.cell_ids: list[str] = []
        self.closed: str | None = None

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.close":
            self.closed = f"marimo closed the run's websocket ({message.get('code')})"
            self.completed.set()
            return
        if message["type"] != "websocket.send":
            return
        text = message.get("text")
        if text is None:
            return
        self.size += len(text)
        if self.size > MAX_FRAMES_BYTES:
            self.closed = (
                f"the run showed more than {MAX_FRAMES_BYTES // 2**20} MB of output"
            )
            self.completed.set()
            return
        self.frames.append(text)
        try:
            frame = json.loads(text)
        except ValueError:
            return
        op, data = frame.get("op"), frame.get("data") or {}
        if op == "completed-run":
            self.completed.set()
        elif op == "kernel-ready":
            self.cell_ids = list(data.get("cell_ids") or ())
        elif op == "cell-op":
            cell = str(data.get("cell_id", ""))
            self.failures.extend((cell, error) for error in _errors_of(data))

    def failure_message(self, notebook: Notebook) -> str:
        """The cells that raised, by name, in plain words."""
        names = headless.cell_names(notebook.path)
        described = []
        for cell, error in dict.fromkeys(self.failures):
            index = self.cell_ids.index(cell) if cell in self.cell_ids else -1
            name = names[index] if 0 <= index < len(names) else ""
            label = name if name and name != "_" else f"cell {index + 1}"
            described.append(f"{label}: {error}" if index >= 0 else error)
        return (
            "A cell raised during the run: "
            + "; ".join(described)
            + ". (marimo shows no details of errors to viewers; the server's "
            "log has them with LOG_NOTEBOOK_OUTPUT, and 'manage.py notebooks "
            f"check {notebook.slug}' shows the traceback.)"
        )


def _errors_of(cell_op: dict[str, Any]) -> list[str]:
    """The errors a ``cell-op`` frame shows (a cell that raised)."""
    output = cell_op.get("output") or {}
    if output.get("channel") != "marimo-error":
        return []
    found = []
    for error in output.get("data") or ():
        if not isinstance(error, dict) or error.get("type") in NOT_FAILURES:
            continue
        kind = error.get("exception_type") or error.get("type") or "error"
        message = error.get("msg") or ""
        found.append(f"{kind}: {message}".strip(": "))
    return found


async def _run(notebook: Notebook, user: dict[str, Any], started: float) -> Made:
    app = router.app_for(notebook)
    mount = reverse("django_notebooks:notebook", args=[notebook.slug])
    session_id = SESSION_PREFIX + secrets.token_hex(12)
    run = _Run()
    scope = _scope(
        notebook,
        mount,
        "ws",
        user,
        session_id,
        type="websocket",
        query_string=urlencode({"session_id": session_id}).encode(),
    )
    task = asyncio.create_task(app(scope, run.inbox.get, run.send))
    try:
        await _wait_for_run(run, task)
        if run.closed:
            raise SnapshotFailed(f"The run ended early: {run.closed}.")
        if run.failures:
            raise SnapshotFailed(run.failure_message(notebook))
        html = await _export(notebook, mount, user, session_id)
    finally:
        run.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await _end(notebook, session_id, task)
    return Made(html=html, frames=tuple(run.frames), seconds=time.monotonic() - started)


async def _wait_for_run(run: _Run, task: asyncio.Task[None]) -> None:
    completed = asyncio.create_task(run.completed.wait())
    try:
        await asyncio.wait({completed, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        completed.cancel()
    if run.completed.is_set():
        return
    error = task.exception() if not task.cancelled() else None
    raise SnapshotFailed(
        "The notebook's kernel could not run it"
        + (f": {error}" if error is not None else ".")
    )


async def _export(
    notebook: Notebook, mount: str, user: dict[str, Any], session_id: str
) -> str:
    """marimo's static export of the run's session."""
    include_code = bool(conf.marimo_options().get("include_code", False))
    body = json.dumps(
        {
            "download": False,
            "files": [],
            "includeCode": include_code,
            # Where the live page loads marimo's frontend from; with
            # FRONTEND "marimo", below the notebook's own URL (marimo's
            # export would otherwise point at a CDN on the internet).
            "assetUrl": frontend.asset_url() or mount.rstrip("/"),
        }
    ).encode()
    scope = _scope(
        notebook,
        mount,
        "api/export/html",
        user,
        session_id,
        type="http",
        method="POST",
        headers=[
            (b"content-type", b"application/json"),
            (context.SESSION_HEADER, session_id.encode()),
        ],
    )
    answer = await answer_of(router.app_for(notebook), scope, body)
    content = await answer.body()
    if answer.status != 200:
        raise SnapshotFailed(
            f"marimo's export answered {answer.status}: "
            f"{content[:200].decode('utf-8', 'replace')}"
        )
    return content.decode("utf-8")


def _scope(
    notebook: Notebook,
    mount: str,
    below: str,
    user: dict[str, Any],
    session_id: str,
    **fields: Any,
) -> dict[str, Any]:
    headers = [(b"host", b"localhost"), *fields.pop("headers", [])]
    base = {
        "asgi": {"version": "3.0"},
        "scheme": "http",
        "server": ("localhost", 80),
        "client": ("127.0.0.1", 0),
        "query_string": b"",
        **fields,
        "headers": headers,
    }
    return context.marimo_scope(
        base,
        path=mount + below,
        root_path=mount.rstrip("/"),
        user=user,
        meta={},
        notebook_file=str(notebook.path),
        session_id=session_id,
    )


async def _end(notebook: Notebook, session_id: str, task: asyncio.Task[None]) -> None:
    """End the run's session and its kernel."""
    try:
        await asyncio.wait_for(asyncio.shield(task), 5)
    except (TimeoutError, Exception):
        task.cancel()
    try:
        await sync_to_async(router.end_session)(
            notebook, session_id, notices.SNAPSHOT_DONE
        )
    except Exception:
        logger.exception("Ending the snapshot run of %r failed", notebook.slug)
