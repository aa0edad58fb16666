"""The admin: live sessions and "terminate", the notebook list and its
"check that they load" action, and grants (the form, the access decision
and revocation when a grant goes)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.models import Group, Permission, User
from django.contrib.messages import get_messages
from django.core import checks
from django.test import AsyncClient, override_settings
from django.utils import timezone

from django_notebooks import access, admin, consumers, notices, registry
from django_notebooks.access import Access
from django_notebooks.admin import NotebookGrantForm
from django_notebooks.marimo import headless
from django_notebooks.marimo.apps import notebook_apps
from django_notebooks.models import NotebookCheck, NotebookGrant, NotebookSession
from django_notebooks.sessions import channel_messages
from tests.compat import force_login
from tests.helpers import async_wait_until, new_session_id, wait_until
from tests.settings import DJANGO_NOTEBOOKS, NOTEBOOKS_DIR
from tests.test_access import both
from tests.test_relay import read_until_completed, websocket

SESSIONS = "/admin/django_notebooks/notebooksession/"
GRANTS = "/admin/django_notebooks/notebookgrant/"
NOTEBOOKS = "/admin/django_notebooks/registerednotebook/"
BROKEN_NOTEBOOK = """\
import marimo

app = marimo.App()


@app.cell
def explode():
    raise ValueError("broken on purpose")
    return
