"""Changes the bridge makes to a notebook's page before the browser sees it.

marimo embeds the notebook's absolute file path, its folder and the server's
working directory in the page (for its editor, which run mode does not use).
Unless ``EXPOSE_FILE_PATHS`` is set, the bridge replaces them with the file's
name, so visitors learn nothing about the server's file system.

It also adds the script that shows the bridge's notices (notices.py): why a
session ended, or could not open.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.cache import get_conditional_response
from django.utils.http import quote_etag

from django_notebooks import conf, notices


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


def prepare_page(
    request: HttpRequest,
    response: HttpResponse | StreamingHttpResponse,
    notebook_file: Path,
) -> HttpResponse | StreamingHttpResponse:
    """The page as the browser gets it: server paths removed (unless
    ``EXPOSE_FILE_PATHS``), the notices script added, with an ETag of what
    is sent, so that a repeat visit gets a 304 instead of the page again."""
    if not isinstance(response, HttpResponse) or response.status_code != 200:
        return response
    if not response.get("Content-Type", "").startswith("text/html"):
        return response
    content = response.content
    if not conf.get_settings().EXPOSE_FILE_PATHS:
        for old, new in _replacements(notebook_file):
            content = content.replace(old, new)
    # Anywhere in <head> runs before marimo's own code (a deferred module).
    response.content = content.replace(
        b"</head>", notices.page_script().encode() + b"</head>", 1
    )
    response["ETag"] = quote_etag(
        hashlib.blake2b(response.content, digest_size=16).hexdigest()
    )
    not_modified = get_conditional_response(
        request, etag=response["ETag"], response=response
    )
    return not_modified or response
