"""Changes the bridge makes to a notebook's page before the browser sees it.

marimo embeds the notebook's absolute file path, its folder and the server's
working directory in the page (for its editor, which run mode does not use).
Unless ``EXPOSE_FILE_PATHS`` is set, the bridge replaces them with the file's
name, so visitors learn nothing about the server's file system.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.http import HttpResponse

from . import conf


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


def hide_file_paths(response: HttpResponse, notebook_file: Path) -> None:
    """Remove server paths from a notebook page (in place)."""
    if conf.get("EXPOSE_FILE_PATHS") or response.streaming:
        return
    if not response.get("Content-Type", "").startswith("text/html"):
        return
    content = response.content
    for old, new in _replacements(notebook_file):
        content = content.replace(old, new)
    response.content = content
    # The ETag marimo computed was for the page with the paths.
    if "ETag" in response:
        del response["ETag"]