"""


def shown(response) -> list[str]:
    """The admin messages a response queued."""
    return [str(message) for message in get_messages(response.wsgi_request)]


def staff(name: str, *codenames: str) -> User:
    user = User.objects.create_user(name, password="pw", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(
            Permission.objects.get(
                content_type__app_label="django_notebooks", codename=codename
            )
        )
    return user


def session_row(user=None, notebook="square", **fields) -> NotebookSession:
    return NotebookSession.objects.create(
        session_id=new_session_id(),
        notebook=notebook,
        user=user,
        process="host:1:abc",
        **fields,
    )


# The pages and who may see them.


@pytest.mark.django_db
def test_the_admin_pages_render_for_a_superuser(admin_client):
    alice = User.objects.create_user("alice")
    row = session_row(alice, channel_name="specific.x!1", owner_hash="f0" * 32)
    session_row(None, notebook="hello")
    grant = NotebookGrant.objects.create(notebook="sales", user=alice)

    index = admin_client.get("/admin/")
    assert index.status_code == 200
    for url in (SESSIONS, GRANTS, NOTEBOOKS):
        assert f'href="{url}"' in index.content.decode()

    sessions = admin_client.get(SESSIONS)
    assert sessions.status_code == 200
    text = sessions.content.decode()
    assert "alice" in text and "anonymous visitor" in text and "host:1:abc" in text
    assert "terminate_sessions" in text and "delete_selected" not in text
    searched = admin_client.get(SESSIONS, {"q": "alice"}).content.decode()
    assert "anonymous visitor" not in searched
    view = admin_client.get(f"{SESSIONS}{row.pk}/change/")
    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()  # read-only
    assert row.session_id in view.content.decode()
    assert "f0" * 32 not in view.content.decode()
    assert admin_client.get(f"{SESSIONS}add/").status_code == 403

    assert admin_client.get(GRANTS).status_code == 200
    # The notebook list links each notebook's grants.
    assert "alice" in admin_client.get(GRANTS, {"notebook": "sales"}).content.decode()
    assert (
        "alice" not in admin_client.get(GRANTS, {"notebook": "report"}).content.decode()
    )
    assert admin_client.get(f"{GRANTS}add/").status_code == 200
    assert admin_client.get(f"{GRANTS}{grant.pk}/change/").status_code == 200

    notebooks = admin_client.get(NOTEBOOKS)
    assert notebooks.status_code == 200
    text = notebooks.content.decode()
    for slug in ("square", "hello", "sales", "report", "ops", "lab/demo"):
        assert f'value="{slug}"' in text
    assert "lab/_private" not in text and "lab/escape" not in text
    assert 'href="/notebooks/square/"' in text
    assert 'href="/notebooks/lab/demo/"' in text
    assert str(DJANGO_NOTEBOOKS["NOTEBOOKS"]["square"]) in text
    assert "any of groups: sales" in text
    assert "all of: auth.view_user, auth.change_user" in text
    assert "access: tests.access_rules.is_ops" in text
    assert f'href="{GRANTS}?notebook=sales">1</a>' in text
    # No rows to add, change or delete: only the list exists.
    assert 'href="/admin/django_notebooks/registerednotebook/add/"' not in text
    assert admin_client.get(f"{NOTEBOOKS}square/change/").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("url", [SESSIONS, GRANTS, NOTEBOOKS])
def test_the_admin_pages_are_refused_to_users_who_are_not_staff(client, url):
    client.force_login(User.objects.create_user("bob"))
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
@pytest.mark.parametrize("url", [SESSIONS, GRANTS, NOTEBOOKS])
def test_staff_without_the_permission_are_refused(client, url):
    client.force_login(staff("stella"))
    assert client.get(url).status_code == 403


@pytest.mark.django_db
def test_viewing_sessions_does_not_allow_terminating_them(client):
    client.force_login(staff("stella", "view_notebooksession"))
    row = session_row(channel_name="specific.x!1")
    page = client.get(SESSIONS)
    assert page.status_code == 200
    assert "terminate_sessions" not in page.content.decode()
    response = client.post(
        SESSIONS,
        {"action": "terminate_sessions", "_selected_action": [row.pk], "index": "0"},
    )
    # Django's answer to an action the user may not run: the list again.
    assert response.status_code == 200
    assert NotebookSession.objects.filter(pk=row.pk).exists()
    assert (
        client.post(f"{SESSIONS}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    )


@pytest.mark.django_db
def test_checking_notebooks_needs_its_own_permission(client):
    client.force_login(staff("stella", "view_registerednotebook"))
    page = client.get(NOTEBOOKS)
    assert page.status_code == 200
    assert 'value="check"' not in page.content.decode()
    assert client.post(NOTEBOOKS, {"notebooks": ["square"]}).status_code == 403


def test_the_admin_passes_djangos_system_checks():
    errors = checks.run_checks(tags=[checks.Tags.admin, checks.Tags.models])
    assert [e for e in errors if e.obj and "django_notebooks" in str(e.obj)] == []


# "Check that they load".


def last_check_column(page) -> list[str]:
    return [
        re.sub(r"\s+", " ", cell).strip()
        for cell in re.findall(
            r'<td class="field-last-check">(.*?)</td>', page.content.decode(), re.S
        )
    ]


@pytest.mark.django_db(transaction=True)
def test_checking_a_good_and_a_broken_notebook_in_the_background(
    admin_client, tmp_path, monkeypatch
):
    broken = tmp_path / "broken.py"
    broken.write_text(BROKEN_NOTEBOOK)
    notebooks = {
        "square": NOTEBOOKS_DIR / "square.py",
        "broken": {"path": broken, "title": "Broken"},
    }
    # The runs wait until the POST has been answered: it must not wait for them.
    answered = threading.Event()
    real_check = headless.check

    def check_after_the_answer(notebook, **options):
        assert answered.wait(30), "the POST waited for the check"
        return real_check(notebook, **options)

    monkeypatch.setattr(headless, "check", check_after_the_answer)
    with override_settings(DJANGO_NOTEBOOKS={"NOTEBOOKS": notebooks}):
        response = admin_client.post(
            NOTEBOOKS, {"action": "check", "notebooks": ["square", "broken"]}
        )
        answered.set()
        assert response.status_code == 302
        assert response["Location"] == NOTEBOOKS
        assert shown(response) == [
            "Checking Square (square) in the background: its result appears "
            "in the Last check column.",
            "Checking Broken (broken) in the background: its result appears "
            "in the Last check column.",
        ]
        running = admin_client.get(NOTEBOOKS)
        wait_until(
            lambda: NotebookCheck.objects.filter(finished_at__isnull=True).count() == 0,
            timeout=120,
            message="the checks did not finish",
        )
        page = admin_client.get(NOTEBOOKS)
    # While a check runs, the page says so and refreshes itself.
    assert 'http-equiv="refresh"' in running.content.decode()
    assert last_check_column(running)[0].startswith("Checking…")
    assert 'http-equiv="refresh"' not in page.content.decode()
    good, bad = last_check_column(page)
    assert good.startswith("Loads: it ran in ")
    assert bad.startswith("Does not load (after ")
    assert "explode: ValueError: broken on purpose" in bad


@pytest.mark.django_db(transaction=True)
def test_a_notebook_being_checked_is_not_checked_twice(admin_client, monkeypatch):
    release = threading.Event()

    def slow_check(notebook, **options):
        release.wait(30)
        return headless.HeadlessRun(ok=True, failures=(), output="", seconds=0.0)

    monkeypatch.setattr(headless, "check", slow_check)
    try:
        admin_client.post(NOTEBOOKS, {"action": "check", "notebooks": ["square"]})
        again = admin_client.post(
            NOTEBOOKS, {"action": "check", "notebooks": ["square"]}
        )
        # (The first POST's message is still queued: the redirect was not followed.)
        assert shown(again)[-1] == "Square (square) is being checked already."
    finally:
        release.set()


@pytest.mark.django_db
def test_a_check_whose_process_stopped_says_so(admin_client):
    started = timezone.now() - timedelta(seconds=admin.CHECK_ABANDONED_AFTER + 1)
    NotebookCheck.objects.create(notebook="square", started_at=started)
    [result, *_] = last_check_column(admin_client.get(NOTEBOOKS))
    assert result.startswith("The check stopped before it finished: run it again.")


@pytest.mark.django_db
def test_checking_nothing_or_an_unknown_notebook_says_so(admin_client):
    nothing = admin_client.post(NOTEBOOKS, {"action": "check"})
    assert nothing.status_code == 302
    assert shown(nothing) == ["Select the notebooks to check first."]
    assert admin_client.get(NOTEBOOKS).status_code == 200  # shows the message
    unknown = admin_client.post(NOTEBOOKS, {"notebooks": ["../etc/passwd"]})
    assert unknown.status_code == 302
    assert shown(unknown) == ["There is no notebook ../etc/passwd."]


# Terminating sessions. on_commit must run at once here (transaction=True),
# and the rows must be seen by the thread that removes unanswered ones.


def post_terminate(client, *rows):
    return client.post(
        SESSIONS,
        {
            "action": "terminate_sessions",
            "_selected_action": [row.pk for row in rows],
            "index": "0",
        },
    )


@pytest.mark.django_db(transaction=True)
def test_terminate_tells_the_holder_answers_at_once_and_removes_unanswered_rows(
    admin_client, monkeypatch
):
    monkeypatch.setattr(admin, "ANSWER_WAIT", 1.0)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    row = session_row(channel_name=channel)
    response = post_terminate(admin_client, row)
    assert response.status_code == 302
    # Answered before the sessions had a chance to answer.
    assert NotebookSession.objects.filter(pk=row.pk).exists()
    assert async_to_sync(layer.receive)(channel) == {"type": "notebooks.terminate"}
    [message] = shown(response)
    assert message.startswith("Asked 1 notebook session to close: it ends within")
    # Nobody read the channel, so nobody closed the session: its process has
    # stopped, and the row goes once ANSWER_WAIT has passed.
    wait_until(
        lambda: not NotebookSession.objects.filter(pk=row.pk).exists(),
        timeout=10,
        message="the unanswered row was not removed",
    )


@pytest.mark.django_db(transaction=True)
def test_rows_of_sessions_that_answer_are_theirs_to_delete():
    answered = session_row(channel_name="a")
    silent = session_row(channel_name="b")
    answered.delete()  # as its consumer does when it closes
    rows = {(answered.pk, "a"), (silent.pk, "b")}
    assert admin.remove_unanswered(rows, wait=0.2) == 1
    assert not NotebookSession.objects.filter(pk=silent.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_session_without_a_channel_is_reported_and_kept(admin_client):
    row = session_row(channel_name="")
    response = post_terminate(admin_client, row)
    [message] = shown(response)
    assert message.startswith("1 notebook session could not be told to close")
    assert NotebookSession.objects.filter(pk=row.pk).exists()


@pytest.mark.django_db(transaction=True)
async def test_terminate_closes_an_open_session(
    admin_client, django_user_model, either_channel_layer
):
    alice = await sync_to_async(django_user_model.objects.create_user)("alice")
    login = AsyncClient()
    await force_login(login, alice)
    session_id = new_session_id()
    communicator = websocket(
        f"/notebooks/square/ws?session_id={session_id}",
        f"sessionid={login.cookies['sessionid'].value}",
    )
    connected, _ = await communicator.connect(timeout=30)
    assert connected
    try:
        await read_until_completed(communicator)
        row = await NotebookSession.objects.aget(session_id=session_id)
        started = time.monotonic()
        # The delete view, this time: "delete" is "terminate".
        posted = asyncio.ensure_future(
            sync_to_async(admin_client.post, thread_sensitive=False)(
                f"{SESSIONS}{row.pk}/delete/", {"post": "yes"}
            )
        )
        notice = await communicator.receive_json_from(timeout=2)
        assert notice["op"] == notices.OP
        assert notice["data"]["title"] == "Notebook session ended"
        closed = await communicator.receive_output(timeout=2)
        assert closed["type"] == "websocket.close"
        assert closed["code"] == consumers.CLOSE_REVOKED
        assert time.monotonic() - started < 2
        # The browser answers the close; the consumer deletes its row.
        await communicator.disconnect()
        response = await posted
    finally:
        await communicator.disconnect()
        await sync_to_async(notebook_apps.close_all_sessions)()
    assert response.status_code == 302
    assert response["Location"] == SESSIONS
    [message] = shown(response)
    assert message.startswith("Asked 1 notebook session to close")

    async def row_gone() -> bool:
        return not await NotebookSession.objects.filter(pk=row.pk).aexists()

    await async_wait_until(row_gone, message="the consumer did not delete its row")


# Grants: the form.


@pytest.mark.django_db
def test_the_grant_form_offers_every_registered_notebook():
    choices = dict(NotebookGrantForm().fields["notebook"].choices)
    assert choices["Notebooks"] == [
        (nb.slug, f"{nb.title} ({nb.slug})")
        for nb in registry.explicit_notebooks().values()
    ]
    assert ("lab/demo", "Demo (lab/demo)") in choices["Directory lab"]
    assert all("_private" not in slug for slug, _ in choices["Directory lab"])


@pytest.mark.django_db
def test_a_grant_names_a_registered_notebook_and_one_user_or_group():
    alice = User.objects.create_user("alice")
    sales = Group.objects.create(name="sales")

    def errors(**data):
        form = NotebookGrantForm(data={"notebook": "report", **data})
        return form.errors if not form.is_valid() else {}

    assert errors(user=alice.pk) == {}
    assert errors(group=sales.pk) == {}
    assert errors() == {"user": ["Choose a user or a group."]}
    assert errors(user=alice.pk, group=sales.pk) == {
        "group": ["Choose a user or a group, not both: make two grants."]
    }
    unknown = NotebookGrantForm(data={"notebook": "nope", "user": alice.pk})
    assert "notebook" in unknown.errors
    NotebookGrant.objects.create(notebook="report", user=alice)
    assert errors(user=alice.pk) == {"__all__": ["alice already has this notebook."]}


@pytest.mark.django_db
def test_a_grant_of_a_notebook_no_longer_registered_can_still_be_edited():
    alice = User.objects.create_user("alice")
    grant = NotebookGrant.objects.create(notebook="gone", user=alice)
    form = NotebookGrantForm(
        instance=grant, data={"notebook": "gone", "user": alice.pk}
    )
    assert form.is_valid(), form.errors
    assert NotebookGrantForm(data={"notebook": "gone", "user": alice.pk}).errors


@pytest.mark.django_db
def test_a_grant_is_made_in_the_admin(admin_client):
    bob = User.objects.create_user("bob")
    response = admin_client.post(
        f"{GRANTS}add/", {"notebook": "lab/demo", "user": bob.pk, "group": ""}
    )
    assert response.status_code == 302, response.content.decode()
    assert NotebookGrant.objects.get().notebook == "lab/demo"
    refused = admin_client.post(f"{GRANTS}add/", {"notebook": "sales"})
    assert refused.status_code == 200
    assert "Choose a user or a group." in refused.content.decode()


# Grants: the access decision.


def notebook(slug: str) -> registry.Notebook:
    found = registry.get_notebook(slug)
    assert found is not None
    return found


@pytest.mark.django_db
def test_a_user_grant_stands_in_for_groups_and_permissions():
    bob = User.objects.create_user("bob")
    for slug in ("sales", "report"):
        assert both(bob, notebook(slug)) is Access.FORBIDDEN
        NotebookGrant.objects.create(notebook=slug, user=bob)
        assert both(bob, notebook(slug)) is Access.ALLOWED
    # Only the notebook granted.
    assert NotebookGrant.objects.filter(user=bob).count() == 2
    directory_notebook = registry.Notebook(
        slug="lab/demo", path=Path("/x.py"), title="x", groups=("nobody",)
    )
    assert both(bob, directory_notebook) is Access.FORBIDDEN


@pytest.mark.django_db
def test_a_group_grant_lets_its_members_in():
    bob = User.objects.create_user("bob")
    carol = User.objects.create_user("carol")
    analysts = Group.objects.create(name="analysts")
    bob.groups.add(analysts)
    NotebookGrant.objects.create(notebook="sales", group=analysts)
    assert both(bob, notebook("sales")) is Access.ALLOWED
    assert both(carol, notebook("sales")) is Access.FORBIDDEN


@pytest.mark.django_db
def test_a_grant_does_not_replace_the_login_nor_the_projects_rule():
    bob = User.objects.create_user("bob", is_active=False)
    dan = User.objects.create_user("dan")
    NotebookGrant.objects.create(notebook="sales", user=bob)
    NotebookGrant.objects.create(notebook="ops", user=dan)
    assert both(bob, notebook("sales")) is Access.LOGIN_REQUIRED
    # "ops" lets in only users whose name starts with "ops": a grant does not
    # change that.
    assert both(dan, notebook("ops")) is Access.FORBIDDEN
    grouped_and_ruled = registry.Notebook(
        slug="sales",
        path=Path("/x.py"),
        title="x",
        groups=("sales",),
        access="tests.test_access.deny_everyone",
    )
    NotebookGrant.objects.create(notebook="sales", user=dan)
    assert both(dan, grouped_and_ruled) is Access.FORBIDDEN


@pytest.mark.django_db
def test_users_who_pass_the_rules_cost_no_grant_query(django_assert_num_queries):
    alice = User.objects.create_user("alice")
    alice.groups.add(Group.objects.create(name="sales"))
    alice = User.objects.get(pk=alice.pk)
    with django_assert_num_queries(1):  # the group membership, nothing else
        assert access.decide(alice, notebook("sales")) is Access.ALLOWED
    with django_assert_num_queries(0):  # adecide's fast path
        assert async_to_sync(access.adecide)(alice, notebook("square")) is (
            Access.ALLOWED
        )


# Grants: revocation.


async def user_channel(user_id) -> str:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(channel_messages.user_group(user_id), channel)
    return channel


async def next_message(channel: str, timeout: float = 1.0):
    try:
        return await asyncio.wait_for(get_channel_layer().receive(channel), timeout)
    except TimeoutError:
        return None


RECHECK = {"type": channel_messages.RECHECK}


@pytest.mark.django_db(transaction=True)
async def test_deleting_or_changing_a_grant_rechecks_who_had_it():
    bob = await sync_to_async(User.objects.create_user)("bob")
    carol = await sync_to_async(User.objects.create_user)("carol")
    bob_channel, carol_channel = (
        await user_channel(bob.pk),
        await user_channel(carol.pk),
    )

    grant = await NotebookGrant.objects.acreate(notebook="sales", user=bob)
    assert await next_message(bob_channel, 0.3) is None  # granting takes nothing

    grant.user = carol
    await sync_to_async(grant.save)()
    assert await next_message(bob_channel) == RECHECK
    assert await next_message(carol_channel, 0.3) is None

    await sync_to_async(grant.delete)()
    assert await next_message(carol_channel) == RECHECK


@pytest.mark.django_db(transaction=True)
async def test_deleting_a_group_grant_rechecks_the_groups_members(admin_client):
    bob = await sync_to_async(User.objects.create_user)("bob")
    analysts = await Group.objects.acreate(name="analysts")
    await sync_to_async(bob.groups.add)(analysts)
    grant = await NotebookGrant.objects.acreate(notebook="sales", group=analysts)
    channel = await user_channel(bob.pk)
    # As the admin does it.
    response = await sync_to_async(admin_client.post)(
        f"{GRANTS}{grant.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 302
    assert await next_message(channel) == RECHECK


@pytest.mark.django_db(transaction=True)
async def test_revoking_a_grant_closes_the_open_session_it_allowed():
    bob = await sync_to_async(User.objects.create_user)("bob")
    grant = await NotebookGrant.objects.acreate(notebook="sales", user=bob)
    login = AsyncClient()
    await force_login(login, bob)
    cookie = f"sessionid={login.cookies['sessionid'].value}"
    communicator = websocket(
        f"/notebooks/sales/ws?session_id={new_session_id()}", cookie
    )
    connected, _ = await communicator.connect(timeout=30)
    assert connected
    try:
        await read_until_completed(communicator)
        started = time.monotonic()
        await sync_to_async(grant.delete)()
        notice = await communicator.receive_json_from(timeout=2)
        assert notice["data"]["title"] == "Notebook closed"
        closed = await communicator.receive_output(timeout=2)
        assert closed["code"] == consumers.CLOSE_REVOKED
        assert time.monotonic() - started < 2
    finally:
        await communicator.disconnect()
        await sync_to_async(notebook_apps.close_all_sessions)()
