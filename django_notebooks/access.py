"""Who may open a notebook: one decision for the page, its sub-paths and its
websocket.

A notebook requires a logged-in, active user unless its entry says
``"public": True``. On top of that an entry may require membership of any of
its ``groups``, all of its ``permissions`` and a project callable named by
``access`` (``callable(user, notebook) -> bool``). Superusers pass the group
and permission rules, as they do everywhere in Django; the project's callable
is asked for everyone.

A :class:`~django_notebooks.models.NotebookGrant` made in the admin stands in
for the group and permission rules: a user granted the notebook (or a member
of a granted group) passes them. It does not stand in for the login, nor for
the project's callable.
"""

from __future__ import annotations

import enum
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import Q

from django_notebooks import conf
from django_notebooks.registry import Notebook


class Access(enum.Enum):
    """The answer of :func:`decide`."""

    ALLOWED = "allowed"
    LOGIN_REQUIRED = "login_required"
    FORBIDDEN = "forbidden"

    def __bool__(self) -> bool:
        return self is Access.ALLOWED


def _in_any_group(user: Any, names: tuple[str, ...]) -> bool:
    return bool(user.groups.filter(name__in=names).exists())


def _passes_rules(user: Any, notebook: Notebook) -> bool:
    """The entry's ``groups`` and ``permissions`` rules."""
    if notebook.groups and not _in_any_group(user, notebook.groups):
        return False
    if notebook.permissions and not user.has_perms(notebook.permissions):
        return False
    return True


def _is_granted(user: Any, notebook: Notebook) -> bool:
    """Whether a grant from the admin gives ``user`` (or one of the user's
    groups) this notebook."""
    from django_notebooks.models import (
        NotebookGrant,  # access is imported before apps load
    )

    who = Q(user_id=user.pk)
    if hasattr(user, "groups"):
        who |= Q(group__in=user.groups.all())
    return NotebookGrant.objects.filter(who, notebook=notebook.slug).exists()


def decide(user: Any, notebook: Notebook) -> Access:
    """Whether ``user`` may open ``notebook`` (synchronous: may query the DB)."""
    if not notebook.requires_login:
        return Access.ALLOWED
    if (
        user is None
        or not getattr(user, "is_authenticated", False)
        or not getattr(user, "is_active", True)
    ):
        return Access.LOGIN_REQUIRED
    # Grants are looked up only for those the rules turn away, so that a
    # user who passes them costs no extra query.
    if (
        (notebook.groups or notebook.permissions)
        and not user.is_superuser
        and not _passes_rules(user, notebook)
        and not _is_granted(user, notebook)
    ):
        return Access.FORBIDDEN
    if notebook.access:
        rule = conf.import_object(notebook.access)
        if not rule(user, notebook):
            return Access.FORBIDDEN
    return Access.ALLOWED


async def adecide(user: Any, notebook: Notebook) -> Access:
    """:func:`decide` for async code; skips the thread hop when no DB is needed."""
    if not notebook.requires_login:
        return Access.ALLOWED
    if not getattr(user, "is_authenticated", False):
        return Access.LOGIN_REQUIRED
    # Without these rules there is nothing to look up: grants only stand in
    # for groups and permissions, so they cannot change this answer.
    if not (notebook.groups or notebook.permissions or notebook.access):
        return (
            Access.ALLOWED
            if getattr(user, "is_active", True)
            else Access.LOGIN_REQUIRED
        )
    return await sync_to_async(decide)(user, notebook)


def may_open(user: Any, notebook: Notebook) -> bool:
    """Whether ``user`` may open ``notebook``; for templates and listings."""
    return decide(user, notebook) is Access.ALLOWED
