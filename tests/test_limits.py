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
        IDLE_TIMEOUT=3600,
        MAX_SESSIONS=100,
        MAX_SESSIONS_PER_ADDRESS=20,
        MAX_ANONYMOUS_SESSIONS=50,
    )


@override_settings(
    DJANGO_NOTEBOOKS={"LIMITS": {"IDLE_TIMEOUT": None, "MAX_SESSIONS": 5}}
)
def test_the_projects_limits_over_the_defaults():
    assert conf.get_settings().LIMITS == limits.Limits(
        IDLE_TIMEOUT=None,
        MAX_SESSIONS=5,
        MAX_SESSIONS_PER_ADDRESS=20,
        # Half of the project's MAX_SESSIONS, not of the default's.
        MAX_ANONYMOUS_SESSIONS=2,
    )


@pytest.mark.parametrize(
    ("setting", "anonymous"),
    [
        ({}, 50),
        ({"MAX_SESSIONS": 9}, 4),
        ({"MAX_SESSIONS": 1}, 1),
        ({"MAX_SESSIONS": None}, None),
        ({"MAX_SESSIONS": 10, "MAX_ANONYMOUS_SESSIONS": 8}, 8),
        ({"MAX_SESSIONS": 10, "MAX_ANONYMOUS_SESSIONS": None}, None),
    ],
)
def test_max_anonymous_sessions_left_out_is_half_of_max_sessions(setting, anonymous):
    with override_settings(DJANGO_NOTEBOOKS={"LIMITS": setting}):
        assert conf.get_settings().LIMITS.MAX_ANONYMOUS_SESSIONS == anonymous


@pytest.mark.parametrize(
    "setting",
    [
        {"MAX_SESSIONS": 10, "MAX_ANONYMOUS_SESSIONS": 10},
        {"MAX_SESSIONS": 10, "MAX_ANONYMOUS_SESSIONS": 12},
        {"MAX_SESSIONS": 10, "MAX_ANONYMOUS_SESSIONS": None},
        {"MAX_SESSIONS": 1},
    ],
)
def test_w009_anonymous_visitors_may_take_every_session(setting):
    with override_settings(DJANGO_NOTEBOOKS={"LIMITS": setting}):
        [message] = messages("django_notebooks.W009")
    assert "MAX_ANONYMOUS_SESSIONS" in message.msg
    assert "logged-in users" in message.msg
    assert "below MAX_SESSIONS" in message.hint


@pytest.mark.parametrize(
    "setting",
    [
        {},
        {"MAX_SESSIONS": 10, "MAX_ANONYMOUS_SESSIONS": 9},
        {"MAX_SESSIONS": None},
        {"MAX_SESSIONS": None, "MAX_ANONYMOUS_SESSIONS": 5},
    ],
)
def test_w009_quiet_while_logged_in_users_keep_a_share(setting):
    with override_settings(DJANGO_NOTEBOOKS={"LIMITS": setting}):
        assert messages("django_notebooks.W009") == []


@override_settings(DJANGO_NOTEBOOKS={"LIMITS": {"MAX_ANONYMOUS_SESSIONS": "9"}})
def test_w009_leaves_a_wrong_limit_to_e017():
    assert messages("django_notebooks.W009") == []
    assert messages("django_notebooks.E017") != []


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
        ({"MAX_ANONYMOUS_SESSIONS": "9"}, "['MAX_ANONYMOUS_SESSIONS'] is '9'"),
        ({"MAX_ANONYMOUS_SESSIONS": 0}, "['MAX_ANONYMOUS_SESSIONS'] is 0"),
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
        (
            {"MAX_ANONYMOUS_SESSIONS": 5},
            "counts the sessions of a whole server process",
        ),
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


# Caps on sessions, counted when a websocket claims its session: each counts
# live kernels, an open page's or a closed tab's.


