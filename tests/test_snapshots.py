"""Snapshots (django_notebooks/snapshots/), in process: the options and
their checks, a snapshot's making (a real run in a kernel of its own),
where it is kept, when it is made again, and a static notebook's page."""

from __future__ import annotations

import datetime
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, Group, User
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.template import Context, Template
from django.test import override_settings
from django.utils import timezone

from django_notebooks import checks, registry
from django_notebooks.kernels.processes import kernel_processes
from django_notebooks.models import NotebookSnapshot
from django_notebooks.snapshots import keeper, making, outputs_first, store
from tests.helpers import (
    communicator,
    connected_and_run,
    frames_until_completed,
    login,
    new_session_id,
    notebooks_with,
    outputs,
    wait_until,
)
from tests.live import whoami
from tests.settings import NOTEBOOKS_DIR

pytestmark = pytest.mark.django_db(transaction=True)

# keeper.start itself (tests/conftest.py makes it do nothing in process).
REAL_START = keeper.start

SNAPSHOT_NOTEBOOK = NOTEBOOKS_DIR / "snapshot.py"
KPIS = {
    "path": SNAPSHOT_NOTEBOOK,
    "public": True,
    "static": True,
    "snapshot": {"refresh": 300, "models": ["auth.Group"]},
}
PRIVATE = {
    "path": SNAPSHOT_NOTEBOOK,
    "groups": ["sales"],
    "static": True,
    "snapshot": {},
}
# What the notebook shows, run with no database of its own (in process).
FIGURE = "groups=none square=16"


def with_entries(**entries: Any) -> override_settings:
    return notebooks_with(
        NOTEBOOKS={**settings.DJANGO_NOTEBOOKS["NOTEBOOKS"], **entries}
    )


@pytest.fixture
def kpis():
    with with_entries(kpis=KPIS, kpis_sales=PRIVATE):
        yield registry.get_notebook("kpis")


@pytest.fixture(scope="module")
def made() -> making.Made:
    """One real run of the snapshot notebook (the tests store it as theirs)."""
    with with_entries(kpis=KPIS):
        return making.make(registry.get_notebook("kpis"))


@pytest.fixture
def stored(kpis, made) -> NotebookSnapshot:
    return store.save(kpis, made, version=store.current_version(kpis))


@pytest.fixture(autouse=True)
def fresh_memory():
    store.forget_kept()
    cache.clear()
    yield
    store.forget_kept()


def snapshot_kernels() -> list[Any]:
    """The kernel processes of snapshot runs this process started."""
    return [
        process
        for process in kernel_processes.all()
        if process.session_id.startswith(making.SESSION_PREFIX)
    ]


def notebook_file(tmp_path: Path, source: str = "") -> Path:
    """A copy of the snapshot notebook, with ``source`` as one more cell."""
    path = tmp_path / "snap.py"
    text = SNAPSHOT_NOTEBOOK.read_text()
    if source:
        text = text.replace(
            'if __name__ == "__main__":',
            f"@app.cell\ndef _():\n    {source}\n    return\n\n\n"
            'if __name__ == "__main__":',
        )
    path.write_text(text)
    return path


# The options


def test_the_options_are_read():
    with with_entries(kpis=KPIS, plain=SNAPSHOT_NOTEBOOK):
        kpis = registry.get_notebook("kpis")
        plain = registry.get_notebook("plain")
    assert kpis.static and kpis.snapshot == registry.SnapshotOptions(
        refresh=300.0, models=("auth.Group",), as_user=None
    )
    assert not plain.static and plain.snapshot is None


@pytest.mark.parametrize(
    ("snapshot", "says"),
    [
        ("often", "snapshot"),
        ({"refresh": -1}, "snapshot"),
        ({"refresh": True}, "snapshot"),
        ({"models": "auth.Group"}, "snapshot"),
        ({"as_user": ""}, "snapshot"),
        ({"every": 5}, "snapshot"),
    ],
)
def test_a_wrong_snapshot_option_is_refused(snapshot, says):
    with with_entries(kpis={"path": SNAPSHOT_NOTEBOOK, "snapshot": snapshot}):
        with pytest.raises(ImproperlyConfigured, match=says):
            registry.explicit_notebooks()


def test_static_must_be_true_or_false():
    with with_entries(kpis={"path": SNAPSHOT_NOTEBOOK, "static": "yes"}):
        with pytest.raises(ImproperlyConfigured, match="static"):
            registry.explicit_notebooks()


# The checks


def check_ids(**entries: Any) -> list[str]:
    with with_entries(**entries):
        return [message.id for message in checks.check_snapshots()]


