"""What notebook code sees as ``mo.app_meta().request``.

marimo builds that object from the ASGI scope it is given: ``scope["user"]``
becomes ``request.user`` (a dict passes through unchanged), ``scope["meta"]``
becomes ``request.meta``, and the headers and cookies come from
``scope["headers"]``. This module builds that scope for both paths through
the bridge (HTTP forwarding and the kernel websocket), so that both show the
notebook the same user and neither leaks a credential.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, quote

from django.http import parse_cookie

from django_notebooks import conf, query
from django_notebooks.marimo import routes
from django_notebooks.registry import Notebook

# Credentials the notebook must never see. Cookies are filtered separately
# (an allow-list); these headers are dropped whole.
SECRET_HEADERS = frozenset({b"authorization", b"proxy-authorization", b"x-csrftoken"})

NOTEBOOK_ID_HEADER = b"x-notebook-id"
SESSION_HEADER = routes.SESSION_HEADER.lower().encode("latin-1")
# The scope key that names the session the bridge admitted a call for (its
# owner's websocket, kernel call or download): only such a call reaches the
# session's kernel (kernels/router.py).
ADMITTED_SESSION = "django_notebooks.session_id"
# In a call to a session's kernel process: notebook code sees the request's
# user and meta of the session's websocket (the kernel process has them),
# not the call's own. A web process that reaches a kernel of its machine
# whose session another web process holds sends it (sessions/nearby.py).
SESSIONS_REQUEST = "django_notebooks.sessions_request"

# Keys other layers add to a scope that mean nothing to marimo, or that would
# hand it Django objects (the session, the user model instance).
# raw_path would contradict the path we set (and may hold the encoded form).
FOREIGN_SCOPE_KEYS = frozenset(
    {
        "session",
        "cookies",
        "url_route",
        "path_remaining",
        "user",
        "raw_path",
        SESSIONS_REQUEST,
    }
)


def _display_name(user: Any) -> str:
    get_full_name = getattr(user, "get_full_name", None)
    full_name = get_full_name() if get_full_name else ""
    return full_name or user.get_username()


def scope_headers(scope: dict[str, Any]) -> dict[str, str]:
    """An ASGI scope's headers by lower-case name (a repeated header keeps
    its last value, which is harmless for the headers the bridge reads)."""
    return {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in scope.get("headers", ())
    }


def session_id_in(
    scope: dict[str, Any], headers: dict[str, str] | None = None
) -> str | None:
    """The marimo session an ASGI call names: a websocket's ``session_id``
    query parameter, an HTTP call's ``Marimo-Session-Id`` header
    (``headers``: the scope's, when the caller has read them already)."""
    if scope["type"] == "websocket":
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return (query.get("session_id") or [""])[0] or None
    if headers is None:
        headers = scope_headers(scope)
    return headers.get(routes.SESSION_HEADER.lower()) or None


def session_context(
    user: Any, scope: dict[str, Any], notebook: Notebook | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``request.user`` and ``request.meta`` for a new notebook session, made
    together in one worker-thread hop (both hooks, and a query form, may
    query the database).

    For a notebook with a ``query`` option, the websocket's query parameters
    are validated first (raising :class:`~django_notebooks.query.InvalidQuery`)
    and their cleaned values are ``meta["query"]``, over any ``query`` key the
    ``REQUEST_META`` hook returned: notebook code can trust that key.
    """
    cleaned = None
    if notebook is not None and notebook.query is not None:
        cleaned = query.session_query(notebook, scope.get("query_string", b""))
    meta = request_meta(scope) if conf.get_settings().REQUEST_META else {}
    if cleaned is not None:
        meta = {**meta, "query": cleaned}
    return user_context(user), meta


def default_user_context(user: Any) -> dict[str, Any]:
    """The dict notebooks see as ``request.user``, for a Django user.

    Synchronous: reads the user's groups from the database.
    """
    if user is None or not getattr(user, "is_authenticated", False):
        return {
            "id": None,
            "username": "",
            "display_name": "",
            "is_authenticated": False,
            "is_staff": False,
            "is_superuser": False,
            "email": "",
            "first_name": "",
            "last_name": "",
            "groups": [],
        }
    return {
        "id": user.pk,
        "username": user.get_username(),
        "display_name": _display_name(user),
        "is_authenticated": True,
        "is_staff": bool(getattr(user, "is_staff", False)),
        "is_superuser": bool(getattr(user, "is_superuser", False)),
        "email": getattr(user, "email", "") or "",
        "first_name": getattr(user, "first_name", "") or "",
        "last_name": getattr(user, "last_name", "") or "",
        "groups": sorted(user.groups.values_list("name", flat=True))
        if hasattr(user, "groups")
        else [],
    }


def user_context(user: Any) -> dict[str, Any]:
    """``request.user`` for notebooks: the project's ``USER_CONTEXT`` or the default."""
    hook = conf.import_hook("USER_CONTEXT")
    context = hook(user) if hook else default_user_context(user)
    if not isinstance(context, dict):
        raise TypeError(
            f"DJANGO_NOTEBOOKS['USER_CONTEXT'] must return a dict, "
            f"not {type(context).__name__}."
        )
    return context


def request_meta(request_or_scope: Any) -> dict[str, Any]:
    """``request.meta`` for notebooks: what the project's ``REQUEST_META`` returns."""
    hook = conf.import_hook("REQUEST_META")
    if hook is None:
        return {}
    meta = hook(request_or_scope)
    if not isinstance(meta, dict):
        raise TypeError(
            f"DJANGO_NOTEBOOKS['REQUEST_META'] must return a dict, "
            f"not {type(meta).__name__}."
        )
    return meta


def _filtered_cookie_header(value: bytes, allowed: Iterable[str]) -> bytes | None:
    allowed = set(allowed)
    if not allowed:
        return None
    # Django's own lenient parser: one malformed cookie must not hide the rest.
    cookies = parse_cookie(value.decode("latin-1"))
    kept = [f"{name}={cookies[name]}" for name in cookies if name in allowed]
    return "; ".join(kept).encode("latin-1") if kept else None


def safe_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request headers without credentials: no ``Authorization``, and a
    ``Cookie`` header holding only the cookies on ``ALLOWED_COOKIES``."""
    allowed = conf.get_settings().ALLOWED_COOKIES
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in SECRET_HEADERS:
            continue
        if lowered == b"cookie":
            filtered = _filtered_cookie_header(value, allowed)
            if filtered is not None:
                kept.append((b"cookie", filtered))
            continue
        kept.append((name, value))
    return kept


def marimo_scope(
    scope: dict[str, Any],
    *,
    path: str,
    root_path: str,
    user: dict[str, Any],
    meta: dict[str, Any],
    notebook_file: str,
    session_id: str | None = None,
    sessions_request: bool = False,
) -> dict[str, Any]:
    """A copy of ``scope`` for marimo's app of one notebook.

    ``path`` is the full URL path and ``root_path`` the notebook's page URL
    without its trailing slash: marimo's Starlette routing matches the path
    below ``root_path``, and its frontend computes every URL from the page.
    ``session_id`` is the session the bridge admitted the call for (see
    admission.py); without one, a ``Marimo-Session-Id`` header the caller
    sent is dropped: it names a session the caller was not admitted to.
    With ``sessions_request``, notebook code sees the request of the
    session's websocket instead of ``user`` and ``meta`` (see
    :data:`SESSIONS_REQUEST`).
    """
    forwarded = {
        key: value for key, value in scope.items() if key not in FOREIGN_SCOPE_KEYS
    }
    forwarded["path"] = path
    query_string = scope.get("query_string", b"")
    if isinstance(query_string, str):  # Django's test client sends a str
        forwarded["query_string"] = query_string.encode("latin-1", "replace")
    forwarded["root_path"] = root_path
    # marimo's service worker names the notebook by its file path in this
    # header (for public/ files); the bridge knows the file, the browser need
    # not, so the header is always set here.
    dropped = (
        {NOTEBOOK_ID_HEADER} if session_id else {NOTEBOOK_ID_HEADER, SESSION_HEADER}
    )
    forwarded["headers"] = [
        *(
            h
            for h in safe_headers(scope.get("headers", ()))
            if h[0].lower() not in dropped
        ),
        (NOTEBOOK_ID_HEADER, quote(notebook_file).encode("latin-1")),
    ]
    forwarded["user"] = user
    forwarded["meta"] = meta
    if session_id:
        forwarded[ADMITTED_SESSION] = session_id
    if session_id and sessions_request:
        forwarded[SESSIONS_REQUEST] = True
    return forwarded


class SessionsRequest:
    """In a session's kernel process, marimo's app with the request of the
    session's websocket (its ``user`` and ``meta``) given to the calls
    that ask for it (:data:`SESSIONS_REQUEST`)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.request: dict[str, Any] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "websocket":
            self.request = {"user": scope.get("user"), "meta": scope.get("meta")}
        elif scope.pop(SESSIONS_REQUEST, False) and self.request:
            scope = {**scope, **self.request}
        await self.app(scope, receive, send)


def admitted_session(scope: dict[str, Any]) -> str | None:
    """The session a call to marimo was admitted for, if any."""
    found: str | None = scope.get(ADMITTED_SESSION)
    return found
