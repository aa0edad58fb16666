"""System checks: each id for a bad setting, none for the test settings, and
``manage.py check`` runs them."""

from __future__ import annotations

import re
import tomllib

import marimo
import pytest
from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.checks import ERROR, WARNING, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import modify_settings, override_settings
from django.urls import re_path

import django_notebooks.routing
from django_notebooks import checks
from django_notebooks.asgi import FastPathMiddleware
from tests.live import ROOT
from tests.settings import DJANGO_NOTEBOOKS, NOTEBOOKS_DIR

SQUARE = NOTEBOOKS_DIR / "square.py"
LAB = NOTEBOOKS_DIR / "lab"


def our_messages(*, include_silenced: bool = False):
    silenced = () if include_silenced else settings.SILENCED_SYSTEM_CHECKS
    return [
        m
        for m in run_checks(include_deployment_checks=True)
        if (m.id or "").startswith("django_notebooks.") and m.id not in silenced
    ]


def ids() -> list[str]:
    return sorted(m.id for m in our_messages())


def only(check_id: str):
    [message] = [m for m in our_messages(include_silenced=True) if m.id == check_id]
    assert message.hint, f"{check_id} has no hint"
    return message


# ASGI applications for the websocket-stack checks (ASGI_APPLICATION names
# them by dotted path).
_django_http = get_asgi_application()
_http = FastPathMiddleware(_django_http)
_kernel_routes = URLRouter(django_notebooks.routing.websocket_urlpatterns)
no_websocket_application = ProtocolTypeRouter({"http": _http})
unrouted_application = ProtocolTypeRouter(
    {
        "http": _http,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([]))),
    }
)
unvalidated_application = ProtocolTypeRouter(
    {"http": _http, "websocket": AuthMiddlewareStack(_kernel_routes)}
)
without_fast_path_application = ProtocolTypeRouter(
    {
        "http": _django_http,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(_kernel_routes)),
    }
)


