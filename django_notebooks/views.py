"""The notebooks index and the view that forwards a notebook's HTTP traffic
(its page and everything below it) to marimo."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.utils.cache import patch_vary_headers

from django_notebooks import access, admission, calls, conf, context, registry
from django_notebooks.access import Access
from django_notebooks.kernels import router
from django_notebooks.marimo import pages, routes
from django_notebooks.marimo.forwarding import django_response, forward_http
from django_notebooks.marimo.routes import Route
from django_notebooks.query import page_refusal
from django_notebooks.sessions import owners, records, relay
from django_notebooks.snapshots import keeper
from django_notebooks.snapshots import pages as snapshot_pages

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

logger = logging.getLogger(__name__)


def json_error(status: int, message: str) -> HttpResponse:
    """An error answer for the marimo frontend (or any API client)."""
    return refusal_response(admission.Refusal(status, message))


def refusal_response(refusal: admission.Refusal) -> HttpResponse:
    return HttpResponse(
        refusal.body(), status=refusal.status, content_type="application/json"
    )


async def get_user(request: HttpRequest) -> Any:
    """``request.user``, loaded without blocking the event loop."""
    auser = getattr(request, "auser", None)
    if auser is not None:  # Django 5.0+
        return await auser()
    user = request.user
    await sync_to_async(lambda: user.is_authenticated)()
    return user


def index(request: HttpRequest) -> HttpResponse:
    """The notebooks this user may open."""
    notebooks = [
        notebook
        for notebook in registry.all_notebooks()
        if access.may_open(request.user, notebook)
    ]
    return render(
        request,
        "django_notebooks/index.html",
        {
            "notebooks": notebooks,
            "logged_in": request.user.is_authenticated,
            # LOGIN_URL?next=<this page>, as a refused notebook page redirects.
            "login_url": redirect_to_login(request.get_full_path()).url,
        },
    )


async def notebook(
    request: HttpRequest, slug: str
) -> HttpResponse | StreamingHttpResponse:
    """A notebook's page, at ``<slug>/`` (the URL ``reverse`` gives)."""
    return await serve(request, f"{slug}/")


async def notebook_location(
    request: HttpRequest, location: str
) -> HttpResponse | StreamingHttpResponse:
    """Anything at or below a notebook's page: assets, kernel API, files."""
    return await serve(request, location)


# marimo's frontend sends no CSRF token, so Django's check would refuse every
# kernel call: origins.py guards them instead. (Set as attributes because
# Django 4.2's csrf_exempt decorator does not support async views.)
notebook.csrf_exempt = True  # type: ignore[attr-defined]
notebook_location.csrf_exempt = True  # type: ignore[attr-defined]


