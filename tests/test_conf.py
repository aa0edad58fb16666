"""The DJANGO_NOTEBOOKS setting: defaults, overrides, marimo options, hooks."""

from __future__ import annotations

from pathlib import Path

import marimo
import pytest
from django.test import override_settings

from django_notebooks import conf
from django_notebooks.server import NotebookApps
from tests.settings import NOTEBOOKS_DIR


def user_hook(user):
    return {"hook": "first"}


def other_user_hook(user):
    return {"hook": "second"}


@override_settings(DJANGO_NOTEBOOKS={})
def test_defaults_when_the_setting_is_empty():
    assert conf.get("NOTEBOOKS") == {}
    assert conf.get("DIRECTORIES") == {}
    assert conf.get("MARIMO") == {}
    assert conf.get("USER_CONTEXT") is None
    assert conf.get("REQUEST_META") is None
    assert conf.get("ALLOWED_COOKIES") == []
    assert conf.marimo_options() == {"quiet": True}


@override_settings(DJANGO_NOTEBOOKS=None)
def test_defaults_when_the_setting_is_none():
    assert conf.get_config() == conf.DEFAULTS


def test_project_values_override_defaults_and_keep_the_rest():
    with override_settings(DJANGO_NOTEBOOKS={"ALLOWED_COOKIES": ["theme"]}):
        assert conf.get("ALLOWED_COOKIES") == ["theme"]
        assert conf.get("NOTEBOOKS") == {}


def test_override_settings_takes_effect_and_is_undone():
    before = conf.get("NOTEBOOKS")
    assert "square" in before
    with override_settings(
        DJANGO_NOTEBOOKS={"NOTEBOOKS": {"only": NOTEBOOKS_DIR / "square.py"}}
    ):
        assert list(conf.get("NOTEBOOKS")) == ["only"]
        with override_settings(DJANGO_NOTEBOOKS={}):
            assert conf.get("NOTEBOOKS") == {}
        assert list(conf.get("NOTEBOOKS")) == ["only"]
    assert conf.get("NOTEBOOKS") == before


def test_other_settings_changing_do_not_matter():
    config = conf.get_config()
    with override_settings(LOGIN_URL="/elsewhere/"):
        assert conf.get_config() == config


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
