"""A staticfiles finder for marimo's frontend, for ``FRONTEND = "staticfiles"``.

Add it to ``STATICFILES_FINDERS``; ``collectstatic`` then copies marimo's
frontend to ``STATIC_ROOT/django_notebooks/marimo/<marimo version>/``, where
notebook pages point (a marimo upgrade gives new URLs).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import marimo
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

from django_notebooks.marimo import internals
from django_notebooks.marimo.frontend import STATIC_PREFIX


class _FrontendStorage(FileSystemStorage):
    """marimo's frontend folder; ``prefix`` tells collectstatic where below
    STATIC_ROOT its files go."""

    prefix = ""


class MarimoFrontendFinder(BaseFinder):
    """Finds marimo's frontend files under ``django_notebooks/marimo/<version>/``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefix = f"{STATIC_PREFIX}/{marimo.__version__}"
        self.storage = _FrontendStorage(location=str(internals.frontend_root()))
        self.storage.prefix = self.prefix

    def check(self, **kwargs: Any) -> list[Any]:
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> Any:
        find_all = find_all or kwargs.get("all", False)
        if not path.startswith(self.prefix + "/"):
            return [] if find_all else None
        relative = path[len(self.prefix) + 1 :]
        if not relative or not self.storage.exists(relative):
            return [] if find_all else None
        match = self.storage.path(relative)
        return [match] if find_all else match

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, _FrontendStorage]]:
        root = internals.frontend_root()
        for file in sorted(root.rglob("*")):
            if file.is_file() and file.suffix not in (".md", ".html"):
                yield file.relative_to(root).as_posix(), self.storage
