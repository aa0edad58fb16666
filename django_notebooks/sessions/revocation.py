"""Ending notebook sessions when a user's access ends.

Each kernel websocket joins two channel-layer groups: one for its user and one
for the Django login (session) that opened it. When the user logs out, the
login's group is told to close; when the user is deactivated, loses a
group or permission, or loses a notebook grant (the grant itself, or the
group it names), the user's group is told to decide again. The channel
layer carries the message to every process (with ``channels_redis``), so
sessions close wherever they live; without one, the bridge's in-process
layer carries it within this process (layers.py).
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model, user_logged_out
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models.signals import m2m_changed, post_save, pre_delete, pre_save

from django_notebooks.sessions import channel_messages, layers

logger = logging.getLogger(__name__)


def _send(group: str, message_type: str) -> None:
    layer = layers.bridge_layer()
    try:
        async_to_sync(layer.group_send)(group, {"type": message_type})
    except Exception:
        logger.exception("Could not tell %s to %s", group, message_type)


def revoke_login(session_key: str) -> None:
    """Close every notebook session opened by this Django login."""
    _send(channel_messages.login_group(session_key), channel_messages.REVOKE)


def recheck_users(user_ids: Any) -> None:
    """Make these users' open notebook sessions ask the access rules again,
    once the current transaction has committed."""
    ids = [user_id for user_id in user_ids or () if user_id is not None]

    def send() -> None:
        for user_id in ids:
            _send(channel_messages.user_group(user_id), channel_messages.RECHECK)

    if ids:
        transaction.on_commit(send)


def _on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    if session is not None and session.session_key:
        revoke_login(session.session_key)


def _on_user_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    if getattr(instance, "is_active", True) is False:
        recheck_users([instance.pk])


def _members_of(group_ids: Any) -> list[Any]:
    users = get_user_model().objects.filter(groups__in=group_ids)
    return list(users.values_list("pk", flat=True).distinct())


def _users_linked(through: Any, instance: Any) -> list[Any]:
    """Users linked to ``instance`` (a group or permission) in ``through``."""
    user_model = get_user_model()
    fields = through._meta.fields
    user_fk = next(f for f in fields if f.is_relation and f.related_model is user_model)
    other_fk = next(
        f for f in fields if f.is_relation and f.related_model is type(instance)
    )
    links = through.objects.filter(**{other_fk.name: instance.pk})
    return list(links.values_list(user_fk.attname, flat=True))


def _on_user_m2m_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    """A user lost groups or permissions (from either side of the relation)."""
    if action == "pre_clear" and reverse:
        # pk_set is empty on clear: remember who was linked before.
        instance._django_notebooks_users = _users_linked(sender, instance)
    if action not in ("post_remove", "post_clear"):
        return
    if not reverse:
        recheck_users([instance.pk])
    elif action == "post_clear":
        recheck_users(getattr(instance, "_django_notebooks_users", []))
    else:
        recheck_users(pk_set)


def _on_group_permissions_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    if action not in ("post_remove", "post_clear"):
        return
    group_ids = list(pk_set or ()) if reverse else [instance.pk]
    recheck_users(_members_of(group_ids))


def _on_group_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    recheck_users(_members_of([instance.pk]))


def _grant_holders(grant: Any) -> list[Any]:
    if grant.user_id is not None:
        return [grant.user_id]
    return _members_of([grant.group_id])


def _on_grant_saved(
    sender: Any, instance: Any, raw: bool = False, **kwargs: Any
) -> None:
    """A grant is about to change (its notebook, user or group): whoever it
    gave the notebook to until now asks again. Read before the save, as the
    change replaces who that was."""
    if raw or instance.pk is None:
        return
    previous = sender._default_manager.filter(pk=instance.pk).first()
    if previous is not None:
        recheck_users(_grant_holders(previous))


def _on_grant_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    # Before the delete: a grant deleted with its group still knows the
    # group's members here.
    recheck_users(_grant_holders(instance))


def connect_signals() -> None:
    """Called from the app's ``ready()``, once the user model is known."""
    user_model = get_user_model()
    user_logged_out.connect(_on_logout, dispatch_uid="django_notebooks.logout")
    post_save.connect(
        _on_user_saved, sender=user_model, dispatch_uid="django_notebooks.user_saved"
    )
    for field_name in ("groups", "user_permissions"):
        field = getattr(user_model, field_name, None)
        if field is not None:
            m2m_changed.connect(
                _on_user_m2m_changed,
                sender=field.through,
                dispatch_uid=f"django_notebooks.user_{field_name}",
            )
    m2m_changed.connect(
        _on_group_permissions_changed,
        sender=Group.permissions.through,
        dispatch_uid="django_notebooks.group_permissions",
    )
    pre_delete.connect(
        _on_group_deleted, sender=Group, dispatch_uid="django_notebooks.group_deleted"
    )
    from django_notebooks.models import NotebookGrant

    pre_save.connect(
        _on_grant_saved,
        sender=NotebookGrant,
        dispatch_uid="django_notebooks.grant_saved",
    )
    pre_delete.connect(
        _on_grant_deleted,
        sender=NotebookGrant,
        dispatch_uid="django_notebooks.grant_deleted",
    )