class _OtherMiddleware:
    """ASGI middleware as most libraries write it (the wrapped app in ``app``)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


fast_path_inside_middleware_application = ProtocolTypeRouter(
    {
        "http": _OtherMiddleware(_http),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(_kernel_routes)),
    }
)
nested_application = ProtocolTypeRouter(
    {
        "http": _http,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(
                URLRouter(
                    [
                        re_path(
                            r"^",
                            URLRouter(django_notebooks.routing.websocket_urlpatterns),
                        )
                    ]
                )
            )
        ),
    }
)


def test_the_test_settings_pass_every_check():
    assert our_messages() == []


@modify_settings(INSTALLED_APPS={"remove": ["channels"]})
def test_e001_channels_not_installed():
    message = only("django_notebooks.E001")
    assert message.level == ERROR
    assert "channels" in message.msg and "INSTALLED_APPS" in message.msg


@override_settings(ASGI_APPLICATION=None)
def test_e002_no_asgi_application():
    message = only("django_notebooks.E002")
    assert message.level == ERROR
    assert "ASGI_APPLICATION" in message.msg


@pytest.mark.parametrize(
    ("setting", "text"),
    [
        ({"NOTEBOOKS": {"sq": {"path": SQUARE, "premissions": ["x"]}}}, "premissions"),
        ({"NOTEBOOKS": {"sq": {"title": "no path"}}}, "'path'"),
        ({"NOTEBOOKS": {"sq": 3}}, "int"),
        (
            {
                "DIRECTORIES": {
                    "lab": {"path": LAB, "title": "not for directories", "bogus": 1}
                }
            },
            "bogus",
        ),
    ],
)
def test_e003_malformed_entries(setting, text):
    with override_settings(DJANGO_NOTEBOOKS=setting):
        message = only("django_notebooks.E003")
    assert message.level == ERROR
    assert text in message.msg


@pytest.mark.parametrize(
    "setting",
    [
        {"NOTEBOOKS": {"bad.slug": SQUARE}},
        {"NOTEBOOKS": {"_private": SQUARE}},
        {"NOTEBOOKS": {"a/b": SQUARE}},
        {"NOTEBOOKS": {"": SQUARE}},
        {"DIRECTORIES": {"la b": LAB}},
        {"DIRECTORIES": {".lab": LAB}},
    ],
)
def test_e004_invalid_slug_or_directory_key(setting):
    with override_settings(DJANGO_NOTEBOOKS=setting):
        message = only("django_notebooks.E004")
    assert message.level == ERROR
    name = next(iter(setting.get("NOTEBOOKS") or setting["DIRECTORIES"]))
    assert repr(name) in message.msg


@override_settings(DJANGO_NOTEBOOKS={"NOTEBOOKS": {"gone": NOTEBOOKS_DIR / "gone.py"}})
def test_e005_missing_file():
    message = only("django_notebooks.E005")
    assert "gone.py" in message.msg and "'gone'" in message.msg


@override_settings(DJANGO_NOTEBOOKS={"NOTEBOOKS": {"dir": LAB}})
def test_e005_a_directory_is_not_a_notebook_file():
    assert "django_notebooks.E005" in ids()


@override_settings(DJANGO_NOTEBOOKS={"NOTEBOOKS": {"helpers": LAB / "helpers.py"}})
def test_e006_not_a_marimo_notebook():
    message = only("django_notebooks.E006")
    assert "helpers.py" in message.msg
    assert "marimo" in message.hint


@override_settings(
    DJANGO_NOTEBOOKS={"NOTEBOOKS": {"lab": SQUARE}, "DIRECTORIES": {"lab": LAB}}
)
def test_e007_notebook_and_directory_share_a_name():
    message = only("django_notebooks.E007")
    assert message.level == ERROR
    assert "'lab'" in message.msg
    # The hint names the URL they would share.
    assert "lab/" in message.hint
    assert "{key}" not in message.hint


@pytest.mark.parametrize("path", [NOTEBOOKS_DIR / "nowhere", SQUARE])
def test_e008_directory_is_not_a_directory(path):
    with override_settings(DJANGO_NOTEBOOKS={"DIRECTORIES": {"lab": path}}):
        message = only("django_notebooks.E008")
    assert str(path) in message.msg


@pytest.mark.parametrize(
    "rule",
    [
        {"groups": ["sales"]},
        {"permissions": ["auth.view_user"]},
        {"access": "tests.access_rules.is_ops"},
    ],
)
def test_w001_public_notebook_with_access_rules(rule):
    with override_settings(
        DJANGO_NOTEBOOKS={
            "NOTEBOOKS": {"hello": {"path": SQUARE, "public": True, **rule}}
        }
    ):
        message = only("django_notebooks.W001")
    assert message.level == WARNING
    assert "'hello'" in message.msg


@override_settings(
    DJANGO_NOTEBOOKS={"NOTEBOOKS": {"hello": {"path": SQUARE, "public": True}}}
)
def test_public_notebook_without_rules_is_fine():
    assert ids() == []


@override_settings(ASGI_APPLICATION="tests.nowhere.application")
def test_e009_asgi_application_cannot_be_imported():
    message = only("django_notebooks.E009")
    assert message.level == ERROR
    assert "tests.nowhere.application" in message.msg


@override_settings(ASGI_APPLICATION="tests.test_checks.unrouted_application")
def test_w002_kernel_websocket_not_routed():
    assert only("django_notebooks.W002").level == WARNING
    assert "django_notebooks.W003" not in ids()


@override_settings(ASGI_APPLICATION="tests.test_checks.no_websocket_application")
def test_w002_no_websocket_protocol_at_all():
    assert "django_notebooks.W002" in ids()


@override_settings(ASGI_APPLICATION="tests.test_checks.unvalidated_application")
def test_w003_no_origin_validator():
    message = only("django_notebooks.W003")
    assert "AllowedHostsOriginValidator" in message.hint
    assert "django_notebooks.W002" not in ids()


@override_settings(ASGI_APPLICATION="tests.test_checks.without_fast_path_application")
def test_w007_http_without_the_fast_path():
    message = only("django_notebooks.W007")
    assert message.level == WARNING
    assert "FastPathMiddleware(get_asgi_application())" in message.hint
    assert "1.02x to 1.06x" in message.hint


@override_settings(
    ASGI_APPLICATION="tests.test_checks.fast_path_inside_middleware_application"
)
def test_w007_fast_path_inside_other_middleware_is_found():
    assert "django_notebooks.W007" not in ids()


@override_settings(ASGI_APPLICATION="tests.test_checks.nested_application")
def test_kernel_routes_nested_in_another_router_are_found():
    assert ids() == []


@override_settings(CHANNEL_LAYERS={})
def test_w004_no_channel_layer():
    message = only("django_notebooks.W004")
    assert message.level == WARNING
    assert "forwarded between server processes" in message.msg


def test_w005_in_memory_channel_layer_outside_debug():
    message = only("django_notebooks.W005")
    assert message.level == WARNING
    # It says what breaks with several processes, and what to do.
    assert "kernel calls cannot be forwarded" in message.msg
    assert "channels_redis.pubsub.RedisPubSubChannelLayer" in message.hint
    with override_settings(DEBUG=True):
        assert "django_notebooks.W005" not in [
            m.id for m in our_messages(include_silenced=True)
        ]
    for backend in (
        "channels_redis.core.RedisChannelLayer",
        "channels_redis.pubsub.RedisPubSubChannelLayer",
    ):
        with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": backend}}):
            assert "django_notebooks.W005" not in [
                m.id for m in our_messages(include_silenced=True)
            ]


@override_settings(DJANGO_NOTEBOOKS={"NOTEBOOK": {"sq": SQUARE}, "ALLOWED_COOKIE": []})
def test_e010_unknown_setting_keys():
    message = only("django_notebooks.E010")
    assert message.level == ERROR
    assert "'ALLOWED_COOKIE'" in message.msg and "'NOTEBOOK'" in message.msg
    assert "NOTEBOOKS" in message.hint


@override_settings(DJANGO_NOTEBOOKS={"MARIMO": {"session_ttl": 5, "sesion_ttl": 5}})
def test_e011_marimo_options_marimo_does_not_take():
    message = only("django_notebooks.E011")
    assert message.level == ERROR
    assert "sesion_ttl" in message.msg
    assert "'session_ttl'" not in message.msg
    assert "session_ttl" in message.hint


def test_check_command_runs_the_checks():
    call_command("check")  # the test settings are clean
    with override_settings(
        DJANGO_NOTEBOOKS={"NOTEBOOKS": {"gone": NOTEBOOKS_DIR / "gone.py"}}
    ):
        with pytest.raises(SystemCheckError, match=r"django_notebooks\.E005"):
            call_command("check")


def test_check_command_reports_warnings_without_failing(capsys):
    with override_settings(
        DJANGO_NOTEBOOKS={
            "NOTEBOOKS": {"hello": {"path": SQUARE, "public": True, "groups": ["x"]}}
        }
    ):
        call_command("check")
    assert "django_notebooks.W001" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["NOTEBOOKS", "DIRECTORIES"])
def test_a_list_instead_of_a_dict_is_reported_not_a_crash(key):
    with override_settings(DJANGO_NOTEBOOKS={key: [SQUARE]}):
        messages = our_messages()
    assert [m.level for m in messages] == [ERROR]
    assert key in messages[0].msg


@pytest.mark.parametrize("value", ["static", "", None, 3])
def test_e012_frontend_must_be_a_mode_or_a_url(value):
    with override_settings(DJANGO_NOTEBOOKS={**DJANGO_NOTEBOOKS, "FRONTEND": value}):
        message = only("django_notebooks.E012")
        assert ids() == ["django_notebooks.E012"]
    assert "'bridge'" in message.hint


@pytest.mark.parametrize(
    "value", ["bridge", "marimo", "https://cdn.example/{version}", "/assets/marimo"]
)
def test_frontend_modes_and_urls_pass(value):
    with override_settings(DJANGO_NOTEBOOKS={**DJANGO_NOTEBOOKS, "FRONTEND": value}):
        assert checks.check_settings() == []
        assert checks.check_frontend() == []


def test_w006_staticfiles_mode_needs_the_finder():
    with override_settings(
        DJANGO_NOTEBOOKS={**DJANGO_NOTEBOOKS, "FRONTEND": "staticfiles"}
    ):
        assert [m.id for m in checks.check_frontend()] == ["django_notebooks.W006"]
        with override_settings(
            STATICFILES_FINDERS=["django_notebooks.finders.MarimoFrontendFinder"]
        ):
            assert checks.check_frontend() == []


@pytest.mark.parametrize("version", ["0.25.1", "0.24.9", "0.9.0"])
def test_e014_marimo_older_than_supported(monkeypatch, version):
    monkeypatch.setattr(marimo, "__version__", version)
    message = only("django_notebooks.E014")
    assert message.level == ERROR
    assert f"marimo {version} is installed" in message.msg
    assert f"marimo>={checks.MARIMO_MINIMUM_VERSION}" in message.hint
    with pytest.raises(SystemCheckError, match=r"django_notebooks\.E014"):
        call_command("check")


@pytest.mark.parametrize(
    "version", ["0.25.2", "0.25.10", "0.26.0.dev3", "1.0", "unknown"]
)
def test_supported_or_unparsable_marimo_versions_pass(monkeypatch, version):
    monkeypatch.setattr(marimo, "__version__", version)
    assert "django_notebooks.E014" not in ids()


def test_the_minimum_marimo_version_is_the_one_pyproject_requires():
    with open(ROOT / "pyproject.toml", "rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    [marimo_requirement] = [d for d in dependencies if re.match(r"marimo\b", d)]
    assert marimo_requirement == f"marimo>={checks.MARIMO_MINIMUM_VERSION}"


@pytest.mark.parametrize(
    ("key", "value", "hint"),
    [
        ("ALLOWED_COOKIES", "csrftoken", "a list of cookie names"),
        ("MAX_SESSIONS_PER_USER", "20", "a positive integer"),
        ("MAX_WEBSOCKET_MESSAGE_BYTES", 0, "a positive integer"),
        ("MAX_UNREAD_WEBSOCKET_BYTES", -1, "a positive integer"),
        ("WEBSOCKET_READ_TIMEOUT", None, "a positive number"),
        ("CONCEAL_FORBIDDEN", "no", "True or False"),
        ("REQUEST_META", 3, "a function"),
        ("MARIMO", "quiet", "a dict"),
    ],
)
def test_e015_a_value_of_the_wrong_type(key, value, hint):
    with override_settings(DJANGO_NOTEBOOKS={**DJANGO_NOTEBOOKS, key: value}):
        message = only("django_notebooks.E015")
        # The checks that read the setting do not repeat it or crash.
        assert ids() == ["django_notebooks.E015"]
    assert message.level == ERROR
    assert key in message.msg and repr(value) in message.msg
    assert hint in message.hint


@override_settings(DJANGO_NOTEBOOKS="sq")
def test_e015_a_setting_that_is_not_a_dict():
    message = only("django_notebooks.E015")
    assert "must be a dict" in message.msg


@pytest.mark.parametrize(
    ("option", "value", "text"),
    [
        ("groups", "analysts", "a list of group names"),
        ("permissions", "sales.view_order", "a list of permissions"),
        ("public", "yes", "True or False"),
        ("title", 3, "a string"),
        ("access", 3, "a function"),
    ],
)
def test_e003_an_entry_option_of_the_wrong_type(option, value, text):
    # "groups": "analysts" would otherwise mean the groups "a", "n", ...
    with override_settings(
        DJANGO_NOTEBOOKS={"NOTEBOOKS": {"sq": {"path": SQUARE, option: value}}}
    ):
        message = only("django_notebooks.E003")
    assert option in message.msg and text in message.msg


@pytest.mark.parametrize(
    "setting",
    [
        {"USER_CONTEXT": "tests.test_checks.missing_hook"},
        {"REQUEST_META": "no_such_module.meta"},
        {"REQUEST_META": "tests.settings.DJANGO_NOTEBOOKS"},  # not a function
        {"NOTEBOOKS": {"sq": {"path": SQUARE, "access": "tests.nowhere.rule"}}},
        {"DIRECTORIES": {"lab": {"path": LAB, "access": "tests.nowhere.rule"}}},
    ],
)
def test_e016_a_dotted_path_that_does_not_import_a_function(setting):
    with override_settings(DJANGO_NOTEBOOKS=setting):
        message = only("django_notebooks.E016")
    [value] = [
        v if isinstance(v, str) else next(iter(v.values()))["access"]
        for v in setting.values()
    ]
    assert repr(value) in message.msg
    assert "dotted path" in message.hint


def test_dotted_paths_that_import_pass():
    with override_settings(
        DJANGO_NOTEBOOKS={
            "USER_CONTEXT": "django_notebooks.context.default_user_context",
            "NOTEBOOKS": {
                "sq": {"path": SQUARE, "access": "tests.access_rules.is_ops"}
            },
        }
    ):
        assert checks.check_hooks() == []


def test_the_checks_are_registered_by_the_app_config():
    from django.core.checks.registry import registry

    registered = registry.get_checks(include_deployment_checks=True)
    for check in (
        checks.check_settings,
        checks.check_hooks,
        checks.check_notebooks,
        checks.check_websocket_stack,
        checks.check_frontend,
    ):
        assert check in registered