def claim(
    bindings, session_id, owner, address="10.0.0.1", *, reported=True, **caps
) -> owners.ClaimResult:
    """Claim as a websocket of ``owner`` would; ``reported``: its kernel
    reports its end (process mode)."""
    return bindings.claim(
        session_id,
        owner=owner,
        notebook="square",
        user_context={},
        address=address,
        caps=owners.Caps(**caps),
        kernel_end_reported=reported,
    )


def claimed(result: owners.ClaimResult) -> tuple[str, ...]:
    """The sessions a claim admitted at a cap ends to make room; fails if
    the claim was refused."""
    assert result.outcome is owners.Claim.CLAIMED, result
    return tuple(ending.session_id for ending in result.to_end)


def refused(result: owners.ClaimResult) -> owners.Claim:
    assert result.outcome is not owners.Claim.CLAIMED, result
    assert result.to_end == ()
    return result.outcome


def close_tab(bindings, session_id, owner, seconds_ago: float = 0.0) -> None:
    """The page's websocket closed ``seconds_ago``."""
    bindings.release(session_id, owner)
    bindings.get(session_id).disconnected_at = time.time() - seconds_ago


LONG_AGO = 10_000.0  # far beyond session_ttl and its grace


def test_a_closed_tab_holds_its_place_until_its_kernel_reports_its_end():
    bindings = owners.SessionBindings()
    caps = {"server": 2}
    assert claimed(claim(bindings, "s_1", "user:1:k", **caps)) == ()
    assert claimed(claim(bindings, "s_2", "user:2:k", **caps)) == ()
    # Closed long ago, but a kernel process lives until it reports its end
    # (a cell can keep it past session_ttl).
    close_tab(bindings, "s_2", "user:2:k", seconds_ago=LONG_AGO)
    assert bindings.count() == 2
    assert refused(claim(bindings, "s_3", "user:3:k", **caps)) is (
        owners.Claim.SERVER_FULL
    )
    assert bindings.knows("s_2")
    bindings.kernel_ended("s_2")
    assert bindings.count() == 1
    assert not bindings.knows("s_2")
    assert claimed(claim(bindings, "s_3", "user:3:k", **caps)) == ()


def test_with_kernels_as_threads_a_closed_tab_counts_for_session_ttl():
    bindings = owners.SessionBindings()
    caps = {"server": 2}
    claim(bindings, "s_1", "user:1:k", reported=False, **caps)
    claim(bindings, "s_2", "user:2:k", reported=False, **caps)
    # marimo keeps a closed tab's kernel threads for session_ttl...
    close_tab(bindings, "s_2", "user:2:k")
    assert refused(claim(bindings, "s_3", "user:3:k", reported=False, **caps)) is (
        owners.Claim.SERVER_FULL
    )
    # ...and drops them after it.
    bindings.get("s_2").disconnected_at = time.time() - LONG_AGO
    assert bindings.count() == 1
    assert claimed(claim(bindings, "s_3", "user:3:k", reported=False, **caps)) == ()


def test_a_reconnect_of_a_session_held_is_never_refused():
    bindings = owners.SessionBindings()
    caps = {"server": 1, "per_person": 1}
    claim(bindings, "s_1", "user:1:k", **caps)
    close_tab(bindings, "s_1", "user:1:k")
    assert claimed(claim(bindings, "s_1", "user:1:k", **caps)) == ()
    assert bindings.get("s_1").connections == 1


def test_at_their_cap_a_persons_oldest_closed_tab_makes_room():
    bindings = owners.SessionBindings()
    caps = {"per_person": 3}
    for number in (1, 2, 3):
        claim(bindings, f"s_{number}", "user:1:k", **caps)
    close_tab(bindings, "s_2", "user:1:k", seconds_ago=30)
    close_tab(bindings, "s_1", "user:1:k", seconds_ago=10)
    # The same user from another browser (another login) is the same person.
    assert claimed(claim(bindings, "s_4", "user:1:other", **caps)) == ("s_2",)
    assert not bindings.knows("s_2")
    assert claimed(claim(bindings, "s_5", "user:1:k", **caps)) == ("s_1",)
    assert bindings.count() == 3
    # Only open pages are left: a new one is refused, nothing ends.
    assert refused(claim(bindings, "s_6", "user:1:k", **caps)) is (
        owners.Claim.OVER_LIMIT
    )
    assert all(bindings.knows(number) for number in ("s_3", "s_4", "s_5"))
    # Other people's sessions are neither counted nor ended for it.
    assert claimed(claim(bindings, "s_7", "user:2:k", **caps)) == ()


