"""Who may open a notebook; the same answer from decide() and adecide()."""

from __future__ import annotations

from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import AnonymousUser, Group, Permission, User

from django_notebooks import access
from django_notebooks.access import Access
from django_notebooks.registry import Notebook

ASKED: list[tuple[str, str]] = []


def deny_everyone(user, notebook):
    ASKED.append((user.username, notebook.slug))
    return False


def allow_everyone(user, notebook):
    ASKED.append((user.username, notebook.slug))
    return True


def notebook(**options) -> Notebook:
    return Notebook(slug="nb", path=Path("/nowhere/nb.py"), title="Nb", **options)


OPEN = notebook()
PUBLIC = notebook(public=True)
SALES_OR_OPS = notebook(groups=("sales", "ops"))
NEEDS_TWO_PERMS = notebook(permissions=("auth.view_user", "auth.change_user"))
DENIED_BY_RULE = notebook(access="tests.test_access.deny_everyone")
ALLOWED_BY_RULE = notebook(access="tests.test_access.allow_everyone")
GROUP_AND_RULE = notebook(groups=("sales",), access="tests.test_access.allow_everyone")


def perm(codename: str) -> Permission:
    return Permission.objects.get(content_type__app_label="auth", codename=codename)


def make_user(name: str, *, groups=(), perms=(), group_perms=(), **fields) -> User:
    user = User.objects.create_user(name, password=None, **fields)
    for group_name in groups:
        group, _ = Group.objects.get_or_create(name=group_name)
        for codename in group_perms:
            group.permissions.add(perm(codename))
        user.groups.add(group)
    for codename in perms:
        user.user_permissions.add(perm(codename))
    return User.objects.get(pk=user.pk)  # no cached permissions


def both(user, nb) -> Access:
    """decide() and adecide() must agree; their answer."""
    sync_answer = access.decide(user, nb)
    async_answer = async_to_sync(access.adecide)(user, nb)
    assert sync_answer is async_answer, f"decide={sync_answer} adecide={async_answer}"
    return sync_answer


@pytest.fixture(autouse=True)
def _clear_asked():
    ASKED.clear()


def test_access_is_truthy_only_when_allowed():
    assert Access.ALLOWED
    assert not Access.LOGIN_REQUIRED
    assert not Access.FORBIDDEN


@pytest.mark.parametrize("anonymous", [AnonymousUser(), None])
@pytest.mark.parametrize(
    "nb", [OPEN, SALES_OR_OPS, NEEDS_TWO_PERMS, DENIED_BY_RULE, ALLOWED_BY_RULE]
)
def test_login_is_required_by_default(anonymous, nb):
    assert both(anonymous, nb) is Access.LOGIN_REQUIRED
    assert ASKED == []


@pytest.mark.parametrize("anonymous", [AnonymousUser(), None])
def test_public_notebooks_are_open_to_everyone(anonymous):
    assert both(anonymous, PUBLIC) is Access.ALLOWED


@pytest.mark.django_db
def test_any_active_user_may_open_a_notebook_without_rules():
    assert both(make_user("bob"), OPEN) is Access.ALLOWED


@pytest.mark.django_db
@pytest.mark.parametrize("nb", [OPEN, SALES_OR_OPS, ALLOWED_BY_RULE])
def test_inactive_users_are_treated_as_logged_out(nb):
    user = make_user("gone", groups=["sales"], is_active=False)
    assert both(user, nb) is Access.LOGIN_REQUIRED


@pytest.mark.django_db
def test_inactive_superuser_is_treated_as_logged_out():
    user = make_user("root", is_superuser=True, is_active=False)
    assert both(user, SALES_OR_OPS) is Access.LOGIN_REQUIRED


@pytest.mark.django_db
def test_groups_need_membership_of_any_one():
    assert both(make_user("alice", groups=["sales"]), SALES_OR_OPS) is Access.ALLOWED
    assert (
        both(make_user("dan", groups=["ops", "other"]), SALES_OR_OPS) is Access.ALLOWED
    )
    assert both(make_user("eve", groups=["other"]), SALES_OR_OPS) is Access.FORBIDDEN
    assert both(make_user("bob"), SALES_OR_OPS) is Access.FORBIDDEN


@pytest.mark.django_db
def test_permissions_are_all_required():
    assert (
        both(make_user("carol", perms=["view_user", "change_user"]), NEEDS_TWO_PERMS)
        is Access.ALLOWED
    )
    assert (
        both(make_user("half", perms=["view_user"]), NEEDS_TWO_PERMS)
        is Access.FORBIDDEN
    )
    assert both(make_user("bob"), NEEDS_TWO_PERMS) is Access.FORBIDDEN
    # Permissions held through a group count.
    via_group = make_user(
        "gina", groups=["auditors"], group_perms=["view_user", "change_user"]
    )
    assert both(via_group, NEEDS_TWO_PERMS) is Access.ALLOWED


@pytest.mark.django_db
def test_access_callable_decides():
    bob = make_user("bob")
    assert both(bob, DENIED_BY_RULE) is Access.FORBIDDEN
    assert both(bob, ALLOWED_BY_RULE) is Access.ALLOWED
    assert ("bob", "nb") in ASKED


@pytest.mark.django_db
def test_access_may_be_the_callable_itself():
    bob = make_user("bob")
    assert both(bob, notebook(access=deny_everyone)) is Access.FORBIDDEN
    assert (
        both(bob, notebook(access=lambda user, nb: user.username == "bob"))
        is Access.ALLOWED
    )


@pytest.mark.django_db
def test_access_callable_from_the_test_settings():
    nb = notebook(access="tests.access_rules.is_ops")
    assert both(make_user("ops-dan"), nb) is Access.ALLOWED
    assert both(make_user("bob"), nb) is Access.FORBIDDEN


@pytest.mark.django_db
def test_callable_is_asked_only_after_groups_pass():
    assert both(make_user("bob"), GROUP_AND_RULE) is Access.FORBIDDEN
    assert ASKED == []
    assert both(make_user("alice", groups=["sales"]), GROUP_AND_RULE) is Access.ALLOWED
    assert ("alice", "nb") in ASKED


@pytest.mark.django_db
def test_superuser_passes_groups_and_permissions():
    root = make_user("root", is_superuser=True)
    assert both(root, SALES_OR_OPS) is Access.ALLOWED
    assert both(root, NEEDS_TWO_PERMS) is Access.ALLOWED


@pytest.mark.django_db
def test_superuser_is_still_asked_by_the_access_callable():
    root = make_user("root", is_superuser=True)
    assert both(root, DENIED_BY_RULE) is Access.FORBIDDEN
    assert ("root", "nb") in ASKED
    rule_and_groups = notebook(
        groups=("sales",), access="tests.test_access.deny_everyone"
    )
    assert both(root, rule_and_groups) is Access.FORBIDDEN


@pytest.mark.django_db
def test_may_open_is_the_same_decision():
    alice = make_user("alice", groups=["sales"])
    bob = make_user("bob")
    assert access.may_open(alice, SALES_OR_OPS) is True
    assert access.may_open(bob, SALES_OR_OPS) is False
    assert access.may_open(AnonymousUser(), OPEN) is False
    assert access.may_open(AnonymousUser(), PUBLIC) is True
