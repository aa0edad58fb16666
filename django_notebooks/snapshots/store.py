"""Where snapshots are kept: every web process and every machine finds them.

The content (the static page and the run's frames, one JSON file) goes to
Django's storage API, the storage ``SNAPSHOT_STORAGE`` names (``"default"``
unless set): a folder of the server for one machine, S3 or the like for
several. Not Django's cache: a cache may drop an entry whenever it likes
(a static notebook would have no page until its next run), memcached keeps
nothing over 1 MB, and the local-memory cache is one process's. What
describes each snapshot (when it was made, its file, its ETag, the last
failure) is a row of :class:`~django_notebooks.models.NotebookSnapshot`,
updated only once the new file is complete: a reader sees the old snapshot
or the new one, never half of one.

Each web process keeps the content it read in memory (by ETag, at most
:data:`MAX_KEPT_BYTES`), and reads a static notebook's row at most once
every :data:`ROW_FRESH_SECONDS`: a crowd on a static page costs no
database query and no file read per view, and a new snapshot is served
at most that much later.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages
from django.utils import timezone
from django.utils.html import escape

from django_notebooks import conf
from django_notebooks.marimo import pages, visitor
from django_notebooks.models import NotebookSnapshot
from django_notebooks.registry import Notebook
from django_notebooks.snapshots.making import Made

logger = logging.getLogger(__name__)

FOLDER = "django_notebooks/snapshots"
# Content kept in each web process's memory, at most.
MAX_KEPT_BYTES = 64 * 1024 * 1024
# The longest error message kept for the admin.
MAX_ERROR_CHARS = 4000
# How long a process serves a snapshot before it reads its row again.
ROW_FRESH_SECONDS = 1.0


@dataclass(frozen=True)
class Content:
    """A snapshot's content: the static page and the run's frames."""

    html: str
    frames: tuple[str, ...]


_kept: OrderedDict[str, Content] = OrderedDict()
# slug -> (when read, row, content): what served() found lately.
_served: dict[str, tuple[float, NotebookSnapshot, Content]] = {}
_kept_bytes = 0
_kept_lock = threading.Lock()


def storage() -> Storage:
    """The storage snapshots are kept in."""
    return storages[conf.get_settings().SNAPSHOT_STORAGE]


def row_of(notebook: Notebook) -> NotebookSnapshot | None:
    """The notebook's snapshot row, if it has one."""
    try:
        return NotebookSnapshot.objects.get(notebook=notebook.slug)
    except NotebookSnapshot.DoesNotExist:
        return None


def served_lately(notebook: Notebook) -> tuple[NotebookSnapshot, Content] | None:
    """What :func:`served` found for ``notebook`` less than
    :data:`ROW_FRESH_SECONDS` ago (no database, no file: for the event loop)."""
    found = _served.get(notebook.slug)
    if found is None or time.monotonic() - found[0] >= ROW_FRESH_SECONDS:
        return None
    return found[1], found[2]


def served(notebook: Notebook) -> tuple[NotebookSnapshot, Content] | None:
    """The snapshot to serve as ``notebook``'s page, with its row (None:
    none made yet, or the storage is not there: check E023)."""
    try:
        storage()
    except ImproperlyConfigured:
        logger.error("SNAPSHOT_STORAGE names no storage (check E023)")
        return None
    # Twice: a row read just before another process replaced its file.
    for _ in range(2):
        row = row_of(notebook)
        if row is None or not row.file or row.made_at is None:
            return None
        content = content_of(row)
        if content is not None:
            _served[notebook.slug] = (time.monotonic(), row, content)
            return row, content
    return None


def content_of(row: NotebookSnapshot) -> Content | None:
    """A made snapshot's content (None: not made, or its file is gone)."""
    if not row.file:
        return None
    with _kept_lock:
        found = _kept.get(row.etag)
        if found is not None:
            _kept.move_to_end(row.etag)
            return found
    try:
        with storage().open(row.file, "rb") as file:
            data = json.loads(file.read())
        content = Content(html=data["html"], frames=tuple(data["frames"]))
    except (OSError, ValueError, KeyError, TypeError):
        # Replaced meanwhile by another process (the row read before was
        # the old one), or lost: the caller reads the row again.
        logger.warning(
            "The snapshot file %s of %r cannot be read", row.file, row.notebook
        )
        return None
    _keep(row.etag, content)
    return content


