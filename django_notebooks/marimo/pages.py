"""Changes the bridge makes to a notebook's page before the browser sees it.

marimo embeds the notebook's absolute file path, its folder and the server's
working directory in the page (for its editor, which run mode does not use).
Unless ``EXPOSE_FILE_PATHS`` is set, the bridge replaces them with the file's
name, so visitors learn nothing about the server's file system.

It also adds the script that shows the bridge's notices (notices.py): why a
session ended, or could not open.

marimo renders a notebook's page the same for every visitor and every
query (``tests/test_views.py`` checks it): the page is prepared once per
version of the notebook file (its time and size), URL and setting, and
kept (at most :data:`MAX_REMEMBERED_PAGES`, the least recently used going
first), which takes marimo's rendering, about 6 ms, off each page view.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.cache import get_conditional_response
from django.utils.http import quote_etag

from django_notebooks import conf, notices
from django_notebooks.marimo import visitor

MAX_REMEMBERED_PAGES = 256
Page = tuple[int, list[tuple[str, str]], bytes]  # status, headers, content


@conf.per_setting
def _remembered() -> OrderedDict[tuple[Any, ...], Page]:
    """The pages prepared under the setting in force, by _page_key()."""
    return OrderedDict()


def remembered_page(
    request: HttpRequest, notebook_file: Path, mount: str
) -> HttpResponse | None:
    """The notebook's page as prepared for an earlier request, if the file,
    the URL and the setting are the same (a 304 for a repeat visit)."""
    key = _page_key(request, notebook_file, mount)
    found = _remembered().get(key) if key is not None else None
    if key is None or found is None:
        return None
    _remembered().move_to_end(key)
    status, headers, content = found
    response = HttpResponse(content, status=status)
    for name, value in headers:
        response[name] = value
    return _conditional(request, response)


def _page_key(
    request: HttpRequest, notebook_file: Path, mount: str
) -> tuple[Any, ...] | None:
    version = visitor.file_version(notebook_file)
    if request.method != "GET" or not version:
        return None
    return (str(notebook_file), version, mount, request.scheme, request.get_host())


def _remember(
    request: HttpRequest, response: HttpResponse, notebook_file: Path, mount: str
) -> None:
    key = _page_key(request, notebook_file, mount)
    if key is None:
        return
    headers = [
        (name, value)
        for name, value in response.items()
        if name.lower() not in ("content-length", "set-cookie")
    ]
    pages = _remembered()
    pages[key] = (response.status_code, headers, response.content)
    pages.move_to_end(key)
    while len(pages) > MAX_REMEMBERED_PAGES:
        pages.popitem(last=False)


def forget_pages() -> None:
    """Forget the prepared pages (tests)."""
    _remembered().clear()


def _replacements(notebook_file: Path) -> list[tuple[bytes, bytes]]:
    folder, cwd = str(notebook_file.parent), os.getcwd()
    pairs = [
        (f"file://{notebook_file}", notebook_file.name),
        (str(notebook_file), notebook_file.name),
        (f"file://{folder}", "."),
        (f"file://{cwd}", "."),
        (f'"{folder}"', '"."'),
        (f'"{cwd}"', '"."'),
    ]
    # Longest first, so a path is never half-replaced by one of its prefixes.
    pairs.sort(key=lambda pair: len(pair[0]), reverse=True)
    return [(old.encode(), new.encode()) for old, new in pairs]


def without_file_paths(content: bytes, notebook_file: Path) -> bytes:
    """A page of the notebook with the server's paths replaced by the
    file's name (and ``.`` for its folder)."""
    for old, new in _replacements(notebook_file):
        content = content.replace(old, new)
    return content


def prepare_page(
    request: HttpRequest,
    response: HttpResponse | StreamingHttpResponse,
    notebook_file: Path,
    mount: str,
) -> HttpResponse | StreamingHttpResponse:
    """The page as the browser gets it: server paths removed (unless
    ``EXPOSE_FILE_PATHS``), the notices script added, with an ETag of what
    is sent, so that a repeat visit gets a 304 instead of the page again;
    remembered for the next request (``mount``: the page's URL path)."""
    if not isinstance(response, HttpResponse) or response.status_code != 200:
        return response
    if not response.get("Content-Type", "").startswith("text/html"):
        return response
    content = response.content
    if not conf.get_settings().EXPOSE_FILE_PATHS:
        content = without_file_paths(content, notebook_file)
    # Anywhere in <head> runs before marimo's own code (a deferred module).
    response.content = content.replace(
        b"</head>", notices.page_script().encode() + b"</head>", 1
    )
    response["ETag"] = quote_etag(
        hashlib.blake2b(response.content, digest_size=16).hexdigest()
    )
    _remember(request, response, notebook_file, mount)
    return _conditional(request, response)


def _conditional(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    not_modified = get_conditional_response(
        request, etag=response["ETag"], response=response
    )
    return not_modified or response
