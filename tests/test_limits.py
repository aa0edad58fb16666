"""Limits: the ``LIMITS`` setting and a notebook's ``limits`` option (their
checks and the values in force), and the caps on sessions a server process
holds, counted when a kernel websocket claims its session."""

from __future__ import annotations

import time

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_notebooks import conf, limits, notices, registry
from django_notebooks.sessions import owners
from tests.settings import NOTEBOOKS_DIR

SQUARE = NOTEBOOKS_DIR / "square.py"
LAB = NOTEBOOKS_DIR / "lab"


def messages(check_id):
    return [m for m in run_checks() if m.id == check_id]


@override_settings(DJANGO_NOTEBOOKS={})
def test_defaults():
    assert conf.get_settings().LIMITS == limits.Limits(
        IDLE_TIMEOUT=3600, MAX_SESSIONS=100, MAX_SESSIONS_PER_ADDRESS=20
    )


@override_settings(
    DJANGO_NOTEBOOKS={"LIMITS": {"IDLE_TIMEOUT": None, "MAX_SESSIONS": 5}}
)
def test_the_projects_limits_over_the_defaults():
    assert conf.get_settings().LIMITS == limits.Limits(
        IDLE_TIMEOUT=None, MAX_SESSIONS=5, MAX_SESSIONS_PER_ADDRESS=20
    )


@override_settings(
    DJANGO_NOTEBOOKS={
        "LIMITS": {"IDLE_TIMEOUT": 600},
        "NOTEBOOKS": {
            "quick": {"path": SQUARE, "limits": {"IDLE_TIMEOUT": 60}},
            "square": SQUARE,
        },
        "DIRECTORIES": {"lab": {"path": LAB, "limits": {"IDLE_TIMEOUT": None}}},
    }
)
def test_a_notebooks_limits_over_the_projects():
    assert registry.limits_of(registry.get_notebook("quick")).IDLE_TIMEOUT == 60
    assert registry.limits_of(registry.get_notebook("square")).IDLE_TIMEOUT == 600
    lab = registry.locate("lab/demo/").notebook
    assert registry.limits_of(lab).IDLE_TIMEOUT is None
    assert messages("django_notebooks.E003") == []


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"IDLE_TIMEOUT": "60"}, "['IDLE_TIMEOUT'] is '60'; use a positive whole"),
        ({"MAX_SESSIONS": 0}, "['MAX_SESSIONS'] is 0"),
        ({"MAX_SESSIONS_PER_ADDRESS": True}, "['MAX_SESSIONS_PER_ADDRESS'] is True"),
        ({"IDLE_TIMOUT": 60}, "unknown key 'IDLE_TIMOUT'"),
        ([("IDLE_TIMEOUT", 60)], "not a dict"),
    ],
)
def test_e017_a_wrong_limit(value, words):
    with override_settings(DJANGO_NOTEBOOKS={"LIMITS": value}):
        [message] = messages("django_notebooks.E017")
        with pytest.raises(ImproperlyConfigured, match="LIMITS"):
            conf.get_settings()
    assert "DJANGO_NOTEBOOKS['LIMITS']" in message.msg
    assert words in message.msg
    assert "IDLE_TIMEOUT" in message.hint


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"IDLE_TIMEOUT": -1}, "['IDLE_TIMEOUT'] is -1"),
        ({"MAX_SESSIONS": 5}, "counts the sessions of a whole server process"),
        ({"TIMEOUT": 5}, "unknown key 'TIMEOUT'"),
        (60, "not a dict"),
    ],
)
def test_e003_a_wrong_notebook_limits_option(value, words):
    with override_settings(
        DJANGO_NOTEBOOKS={"NOTEBOOKS": {"sq": {"path": SQUARE, "limits": value}}}
    ):
        [message] = messages("django_notebooks.E003")
    assert "entry 'sq': 'limits'" in message.msg
    assert words in message.msg


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(3600, "1 hour"), (7200, "2 hours"), (120, "2 minutes"), (90, "90 seconds")],
)
def test_the_idle_message_says_how_long(seconds, words):
    notice = notices.idle(seconds)
    assert f"closed after {words} without use" in notice.text
    assert "Reload the page" in notice.text