async def serve(
    request: HttpRequest, location: str
) -> HttpResponse | StreamingHttpResponse:
    """Answer one request at or below a notebook's page."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return _websocket_misrouted(request, location)
    response = await _serve(request, location)
    # Framing by this site only: the embedding tag needs it, other sites may
    # not frame notebooks (XFrameOptionsMiddleware keeps a header set here).
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    return response


async def _serve(
    request: HttpRequest, location: str
) -> HttpResponse | StreamingHttpResponse:
    found = registry.locate(location)
    if found is None:
        if (
            conf.get_settings().CONCEAL_FORBIDDEN
            and not (await get_user(request)).is_authenticated
        ):
            is_page = request.method in SAFE_METHODS and _looks_like_page(location)
            return _refuse(request, Access.LOGIN_REQUIRED, is_page=is_page)
        raise Http404("No such notebook.")
    route = routes.route_of(found.subpath) if found.has_slash else Route.PAGE
    if found.notebook.static and route is Route.KERNEL_CALL:
        # A static notebook has no kernel: nothing below it runs code.
        route = None
    if route is None or request.method not in routes.METHODS[route]:
        return await _not_served(request, found, route)
    if found.notebook.static and route is Route.PAGE and found.has_slash:
        return await _serve_static(request, found)
    if route is Route.KERNEL_CALL:
        return await _serve_kernel_call(request, found)
    return await _serve_read(request, found)


async def _not_served(
    request: HttpRequest, found: registry.Location, route: Route | None
) -> HttpResponse:
    """A path below a notebook that marimo is not asked for (see
    marimo/routes.py): after the access decision, as for every path into a
    notebook, so that the answer tells nobody more than the page would."""
    decision = await access.adecide(await get_user(request), found.notebook)
    if decision is not Access.ALLOWED:
        return _refuse(request, decision, is_page=False)
    if route is None or not routes.METHODS[route]:
        return json_error(404, "Not found.")
    response = json_error(405, "Method not allowed.")
    response["Allow"] = ", ".join(sorted(routes.METHODS[route]))
    return response


async def _serve_read(
    request: HttpRequest, found: registry.Location
) -> HttpResponse | StreamingHttpResponse:
    """The page, its assets and files: the access decision, then marimo."""
    notebook = found.notebook
    is_page = found.subpath == ""
    user = await get_user(request)
    decision = await access.adecide(user, notebook)
    if decision is not Access.ALLOWED:
        return _refuse(request, decision, is_page=is_page or not found.has_slash)
    if not found.has_slash:
        query = request.META.get("QUERY_STRING", "")
        return HttpResponseRedirect(request.path + "/" + (f"?{query}" if query else ""))

    if is_page and notebook.query is not None:
        # The kernel websocket checks the query again: this is for a clear page.
        refusal: HttpResponse | None = await database_sync_to_async(page_refusal)(
            request, notebook
        )
        if refusal is not None:
            return refusal
    if routes.virtual_file_name(found.subpath) is not None:
        return await _serve_virtual_file(request, found, user)
    response: HttpResponse | StreamingHttpResponse | None = None
    if is_page:
        keeper.start()  # snapshots are made in web processes that serve pages
        router.warm()  # the page's websocket follows: have its fork ready
        mount = found.mount(request.path)
        response = pages.remembered_page(request, notebook.path, mount)
    if response is None:
        response = await _to_marimo(request, found, _identity(user), {}, b"")
        if is_page:
            response = pages.prepare_page(request, response, notebook.path, mount)
    if is_page:
        patch_vary_headers(response, ["Cookie"])
        if notebook.public and not user.is_authenticated and _visitor(request) is None:
            # Anonymous visitors of public notebooks own their sessions
            # through this cookie, as logged-in users do through their login.
            response.set_cookie(
                owners.VISITOR_COOKIE,
                owners.new_visitor_cookie(),
                httponly=True,
                samesite="Lax",
                secure=settings.SESSION_COOKIE_SECURE,
            )
    return response


async def _serve_static(request: HttpRequest, found: registry.Location) -> HttpResponse:
    """A static notebook's page: its snapshot, after the access decision. A
    public one's answer depends on nobody's login (so shared caches may
    keep it): the session is not even read."""
    notebook = found.notebook
    if not notebook.public:
        decision = await access.adecide(await get_user(request), notebook)
        if decision is not Access.ALLOWED:
            return _refuse(request, decision, is_page=True)
    return await snapshot_pages.static_page(request, notebook)


async def _serve_kernel_call(
    request: HttpRequest, found: registry.Location
) -> HttpResponse | StreamingHttpResponse:
    """A kernel call (a POST), through the one pipeline (calls.py)."""
    caller = admission.Caller.from_request(request)

    async def read_body() -> bytes | admission.Refusal:
        return _body(request)

    answer = await calls.kernel_call(found, caller, _asgi_scope(request), read_body)
    if isinstance(answer, admission.Stranger):
        # Not the owner: say whether logging in would help, as pages do.
        user = await get_user(request)
        decision = await access.adecide(user, found.notebook)
        if decision is not Access.ALLOWED:
            return _refuse(request, decision, is_page=False)
        answer = admission.stranger_refusal(answer)
    if isinstance(answer, admission.Refusal):
        return refusal_response(answer)
    assert answer is not None  # (read_body never answers itself)
    return django_response(answer)


def _body(request: HttpRequest) -> bytes | admission.Refusal:
    """A kernel call's body, or why it is refused."""
    try:
        body = request.body
    except RequestDataTooBig:
        return admission.TOO_LARGE
    return admission.body_refusal(body) or body


async def _to_marimo(
    request: HttpRequest,
    found: registry.Location,
    user_context: dict[str, Any],
    meta: dict[str, Any],
    body: bytes,
    *,
    session_id: str | None = None,
) -> HttpResponse | StreamingHttpResponse:
    """Hand the request to the notebook's marimo app (``session_id``: the
    session it was admitted for, whose kernel answers it).

    Notebook code sees the request of its websocket and of its kernel calls
    (never of an asset); those carry the session's user context and meta.
    """
    notebook = found.notebook
    mount = found.mount(request.path)
    scope = context.marimo_scope(
        _asgi_scope(request),
        path=request.path,
        root_path=mount.rstrip("/"),
        user=user_context,
        meta=meta,
        notebook_file=str(notebook.path),
        session_id=session_id,
    )
    return await forward_http(router.app_for(notebook), scope, body)