def test_the_checks_pass_a_good_configuration():
    assert check_ids(kpis=KPIS, private=PRIVATE) == []


def test_static_without_snapshot_is_e019():
    assert check_ids(kpis={"path": SNAPSHOT_NOTEBOOK, "static": True}) == [
        "django_notebooks.E019"
    ]


def test_an_unknown_model_is_e020():
    entry = {"path": SNAPSHOT_NOTEBOOK, "snapshot": {"models": ["shop.Order", "auth"]}}
    assert check_ids(kpis=entry) == ["django_notebooks.E020"] * 2


def test_a_notebook_that_reads_the_visitor_needs_as_user_e021():
    whoami = NOTEBOOKS_DIR / "whoami.py"
    assert check_ids(me={"path": whoami, "snapshot": {}}) == ["django_notebooks.E021"]
    [message] = checks_of(me={"path": whoami, "snapshot": {}})
    assert "as_user" in message.hint
    assert check_ids(me={"path": whoami, "snapshot": {"as_user": "alice"}}) == []


def checks_of(**entries: Any) -> list[Any]:
    with with_entries(**entries):
        return checks.check_snapshots()


def test_static_with_a_query_is_e022():
    entry = {**KPIS, "query": "tests.notebooks.query_forms.SalesQuery"}
    assert check_ids(kpis=entry) == ["django_notebooks.E022"]


# Making one


def test_a_snapshot_is_the_run_of_nobody_exported_by_marimo(made):
    assert FIGURE in made.html
    # marimo's static page: no kernel, the frontend from the bridge's URL.
    assert '"mode": "read"' in made.html
    assert "/notebooks/_marimo/" in made.html
    assert "cdn.jsdelivr.net" not in made.html
    ops = [json.loads(frame)["op"] for frame in made.frames]
    assert ops[0] == "kernel-ready" and ops[-1] == "completed-run"
    assert made.seconds > 0


def test_the_run_has_ended_with_its_kernel(made):
    wait_until(lambda: not snapshot_kernels(), 10, "the run's kernel is still there")


def test_a_stored_snapshot_hides_server_paths_and_says_when_it_was_made(stored):
    content = store.content_of(stored)
    assert content is not None
    assert str(SNAPSHOT_NOTEBOOK.parent) not in content.html
    assert 'class="django-notebooks-snapshot"' in content.html
    assert stored.made_at.strftime("%Y-%m-%dT%H:%M") in content.html
    assert stored.size and stored.size > len(content.html)
    assert stored.file_version == store.current_version(registry.get_notebook("kpis"))


def test_as_user_makes_it_as_that_user():
    User.objects.create_user("carol", password="pw")
    entry = {"path": NOTEBOOKS_DIR / "whoami.py", "snapshot": {"as_user": "carol"}}
    with with_entries(me=entry):
        made = making.make(registry.get_notebook("me"))
    seen = whoami([outputs([json.loads(frame) for frame in made.frames])])
    assert seen["user"]["username"] == "carol"
    # Nothing of a browser's: the run had no request but the bridge's.
    assert seen["cookies"] == []


def test_an_as_user_who_is_not_a_user_fails_the_run():
    entry = {"path": NOTEBOOKS_DIR / "whoami.py", "snapshot": {"as_user": "nobody"}}
    with with_entries(me=entry):
        with pytest.raises(making.SnapshotFailed, match="'nobody' is not a user"):
            making.make(registry.get_notebook("me"))


def test_without_as_user_nobody_is_signed_in(kpis):
    assert making._run_user(kpis)["is_authenticated"] is False


def test_a_failed_run_keeps_the_old_snapshot(tmp_path, made, caplog):
    path = notebook_file(tmp_path)
    with with_entries(kpis={**KPIS, "path": path}):
        notebook = registry.get_notebook("kpis")
        old = store.save(notebook, made, version=store.current_version(notebook))
        notebook_file(tmp_path, "1 / 0")
        assert keeper.why_due(notebook, old, timezone.now()) == "file changed"
        row = keeper.make_now(notebook, reason="file changed")
    assert row is not None
    assert row.failed_at is not None
    # Which cell, and where its details are (marimo hides them from pages).
    assert "A cell raised during the run: cell 5: " in row.last_error
    assert "notebooks check kpis" in row.last_error
    assert (row.etag, row.file) == (old.etag, old.file)
    assert store.content_of(row).html == store.content_of(old).html
    assert "could not be made (the last one stays served)" in caplog.text