# Caps on sessions, counted when a websocket claims its session.


def claim(bindings, session_id, owner, address="10.0.0.1", **caps):
    return bindings.claim(
        session_id,
        owner=owner,
        notebook="square",
        user_context={},
        address=address,
        **caps,
    )


def test_max_sessions_counts_every_session_the_process_holds():
    bindings = owners.SessionBindings()
    assert claim(bindings, "s_1", "user:1:k", max_sessions=2) is owners.Claim.CLAIMED
    assert claim(bindings, "s_2", "visitor:v", max_sessions=2) is owners.Claim.CLAIMED
    # A closed session still holds its kernel for marimo's session_ttl.
    bindings.release("s_2", "visitor:v")
    assert (
        claim(bindings, "s_3", "user:2:k", max_sessions=2) is owners.Claim.SERVER_FULL
    )
    # A session already held may reconnect.
    assert claim(bindings, "s_2", "visitor:v", max_sessions=2) is owners.Claim.CLAIMED
    # Once marimo has let the closed one go, there is room again.
    bindings.release("s_2", "visitor:v")
    bindings.get("s_2").disconnected_at = time.time() - 10_000
    assert bindings.count() == 1
    assert claim(bindings, "s_3", "user:2:k", max_sessions=2) is owners.Claim.CLAIMED


def test_max_sessions_per_address_counts_open_anonymous_sessions_of_the_address():
    bindings = owners.SessionBindings()
    caps = {"max_per_address": 2}
    # Each cookie-less client is a new visitor: only the address tells them apart.
    assert claim(bindings, "s_1", "visitor:a", **caps) is owners.Claim.CLAIMED
    assert claim(bindings, "s_2", "visitor:b", **caps) is owners.Claim.CLAIMED
    assert claim(bindings, "s_3", "visitor:c", **caps) is owners.Claim.ADDRESS_FULL
    # Other addresses and logged-in users are not counted against it.
    assert (
        claim(bindings, "s_4", "visitor:d", address="10.0.0.2", **caps)
        is owners.Claim.CLAIMED
    )
    assert claim(bindings, "s_5", "user:1:k", **caps) is owners.Claim.CLAIMED
    # A closed session frees its place.
    bindings.release("s_1", "visitor:a")
    assert claim(bindings, "s_3", "visitor:c", **caps) is owners.Claim.CLAIMED


def test_no_caps_when_the_limits_are_none():
    bindings = owners.SessionBindings()
    for number in range(30):
        assert (
            claim(bindings, f"s_{number}", f"visitor:{number}") is owners.Claim.CLAIMED
        )


def test_a_kernel_call_and_a_reconnect_count_as_use():
    bindings = owners.SessionBindings()
    claim(bindings, "s_1", "visitor:a")
    binding = bindings.get("s_1")
    binding.last_used -= 100
    assert binding.idle_for() >= 100
    binding.used()
    assert binding.idle_for() < 1
    binding.last_used -= 100
    bindings.release("s_1", "visitor:a")
    claim(bindings, "s_1", "visitor:a")
    assert binding.idle_for() < 1


# What counts as use for the idle timeout: a run of cells while it lasts
# (marimo/routes.py reads runs off the kernel's messages).


def test_a_session_is_not_idle_while_its_cells_run():
    bindings = owners.SessionBindings()
    claim(bindings, "s_1", "visitor:a")
    binding = bindings.get("s_1")
    binding.run_changed(True)
    binding.last_used -= 10_000
    assert binding.idle_for() == 0
    # The idle time counts from the end of the run.
    binding.run_changed(False)
    assert binding.idle_for() < 1