async def _serve_virtual_file(
    request: HttpRequest, found: registry.Location, user: Any
) -> HttpResponse | StreamingHttpResponse:
    """A download (``@file/<name>``), only for the login whose session's
    kernel made it, through the notebook it belongs to (admission.py): from
    marimo here, or through the channel layer from the process holding it.
    Before a kernel has started marimo would even read the host's shared
    memory by the name in the URL: it is never asked for another name."""
    caller = admission.Caller.from_request(request)
    owner = caller.owner(user)
    if owner is None:
        return refusal_response(admission.NO_SUCH_FILE)
    holder = admission.download_here(found, owner)
    if holder is not None:
        return await _to_marimo(
            request, found, _identity(user), {}, b"", session_id=holder
        )
    if get_channel_layer() is not None:
        elsewhere = await database_sync_to_async(records.sessions_elsewhere)(
            owner, found.notebook.slug
        )
        for session_id in elsewhere:
            response = await _to_holder(
                request, found, replace(caller, session_id=session_id), _identity(user)
            )
            if response.status_code != 404:
                return response
    return refusal_response(admission.NO_SUCH_FILE)


async def _to_holder(
    request: HttpRequest,
    found: registry.Location,
    caller: admission.Caller,
    user: dict[str, Any],
) -> HttpResponse:
    """Fetch a download from the server process holding ``caller.session_id``."""
    reply = await relay.ask_holder(
        _asgi_scope(request), found, caller, kind="file", body=b"", user=user
    )
    return django_response(reply)


def _websocket_misrouted(request: HttpRequest, location: str) -> HttpResponse:
    """A kernel websocket handshake that reached Django's HTTP views.

    An ASGI server with websocket support hands websockets to the Channels
    consumer, never to a view. Arriving here, it came through a server that
    cannot hold a websocket (a WSGI server such as gunicorn's sync workers,
    ``runserver`` without Daphne): say so, instead of marimo's bare 404.
    """
    prefix = request.path[: len(request.path) - len(location)]
    message = (
        f"The notebook websocket {request.path} reached a server without "
        "websocket support (a WSGI server, or runserver without 'daphne' in "
        "INSTALLED_APPS). Notebooks need your ASGI application: serve "
        f"{prefix} with Daphne or uvicorn (see the deployment docs, 'WSGI and "
        "ASGI side by side')."
    )
    logger.error(message)
    return HttpResponse(message, status=501, content_type="text/plain")


def _looks_like_page(location: str) -> bool:
    """Whether an unknown location has the shape of a notebook's page URL."""
    segments = location.rstrip("/").split("/")
    depth = 2 if segments[0] in registry.directories() else 1
    return len(segments) <= depth


def _visitor(request: HttpRequest) -> str | None:
    return owners.visitor_from_cookie(request.COOKIES.get(owners.VISITOR_COOKIE))


def _refuse(request: HttpRequest, decision: Access, *, is_page: bool) -> HttpResponse:
    """The answer for a request the access decision refused.

    With ``CONCEAL_FORBIDDEN``, a notebook the user may not open answers as
    if it did not exist, and unknown notebooks ask anonymous users to log in
    as private ones do: nobody learns which notebooks exist beyond what their
    index shows them.
    """
    if decision is Access.FORBIDDEN and conf.get_settings().CONCEAL_FORBIDDEN:
        if is_page:
            raise Http404("No such notebook.")
        return json_error(404, "No such notebook.")
    if is_page and decision is Access.LOGIN_REQUIRED:
        return redirect_to_login(request.get_full_path())
    if is_page:
        raise PermissionDenied("You may not open this notebook.")
    if decision is Access.LOGIN_REQUIRED:
        return json_error(401, "Log in to use this notebook.")
    return json_error(403, "You may not use this notebook.")


def _identity(user: Any) -> dict[str, Any]:
    """Who is asking, for requests that run no notebook code (assets, the
    page). Requests that do run code get the full user context from the
    session binding, made when the kernel websocket opened."""
    if not user.is_authenticated:
        return {"id": None, "username": "", "is_authenticated": False}
    return {"id": user.pk, "username": user.get_username(), "is_authenticated": True}


def _asgi_scope(request: HttpRequest) -> dict[str, Any]:
    scope: dict[str, Any] | None = getattr(request, "scope", None)
    if scope is not None:
        return scope
    # Under WSGI (e.g. the sync test client) there is no ASGI scope: make one.
    headers = [
        (key[5:].replace("_", "-").lower().encode("latin-1"), value.encode("latin-1"))
        for key, value in request.META.items()
        if key.startswith("HTTP_")
    ]
    if "CONTENT_TYPE" in request.META:
        headers.append(
            (b"content-type", request.META["CONTENT_TYPE"].encode("latin-1"))
        )
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "query_string": request.META.get("QUERY_STRING", "").encode("latin-1"),
        "headers": headers,
        "server": (request.get_host(), int(request.get_port())),
    }
