"""The kernel websocket: a Channels consumer that relays frames between the
browser and marimo's ``<page>/ws`` endpoint for one notebook session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from django.urls import Resolver404, resolve

from . import _marimo, access, conf, context, origins, registry, revocation, sessions
from .access import Access
from .server import notebook_apps

logger = logging.getLogger(__name__)

# Close codes sent before the handshake is accepted; servers answer the
# handshake with HTTP 403 whatever the code, the code only shows in logs.
CLOSE_REFUSED = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_BAD_REQUEST = 4400
# Sent to an open websocket whose user logged out or lost access.
CLOSE_REVOKED = 4401
# How long a disconnect waits for marimo's handler to finish.
DISCONNECT_TIMEOUT = 5.0
VIEW_NAMES = frozenset({"notebook_location", "notebook"})


def locate_kernel(path: str) -> tuple[registry.Location, str] | None:
    """The notebook whose ``ws`` endpoint ``path`` is, and its page URL.

    The path is resolved through the project's own URLconf, so the websocket
    follows wherever urls.py included ``django_notebooks.urls``.
    """
    try:
        match = resolve(path)
    except Resolver404:
        return None
    if "django_notebooks" not in match.app_names or match.url_name not in VIEW_NAMES:
        return None
    location = match.kwargs.get("location") or f"{match.kwargs.get('slug')}/"
    found = registry.locate(location)
    if found is None or found.subpath != "ws":
        return None
    return found, path[: -len("ws")]


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class KernelConsumer(AsyncConsumer):
    """Relays a notebook's kernel websocket to marimo, after the same access
    decision as the notebook's page and a check that the session id belongs
    to whoever connects."""

    marimo_task: asyncio.Task[None] | None = None

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = False
        self.session_id: str | None = None
        self.owner: str | None = None

        path = self.scope["path"]
        root_path = self.scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        found = locate_kernel(path)
        if found is None:
            return await self._refuse(CLOSE_NOT_FOUND)
        location, mount = found
        notebook = location.notebook

        if "user" not in self.scope:
            logger.error(
                "KernelConsumer found no user in the websocket scope: wrap "
                "django_notebooks.routing.websocket_urlpatterns in "
                "channels.auth.AuthMiddlewareStack in your asgi.py."
            )
            return await self._refuse(CLOSE_REFUSED)

        host = _header(self.scope, b"host") or ""
        origin = _header(self.scope, b"origin")
        # Browsers always send Origin on a websocket handshake; refuse other
        # sites even if the project forgot AllowedHostsOriginValidator. Either
        # scheme is accepted: behind a TLS proxy the server sees plain ws.
        if origin is not None and not any(
            origins.is_trusted_origin(origin, host=host, scheme=scheme)
            for scheme in ("https", "http")
        ):
            return await self._refuse(CLOSE_REFUSED)

        user = self.scope["user"]
        if await access.adecide(user, notebook) is not Access.ALLOWED:
            return await self._refuse(CLOSE_REFUSED)

        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        session_id = (query.get("session_id") or [""])[0]
        if not session_id:
            return await self._refuse(CLOSE_BAD_REQUEST)

        session = self.scope.get("session")
        cookies = self.scope.get("cookies") or {}
        owner = sessions.owner_of(
            user,
            session.session_key if session is not None else None,
            sessions.visitor_from_cookie(cookies.get(sessions.VISITOR_COOKIE)),
        )
        if owner is None:
            return await self._refuse(CLOSE_REFUSED)
        user_context = await database_sync_to_async(context.user_context)(user)
        if not sessions.bindings.claim(
            session_id,
            owner=owner,
            notebook=notebook.slug,
            user_context=user_context,
            user_id=getattr(user, "pk", None),
        ):
            return await self._refuse(CLOSE_REFUSED)
        self.session_id, self.owner, self.notebook = session_id, owner, notebook
        await self._join_revocation_groups(user, session)

        meta = {}
        if conf.get("REQUEST_META"):
            meta = await database_sync_to_async(context.request_meta)(self.scope)
        scope = context.marimo_scope(
            {**self.scope, "path": path},
            path=self.scope["path"],
            root_path=(root_path + mount).rstrip("/"),
            user=user_context,
            meta=meta,
            notebook_file=str(notebook.path),
        )
        app = notebook_apps.app_for(notebook.path)
        self.marimo_task = asyncio.create_task(self._run_marimo(app, scope))
        await self.inbox.put({"type": "websocket.connect"})

    async def _join_revocation_groups(self, user: Any, session: Any) -> None:
        self.revocation_groups = []
        if self.channel_layer is None:
            return
        if getattr(user, "is_authenticated", False):
            self.revocation_groups.append(revocation.user_group(user.pk))
            if session is not None and session.session_key:
                self.revocation_groups.append(revocation.login_group(session.session_key))
        for group in self.revocation_groups:
            await self.channel_layer.group_add(group, self.channel_name)

    async def notebooks_revoke(self, message: dict[str, Any]) -> None:
        """The login that opened this session logged out."""
        await self._end_session()

    async def notebooks_recheck(self, message: dict[str, Any]) -> None:
        """The user's account, groups or permissions changed: ask again."""
        user = await _fresh_user(self.scope["user"])
        if await access.adecide(user, self.notebook) is not Access.ALLOWED:
            await self._end_session()

    async def _end_session(self) -> None:
        """Close the websocket and the marimo session behind it; later calls
        with this session id are refused."""
        if self.session_id is None:
            return
        sessions.bindings.forget(self.session_id)
        manager = notebook_apps.session_manager_for(self.notebook.path)
        if manager is not None:
            _marimo.close_session(manager, self.session_id)
        if not self.closed:
            self.closed = True
            await self.send({"type": "websocket.close", "code": CLOSE_REVOKED})

    async def _run_marimo(self, app: Any, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self.inbox.get, self._send_from_marimo)
        except Exception:
            logger.exception("marimo's websocket handler failed")
        finally:
            if not self.closed:
                self.closed = True
                await self.send({"type": "websocket.close", "code": 1011})

    async def _send_from_marimo(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        if message["type"] == "websocket.close":
            self.closed = True
        await self.send(message)

    async def _refuse(self, code: int) -> None:
        self.closed = True
        await self.send({"type": "websocket.close", "code": code})

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self.marimo_task is not None:
            await self.inbox.put(message)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.closed = True
        if self.marimo_task is not None:
            await self.inbox.put({"type": "websocket.disconnect", "code": message.get("code", 1000)})
            try:
                await asyncio.wait_for(asyncio.shield(self.marimo_task), DISCONNECT_TIMEOUT)
            except (asyncio.TimeoutError, Exception):
                self.marimo_task.cancel()
                with contextlib.suppress(BaseException):
                    await self.marimo_task
        if self.session_id and self.owner:
            sessions.bindings.release(self.session_id, self.owner)
        for group in getattr(self, "revocation_groups", ()):
            await self.channel_layer.group_discard(group, self.channel_name)
        raise StopConsumer()


@database_sync_to_async
def _fresh_user(user: Any) -> Any:
    """The user as the database has it now (permissions are cached on the
    instance, so the scope's user would answer from before the change)."""
    if not getattr(user, "is_authenticated", False):
        return user
    return user._meta.model._default_manager.filter(pk=user.pk).first()
