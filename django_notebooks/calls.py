"""Kernel calls: one pipeline, whichever way a widget change arrives.

marimo's frontend sends each widget change as an HTTP POST below the
notebook's ``api/kernel/``. It reaches a server process through the fast
path (asgi.py) or the view (views.py), and may be handed on to the process
holding its session (sessions/relay.py). Every one of them goes through
here:

- :func:`kernel_call` decides and dispatches: admission.py's decision, then
  the call runs here (:func:`run_here`): in the session's kernel, even when
  another web process of this machine holds the session
  (sessions/nearby.py); or it goes to the process holding its session on
  another machine, or comes back as a refusal or a
  :class:`~admission.Stranger` (for the entry point to answer with the
  access decision);
- :func:`forwarded` is the holding process's side of a forwarded call: the
  same ownership check, and the same :func:`run_here`.

Whatever marimo answers comes back whole (forwarding.collect): a kernel
call's answer is a small JSON document.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django_notebooks import admission, context, refusals, registry
from django_notebooks.kernels import router
from django_notebooks.marimo.forwarding import Reply, collect
from django_notebooks.refusals import Refusal
from django_notebooks.sessions import nearby, owners, relay

logger = logging.getLogger(__name__)

#: Reads the call's body once it is admitted: the body, a refusal of it
#: (too large, not JSON), or ``None`` once the entry point has answered
#: (the client went, or the refusal was sent).
ReadBody = Callable[[], Awaitable["bytes | Refusal | None"]]


async def kernel_call(
    location: registry.Location,
    caller: admission.Caller,
    scope: dict[str, Any],
    read_body: ReadBody,
) -> Reply | Refusal | admission.Stranger | None:
    """Decide on a kernel call and run it where its session is.

    ``scope``: the request's ASGI scope. The body is read only for a call
    that will run (here or in the holding process). Returns the answer, a
    refusal, a :class:`~admission.Stranger` (the caller opened no such
    session anywhere: 401, 403 or 410 takes the access decision), or
    ``None`` if ``read_body`` answered.
    """
    admitted = admission.kernel_call(location.notebook, caller)
    if isinstance(admitted, Refusal):
        return admitted
    session_id = caller.session_id
    assert session_id  # (a call without one is refused)
    nearby_kernel = None
    if isinstance(admitted, admission.NotHere):
        # Another web process holds the session: of this machine, its
        # kernel is reached from here; else the call goes to that process.
        nearby_kernel = await nearby.kernel_of(location.notebook, caller)
        if isinstance(nearby_kernel, nearby.NotTheOwner) or (
            nearby_kernel is None and not await relay.held_elsewhere(session_id)
        ):
            return admission.Stranger(session_id)
    body = await read_body()
    if body is None or isinstance(body, Refusal):
        return body
    if isinstance(admitted, owners.Binding):
        return await run_here(
            location,
            scope,
            session_id=session_id,
            user=admitted.user_context,
            meta=admitted.meta,
            body=body,
        )
    if nearby_kernel is not None:
        return await run_here(
            location, scope, session_id=session_id, user=None, meta=None, body=body
        )
    # Another server process holds the session: it checks the owner.
    return await relay.ask_holder(scope, location, caller, kind="kernel", body=body)


async def run_here(
    location: registry.Location,
    scope: dict[str, Any],
    *,
    session_id: str,
    user: dict[str, Any] | None,
    meta: dict[str, Any] | None,
    body: bytes,
) -> Reply:
    """Run a call admitted for ``session_id`` through the notebook's marimo
    app (in process mode, in that session's kernel process); notebook code
    sees ``user`` and ``meta`` as the request's (``None``: the request of
    the session's websocket, which its kernel process has)."""
    marimo_scope = context.marimo_scope(
        scope,
        path=scope["path"],
        root_path=location.mount(scope["path"]).rstrip("/"),
        user=user or {},
        meta=meta or {},
        notebook_file=str(location.notebook.path),
        session_id=session_id,
        sessions_request=user is None,
    )
    try:
        return await collect(router.app_for(location.notebook), marimo_scope, body)
    except Exception:
        logger.exception(
            "marimo's app failed on a call for notebook session %s", session_id
        )
        return refusals.FAILED.reply()


async def forwarded(message: dict[str, Any]) -> Reply:
    """Run a call another server process forwarded to this one, which holds
    its session (see relay.answer): a kernel call after the same ownership
    check as a local one; a download (already allowed by the asking
    process) only of a file this session's kernel made."""
    notebook = registry.get_notebook(message["notebook"])
    if notebook is None:
        return Refusal(404, "No such notebook.").reply()
    location = registry.Location(notebook, message["path"][len(message["mount"]) :])
    caller = admission.Caller.of_login(
        message["session_id"], message["session_key"], message["visitor"]
    )
    if message["kind"] == "kernel":
        admitted = admission.owned_call(notebook, caller)
        if isinstance(admitted, Refusal):
            return admitted.reply()
        user, meta = admitted.user_context, admitted.meta
    elif admission.owned_download(notebook, caller, location.subpath):
        user, meta = message["user"] or {}, {}
    else:
        return admission.NO_SUCH_FILE.reply()
    return await run_here(
        location,
        relay.scope_of(message),
        session_id=message["session_id"],
        user=user,
        meta=meta,
        body=message["body"],
    )
