"""When snapshots are made, and by whom: off the request path, one process
at a time.

A notebook's snapshot is made again when it is due:

- it has none yet, or its notebook file changed since (a deploy, an edit);
- ``snapshot.refresh`` seconds have passed since it was made;
- something asked (:func:`ask`): a save or delete of a model in
  ``snapshot.models`` (debounced: no sooner than ``SNAPSHOT_MIN_INTERVAL``
  seconds after the last making started), the admin's action, the
  ``notebooks snapshot`` command.

Each web process that serves notebooks runs a :class:`Keeper` thread that
looks every :data:`POLL_SECONDS` (at once when this process asked) and
makes the snapshots that are due, one after the other. Two processes never
make the same one at once: the maker holds a lock in Django's cache (a
shared cache, such as Redis or memcached, makes it hold across processes
and machines; with the local-memory cache each process has its own, and
two may make the same snapshot, the later one winning). A failed making
is logged, kept for the admin, and tried again after
:data:`RETRY_AFTER_FAILURE` seconds (at once for a new version of the
file, or when asked); the old snapshot stays served.
"""

from __future__ import annotations

import datetime
import logging
import secrets
import threading
from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import close_old_connections, transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.utils import timezone

from django_notebooks import conf, registry
from django_notebooks.models import NotebookSnapshot
from django_notebooks.registry import Notebook
from django_notebooks.snapshots import making, store

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0
RETRY_AFTER_FAILURE = 60.0
LOCK_PREFIX = "django_notebooks:snapshot-lock:"


def snapshot_notebooks() -> list[Notebook]:
    """The notebooks served now that have a ``snapshot`` option."""
    return [notebook for notebook in registry.all_notebooks() if notebook.snapshot]


@conf.per_setting
def configured() -> bool:
    """Whether any entry of the setting has a ``snapshot`` option."""
    entries = [
        *conf.get_settings().NOTEBOOKS.values(),
        *conf.get_settings().DIRECTORIES.values(),
    ]
    return any(
        isinstance(entry, dict) and entry.get("snapshot") is not None
        for entry in entries
    )


@conf.per_setting
def notebooks_by_model() -> dict[str, tuple[str, ...]]:
    """``app_label.Model`` (lower case) -> the slugs of the notebooks whose
    snapshot it makes again."""
    found: dict[str, list[str]] = {}
    for notebook in snapshot_notebooks():
        assert notebook.snapshot is not None
        for label in notebook.snapshot.models:
            found.setdefault(label.lower(), []).append(notebook.slug)
    return {label: tuple(slugs) for label, slugs in found.items()}


def why_due(
    notebook: Notebook, row: NotebookSnapshot | None, now: datetime.datetime
) -> str | None:
    """Why ``notebook``'s snapshot is to be made now (None: it is not)."""
    assert notebook.snapshot is not None
    asked = row is not None and row.due_at is not None and row.due_at <= now
    if asked:
        return "asked"
    version = store.current_version(notebook)
    if row is not None and row.failed_at is not None:
        retry_at = row.failed_at + datetime.timedelta(seconds=RETRY_AFTER_FAILURE)
        if now < retry_at and row.failed_version == version:
            return None  # failed with this very file a moment ago
        return "failed before"
    if row is None or not row.file or row.made_at is None:
        return "none yet"
    if row.file_version != version:
        return "file changed"
    refresh = notebook.snapshot.refresh
    if refresh is not None and now >= row.made_at + datetime.timedelta(seconds=refresh):
        return "scheduled"
    return None


def ask(slugs: Iterable[str], *, debounced: bool = False) -> None:
    """Ask for new snapshots of these notebooks. ``debounced`` (a model
    changed): no sooner than ``SNAPSHOT_MIN_INTERVAL`` after the last
    making started, and saves in between ask for one making only."""
    now = timezone.now()
    interval = datetime.timedelta(seconds=conf.get_settings().SNAPSHOT_MIN_INTERVAL)
    for slug in slugs:
        row, _ = NotebookSnapshot.objects.get_or_create(notebook=slug)
        due = now
        if debounced and row.started_at is not None:
            due = max(now, row.started_at + interval)
        if row.due_at is None or due < row.due_at or not debounced:
            NotebookSnapshot.objects.filter(pk=row.pk).update(due_at=due)
    poke()


def make_now(notebook: Notebook, *, reason: str = "asked") -> NotebookSnapshot | None:
    """Make ``notebook``'s snapshot now, in this thread, unless another
    process is making it (then None). A failure is recorded, not raised."""
    key = LOCK_PREFIX + notebook.slug
    token = secrets.token_hex(8)
    timeout = conf.get_settings().SNAPSHOT_TIMEOUT + 60
    if not cache.add(key, token, timeout):
        return None
    try:
        return _make(notebook, reason)
    finally:
        if cache.get(key) == token:
            cache.delete(key)