def _keep(etag: str, content: Content) -> None:
    global _kept_bytes
    size = len(content.html) + sum(len(frame) for frame in content.frames)
    with _kept_lock:
        if etag in _kept:
            return
        _kept[etag] = content
        _kept_bytes += size
        while _kept_bytes > MAX_KEPT_BYTES and len(_kept) > 1:
            _, dropped = _kept.popitem(last=False)
            _kept_bytes -= len(dropped.html) + sum(len(f) for f in dropped.frames)


def forget_kept() -> None:
    """Forget the content kept in memory (tests)."""
    global _kept_bytes
    with _kept_lock:
        _kept.clear()
        _kept_bytes = 0
    _served.clear()


def save(notebook: Notebook, made: Made, *, version: str) -> NotebookSnapshot:
    """Store a new snapshot of ``notebook`` (``version``: its file's version
    when the run started) and make it the one served."""
    made_at = timezone.now()
    html = page_with_stamp(notebook, made.html, made_at)
    data = json.dumps({"html": html, "frames": list(made.frames)}).encode()
    etag = hashlib.blake2b(html.encode(), digest_size=16).hexdigest()
    name = storage().save(
        f"{FOLDER}/{_file_stem(notebook)}-{etag}.json", ContentFile(data)
    )
    row, _ = NotebookSnapshot.objects.get_or_create(notebook=notebook.slug)
    old_file = row.file
    row.file = name
    row.etag = etag
    row.file_version = version
    row.made_at = made_at
    row.size = len(data)
    row.seconds = round(made.seconds, 3)
    row.failed_at = None
    row.last_error = ""
    row.save(
        update_fields=[
            "file",
            "etag",
            "file_version",
            "made_at",
            "size",
            "seconds",
            "failed_at",
            "last_error",
        ]
    )
    _keep(etag, Content(html=html, frames=made.frames))
    if old_file and old_file != name:
        try:
            storage().delete(old_file)
        except OSError:
            logger.warning("The old snapshot file %s could not be deleted", old_file)
    return row


def record_failure(notebook: Notebook, error: str, version: str) -> None:
    """Note a failed making of the file's ``version`` (the old snapshot
    stays served)."""
    row, _ = NotebookSnapshot.objects.get_or_create(notebook=notebook.slug)
    row.failed_at = timezone.now()
    row.failed_version = version
    row.last_error = error[:MAX_ERROR_CHARS]
    row.save(update_fields=["failed_at", "failed_version", "last_error"])


def delete(slug: str) -> None:
    """Delete a snapshot, its row and its file (the admin's delete)."""
    for row in NotebookSnapshot.objects.filter(notebook=slug):
        if row.file:
            storage().delete(row.file)
        row.delete()


def current_version(notebook: Notebook) -> str:
    """The notebook file's version now (a snapshot of another is stale)."""
    return visitor.file_version(notebook.path)


def _file_stem(notebook: Notebook) -> str:
    return notebook.slug.replace("/", "--")


def page_with_stamp(notebook: Notebook, html: str, made_at: datetime.datetime) -> str:
    """marimo's static page, with the server's paths removed (as from the
    notebook's live page) and a line saying when it was made."""
    content = html.encode()
    if not conf.get_settings().EXPOSE_FILE_PATHS:
        content = pages.without_file_paths(content, notebook.path)
    stamp = made_at.astimezone(datetime.UTC)
    label = f"{stamp.day} {stamp:%b %Y, %H:%M} UTC"
    line = (
        '<div class="django-notebooks-snapshot" role="note" '
        'style="position:fixed;left:0.5rem;bottom:0.5rem;z-index:1000;'
        "padding:0.15rem 0.5rem;border-radius:0.25rem;font:12px sans-serif;"
        'background:rgba(255,255,255,0.85);color:#555;box-shadow:0 0 2px #999">'
        f'Snapshot of <time datetime="{escape(stamp.isoformat())}">{escape(label)}'
        "</time></div>"
    )
    return content.decode().replace("</body>", line + "</body>", 1)
