"""Outputs first: a new session's page shows the notebook's last snapshot
while its own kernel runs the notebook for the visitor.

The consumer (consumers.py) holds the snapshot's frames when a page of a
notebook with a ``snapshot`` option (and not ``static``) connects. marimo's
first frame for the session, ``kernel-ready``, comes as soon as the
session's kernel has started, before any cell ran: if it opens a new
session (not ``resumed``: a page that reconnects has its own outputs) of
the same cells (same ids, same code: a snapshot of another version of the
file would not fit them), the snapshot's outputs are sent right after it.
The visitor's run then replaces them cell by cell, as any run replaces
outputs; its widgets act once the cell that makes them has run.

What is sent of the snapshot: its frames but its own ``kernel-ready`` (the
page has the session's) and frames that point at files of the snapshot's
run (``@file/`` downloads and images: that kernel has ended; the visitor's
run brings its own).
"""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async

from django_notebooks.marimo import routes
from django_notebooks.registry import Notebook
from django_notebooks.snapshots import store

KERNEL_READY = "kernel-ready"


async def frames_for(notebook: Notebook) -> tuple[str, ...] | None:
    """The frames of ``notebook``'s snapshot to show first, if it has a
    snapshot of its file as it is (the row as static pages read it: at most
    once a second per process)."""
    if notebook.snapshot is None or notebook.static:
        return None
    found = store.served_lately(notebook) or await database_sync_to_async(store.served)(
        notebook
    )
    if found is None:
        return None
    row, content = found
    if row.file_version != store.current_version(notebook):
        return None
    return content.frames


def _kernel_ready(text: str) -> dict[str, Any] | None:
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    if not isinstance(frame, dict) or frame.get("op") != KERNEL_READY:
        return None
    data = frame.get("data")
    return data if isinstance(data, dict) else None


def shown_after(frames: tuple[str, ...], text: str) -> list[str]:
    """What of a snapshot's ``frames`` to send the page after marimo's first
    frame ``text``: its outputs, if that frame opens a new session of the
    same cells; nothing otherwise."""
    live = _kernel_ready(text)
    if live is None or live.get("resumed"):
        return []
    kept = None
    shown = []
    for frame in frames:
        ready = _kernel_ready(frame)
        if ready is not None:
            kept = ready
        elif not routes.virtual_files_in(frame):
            shown.append(frame)
    same_cells = kept is not None and all(
        kept.get(key) == live.get(key) for key in ("cell_ids", "codes")
    )
    return shown if same_cells else []