def test_a_run_past_the_timeout_fails_and_its_kernel_ends(tmp_path):
    path = notebook_file(tmp_path, '__import__("time").sleep(60)')
    entry = {**KPIS, "path": path}
    with (
        with_entries(kpis=entry),
        override_settings(
            DJANGO_NOTEBOOKS={
                **settings.DJANGO_NOTEBOOKS,
                "NOTEBOOKS": {"kpis": entry},
                "SNAPSHOT_TIMEOUT": 3,
            }
        ),
    ):
        with pytest.raises(making.SnapshotFailed, match="within 3 seconds"):
            making.make(registry.get_notebook("kpis"))
    wait_until(lambda: not snapshot_kernels(), 10, "the run's kernel is still there")


# Where it is kept


def test_a_new_snapshot_replaces_the_old_file(kpis, made, stored):
    newer = store.save(kpis, made, version="other")
    assert newer.pk == stored.pk and newer.file != stored.file
    assert not store.storage().exists(stored.file)
    store.forget_kept()
    assert store.content_of(newer) is not None


def test_a_file_gone_is_read_as_none(stored):
    store.storage().delete(stored.file)
    store.forget_kept()
    assert store.content_of(stored) is None


def test_memory_keeps_a_bounded_amount(kpis, made, monkeypatch):
    monkeypatch.setattr(store, "MAX_KEPT_BYTES", len(made.html) * 2)
    for version in ("a", "b", "c", "d"):
        store.save(kpis, made, version=version)
    assert len(store._kept) <= 2


# When it is made again


def test_why_due(kpis, stored):
    now = timezone.now()
    assert keeper.why_due(kpis, None, now) == "none yet"
    assert keeper.why_due(kpis, stored, now) is None
    assert (
        keeper.why_due(kpis, stored, now + datetime.timedelta(seconds=301))
        == "scheduled"
    )
    stored.due_at = now
    assert keeper.why_due(kpis, stored, now) == "asked"
    stored.due_at = None
    stored.file_version = "older"
    assert keeper.why_due(kpis, stored, now) == "file changed"


def test_a_failure_is_tried_again_after_a_while_or_when_asked(kpis):
    now = timezone.now()
    row = NotebookSnapshot.objects.create(
        notebook="kpis",
        failed_at=now,
        failed_version=store.current_version(kpis),
        last_error="x",
    )
    assert keeper.why_due(kpis, row, now) is None
    # A new version of the file is tried at once.
    row.failed_version = "an older one"
    assert keeper.why_due(kpis, row, now) == "failed before"
    row.failed_version = store.current_version(kpis)
    later = now + datetime.timedelta(seconds=keeper.RETRY_AFTER_FAILURE + 1)
    assert keeper.why_due(kpis, row, later) == "failed before"
    row.due_at = now
    assert keeper.why_due(kpis, row, now) == "asked"


def test_no_refresh_means_only_other_triggers(made):
    entry = {**KPIS, "snapshot": {}}
    with with_entries(kpis=entry):
        notebook = registry.get_notebook("kpis")
        row = store.save(notebook, made, version=store.current_version(notebook))
        far = timezone.now() + datetime.timedelta(days=365)
        assert keeper.why_due(notebook, row, far) is None


def test_saves_are_debounced(kpis, stored):
    started = timezone.now()
    NotebookSnapshot.objects.filter(pk=stored.pk).update(started_at=started)
    with override_settings(
        DJANGO_NOTEBOOKS={
            **settings.DJANGO_NOTEBOOKS,
            "NOTEBOOKS": {"kpis": KPIS},
            "SNAPSHOT_MIN_INTERVAL": 30,
        }
    ):
        keeper.ask(["kpis"], debounced=True)
        first = NotebookSnapshot.objects.get(pk=stored.pk).due_at
        keeper.ask(["kpis"], debounced=True)
        second = NotebookSnapshot.objects.get(pk=stored.pk).due_at
    assert first == second
    assert abs((first - started).total_seconds() - 30) < 1
    # Asked by hand (the admin, the command): now.
    keeper.ask(["kpis"])
    assert NotebookSnapshot.objects.get(pk=stored.pk).due_at <= timezone.now()


