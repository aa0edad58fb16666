"""The admin: live notebook sessions, the registered notebooks and grants.

- Notebook sessions: the open kernel websockets of every server process,
  read-only. Deleting one (or the "Terminate" action) tells the consumer
  holding it, over the channel layer, to close it, and answers at once.
- Notebooks: the notebooks of ``DJANGO_NOTEBOOKS`` (they are not in the
  database), with a "check that they load" action that runs them headless
  in the background, the result kept in :class:`NotebookCheck`.
- Notebook grants: give a user or a group a notebook, without code changes.
- Notebook snapshots: see django_notebooks/snapshots/admin.py.

See ``docs/topics/admin.md`` for the permissions each page needs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import connections, router, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_notebooks import registry
from django_notebooks.kernels import location, usage
from django_notebooks.kernels import router as kernel_router
from django_notebooks.kernels.processes import kernel_processes
from django_notebooks.marimo import headless
from django_notebooks.models import (
    NotebookCheck,
    NotebookGrant,
    NotebookSession,
    RegisteredNotebook,
)
from django_notebooks.sessions import channel_messages, layers, records
from django_notebooks.snapshots import admin as snapshot_admin  # noqa: F401 (registers it)

# Django's admin classes are generic to type checkers only (django-stubs).
if TYPE_CHECKING:
    SessionAdminBase = admin.ModelAdmin[NotebookSession]
    GrantAdminBase = admin.ModelAdmin[NotebookGrant]
    GrantFormBase = forms.ModelForm[NotebookGrant]
    RegisteredNotebookAdminBase = admin.ModelAdmin[RegisteredNotebook]
else:
    SessionAdminBase = GrantAdminBase = RegisteredNotebookAdminBase = admin.ModelAdmin
    GrantFormBase = forms.ModelForm

logger = logging.getLogger(__name__)

# How long after "terminate" the sessions' processes have to close them (each
# deletes its row when its websocket has closed). A row still there
# afterwards belongs to a process that no longer answers, and is removed.
ANSWER_WAIT = 3.0
POLL_EVERY = 0.1
# How long "check that they load" lets one notebook run; a check not finished
# a minute after that was cut short (its server process stopped).
CHECK_TIMEOUT = 60.0
CHECK_ABANDONED_AFTER = CHECK_TIMEOUT + 60.0


@dataclass
class Termination:
    """What "terminate" did with the sessions it was asked to end."""

    # Told to close: they close within moments, each deleting its own row.
    told: int = 0
    # Could not be told (no channel name, or the channel layer failed):
    # left as they are, they may still be open.
    unreachable: int = 0


def terminate(rows: Sequence[NotebookSession]) -> Termination:
    """Tell the consumers holding these sessions to close them, wherever they
    run, and return at once (layers.py: without a channel layer, only
    sessions of this process can be told). A background thread removes, after
    ``ANSWER_WAIT`` seconds, the rows of sessions whose process never
    answered."""
    layer = layers.bridge_layer()
    outcome = Termination()
    told = []
    for row in rows:
        if not row.channel_name:
            outcome.unreachable += 1
            continue
        try:
            async_to_sync(layer.send)(
                row.channel_name, {"type": channel_messages.TERMINATE}
            )
        except Exception:
            logger.exception("Could not tell notebook session %s to close", row)
            outcome.unreachable += 1
        else:
            told.append((row.pk, row.channel_name))
    outcome.told = len(told)
    if told:
        in_background(remove_unanswered, set(told), ANSWER_WAIT)
    return outcome


def in_background(function: Callable[..., Any], *args: Any) -> threading.Thread:
    """Run ``function(*args)`` in a thread of its own, so that an admin page
    answers at once; its errors are logged, its database connections closed."""

    def run() -> None:
        try:
            function(*args)
        except Exception:
            logger.exception("django_notebooks: %s failed", function.__name__)
        finally:
            connections.close_all()  # this thread's connections only

    thread = threading.Thread(
        target=run, name=f"django_notebooks-{function.__name__}", daemon=True
    )
    thread.start()
    return thread


def remove_unanswered(rows: set[tuple[Any, str]], wait: float) -> int:
    """Wait up to ``wait`` seconds for these (pk, channel name) rows to go,
    then delete those still there: their server process has stopped. Returns
    how many were deleted."""
    deadline = time.monotonic() + wait
    waiting = set(rows)
    while waiting:
        found = NotebookSession.objects.filter(pk__in=[pk for pk, _ in waiting])
        waiting &= set(found.values_list("pk", "channel_name"))
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(POLL_EVERY)
    for pk, channel_name in waiting:
        NotebookSession.objects.filter(pk=pk, channel_name=channel_name).delete()
    if waiting:
        logger.warning(
            "%d notebook session(s) did not answer 'terminate' within %g s: "
            "the server process holding them has stopped; their records "
            "were removed.",
            len(waiting),
            wait,
        )
    return len(waiting)


@admin.register(NotebookSession)
class NotebookSessionAdmin(SessionAdminBase):
    """Open kernel websockets; read-only, and "delete" means terminate.

    Seeing the page needs ``view_notebooksession``; terminating needs
    ``delete_notebooksession``.
    """

    list_display = (
        "who",
        "notebook",
        "opened_at",
        "last_activity",
        "process",
        "kernel",
    )
    # owner_hash only serves to find a login's sessions: nothing to read.
    fields = (
        "session_id",
        "notebook",
        "user",
        "opened_at",
        "last_activity",
        "process",
        "kernel",
        "channel_name",
    )
    readonly_fields = ("kernel",)
    list_filter = ("notebook", "process")
    search_fields = ("user__username", "notebook", "session_id")
    list_select_related = ("user",)
    actions = ["terminate_sessions"]

    class Media:
        # Lets the columns wrap, so that the list fits a 1400 px window
        # with the admin's navigation open.
        css = {"all": ["django_notebooks/admin.css"]}

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        """The list, under a line saying what keeps kernels in bounds on
        this machine (docs: topics/isolation)."""
        if kernel_router.isolation() == kernel_router.PROCESS:
            found = kernel_processes.mechanisms()
            subtitle = _(
                "Each kernel process runs in %(containment)s; its memory "
                "(MEMORY_MB) is limited by %(memory)s."
            ) % {"containment": found.containment, "memory": found.memory}
            spares = usage.spares()
            if spares:
                # Forked ahead for the notebooks in use (KERNEL_SPARES).
                subtitle += " " + ngettext(
                    "%(count)d spare kernel (%(memory).0f MB) waits for a new "
                    "session on this host.",
                    "%(count)d spare kernels (%(memory).0f MB) wait for new "
                    "sessions on this host.",
                    len(spares),
                ) % {
                    "count": len(spares),
                    "memory": sum(s.private_bytes for s in spares.values())
                    / 1024
                    / 1024,
                }
            extra_context = {**(extra_context or {}), "subtitle": subtitle}
        return super().changelist_view(request, extra_context)

    @admin.display(description=_("user"), ordering="user__username")
    def who(self, session: NotebookSession) -> Any:
        if session.user_id is None:
            return _("anonymous visitor")
        return session.user

    @admin.display(description=_("kernel process"), ordering="kernel_pid")
    def kernel(self, session: NotebookSession) -> Any:
        """The kernel process's pid, CPU seconds and private memory (read
        where it runs, on this host)."""
        if session.kernel_pid is None:
            return _("thread in the server process")
        pid = session.kernel_pid
        if session.process.split(":", 1)[0] != records.PROCESS.split(":", 1)[0]:
            return _("pid %(pid)s (another host)") % {"pid": pid}
        used = usage.usage(pid)
        if used is None:
            shown = _("pid %(pid)s") % {"pid": pid}
        else:
            shown = _("pid %(pid)s · %(cpu).1f s CPU · %(memory).0f MB") % {
                "pid": pid,
                "cpu": used.cpu_seconds,
                "memory": used.private_bytes / 1024 / 1024,
            }
        if session.kernel_code and session.kernel_code != location.code_key():
            # A deploy of new code since it started (docs: deployment).
            shown = _("%(kernel)s · older code") % {"kernel": shown}
        return shown

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: NotebookSession | None = None
    ) -> bool:
        return False

    def get_actions(
        self, request: HttpRequest, action_location: Any = None
    ) -> dict[str, Any]:
        # Django 6.1 passes where the actions show (and deprecates overrides
        # without the parameter); older versions call get_actions(request).
        extra = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **extra)
        # Deleting a row would not close the session: "terminate" does.
        actions.pop("delete_selected", None)
        return actions

    @admin.action(
        description=_("Terminate the selected notebook sessions"),
        permissions=["delete"],
    )
    def terminate_sessions(
        self, request: HttpRequest, queryset: QuerySet[NotebookSession]
    ) -> None:
        rows = list(queryset)
        self._log_deletions(request, rows)
        self._terminate(request, rows)

    def delete_model(self, request: HttpRequest, obj: NotebookSession) -> None:
        self._terminate(request, [obj])

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[NotebookSession]
    ) -> None:
        self._terminate(request, list(queryset))

    def response_delete(
        self, request: HttpRequest, obj_display: str, obj_id: Any
    ) -> HttpResponse:
        # _terminate() said what happened; "deleted successfully" would not.
        return HttpResponseRedirect(
            reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist",
                current_app=self.admin_site.name,
            )
        )

    def _terminate(self, request: HttpRequest, rows: list[NotebookSession]) -> None:
        def run() -> None:
            self._report(request, terminate(rows))

        # Tell the sessions once the delete view's transaction has ended: the
        # thread that removes unanswered rows must not wait on its locks
        # (SQLite), nor miss rows it has not committed.
        transaction.on_commit(run, using=router.db_for_write(NotebookSession))

    def _report(self, request: HttpRequest, outcome: Termination) -> None:
        if outcome.told:
            self.message_user(
                request,
                ngettext(
                    "Asked %(count)d notebook session to close: it ends within "
                    "seconds and leaves this list. A session whose server "
                    "process has stopped is removed after %(wait)s seconds.",
                    "Asked %(count)d notebook sessions to close: they end within "
                    "seconds and leave this list. Sessions whose server "
                    "process has stopped are removed after %(wait)s seconds.",
                    outcome.told,
                )
                % {"count": outcome.told, "wait": f"{ANSWER_WAIT:g}"},
                messages.SUCCESS,
            )
        if outcome.unreachable:
            self.message_user(
                request,
                ngettext(
                    "%(count)d notebook session could not be told to close "
                    "(see the server log); it may still be open.",
                    "%(count)d notebook sessions could not be told to close "
                    "(see the server log); they may still be open.",
                    outcome.unreachable,
                )
                % {"count": outcome.unreachable},
                messages.ERROR,
            )

    def _log_deletions(self, request: HttpRequest, rows: list[NotebookSession]) -> None:
        """The admin's history records who terminated which session."""
        log_deletions = getattr(self, "log_deletions", None)
        if log_deletions is not None:  # Django 5.1+
            log_deletions(request, rows)
            return
        log_deletion = self.log_deletion  # type: ignore[attr-defined]  # Django < 5.1
        for row in rows:
            log_deletion(request, row, str(row))