def test_a_cap_lowered_meanwhile_ends_as_many_closed_tabs_as_it_takes():
    bindings = owners.SessionBindings()
    for number in (1, 2, 3):
        claim(bindings, f"s_{number}", "visitor:v")
        close_tab(bindings, f"s_{number}", "visitor:v", seconds_ago=10 * number)
    assert claimed(claim(bindings, "s_4", "visitor:v", per_person=2)) == (
        "s_3",
        "s_2",
    )


def test_a_reload_is_never_refused_at_any_cap():
    """A page reloaded closes its session and opens a new one: at every cap,
    the closed one makes room for it."""
    bindings = owners.SessionBindings()
    caps = {"per_person": 2, "per_address": 2, "anonymous": 3, "server": 4}
    # The server is full: two visitors' open pages, a user's two.
    claim(bindings, "s_1", "visitor:a", **caps)
    claim(bindings, "s_2", "visitor:a", **caps)
    claim(bindings, "s_3", "user:1:k", **caps)
    claim(bindings, "s_4", "user:1:k", **caps)
    assert refused(claim(bindings, "s_5", "user:2:k", **caps)) is (
        owners.Claim.SERVER_FULL
    )
    for old, new, owner in (
        ("s_1", "s_6", "visitor:a"),
        ("s_3", "s_7", "user:1:k"),
        ("s_6", "s_8", "visitor:a"),
    ):
        close_tab(bindings, old, owner)
        assert claimed(claim(bindings, new, owner, **caps)) == (old,)
    assert bindings.count() == 4


def test_at_a_full_server_only_the_claimants_own_closed_tab_makes_room():
    bindings = owners.SessionBindings()
    caps = {"server": 2}
    claim(bindings, "s_1", "user:1:k", **caps)
    claim(bindings, "s_2", "user:2:k", **caps)
    close_tab(bindings, "s_1", "user:1:k")
    # Someone else's closed tab stays: its page may come back within the TTL.
    assert refused(claim(bindings, "s_3", "user:3:k", **caps)) is (
        owners.Claim.SERVER_FULL
    )
    assert bindings.knows("s_1")
    assert claimed(claim(bindings, "s_4", "user:1:k", **caps)) == ("s_1",)


def test_max_sessions_per_address_counts_the_live_anonymous_kernels_of_the_address():
    bindings = owners.SessionBindings()
    caps = {"per_address": 2}
    # Each cookie-less client is a new visitor: only the address tells them apart.
    claim(bindings, "s_1", "visitor:a", **caps)
    claim(bindings, "s_2", "visitor:b", **caps)
    assert refused(claim(bindings, "s_3", "visitor:c", **caps)) is (
        owners.Claim.ADDRESS_FULL
    )
    # Other addresses and logged-in users are not counted against it.
    assert claimed(claim(bindings, "s_4", "visitor:d", "10.0.0.2", **caps)) == ()
    assert claimed(claim(bindings, "s_5", "user:1:k", **caps)) == ()
    close_tab(bindings, "s_5", "user:1:k")
    # A closed tab of the address holds its place until it is needed: then
    # its kernel ends, whichever visitor of the address it was.
    close_tab(bindings, "s_1", "visitor:a")
    assert bindings.count() == 4
    assert claimed(claim(bindings, "s_3", "visitor:c", **caps)) == ("s_1",)
    assert bindings.knows("s_5")  # a logged-in user's is not the address's


