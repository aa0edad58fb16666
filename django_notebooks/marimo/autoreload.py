"""Keep Django's development autoreloader working beside marimo kernels.

Each marimo kernel installs its own module as ``sys.modules["__main__"]`` and
clears it when its session ends. A cleared module has no ``__name__``, and
the autoreloader of ``manage.py runserver``, which reads the name of every
module once a second, then crashes the server. Just before the reloader reads
the modules, the module marimo left empty is replaced by the process's own.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.utils.autoreload import autoreload_started

# The process's real __main__ (manage.py), seen before any kernel ran.
_process_main = sys.modules.get("__main__")


def restore_main_module() -> None:
    """Put the process's ``__main__`` back if a finished kernel left its own,
    emptied, in its place."""
    current = sys.modules.get("__main__")
    if (
        isinstance(current, types.ModuleType)
        and current is not _process_main
        and "__name__" not in current.__dict__
        and _process_main is not None
    ):
        sys.modules["__main__"] = _process_main


def connect_signals() -> None:
    """Called from the app's ``ready()``, before any kernel can run."""
    autoreload_started.connect(
        _guard_reloader, dispatch_uid="django_notebooks.marimo.autoreload"
    )


def _guard_reloader(sender: Any, **kwargs: Any) -> None:
    watched_files = sender.watched_files

    def guarded_watched_files(include_globs: bool = True) -> Iterator[Path]:
        restore_main_module()
        yield from watched_files(include_globs)

    sender.watched_files = guarded_watched_files
