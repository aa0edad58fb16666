"""``FastPathMiddleware``: kernel calls and frontend files without Django's
request machinery.

Under ASGI, Django hands each request to worker threads a dozen times (every
middleware that is not async-native, the session and user lookups) and starts
a thread per request: about 3 ms on a small machine, more than marimo takes to
answer a widget change. Two kinds of requests need none of it:

- kernel calls from the owner of a session: their admission (admission.py)
  reads only headers and this process's session bindings, or sends the call
  to the process holding the session;
- marimo's frontend files (marimo/frontend.py): public, the same for everyone.

Wrap the project's HTTP application to answer those directly::

    "http": FastPathMiddleware(get_asgi_application()),

Everything else, and every kernel call that is not admitted at once (not the
owner, cross-site, ...), goes to Django as before: the view takes the same
decision, and adds what needs Django (the user, for a 401 or 403). The project's own HTTP
middleware does not run for the requests answered here, as it does not for
websockets.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.urls import Resolver404, resolve

from django_notebooks import admission, calls, context, registry
from django_notebooks.marimo import frontend, routes
from django_notebooks.marimo.forwarding import Reply, send_reply
from django_notebooks.marimo.routes import Route

logger = logging.getLogger(__name__)

# A cheap test before the URL is resolved.
KERNEL_API = "/" + routes.KERNEL_API_PREFIX


def _allowed_host(host: str) -> bool:
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed)


class FastPathMiddleware:
    """ASGI middleware for the project's HTTP application (see the module
    docstring). Keeps no per-request state on the instance."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            method = scope["method"]
            path = scope["path"]
            if method == "POST" and KERNEL_API in path:
                if await self._kernel_call(scope, receive, send):
                    return
            elif method in ("GET", "HEAD") and "/_marimo/" in path:
                if await self._frontend_file(scope, send):
                    return
        await self.app(scope, receive, send)

    @staticmethod
    def _match(scope: dict[str, Any]) -> Any:
        path = scope["path"]
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        try:
            match = resolve(path)
        except Resolver404:
            return None
        if "django_notebooks" not in match.app_names:
            return None
        return match

    async def _frontend_file(self, scope: dict[str, Any], send: Any) -> bool:
        match = self._match(scope)
        if match is None or match.url_name != "frontend":
            return False
        headers = context.scope_headers(scope)
        answer = frontend.answer(
            match.kwargs["version"],
            match.kwargs["path"],
            accept_encoding=headers.get("accept-encoding", ""),
            if_none_match=headers.get("if-none-match"),
        )
        if answer is None:
            return False  # Django gives the 404
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in answer.headers
                ],
            }
        )
        body = b"" if scope["method"] == "HEAD" else answer.body
        await send({"type": "http.response.body", "body": body})
        return True

    async def _kernel_call(
        self, scope: dict[str, Any], receive: Any, send: Any
    ) -> bool:
        match = self._match(scope)
        if match is None or match.url_name != "notebook_location":
            return False
        found = registry.locate(match.kwargs["location"])
        if found is None or routes.route_of(found.subpath) is not Route.KERNEL_CALL:
            return False  # the view answers (404 for what marimo is not asked)
        caller = admission.Caller.from_scope(scope)
        if not _allowed_host(caller.host):
            return False  # Django answers 400 for a disallowed host

        async def read_body() -> bytes | None:
            return await _read_body(receive, send)

        answer = await calls.kernel_call(found, caller, scope, read_body)
        if answer is None:
            return True  # answered already (or the client went)
        if not isinstance(answer, Reply):
            # Refusals, and callers that are not the owner (whether that is a
            # 401, 403 or 410 takes the access decision), are answered by the
            # view, with the project's middleware: nothing was read yet.
            return False
        await send_reply(send, answer)
        return True


async def _read_body(receive: Any, send: Any) -> bytes | None:
    """A kernel call's body; ``None`` if the client left or it was refused
    (the refusal is sent)."""
    body = b""
    more_body = True
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    while more_body:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        more_body = message.get("more_body", False)
        if limit is not None and len(body) > limit:
            refusal: admission.Refusal | None = admission.TOO_LARGE
            break
    else:
        refusal = admission.body_refusal(body)
    if refusal is not None:
        await send_reply(send, refusal.reply())
        return None
    return body