def test_a_listed_model_saved_asks_for_a_new_snapshot(
    kpis, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        group = Group.objects.create(name="snapshot-test")
    row = NotebookSnapshot.objects.get(notebook="kpis")
    assert row.due_at is not None
    # Only the notebooks that list it.
    assert not NotebookSnapshot.objects.filter(notebook="kpis_sales").exists()
    NotebookSnapshot.objects.filter(pk=row.pk).update(due_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        group.delete()
    assert NotebookSnapshot.objects.get(pk=row.pk).due_at is not None


def test_an_m2m_change_of_a_listed_model_asks_too(
    kpis, django_capture_on_commit_callbacks
):
    user = User.objects.create_user("dave")
    group = Group.objects.create(name="m2m")
    NotebookSnapshot.objects.filter(notebook="kpis").update(due_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        user.groups.add(group)
    assert NotebookSnapshot.objects.get(notebook="kpis").due_at is not None


def test_an_unlisted_model_asks_nothing(kpis, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        User.objects.create_user("erin")
    assert not NotebookSnapshot.objects.exists()


def test_make_due_makes_what_is_due_once(kpis, made, monkeypatch):
    calls = []

    def fake_make(notebook):
        calls.append(notebook.slug)
        return made

    monkeypatch.setattr(making, "make", fake_make)
    assert sorted(keeper.make_due()) == ["kpis", "kpis_sales"]
    assert keeper.make_due() == []
    assert sorted(calls) == ["kpis", "kpis_sales"]


def test_a_snapshot_being_made_elsewhere_is_not_made_again(kpis, made, monkeypatch):
    monkeypatch.setattr(making, "make", lambda notebook: made)
    cache.add(keeper.LOCK_PREFIX + "kpis", "another process")
    assert keeper.make_now(kpis) is None
    assert keeper.make_due() == ["kpis_sales"]


def test_asked_during_a_making_makes_it_again_after(kpis, made, monkeypatch):
    def asked_meanwhile(notebook):
        keeper.ask(["kpis"])
        return made

    monkeypatch.setattr(making, "make", asked_meanwhile)
    row = keeper.make_now(kpis)
    assert row is not None and row.file
    assert NotebookSnapshot.objects.get(pk=row.pk).due_at is not None


# The command


def test_the_command_makes_them_now(kpis, made, monkeypatch, capsys):
    monkeypatch.setattr(making, "make", lambda notebook: made)
    call_command("notebooks", "snapshot", "kpis")
    assert "kpis ... made" in capsys.readouterr().out
    assert NotebookSnapshot.objects.get(notebook="kpis").file


def test_the_command_fails_when_a_snapshot_fails(kpis, monkeypatch):
    def failing(notebook):
        raise making.SnapshotFailed("A cell raised during the run: ValueError: no")

    monkeypatch.setattr(making, "make", failing)
    with pytest.raises(CommandError, match="1 snapshot could not be made: kpis"):
        call_command("notebooks", "snapshot", "kpis")


def test_the_command_names_notebooks_without_a_snapshot(kpis):
    with pytest.raises(CommandError, match="No 'snapshot' option: square"):
        call_command("notebooks", "snapshot", "square")


# A static notebook's page


def test_a_public_static_page_is_the_snapshot_cacheable_by_anyone(client, stored):
    response = client.get("/notebooks/kpis/")
    assert response.status_code == 200
    assert FIGURE.encode() in response.content
    assert response["ETag"] == f'"{stored.etag}"'
    assert response["Cache-Control"] == "public, max-age=300"
    assert "Last-Modified" in response
    # Nobody's login in it: no cookie, no Vary on cookies.
    assert not response.cookies
    assert "Cookie" not in response.get("Vary", "")


def test_a_repeated_visit_gets_a_304(client, stored):
    first = client.get("/notebooks/kpis/")
    again = client.get("/notebooks/kpis/", HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304
    since = client.get(
        "/notebooks/kpis/", HTTP_IF_MODIFIED_SINCE=first["Last-Modified"]
    )
    assert since.status_code == 304


def test_no_refresh_means_revalidate(client, made):
    with with_entries(kpis={**KPIS, "snapshot": {}}):
        notebook = registry.get_notebook("kpis")
        store.save(notebook, made, version=store.current_version(notebook))
        response = client.get("/notebooks/kpis/")
    assert response["Cache-Control"] == "public, no-cache"


def test_a_group_notebook_snapshot_goes_to_its_members_only(client, kpis, made):
    store.save(registry.get_notebook("kpis_sales"), made, version="v")
    anonymous = client.get("/notebooks/kpis_sales/")
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    User.objects.create_user("stranger", password="pw")
    client.login(username="stranger", password="pw")
    assert client.get("/notebooks/kpis_sales/").status_code == 403
    member = User.objects.create_user("member", password="pw")
    member.groups.add(Group.objects.get_or_create(name="sales")[0])
    client.login(username="member", password="pw")
    response = client.get("/notebooks/kpis_sales/")
    assert response.status_code == 200 and FIGURE.encode() in response.content
    # Never kept by a shared cache.
    assert response["Cache-Control"] == "private, no-cache"
    assert "Cookie" in response["Vary"]


def test_a_concealed_group_notebook_is_a_404_to_strangers(client, kpis, made):
    store.save(registry.get_notebook("kpis_sales"), made, version="v")
    with override_settings(
        DJANGO_NOTEBOOKS={
            **settings.DJANGO_NOTEBOOKS,
            "NOTEBOOKS": {"kpis_sales": PRIVATE},
            "CONCEAL_FORBIDDEN": True,
        }
    ):
        User.objects.create_user("stranger", password="pw")
        client.login(username="stranger", password="pw")
        assert client.get("/notebooks/kpis_sales/").status_code == 404


def test_no_snapshot_yet_is_a_503_that_retries(client, kpis):
    response = client.get("/notebooks/kpis/")
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response["Cache-Control"] == "no-store"
    assert b"being prepared" in response.content


def test_a_static_notebook_has_no_kernel_calls(client, stored):
    response = client.post(
        "/notebooks/kpis/api/kernel/set_ui_element_value",
        data="{}",
        content_type="application/json",
        HTTP_MARIMO_SESSION_ID="s_anything",
    )
    assert response.status_code == 404
    # A group notebook's says no more than its page would, to strangers.
    refused = client.post(
        "/notebooks/kpis_sales/api/kernel/set_ui_element_value",
        data="{}",
        content_type="application/json",
    )
    assert refused.status_code == 401


async def test_a_static_notebook_refuses_its_websocket(kpis):
    ws = communicator("/notebooks/kpis/ws?session_id=s_static")
    connected, _ = await ws.connect(timeout=10)
    assert not connected
    await ws.disconnect()


def test_the_template_tag_embeds_it(rf, stored):
    request = rf.get("/")
    request.user = AnonymousUser()
    html = Template('{% load notebooks %}{% notebook "kpis" %}').render(
        Context({"request": request})
    )
    assert 'src="/notebooks/kpis/"' in html and "<iframe" in html


# The admin


def test_the_admin_lists_snapshots_and_makes_them_again(admin_client, stored):
    NotebookSnapshot.objects.filter(pk=stored.pk).update(
        last_error="ValueError: boom", failed_at=timezone.now()
    )
    url = "/admin/django_notebooks/notebooksnapshot/"
    page = admin_client.get(url).content.decode()
    for column in ("Age", "Size", "Took (seconds)", "Last error", "ValueError: boom"):
        assert column.lower() in page.lower(), column
    response = admin_client.post(
        url, {"action": "make_again", "_selected_action": [stored.pk]}, follow=True
    )
    assert "will be made again" in response.content.decode()
    assert NotebookSnapshot.objects.get(pk=stored.pk).due_at is not None


def test_deleting_in_the_admin_deletes_the_file(admin_client, stored):
    url = f"/admin/django_notebooks/notebooksnapshot/{stored.pk}/delete/"
    admin_client.post(url, {"post": "yes"})
    assert not NotebookSnapshot.objects.exists()
    assert not store.storage().exists(stored.file)


# Outputs first

REPORT = {"path": SNAPSHOT_NOTEBOOK, "snapshot": {}}
# What the snapshot the tests store for "report" shows, told apart from
# what the visitor's own run shows (its groups figure depends on whether
# the kernel reaches the test database: in thread isolation it does).
SNAPSHOT_FIGURE = "square=99"
OWN_FIGURE = "square=16"


def marked(made: making.Made) -> making.Made:
    return making.Made(
        html=made.html.replace("square=16", "square=99"),
        frames=tuple(frame.replace("square=16", "square=99") for frame in made.frames),
        seconds=made.seconds,
    )


def texts_of(frames: list[dict]) -> list[str]:
    return [json.dumps(frame) for frame in frames]


async def store_report(made: making.Made, version: str | None = None) -> None:
    from asgiref.sync import sync_to_async

    def save() -> None:
        notebook = registry.get_notebook("report")
        store.save(
            notebook, marked(made), version=version or store.current_version(notebook)
        )

    await sync_to_async(save)()


async def test_a_new_session_shows_the_snapshot_then_its_own_run(
    made, close_marimo_sessions
):
    with with_entries(report=REPORT):
        await store_report(made)
        sessionid = await login("olga")
        ws = communicator(
            f"/notebooks/report/ws?session_id={new_session_id()}", sessionid=sessionid
        )
        frames = await connected_and_run(ws)
        # The run's own completed-run ends what was read: the snapshot's came
        # first, at once after kernel-ready.
        frames += await frames_until_completed(ws)
        await ws.disconnect()
    ops = [frame["op"] for frame in frames]
    assert ops[0] == "kernel-ready" and ops.count("kernel-ready") == 1
    text = texts_of(frames)
    first_snapshot = next(i for i, t in enumerate(text) if SNAPSHOT_FIGURE in t)
    first_own = next(i for i, t in enumerate(text) if OWN_FIGURE in t)
    assert first_snapshot < first_own
    # Nothing of the visitor's run came before the snapshot's outputs.
    snapshot = [json.loads(frame) for frame in marked(made).frames]
    assert all(frame in snapshot for frame in frames[1 : first_snapshot + 1])
    # The page ends with the visitor's own outputs.
    assert OWN_FIGURE in outputs(frames[first_own:])


async def test_a_page_that_reconnects_gets_no_snapshot(made, close_marimo_sessions):
    with with_entries(report=REPORT):
        await store_report(made)
        sessionid = await login("olga")
        session_id = new_session_id()
        path = f"/notebooks/report/ws?session_id={session_id}"
        first = communicator(path, sessionid=sessionid)
        await connected_and_run(first)
        await first.disconnect()
        again = communicator(path, sessionid=sessionid)
        connected, _ = await again.connect(timeout=30)
        assert connected
        frames = [json.loads(await again.receive_from(timeout=30)) for _ in range(3)]
        await again.disconnect()
    assert not any(SNAPSHOT_FIGURE in text for text in texts_of(frames))


async def test_a_snapshot_of_another_version_of_the_file_is_not_shown(
    made, close_marimo_sessions
):
    with with_entries(report=REPORT):
        await store_report(made, version="an older file")
        sessionid = await login("olga")
        ws = communicator(
            f"/notebooks/report/ws?session_id={new_session_id()}", sessionid=sessionid
        )
        frames = await connected_and_run(ws)
        await ws.disconnect()
    assert not any(SNAPSHOT_FIGURE in text for text in texts_of(frames))


def test_shown_after_only_fits_the_same_cells(made):
    frames = made.frames
    ready = frames[0]
    shown = outputs_first.shown_after(frames, ready)
    assert shown and all('"kernel-ready"' not in frame for frame in shown)
    resumed = json.loads(ready)
    resumed["data"]["resumed"] = True
    assert outputs_first.shown_after(frames, json.dumps(resumed)) == []
    other = json.loads(ready)
    other["data"]["cell_ids"] = ["a", "b"]
    assert outputs_first.shown_after(frames, json.dumps(other)) == []
    assert outputs_first.shown_after(frames, '{"op": "alert"}') == []
    with_file = '{"op": "cell-op", "data": {"output": {"data": "./@file/12-a.png"}}}'
    assert with_file not in outputs_first.shown_after((*frames, with_file), ready)


def test_a_static_notebook_has_no_outputs_first(kpis, stored):
    assert async_to_sync(outputs_first.frames_for)(kpis) is None


def test_with_frontend_marimo_the_page_loads_it_from_below_the_notebook():
    entry = {**KPIS, "snapshot": {}}
    with override_settings(
        DJANGO_NOTEBOOKS={
            **settings.DJANGO_NOTEBOOKS,
            "NOTEBOOKS": {"kpis": entry},
            "FRONTEND": "marimo",
        }
    ):
        made = making.make(registry.get_notebook("kpis"))
    assert 'src="/notebooks/kpis/assets/' in made.html
    assert "cdn.jsdelivr.net" not in made.html


def test_in_thread_isolation_the_run_is_marimos_own():
    with override_settings(
        DJANGO_NOTEBOOKS={
            **settings.DJANGO_NOTEBOOKS,
            "NOTEBOOKS": {"kpis": KPIS},
            "ISOLATION": "thread",
        }
    ):
        made = making.make(registry.get_notebook("kpis"))
    # (In this process, the notebook's cell reaches the test database.)
    assert re.search(r"groups=\d+ square=16", made.html)


def test_deletes_of_other_models_stay_fast(kpis):
    from django.contrib.sessions.models import Session
    from django.db.models.deletion import Collector

    assert Collector(using="default").can_fast_delete(Session.objects.all())
    assert not Collector(using="default").can_fast_delete(
        Group.objects.filter(name="none")
    )


def test_a_storage_django_cannot_give_is_e023():
    with override_settings(
        DJANGO_NOTEBOOKS={
            **settings.DJANGO_NOTEBOOKS,
            "NOTEBOOKS": {"kpis": KPIS},
            "SNAPSHOT_STORAGE": "snapshots",
        }
    ):
        assert [m.id for m in checks.check_snapshots()] == ["django_notebooks.E023"]


def test_a_storage_that_fails_is_a_failed_making(kpis, made, monkeypatch):
    monkeypatch.setattr(making, "make", lambda notebook: made)

    def full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(store.storage(), "save", full)
    row = keeper.make_now(kpis)
    assert row is not None and row.failed_at is not None
    assert row.last_error == "OSError: No space left on device"
    assert not row.file


def test_a_failed_making_is_tried_again_later_even_if_nothing_changed(kpis, stored):
    long_ago = timezone.now() - datetime.timedelta(
        seconds=keeper.RETRY_AFTER_FAILURE + 1
    )
    NotebookSnapshot.objects.filter(pk=stored.pk).update(
        failed_at=long_ago, failed_version=stored.file_version, last_error="x"
    )
    row = NotebookSnapshot.objects.get(pk=stored.pk)
    assert keeper.why_due(kpis, row, timezone.now()) == "failed before"


def test_a_crowd_costs_one_read_a_second(client, stored, django_assert_num_queries):
    client.get("/notebooks/kpis/")
    with django_assert_num_queries(0):
        for _ in range(5):
            assert client.get("/notebooks/kpis/").status_code == 200


def test_a_new_snapshot_is_served_within_a_second(
    client, kpis, made, stored, monkeypatch
):
    first = client.get("/notebooks/kpis/")["ETag"]
    newer = store.save(kpis, marked(made), version="newer")
    assert f'"{newer.etag}"' != first
    # Read a moment ago: the same page until the row is read again.
    assert client.get("/notebooks/kpis/")["ETag"] == first
    monkeypatch.setattr(store, "ROW_FRESH_SECONDS", 0)
    assert client.get("/notebooks/kpis/")["ETag"] == f'"{newer.etag}"'


# What else a run may do


class FakeApp:
    """marimo's app as the run sees it, saying what a test wants."""

    def __init__(self, *sent: dict, export_status: int = 200, fail: bool = False):
        self.sent = sent
        self.export_status = export_status
        self.fail = fail

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            await send(
                {
                    "type": "http.response.start",
                    "status": self.export_status,
                    "headers": [],
                }
            )
            await send({"type": "http.response.body", "body": b"<html>export</html>"})
            return
        await receive()
        if self.fail:
            raise RuntimeError("the kernel could not start")
        for message in self.sent:
            await send(message)
        while (await receive())["type"] != "websocket.disconnect":
            pass


def frame(op: str, **data: Any) -> dict:
    return {"type": "websocket.send", "text": json.dumps({"op": op, "data": data})}


@pytest.fixture
def fake_app(kpis, monkeypatch):
    def use(app: FakeApp) -> None:
        monkeypatch.setattr(making.router, "app_for", lambda notebook: app)
        monkeypatch.setattr(making.router, "end_session", lambda *args: None)

    return use


def test_a_run_marimo_closes_is_a_failure(kpis, fake_app):
    fake_app(FakeApp(frame("kernel-ready"), {"type": "websocket.close", "code": 1011}))
    with pytest.raises(making.SnapshotFailed, match=r"ended early: .*\(1011\)"):
        making.make(kpis)


def test_a_kernel_that_cannot_run_it_is_a_failure(kpis, fake_app):
    fake_app(FakeApp(fail=True))
    with pytest.raises(making.SnapshotFailed, match="could not run it: the kernel"):
        making.make(kpis)


def test_a_run_that_shows_too_much_is_a_failure(kpis, fake_app, monkeypatch):
    monkeypatch.setattr(making, "MAX_FRAMES_BYTES", 100)
    fake_app(FakeApp(frame("kernel-ready"), frame("cell-op", output="x" * 200)))
    with pytest.raises(making.SnapshotFailed, match="more than 0 MB of output"):
        making.make(kpis)


def test_mo_stop_is_not_a_failure_and_stray_messages_are_ignored(kpis, fake_app):
    stopped = {"channel": "marimo-error", "data": [{"type": "ancestor-stopped"}]}
    fake_app(
        FakeApp(
            frame("kernel-ready", cell_ids=["a"]),
            {"type": "websocket.send", "bytes": b"binary"},
            {"type": "websocket.send", "text": "not json"},
            frame("cell-op", cell_id="a", output=stopped),
            frame("completed-run"),
        )
    )
    made = making.make(kpis)
    assert made.html == "<html>export</html>"
    assert len(made.frames) == 4


def test_an_export_marimo_refuses_is_a_failure(kpis, fake_app):
    fake_app(FakeApp(frame("kernel-ready"), frame("completed-run"), export_status=500))
    with pytest.raises(making.SnapshotFailed, match="export answered 500"):
        making.make(kpis)


def test_a_cell_error_outside_the_notebooks_cells_is_named_as_it_is(kpis, fake_app):
    error = {"channel": "marimo-error", "data": [{"type": "exception", "msg": "boom"}]}
    fake_app(
        FakeApp(
            frame("kernel-ready", cell_ids=["a"]),
            frame("cell-op", cell_id="elsewhere", output=error),
            frame("completed-run"),
        )
    )
    with pytest.raises(making.SnapshotFailed, match="during the run: exception: boom"):
        making.make(kpis)


# The keeper thread, and what wakes it


def test_the_keeper_looks_again_at_once_after_a_making(monkeypatch, caplog):
    looks: list[float] = []
    blocked = threading.Event()

    def make_due():
        looks.append(time.monotonic())
        if len(looks) == 1:
            return ["kpis"]  # made one: look again at once
        if len(looks) == 2:
            raise RuntimeError("database down")
        blocked.wait()  # (never set: the daemon thread stops here)
        return []

    monkeypatch.setattr(keeper, "make_due", make_due)
    monkeypatch.setattr(keeper, "POLL_SECONDS", 30)
    thread = keeper.Keeper()
    thread.start()
    thread.wake.set()
    wait_until(lambda: len(looks) >= 2, 10, "the keeper did not look again")
    assert looks[1] - looks[0] < 5  # not after POLL_SECONDS
    wait_until(lambda: "Looking for due snapshots failed" in caplog.text, 10)
    thread.wake.set()
    wait_until(lambda: len(looks) >= 3, 10, "the keeper stopped after a failure")


def test_start_runs_one_keeper_where_notebooks_have_snapshots(monkeypatch):
    started = []

    class Thread:
        def __init__(self):
            self.wake = threading.Event()

        def start(self):
            started.append(self)

        def is_alive(self):
            return True

    monkeypatch.setattr(keeper, "Keeper", Thread)
    monkeypatch.setattr(keeper, "_keeper", None)
    REAL_START()  # the test settings: no snapshot
    assert started == []
    with with_entries(kpis=KPIS):
        REAL_START()
        REAL_START()
    assert len(started) == 1
    keeper.poke()
    assert started[0].wake.is_set()


def test_loaddata_and_a_broken_setting_ask_nothing(kpis, monkeypatch):
    keeper._model_changed(Group, raw=True)

    def broken():
        raise ImproperlyConfigured("no")

    monkeypatch.setattr(keeper, "configured", broken)
    keeper._model_changed(Group)
    keeper._m2m_changed(Group, Group(), "pre_add")
    assert not NotebookSnapshot.objects.exists()


# What the admin shows


def test_the_admin_says_each_snapshots_state(stored):
    from django.contrib.admin.sites import site

    shown = site._registry[NotebookSnapshot]
    assert shown.state(stored) == "made"
    assert shown.age(stored) and shown.size_shown(stored).endswith("KB")
    assert shown.error_shown(stored) == "-"
    stored.due_at = timezone.now()
    assert shown.state(stored) == "to be made again"
    empty = NotebookSnapshot(notebook="new")
    assert shown.state(empty) == "not made yet"
    assert (shown.age(empty), shown.size_shown(empty)) == ("-", "-")
    empty.failed_at = timezone.now()
    assert shown.state(empty) == "last making failed"


def test_deleting_several_in_the_admin_deletes_their_files(admin_client, kpis, made):
    rows = [
        store.save(registry.get_notebook(slug), made, version="v")
        for slug in ("kpis", "kpis_sales")
    ]
    admin_client.post(
        "/admin/django_notebooks/notebooksnapshot/",
        {
            "action": "delete_selected",
            "_selected_action": [row.pk for row in rows],
            "post": "yes",
        },
    )
    assert not NotebookSnapshot.objects.exists()
    assert not any(store.storage().exists(row.file) for row in rows)


def test_a_storage_django_cannot_give_serves_nothing(kpis, stored, caplog):
    with override_settings(
        DJANGO_NOTEBOOKS={
            **settings.DJANGO_NOTEBOOKS,
            "NOTEBOOKS": {"kpis": KPIS},
            "SNAPSHOT_STORAGE": "nowhere",
        }
    ):
        assert store.served(registry.get_notebook("kpis")) is None
    assert "check E023" in caplog.text
