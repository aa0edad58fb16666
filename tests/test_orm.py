"""The pieces of django_notebooks/marimo/orm.py, in-process. The executor as marimo
runs it is checked in tests/test_marimo_contract.py, and on real servers with
real databases in tests/e2e/test_orm.py."""

from __future__ import annotations

import contextvars
import threading

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.db.backends.sqlite3.base import DatabaseWrapper

from django_notebooks.marimo import orm


@pytest.fixture
def tracking():
    orm.install()  # connects the connection_created receiver (once)


@pytest.fixture
def new_connection(tmp_path):
    """A connection of its own, to a SQLite file (Django never closes
    in-memory SQLite connections: that would delete the database)."""
    settings = {
        **connections["default"].settings_dict,
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(tmp_path / "db.sqlite3"),
        "OPTIONS": {},
    }
    connection = DatabaseWrapper(settings, "default")
    yield connection
    connection.close()


@pytest.mark.django_db
def test_connections_opened_in_a_cell_are_closed_when_it_ends(tracking, new_connection):
    with orm._closing_opened_connections():
        new_connection.ensure_connection()
        assert new_connection.connection is not None
    assert new_connection.connection is None


@pytest.mark.django_db
def test_connections_opened_on_other_threads_for_the_cell_are_closed_too(
    tracking, new_connection
):
    # As sync_to_async(thread_sensitive=False) does: the cell's context, run
    # on a pool thread.
    with orm._closing_opened_connections():
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(new_connection.ensure_connection,)
        )
        thread.start()
        thread.join()
        assert new_connection.connection is not None
    assert new_connection.connection is None


@pytest.mark.django_db
def test_connections_opened_outside_cells_are_left_alone(tracking, new_connection):
    with orm._closing_opened_connections():
        pass
    new_connection.ensure_connection()
    assert new_connection.connection is not None


@pytest.mark.django_db
def test_outputs_that_would_query_are_rendered_while_the_cell_runs():
    User.objects.create_user("alice")
    shown = orm._shown_now(User.objects.filter(username="alice"))
    assert "&lt;QuerySet [&lt;User: alice&gt;]&gt;" in shown.text
    shown = orm._shown_now(User.objects.get(username="alice"))
    assert "&lt;User: alice&gt;" in shown.text
    # A query that fails is left for marimo to render, and report.
    broken = User.objects.extra(where=["no_such_column = 1"])
    assert orm._shown_now(broken) is broken
    # Anything else is marimo's to render.
    value = {"users": 1}
    assert orm._shown_now(value) is value
