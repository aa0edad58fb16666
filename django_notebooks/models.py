"""What django_notebooks keeps in the project's database.

- :class:`NotebookSession`: one row per open kernel websocket, written when it
  opens and deleted when it closes. Every server process can read it, so it
  says which process holds a session's kernel (kernel calls that land
  elsewhere are forwarded there over the channel layer), and it is the admin's
  page of live sessions.
- :class:`NotebookGrant`: access to one notebook given to a user or a group
  from the admin, on top of the rules in ``DJANGO_NOTEBOOKS``.
- :class:`RegisteredNotebook`: no table; the admin's page of the notebooks in
  ``DJANGO_NOTEBOOKS`` and the permissions to see and check them.
- :class:`NotebookCheck`: the last "check that it loads" of each notebook,
  run in the background from that page.
- :class:`NotebookSnapshot`: the snapshot of each notebook with a
  ``snapshot`` option (its content is in the storage ``SNAPSHOT_STORAGE``
  names): when it was made, how big, how long it took, the last failure,
  and when it is to be made again.
"""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

# Django 5.1 renamed CheckConstraint's ``check`` to ``condition`` (and 6.0
# dropped ``check``); 4.2 knows only ``check``.
_CHECK_ARGUMENT = "condition" if django.VERSION >= (5, 1) else "check"
_USER_XOR_GROUP_CHECK: dict[str, Any] = {
    _CHECK_ARGUMENT: Q(user__isnull=False, group__isnull=True)
    | Q(user__isnull=True, group__isnull=False)
}


def _optional_user(*, on_delete: Any, related_name: str) -> Any:
    """A link to the project's user model that may be empty."""
    return models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        null=True,
        blank=True,
        on_delete=on_delete,
        related_name=related_name,
    )


class NotebookSession(models.Model):
    """A marimo session whose kernel websocket is open in some server process."""

    session_id = models.CharField(_("session id"), max_length=128, unique=True)
    notebook = models.CharField(_("notebook"), max_length=255, db_index=True)
    # Kept when the user is deleted: the session is open all the same.
    user = _optional_user(on_delete=models.SET_NULL, related_name="+")
    # A hash of the browser login (or anonymous visitor) that owns the
    # session, to find a login's sessions without storing its session key.
    owner_hash = models.CharField(_("owner"), max_length=64, blank=True, db_index=True)
    # The kernel websocket consumer's channel-layer name: where forwarded
    # kernel calls and "terminate" messages for this session are sent.
    channel_name = models.CharField(_("channel"), max_length=255, blank=True)
    # host:pid of the server process that holds the kernel.
    process = models.CharField(_("server process"), max_length=255, blank=True)
    # The session's kernel process (ISOLATION = "process"), on that host.
    kernel_pid = models.PositiveIntegerField(_("kernel process"), null=True, blank=True)
    # The code the kernel runs: its kernel host's code key (kernels/location.py).
    # A deploy of new code leaves older sessions on the code they started with.
    kernel_code = models.CharField(_("kernel's code"), max_length=32, blank=True)
    opened_at = models.DateTimeField(_("opened"), default=timezone.now)
    last_activity = models.DateTimeField(_("last activity"), default=timezone.now)

    class Meta:
        verbose_name = _("notebook session")
        verbose_name_plural = _("notebook sessions")
        ordering = ["-opened_at"]

    def __str__(self) -> str:
        return f"{self.notebook} ({self.session_id})"


class NotebookGrant(models.Model):
    """Lets one user, or every member of one group, open one notebook."""

    notebook = models.CharField(
        _("notebook"),
        max_length=255,
        db_index=True,
        help_text=_("The notebook's slug, e.g. sales or lab/demo."),
    )
    user = _optional_user(on_delete=models.CASCADE, related_name="notebook_grants")
    group = models.ForeignKey(
        "auth.Group",
        verbose_name=_("group"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="notebook_grants",
    )
    created_at = models.DateTimeField(_("granted"), default=timezone.now)

    class Meta:
        verbose_name = _("notebook grant")
        verbose_name_plural = _("notebook grants")
        ordering = ["notebook"]
        constraints = [
            models.CheckConstraint(
                **_USER_XOR_GROUP_CHECK,
                name="django_notebooks_grant_user_xor_group",
            ),
        ]

    def __str__(self) -> str:
        who = self.user if self.user_id else self.group
        return f"{self.notebook}: {who}"


class RegisteredNotebook(models.Model):
    """The notebooks of ``DJANGO_NOTEBOOKS``, as the admin lists them.

    Notebooks live in the setting and in directories, not in the database:
    this model has no table (``managed = False``; nothing queries it). It
    gives the list its place in the admin and its two permissions,
    ``view_registerednotebook`` (see the list) and ``check_notebook`` (run a
    notebook headless to check that it loads).
    """

    slug = models.CharField(_("slug"), max_length=255, primary_key=True)

    class Meta:
        managed = False
        verbose_name = _("notebook")
        verbose_name_plural = _("notebooks")
        default_permissions = ("view",)
        permissions = [("check_notebook", "Can check that a notebook loads")]

    def __str__(self) -> str:
        return self.slug


class NotebookCheck(models.Model):
    """The last headless run of a notebook that the admin asked for: running
    while ``finished_at`` is empty, then its result."""

    notebook = models.CharField(_("notebook"), max_length=255, unique=True)
    started_at = models.DateTimeField(_("started"), default=timezone.now)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    ok = models.BooleanField(_("loads"), null=True)
    seconds = models.FloatField(_("seconds"), null=True, blank=True)
    # The cells that raised and their errors, "; "-separated.
    problems = models.TextField(_("problems"), blank=True)

    class Meta:
        verbose_name = _("notebook check")
        verbose_name_plural = _("notebook checks")

    def __str__(self) -> str:
        return self.notebook


class NotebookSnapshot(models.Model):
    """A notebook's snapshot: the page of its outputs made ahead, in the
    background, by a run with no visitor (snapshots/)."""

    notebook = models.CharField(_("notebook"), max_length=255, unique=True)
    # Where the content is, in the SNAPSHOT_STORAGE storage ("": none yet).
    # Each making writes a new file, so a reader never sees one half written.
    file = models.CharField(_("file"), max_length=500, blank=True)
    # A hash of the page: its ETag, and the name of this making.
    etag = models.CharField(_("ETag"), max_length=64, blank=True)
    # The notebook file's version the snapshot was made of (a change makes
    # it again).
    file_version = models.CharField(
        _("notebook file version"), max_length=64, blank=True
    )
    made_at = models.DateTimeField(_("made"), null=True, blank=True)
    size = models.PositiveIntegerField(_("size (bytes)"), null=True, blank=True)
    seconds = models.FloatField(_("took (seconds)"), null=True, blank=True)
    # Set when something asked for a new snapshot (a model saved, the admin,
    # the command): it is made once this time has come.
    due_at = models.DateTimeField(_("due"), null=True, blank=True)
    # When the last making started (successful or not).
    started_at = models.DateTimeField(_("last started"), null=True, blank=True)
    failed_at = models.DateTimeField(_("failed"), null=True, blank=True)
    # The notebook file's version that failed: a new version is tried at
    # once, the same one again only after a while.
    failed_version = models.CharField(
        _("failed file version"), max_length=64, blank=True
    )
    # What went wrong the last time; empty once a making succeeds.
    last_error = models.TextField(_("last error"), blank=True)

    class Meta:
        verbose_name = _("notebook snapshot")
        verbose_name_plural = _("notebook snapshots")
        ordering = ["notebook"]

    def __str__(self) -> str:
        return self.notebook
