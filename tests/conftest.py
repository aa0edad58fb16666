from __future__ import annotations

import pytest
from django.test import override_settings

from tests.live import LiveServer, prepare_database


@pytest.fixture(scope="session")
def live_db(tmp_path_factory):
    """A SQLite file with the test users, shared by the live servers."""
    return prepare_database(tmp_path_factory.mktemp("live") / "db.sqlite3")


@pytest.fixture(scope="session", params=["daphne", "uvicorn", "daphne-views"])
def notebook_server(request, live_db, tmp_path_factory):
    """The test project served by a real daphne or uvicorn process; with
    FastPathMiddleware (the documented setup), or ("-views") with every
    request going through Django's views."""
    kind, _, variant = request.param.partition("-")
    log = tmp_path_factory.mktemp("logs") / f"{request.param}.log"
    dropbox = tmp_path_factory.mktemp("dropbox")
    server = LiveServer(
        kind,
        live_db,
        log,
        DJANGO_NOTEBOOKS_TEST_DROPBOX=str(dropbox),
        DJANGO_NOTEBOOKS_TEST_FAST_PATH="0" if variant == "views" else "1",
    )
    server.dropbox = dropbox
    server.fast_path = variant != "views"
    yield server
    server.stop()


@pytest.fixture(params=["project", "none"])
def either_channel_layer(request):
    """The test project's channel layer, then none at all (no
    CHANNEL_LAYERS): the bridge then carries revocation and terminate over
    an in-process layer of its own (django_notebooks/sessions/layers.py)."""
    if request.param == "none":
        with override_settings(CHANNEL_LAYERS={}):
            yield
    else:
        yield


@pytest.fixture
async def close_marimo_sessions():
    """Stop the kernels a test opened (in process) while its event loop
    still runs."""
    yield
    from django_notebooks.kernels.processes import kernel_processes
    from django_notebooks.marimo.apps import notebook_apps

    notebook_apps.close_all_sessions()
    kernel_processes.end_sessions()


@pytest.fixture(autouse=True)
def no_snapshot_keeper(monkeypatch):
    """In process, snapshots are made by the test that wants one: a keeper
    thread would make them behind its back, in a database connection of its
    own (the live servers' keepers run as in production)."""
    from django_notebooks.snapshots import keeper

    monkeypatch.setattr(keeper, "start", lambda: None)
