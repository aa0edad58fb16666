"""The admin's page of snapshots: their age, size, how long each took, the
last failure, and "make it again" (registered by django_notebooks.admin).

Seeing the page needs ``view_notebooksnapshot``; making snapshots again
needs ``change_notebooksnapshot``; deleting one (its file too; the next
look of the keeper makes it again) ``delete_notebooksnapshot``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.text import Truncator
from django.utils.timesince import timesince
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_notebooks.models import NotebookSnapshot
from django_notebooks.snapshots import keeper, store

if TYPE_CHECKING:
    SnapshotAdminBase = admin.ModelAdmin[NotebookSnapshot]
else:
    SnapshotAdminBase = admin.ModelAdmin

# How much of the last error the list shows (the row's page shows it all).
ERROR_CHARS = 120


@admin.register(NotebookSnapshot)
class NotebookSnapshotAdmin(SnapshotAdminBase):
    """Each notebook's snapshot, read-only, with a "make again" action."""

    list_display = (
        "notebook",
        "state",
        "made_at",
        "age",
        "size_shown",
        "seconds",
        "error_shown",
    )
    fields = (
        "notebook",
        "state",
        "made_at",
        "age",
        "size_shown",
        "seconds",
        "file",
        "etag",
        "started_at",
        "due_at",
        "failed_at",
        "last_error",
    )
    readonly_fields = fields
    search_fields = ("notebook",)
    actions = ["make_again"]

    @admin.display(description=_("state"))
    def state(self, snapshot: NotebookSnapshot) -> str:
        if snapshot.failed_at is not None:
            return str(_("last making failed"))
        if not snapshot.file:
            return str(_("not made yet"))
        if snapshot.due_at is not None:
            return str(_("to be made again"))
        return str(_("made"))

    @admin.display(description=_("age"))
    def age(self, snapshot: NotebookSnapshot) -> str:
        if snapshot.made_at is None:
            return "-"
        return timesince(snapshot.made_at, timezone.now())

    @admin.display(description=_("size"), ordering="size")
    def size_shown(self, snapshot: NotebookSnapshot) -> str:
        return filesizeformat(snapshot.size) if snapshot.size is not None else "-"

    @admin.display(description=_("last error"))
    def error_shown(self, snapshot: NotebookSnapshot) -> str:
        return Truncator(snapshot.last_error).chars(ERROR_CHARS) or "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made by the keeper, for notebooks with a snapshot option

    @admin.action(
        description=_("Make the selected snapshots again"), permissions=["change"]
    )
    def make_again(
        self, request: HttpRequest, queryset: QuerySet[NotebookSnapshot]
    ) -> None:
        slugs = list(queryset.values_list("notebook", flat=True))
        keeper.start()
        keeper.ask(slugs)
        self.message_user(
            request,
            ngettext(
                "%(count)d snapshot will be made again in a moment.",
                "%(count)d snapshots will be made again in a moment.",
                len(slugs),
            )
            % {"count": len(slugs)},
            messages.SUCCESS,
        )

    def delete_model(self, request: HttpRequest, obj: NotebookSnapshot) -> None:
        store.delete(obj.notebook)

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[NotebookSnapshot]
    ) -> None:
        for slug in queryset.values_list("notebook", flat=True):
            store.delete(slug)
