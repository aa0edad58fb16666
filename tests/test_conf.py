"""The DJANGO_NOTEBOOKS setting: defaults, overrides, marimo options, hooks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import marimo
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_notebooks import conf
from django_notebooks.marimo.apps import NotebookApps
from tests.settings import NOTEBOOKS_DIR


def user_hook(user):
    return {"hook": "first"}


def other_user_hook(user):
    return {"hook": "second"}


@override_settings(DJANGO_NOTEBOOKS={})
def test_defaults_when_the_setting_is_empty():
    assert conf.get_settings().NOTEBOOKS == {}
    assert conf.get_settings().DIRECTORIES == {}
    assert conf.get_settings().MARIMO == {}
    assert conf.get_settings().USER_CONTEXT is None
    assert conf.get_settings().REQUEST_META is None
    assert conf.get_settings().ALLOWED_COOKIES == ()
    assert conf.get_settings().MAX_UNREAD_WEBSOCKET_BYTES == 4 * 1024 * 1024
    assert conf.get_settings().WEBSOCKET_READ_TIMEOUT == 60
    assert conf.marimo_options() == {"quiet": True}


@override_settings(DJANGO_NOTEBOOKS={"WEBSOCKET_READ_TIMEOUT": 2.5})
def test_the_read_timeout_may_be_a_fraction_of_a_second():
    assert conf.get_settings().WEBSOCKET_READ_TIMEOUT == 2.5


def test_every_key_has_a_rule_and_an_attribute():
    attributes = {field.name for field in dataclasses.fields(conf.NotebookSettings)}
    assert set(conf.KEYS) == attributes


@override_settings(DJANGO_NOTEBOOKS=None)
def test_defaults_when_the_setting_is_none():
    defaults = {name: key.convert(key.default) for name, key in conf.KEYS.items()}
    assert conf.get_settings() == conf.NotebookSettings(**defaults)


def test_project_values_override_defaults_and_keep_the_rest():
    with override_settings(DJANGO_NOTEBOOKS={"ALLOWED_COOKIES": ["theme"]}):
        assert conf.get_settings().ALLOWED_COOKIES == ("theme",)
        assert conf.get_settings().NOTEBOOKS == {}


def test_override_settings_takes_effect_and_is_undone():
    before = conf.get_settings().NOTEBOOKS
    assert "square" in before
    with override_settings(
        DJANGO_NOTEBOOKS={"NOTEBOOKS": {"only": NOTEBOOKS_DIR / "square.py"}}
    ):
        assert list(conf.get_settings().NOTEBOOKS) == ["only"]
        with override_settings(DJANGO_NOTEBOOKS={}):
            assert conf.get_settings().NOTEBOOKS == {}
        assert list(conf.get_settings().NOTEBOOKS) == ["only"]
    assert conf.get_settings().NOTEBOOKS == before


def test_other_settings_changing_do_not_matter():
    config = conf.get_settings()
    with override_settings(LOGIN_URL="/elsewhere/"):
        assert conf.get_settings() is config


@override_settings(
    DJANGO_NOTEBOOKS={"MARIMO": {"token": "secret", "session_ttl": 9, "quiet": False}}
)
def test_token_is_never_passed_to_marimo_other_options_are():
    assert conf.marimo_options() == {"quiet": False, "session_ttl": 9}


@override_settings(
    DJANGO_NOTEBOOKS={"MARIMO": {"token": "secret", "include_code": True}}
)
def test_marimo_app_is_built_without_the_token(monkeypatch):
    received = {}
    real = marimo.create_asgi_app

    def spy(**kwargs):
        received.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(marimo, "create_asgi_app", spy)
    NotebookApps().app_for(Path(NOTEBOOKS_DIR / "square.py"))
    assert "token" not in received
    assert received["include_code"] is True
    assert received["quiet"] is True


def test_hooks_are_imported_by_dotted_path():
    with override_settings(
        DJANGO_NOTEBOOKS={"USER_CONTEXT": "tests.test_conf.user_hook"}
    ):
        assert conf.import_hook("USER_CONTEXT") is user_hook
    # A changed setting is imported again, not served from the cache.
    with override_settings(
        DJANGO_NOTEBOOKS={"USER_CONTEXT": "tests.test_conf.other_user_hook"}
    ):
        assert conf.import_hook("USER_CONTEXT") is other_user_hook


def test_hooks_may_be_callables_and_unset_hooks_are_none():
    with override_settings(DJANGO_NOTEBOOKS={"USER_CONTEXT": user_hook}):
        assert conf.import_hook("USER_CONTEXT") is user_hook
    with override_settings(DJANGO_NOTEBOOKS={}):
        assert conf.import_hook("USER_CONTEXT") is None


def test_a_wrong_dotted_path_fails_with_the_path_in_the_error():
    with override_settings(
        DJANGO_NOTEBOOKS={"REQUEST_META": "tests.test_conf.missing"}
    ):
        with pytest.raises(ImportError, match="missing"):
            conf.import_hook("REQUEST_META")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        # A string iterates as its letters: it would allow the cookies
        # "c", "s", "r", ... and drop "csrftoken".
        ("ALLOWED_COOKIES", "csrftoken", "a list of cookie names"),
        ("ALLOWED_COOKIES", ["theme", 3], "a list of cookie names"),
        ("MAX_SESSIONS_PER_USER", "20", "a positive integer"),
        ("MAX_SESSIONS_PER_USER", 0, "a positive integer"),
        ("MAX_WEBSOCKET_MESSAGE_BYTES", None, "a positive integer"),
        ("MAX_WEBSOCKET_MESSAGE_BYTES", True, "a positive integer"),
        ("MAX_UNREAD_WEBSOCKET_BYTES", 4.5, "a positive integer"),
        ("WEBSOCKET_READ_TIMEOUT", 0, "a positive number"),
        ("WEBSOCKET_READ_TIMEOUT", True, "a positive number"),
        ("WEBSOCKET_READ_TIMEOUT", "60", "a positive number"),
        ("CONCEAL_FORBIDDEN", "yes", "True or False"),
        ("EXPOSE_FILE_PATHS", 1, "True or False"),
        ("USER_CONTEXT", 3, "a function"),
        ("MARIMO", [("quiet", True)], "a dict"),
        ("NOTEBOOKS", ["square.py"], "a dict"),
        ("FRONTEND", "static", "'bridge'"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_when_read(key, value, expected):
    with override_settings(DJANGO_NOTEBOOKS={key: value}):
        with pytest.raises(ImproperlyConfigured) as raised:
            conf.get_settings()
    assert f"DJANGO_NOTEBOOKS[{key!r}] is {value!r}" in str(raised.value)
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("key", "value", "read"),
    [
        ("ALLOWED_COOKIES", ["theme", "lang"], ("theme", "lang")),
        ("ALLOWED_COOKIES", ("theme",), ("theme",)),
        ("ALLOWED_COOKIES", {"theme"}, ("theme",)),
        ("MAX_SESSIONS_PER_USER", None, None),
        ("MAX_SESSIONS_PER_USER", 3, 3),
        ("USER_CONTEXT", user_hook, user_hook),
        ("FRONTEND", "https://cdn.example/{version}", "https://cdn.example/{version}"),
    ],
)
def test_values_of_the_right_type_are_read_as_typed(key, value, read):
    with override_settings(DJANGO_NOTEBOOKS={key: value}):
        assert getattr(conf.get_settings(), key) == read


@override_settings(DJANGO_NOTEBOOKS=["not", "a", "dict"])
def test_a_setting_that_is_not_a_dict_is_refused():
    with pytest.raises(ImproperlyConfigured, match="must be a dict, not list"):
        conf.get_settings()


def test_one_loader_imports_every_dotted_path_and_caches_it():
    assert conf.import_object("tests.test_conf.user_hook") is user_hook
    assert conf.import_object(user_hook) is user_hook
    with override_settings(DJANGO_NOTEBOOKS={}):
        # Cleared with the setting: a changed module would be imported again.
        assert conf._import_cached.cache_info().currsize == 0
