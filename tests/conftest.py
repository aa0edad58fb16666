from __future__ import annotations

import pytest

from tests.live import LiveServer, prepare_database


@pytest.fixture(scope="session")
def live_db(tmp_path_factory):
    """A SQLite file with the test users, shared by the live servers."""
    return prepare_database(tmp_path_factory.mktemp("live") / "db.sqlite3")


@pytest.fixture(scope="session", params=["daphne", "uvicorn"])
def notebook_server(request, live_db, tmp_path_factory):
    """The test project served by a real daphne or uvicorn process."""
    log = tmp_path_factory.mktemp("logs") / f"{request.param}.log"
    dropbox = tmp_path_factory.mktemp("dropbox")
    server = LiveServer(request.param, live_db, log, DJANGO_NOTEBOOKS_TEST_DROPBOX=str(dropbox))
    server.dropbox = dropbox
    yield server
    server.stop()