def notebook_choices(current: str | None = None) -> list[Any]:
    """Choices for a notebook field: every registered notebook, those of each
    directory apart, plus ``current`` if it is no longer registered."""

    def entries(notebooks: Iterable[registry.Notebook]) -> list[tuple[str, str]]:
        return [(nb.slug, f"{nb.title} ({nb.slug})") for nb in notebooks]

    groups: list[Any] = []
    explicit = entries(registry.explicit_notebooks().values())
    if explicit:
        groups.append((_("Notebooks"), explicit))
    for key in registry.directories():
        found = entries(registry.directory_notebooks(key))
        if found:
            groups.append((_("Directory %(key)s") % {"key": key}, found))
    if current and registry.get_notebook(current) is None:
        groups.append((current, _("%(slug)s (not registered)") % {"slug": current}))
    return [("", "---------"), *groups]


class NotebookGrantForm(GrantFormBase):
    """A grant of one registered notebook to exactly one user or group."""

    notebook = forms.ChoiceField(
        label=_("notebook"),
        help_text=_(
            "A notebook of DJANGO_NOTEBOOKS, or one of a directory's notebooks."
        ),
    )

    class Meta:
        model = NotebookGrant
        fields = ("notebook", "user", "group")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Directories change while the server runs: list them now.
        field = self.fields["notebook"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = notebook_choices(self.instance.notebook or None)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if "user" in self.errors or "group" in self.errors:
            return data
        user, group = data.get("user"), data.get("group")
        # On a field, not the form: a field with an error keeps the model's
        # check constraint from repeating it in its own words.
        if user is None and group is None:
            self.add_error("user", _("Choose a user or a group."))
            return data
        if user is not None and group is not None:
            self.add_error(
                "group", _("Choose a user or a group, not both: make two grants.")
            )
            return data
        duplicates = NotebookGrant.objects.filter(
            notebook=data.get("notebook"), user=user, group=group
        ).exclude(pk=self.instance.pk)
        if duplicates.exists():
            raise forms.ValidationError(
                _("%(who)s already has this notebook.") % {"who": user or group}
            )
        return data


@admin.register(NotebookGrant)
class NotebookGrantAdmin(GrantAdminBase):
    """Grants: a user, or a group's members, may open a notebook even if the
    notebook's ``groups`` and ``permissions`` would turn them away.

    Deleting or changing a grant makes the affected users' open sessions ask
    the access rules again (see ``revocation.py``).
    """

    form = NotebookGrantForm
    fields = ("notebook", "user", "group", "created_at")
    readonly_fields = ("created_at",)
    list_display = ("notebook", "title", "user", "group", "created_at")
    list_filter = ("notebook",)
    search_fields = ("notebook", "user__username", "group__name")
    list_select_related = ("user", "group")
    # A select of every user does not scale; raw_id_fields also works when
    # the project registers no admin for its user model.
    raw_id_fields = ("user",)

    @admin.display(description=_("title"))
    def title(self, grant: NotebookGrant) -> str:
        notebook = registry.get_notebook(grant.notebook)
        return notebook.title if notebook else str(_("(not registered)"))


@dataclass(frozen=True)
class NotebookRow:
    """One line of the admin's notebook list."""

    notebook: registry.Notebook
    url: str | None
    rules: list[str]
    grants: int
    last_check: NotebookCheck | None = None

    @property
    def check_running(self) -> bool:
        return self.last_check is not None and check_state(self.last_check) == RUNNING

    @property
    def check_result(self) -> str:
        return "" if self.last_check is None else describe_check(self.last_check)


RUNNING, FINISHED, ABANDONED = "running", "finished", "abandoned"


def check_state(check: NotebookCheck) -> str:
    """Whether a check is still running, has finished, or was cut short."""
    if check.finished_at is not None:
        return FINISHED
    running_for = (timezone.now() - check.started_at).total_seconds()
    return RUNNING if running_for < CHECK_ABANDONED_AFTER else ABANDONED


def describe_check(check: NotebookCheck) -> str:
    """A check's result in words, for the notebook list."""
    state = check_state(check)
    if state == RUNNING:
        return str(_("Checking…"))
    if state == ABANDONED:
        return str(_("The check stopped before it finished: run it again."))
    seconds = f"{check.seconds or 0:.1f}"
    if check.ok:
        return str(_("Loads: it ran in %(seconds)s s.") % {"seconds": seconds})
    return str(
        _("Does not load (after %(seconds)s s): %(problems)s")
        % {"seconds": seconds, "problems": check.problems}
    )


def start_check(notebook: registry.Notebook) -> bool:
    """Start a background check of ``notebook`` unless one is running;
    whether one was started."""
    with transaction.atomic():
        check, created = NotebookCheck.objects.select_for_update().get_or_create(
            notebook=notebook.slug
        )
        if not created and check_state(check) == RUNNING:
            return False
        check.started_at = timezone.now()
        check.finished_at = check.ok = check.seconds = None
        check.problems = ""
        check.save()
    transaction.on_commit(lambda: in_background(run_check, notebook, check.pk))
    return True


def run_check(notebook: registry.Notebook, check_pk: Any) -> None:
    """Run ``notebook`` headless and record the result on its check."""
    run = headless.check(notebook, timeout=CHECK_TIMEOUT)
    problems = ""
    if not run.ok:
        problems = "; ".join(
            f"{failure.cell}: {failure.message}" for failure in run.failures
        ) or str(_("no cell failed, but the run did not complete"))
    NotebookCheck.objects.filter(pk=check_pk).update(
        finished_at=timezone.now(), ok=run.ok, seconds=run.seconds, problems=problems
    )


def access_rules(notebook: registry.Notebook) -> list[str]:
    """The access rules of an entry, in words."""
    if notebook.public:
        return [str(_("public"))]
    rules = [str(_("login"))]
    if notebook.groups:
        rules.append(str(_("any of groups: %s")) % ", ".join(notebook.groups))
    if notebook.permissions:
        rules.append(str(_("all of: %s")) % ", ".join(notebook.permissions))
    if notebook.access:
        name = notebook.access
        if callable(name):
            name = f"{name.__module__}.{name.__qualname__}"
        rules.append(str(_("access: %s")) % name)
    return rules


@admin.register(RegisteredNotebook)
class RegisteredNotebookAdmin(RegisteredNotebookAdminBase):
    """The notebooks of ``DJANGO_NOTEBOOKS``: a list, with no database table.

    Seeing the list needs ``view_registerednotebook``; the "check that they
    load" action needs ``check_notebook``.
    """

    check_permission = "django_notebooks.check_notebook"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_check_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(self.check_permission)

    def get_urls(self) -> list[Any]:
        # Only the list: there are no rows to add, change or delete.
        name = f"{self.opts.app_label}_{self.opts.model_name}_changelist"
        return [path("", self.admin_site.admin_view(self.changelist_view), name=name)]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if not self.has_check_permission(request):
                raise PermissionDenied
            self._check(request, request.POST.getlist("notebooks"))
            return HttpResponseRedirect(request.get_full_path())
        rows = self._rows()
        context = {
            **self.admin_site.each_context(request),
            "title": capfirst(self.opts.verbose_name_plural),
            "subtitle": None,
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "rows": rows,
            "checking": any(row.check_running for row in rows),
            "can_check": self.has_check_permission(request),
            "grants_url": _changelist_url(NotebookGrant, self.admin_site.name),
            **(extra_context or {}),
        }
        return TemplateResponse(
            request, "admin/django_notebooks/notebooks.html", context
        )

    def _rows(self) -> list[NotebookRow]:
        counts: dict[str, int] = {}
        for slug in NotebookGrant.objects.values_list("notebook", flat=True):
            counts[slug] = counts.get(slug, 0) + 1
        checks = {check.notebook: check for check in NotebookCheck.objects.all()}
        return [
            NotebookRow(
                notebook,
                _notebook_url(notebook),
                access_rules(notebook),
                counts.get(notebook.slug, 0),
                checks.get(notebook.slug),
            )
            for notebook in registry.all_notebooks()
        ]

    def _check(self, request: HttpRequest, slugs: list[str]) -> None:
        if not slugs:
            self.message_user(
                request,
                _("Select the notebooks to check first."),
                messages.WARNING,
            )
            return
        for slug in dict.fromkeys(slugs):
            notebook = registry.get_notebook(slug)
            if notebook is None:
                self.message_user(
                    request,
                    _("There is no notebook %(slug)s.") % {"slug": slug},
                    messages.ERROR,
                )
                continue
            names = {"title": notebook.title, "slug": notebook.slug}
            if start_check(notebook):
                message = _(
                    "Checking %(title)s (%(slug)s) in the background: its "
                    "result appears in the Last check column."
                )
            else:
                message = _("%(title)s (%(slug)s) is being checked already.")
            self.message_user(request, message % names, messages.INFO)


def _notebook_url(notebook: registry.Notebook) -> str | None:
    try:
        return reverse("django_notebooks:notebook", args=[notebook.slug])
    except NoReverseMatch:  # the project has not included django_notebooks.urls
        return None


def _changelist_url(model: Any, site_name: str) -> str:
    opts = model._meta
    return reverse(
        f"admin:{opts.app_label}_{opts.model_name}_changelist", current_app=site_name
    )