def test_when_the_server_reports_no_address_the_address_cap_does_not_apply():
    bindings = owners.SessionBindings()
    for number in range(3):
        assert (
            claimed(
                claim(bindings, f"s_{number}", f"visitor:{number}", None, per_address=1)
            )
            == ()
        )


def test_anonymous_visitors_together_hold_at_most_max_anonymous_sessions():
    bindings = owners.SessionBindings()
    caps = {"anonymous": 2, "server": 4}
    claim(bindings, "s_1", "visitor:a", "10.0.0.1", **caps)
    claim(bindings, "s_2", "visitor:b", "10.0.0.2", **caps)
    close_tab(bindings, "s_2", "visitor:b")
    # Another visitor is refused: the closed tab is someone else's.
    assert refused(claim(bindings, "s_3", "visitor:c", "10.0.0.3", **caps)) is (
        owners.Claim.VISITORS_FULL
    )
    # Logged-in users still get in, up to MAX_SESSIONS.
    assert claimed(claim(bindings, "s_4", "user:1:k", "10.0.0.3", **caps)) == ()
    assert claimed(claim(bindings, "s_5", "user:2:k", "10.0.0.3", **caps)) == ()
    # The visitor whose tab it is gets in by ending it, and so does a new
    # visitor (a dropped cookie) of that address.
    assert claimed(claim(bindings, "s_6", "visitor:b", "10.0.0.2", **caps)) == ("s_2",)
    close_tab(bindings, "s_6", "visitor:b")
    assert claimed(claim(bindings, "s_7", "visitor:e", "10.0.0.2", **caps)) == ("s_6",)


def test_a_claim_refused_by_one_cap_ends_nothing_for_another():
    bindings = owners.SessionBindings()
    claim(bindings, "s_1", "visitor:a", "10.0.0.1")
    close_tab(bindings, "s_1", "visitor:a")
    claim(bindings, "s_2", "visitor:b", "10.0.0.2")
    claim(bindings, "s_3", "visitor:c", "10.0.0.3")
    # Its closed tab would make room under its own cap, not under the
    # visitors' one (lowered since: two other visitors' open pages fill it).
    caps = {"per_person": 1, "anonymous": 2}
    assert refused(claim(bindings, "s_4", "visitor:a", "10.0.0.1", **caps)) is (
        owners.Claim.VISITORS_FULL
    )
    assert bindings.knows("s_1")


def test_the_cap_a_person_can_act_on_is_the_one_that_refuses():
    bindings = owners.SessionBindings()
    caps = {"per_person": 1, "per_address": 1, "anonymous": 1, "server": 1}
    claim(bindings, "s_1", "visitor:a", **caps)
    assert refused(claim(bindings, "s_2", "visitor:a", **caps)) is (
        owners.Claim.OVER_LIMIT
    )
    assert refused(claim(bindings, "s_3", "visitor:b", **caps)) is (
        owners.Claim.ADDRESS_FULL
    )
    assert refused(claim(bindings, "s_4", "visitor:c", "10.0.0.2", **caps)) is (
        owners.Claim.VISITORS_FULL
    )
    assert refused(claim(bindings, "s_5", "user:1:k", **caps)) is (
        owners.Claim.SERVER_FULL
    )


def test_a_kernel_that_ends_with_its_page_open_frees_its_place():
    bindings = owners.SessionBindings()
    claim(bindings, "s_1", "user:1:k", server=1)
    bindings.kernel_ended("s_1")  # it crashed, say
    assert not bindings.knows("s_1")
    assert claimed(claim(bindings, "s_2", "user:2:k", server=1)) == ()
    # The consumer's release afterwards changes nothing.
    bindings.release("s_1", "user:1:k")
    assert bindings.count() == 1


def test_no_caps_when_the_limits_are_none():
    bindings = owners.SessionBindings()
    for number in range(30):
        assert claimed(claim(bindings, f"s_{number}", f"visitor:{number}")) == ()


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
