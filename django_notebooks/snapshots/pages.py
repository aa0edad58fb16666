"""A static notebook's page: its stored snapshot, no kernel.

Served after the notebook's access decision, like any of its pages, with
an ``ETag`` (the snapshot's) and ``Last-Modified`` (when it was made), so a
repeated visit gets a 304. A public notebook's page may be kept by shared
caches for ``snapshot.refresh`` seconds (``Cache-Control: public``: a CDN
can serve it); any other is ``private``, so no shared cache ever gives one
visitor's allowed page to someone else.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.cache import get_conditional_response, patch_vary_headers
from django.utils.http import http_date, quote_etag

from django_notebooks.registry import Notebook
from django_notebooks.snapshots import keeper, store

# A page not made yet: the browser tries again after this many seconds.
RETRY_AFTER = 5


async def static_page(request: HttpRequest, notebook: Notebook) -> HttpResponse:
    """``notebook``'s page, for a visitor the access decision allowed."""
    keeper.start()
    found = store.served_lately(notebook) or await database_sync_to_async(store.served)(
        notebook
    )
    if found is None:
        return _not_made_yet(request, notebook)
    row, content = found
    response = HttpResponse(content.html)
    response["ETag"] = quote_etag(row.etag)
    assert row.made_at is not None
    response["Last-Modified"] = http_date(row.made_at.timestamp())
    response["Cache-Control"] = _cache_control(notebook)
    if not notebook.public:
        patch_vary_headers(response, ["Cookie"])
    not_modified = get_conditional_response(
        request,
        etag=response["ETag"],
        last_modified=int(row.made_at.timestamp()),
        response=response,
    )
    return not_modified or response


def _cache_control(notebook: Notebook) -> str:
    if not notebook.public:
        return "private, no-cache"
    assert notebook.snapshot is not None
    refresh = notebook.snapshot.refresh
    return f"public, max-age={int(refresh)}" if refresh else "public, no-cache"


def _not_made_yet(request: HttpRequest, notebook: Notebook) -> HttpResponse:
    keeper.poke()
    response = HttpResponse(
        render_to_string(
            "django_notebooks/snapshot_pending.html",
            {"notebook": notebook, "retry_after": RETRY_AFTER},
            request=request,
        ),
        status=503,
    )
    response["Retry-After"] = str(RETRY_AFTER)
    response["Cache-Control"] = "no-store"
    return response