def _make(notebook: Notebook, reason: str) -> NotebookSnapshot:
    row, _ = NotebookSnapshot.objects.get_or_create(notebook=notebook.slug)
    started = timezone.now()
    # Asked before now: this making answers it. Asked from now on: another.
    NotebookSnapshot.objects.filter(pk=row.pk, due_at__lte=started).update(due_at=None)
    NotebookSnapshot.objects.filter(pk=row.pk).update(started_at=started)
    version = store.current_version(notebook)
    logger.info("Making the snapshot of %r (%s)", notebook.slug, reason)
    try:
        made = making.make(notebook)
        saved = store.save(notebook, made, version=version)
    except making.SnapshotFailed as error:
        return _failed(notebook, str(error), version, had=bool(row.file))
    except Exception as error:
        logger.exception("Making the snapshot of %r failed", notebook.slug)
        return _failed(
            notebook, f"{type(error).__name__}: {error}", version, had=bool(row.file)
        )
    logger.info(
        "Made the snapshot of %r in %.1f s (%d bytes)",
        notebook.slug,
        made.seconds,
        saved.size or 0,
    )
    return saved


def _failed(
    notebook: Notebook, error: str, version: str, *, had: bool
) -> NotebookSnapshot:
    logger.error(
        "The snapshot of %r could not be made (%s): %s",
        notebook.slug,
        "the last one stays served" if had else "it has none yet",
        error,
    )
    store.record_failure(notebook, error, version)
    return NotebookSnapshot.objects.get(notebook=notebook.slug)


def make_due() -> list[str]:
    """Make every snapshot that is due (see the module docstring); the slugs
    of those made or tried."""
    notebooks = snapshot_notebooks()
    if not notebooks:
        return []
    rows = {
        row.notebook: row
        for row in NotebookSnapshot.objects.filter(
            notebook__in=[notebook.slug for notebook in notebooks]
        )
    }
    tried = []
    for notebook in notebooks:
        reason = why_due(notebook, rows.get(notebook.slug), timezone.now())
        if reason is not None and make_now(notebook, reason=reason) is not None:
            tried.append(notebook.slug)
    return tried


class Keeper(threading.Thread):
    """The thread that makes this process's share of due snapshots."""

    def __init__(self) -> None:
        super().__init__(name="django-notebooks-snapshots", daemon=True)
        self.wake = threading.Event()

    def run(self) -> None:
        made: list[str] = []
        while True:
            if not made:  # after a making, look again at once: asked meanwhile?
                self.wake.wait(POLL_SECONDS)
            self.wake.clear()
            close_old_connections()
            try:
                made = make_due()
            except Exception:
                made = []
                logger.exception("Looking for due snapshots failed")
            finally:
                close_old_connections()


_keeper: Keeper | None = None
_keeper_lock = threading.Lock()


def start() -> None:
    """Start this process's keeper thread, if notebooks have snapshots and
    it is not running (a web process calls it when it serves a notebook)."""
    global _keeper
    if _keeper is not None and _keeper.is_alive():
        return
    if not configured():
        return
    with _keeper_lock:
        if _keeper is None or not _keeper.is_alive():
            _keeper = Keeper()
            _keeper.start()


def poke() -> None:
    """Have this process's keeper look now."""
    if _keeper is not None:
        _keeper.wake.set()


def _model_changed(sender: Any, **kwargs: Any) -> None:
    if kwargs.get("raw"):  # loaddata
        return
    try:
        slugs = configured() and notebooks_by_model().get(sender._meta.label_lower)
    except ImproperlyConfigured:  # the checks say why; a save must not fail
        return
    if not slugs:
        return
    transaction.on_commit(lambda: ask(slugs, debounced=True))


def _m2m_changed(sender: Any, instance: Any, action: str, **kwargs: Any) -> None:
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    # Either side of the relation may be a listed model.
    for model in (type(instance), kwargs.get("model")):
        if model is not None:
            _model_changed(model)


def connect_signals() -> None:
    """Listen for changes of the models snapshots list (``AppConfig.ready``).

    Saves and many-to-many changes of any model are heard (a model no
    snapshot lists costs a dict lookup); deletes only of the listed
    models: a ``post_delete`` receiver for every model would cost Django
    its fast deletes (it would load each row a ``QuerySet.delete()``
    removes, to send the signal).
    """
    post_save.connect(_model_changed, dispatch_uid="django_notebooks.snapshots.save")
    m2m_changed.connect(_m2m_changed, dispatch_uid="django_notebooks.snapshots.m2m")
    setting_changed.connect(
        _setting_changed, dispatch_uid="django_notebooks.snapshots.setting"
    )
    _connect_deletes()


_delete_senders: list[Any] = []


def _connect_deletes() -> None:
    for model in _delete_senders:
        post_delete.disconnect(sender=model, dispatch_uid=_DELETE_UID)
    _delete_senders.clear()
    try:
        labels = list(notebooks_by_model()) if configured() else []
    except ImproperlyConfigured:  # the checks say why
        return
    for label in labels:
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError):  # check E020
            continue
        post_delete.connect(_model_changed, sender=model, dispatch_uid=_DELETE_UID)
        _delete_senders.append(model)


_DELETE_UID = "django_notebooks.snapshots.delete"


def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == conf.SETTING_NAME:
        _connect_deletes()
