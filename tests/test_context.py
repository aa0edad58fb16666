"""What notebook code sees: the user dict, request meta, headers, the scope."""

from __future__ import annotations

import copy
from urllib.parse import unquote

import pytest
from django.contrib.auth.models import AnonymousUser, Group, User
from django.test import override_settings

from django_notebooks import context


def custom_user_context(user):
    return {"name": getattr(user, "username", None), "custom": True}


def not_a_dict(user_or_request):
    return ["not", "a", "dict"]


def meta_from(request_or_scope):
    return {"seen": type(request_or_scope).__name__, "tenant": "acme"}


@pytest.fixture
def alice(db):
    user = User.objects.create_user(
        "alice",
        password=None,
        email="alice@example.com",
        first_name="Alice",
        last_name="Liddell",
        is_staff=True,
    )
    for name in ("sales", "analysts", "board"):
        user.groups.add(Group.objects.create(name=name))
    return user


# request.user


def test_default_user_context_for_a_user(alice):
    seen = context.default_user_context(alice)
    assert seen == {
        "id": alice.pk,
        "username": "alice",
        "display_name": "Alice Liddell",
        "is_authenticated": True,
        "is_staff": True,
        "is_superuser": False,
        "email": "alice@example.com",
        "first_name": "Alice",
        "last_name": "Liddell",
        "groups": ["analysts", "board", "sales"],
    }


@pytest.mark.django_db
def test_default_user_context_display_name_falls_back_to_username():
    bob = User.objects.create_user("bob", password=None, is_superuser=True)
    seen = context.default_user_context(bob)
    assert seen["display_name"] == "bob"
    assert seen["is_superuser"] is True
    assert seen["groups"] == []
    assert seen["email"] == ""


@pytest.mark.parametrize("anonymous", [AnonymousUser(), None])
def test_default_user_context_for_anonymous_is_not_marimos_fake_user(anonymous):
    seen = context.default_user_context(anonymous)
    assert seen["is_authenticated"] is False
    assert seen["id"] is None
    # marimo's own default is an authenticated user named "user".
    assert seen["username"] != "user"
    assert seen["username"] == ""
    assert seen["groups"] == []
    assert seen["is_staff"] is False and seen["is_superuser"] is False


def test_user_context_is_the_default_without_a_hook(alice):
    with override_settings(DJANGO_NOTEBOOKS={}):
        assert context.user_context(alice) == context.default_user_context(alice)


def test_user_context_hook_replaces_the_default(alice):
    with override_settings(
        DJANGO_NOTEBOOKS={"USER_CONTEXT": "tests.test_context.custom_user_context"}
    ):
        assert context.user_context(alice) == {"name": "alice", "custom": True}
        assert context.user_context(AnonymousUser()) == {"name": "", "custom": True}


def test_user_context_hook_must_return_a_dict(alice):
    with override_settings(
        DJANGO_NOTEBOOKS={"USER_CONTEXT": "tests.test_context.not_a_dict"}
    ):
        with pytest.raises(TypeError, match=r"USER_CONTEXT.*must return a dict.*list"):
            context.user_context(alice)


# request.meta


def test_request_meta_is_empty_without_a_hook():
    with override_settings(DJANGO_NOTEBOOKS={}):
        assert context.request_meta({"type": "websocket"}) == {}


def test_request_meta_hook_gets_the_request_or_scope():
    with override_settings(
        DJANGO_NOTEBOOKS={"REQUEST_META": "tests.test_context.meta_from"}
    ):
        assert context.request_meta({"type": "websocket"}) == {
            "seen": "dict",
            "tenant": "acme",
        }


def test_request_meta_of_the_test_settings():
    assert context.request_meta({}) == {"site": "tests"}


def test_request_meta_hook_must_return_a_dict():
    with override_settings(
        DJANGO_NOTEBOOKS={"REQUEST_META": "tests.test_context.not_a_dict"}
    ):
        with pytest.raises(TypeError, match=r"REQUEST_META.*must return a dict"):
            context.request_meta({})


# Headers


def names(headers):
    return [name.lower() for name, _ in headers]


def cookie_values(headers):
    return [value for name, value in headers if name.lower() == b"cookie"]


def test_safe_headers_drop_credentials():
    headers = [
        (b"host", b"testserver"),
        (b"Authorization", b"Bearer secret"),
        (b"proxy-authorization", b"Basic c2VjcmV0"),
        (b"X-CSRFToken", b"token"),
        (b"user-agent", b"pytest"),
        (b"accept", b"*/*"),
    ]
    kept = context.safe_headers(headers)
    assert kept == [
        (b"host", b"testserver"),
        (b"user-agent", b"pytest"),
        (b"accept", b"*/*"),
    ]
    assert b"secret" not in repr(kept).encode()


def test_safe_headers_remove_every_cookie_by_default():
    headers = [
        (b"cookie", b"sessionid=abc; csrftoken=def; theme=dark"),
        (b"accept", b"*/*"),
    ]
    with override_settings(DJANGO_NOTEBOOKS={}):
        assert context.safe_headers(headers) == [(b"accept", b"*/*")]


@override_settings(DJANGO_NOTEBOOKS={"ALLOWED_COOKIES": ["theme", "lang"]})
def test_safe_headers_keep_only_allowed_cookies():
    headers = [(b"Cookie", b"sessionid=abc; theme=dark; csrftoken=def; lang=en")]
    assert cookie_values(context.safe_headers(headers)) == [b"theme=dark; lang=en"]
    only_secrets = [(b"cookie", b"sessionid=abc; csrftoken=def")]
    assert cookie_values(context.safe_headers(only_secrets)) == []
    # HTTP/2 may split cookies over several headers.
    split = [(b"cookie", b"sessionid=abc"), (b"cookie", b"theme=dark")]
    assert cookie_values(context.safe_headers(split)) == [b"theme=dark"]


@override_settings(DJANGO_NOTEBOOKS={"ALLOWED_COOKIES": ["theme"]})
def test_allowed_cookie_survives_an_unusual_cookie_before_it():
    for header in (b"prefs=a b; theme=dark", b'prefs={"a":1}; theme=dark'):
        assert cookie_values(context.safe_headers([(b"cookie", header)])) == [
            b"theme=dark"
        ], header


# The scope marimo gets


def django_scope():
    return {
        "type": "http",
        "method": "POST",
        "scheme": "https",
        "path": "/notebooks/square/api/kernel/set_ui_element_value",
        "raw_path": b"/notebooks/square/api/kernel/set_ui_element_value",
        "root_path": "",
        "query_string": b"a=1",
        "headers": [
            (b"host", b"example.com"),
            (b"cookie", b"sessionid=abc; csrftoken=def"),
            (b"authorization", b"Bearer secret"),
            (b"x-notebook-id", b"/etc/passwd"),
            (b"marimo-session-id", b"s_1"),
        ],
        "session": object(),
        "cookies": {"sessionid": "abc"},
        "user": object(),
        "url_route": {"kwargs": {}},
        "path_remaining": "",
    }


def test_marimo_scope():
    original = django_scope()
    before = copy.copy(original)
    user = {"username": "alice", "is_authenticated": True}
    scope = context.marimo_scope(
        original,
        path="/notebooks/square/api/kernel/set_ui_element_value",
        root_path="/notebooks/square",
        user=user,
        meta={"site": "tests"},
        notebook_file="/srv/notebooks/my notebook.py",
        session_id="s_1",
    )
    # The full path, with the page URL as root_path: how Starlette matches.
    assert scope["path"] == "/notebooks/square/api/kernel/set_ui_element_value"
    assert scope["root_path"] == "/notebooks/square"
    assert "raw_path" not in scope
    # Django's objects stay on Django's side.
    for key in ("session", "cookies", "url_route", "path_remaining"):
        assert key not in scope, key
    assert scope["user"] is user
    assert scope["meta"] == {"site": "tests"}
    # Everything else passes through.
    assert (scope["type"], scope["method"], scope["scheme"], scope["query_string"]) == (
        "http",
        "POST",
        "https",
        b"a=1",
    )
    headers = dict(scope["headers"])
    assert headers[b"host"] == b"example.com"
    # Admitted for its session: the kernel router and marimo read it.
    assert headers[b"marimo-session-id"] == b"s_1"
    assert context.admitted_session(scope) == "s_1"
    assert b"cookie" not in headers
    assert b"authorization" not in headers
    # The notebook is named by the bridge, not by the browser.
    assert names(scope["headers"]).count(b"x-notebook-id") == 1
    assert (
        unquote(headers[b"x-notebook-id"].decode()) == "/srv/notebooks/my notebook.py"
    )
    # The caller's scope is left alone.
    assert original == before


def test_a_session_id_the_call_was_not_admitted_for_is_dropped():
    scope = context.marimo_scope(
        django_scope(),
        path="/notebooks/square/health",
        root_path="/notebooks/square",
        user={},
        meta={},
        notebook_file="/f.py",
    )
    assert b"marimo-session-id" not in dict(scope["headers"])
    assert context.admitted_session(scope) is None


def test_marimo_scope_query_string_is_bytes():
    """marimo's Starlette app decodes the query string: Django's test client
    puts a str there, ASGI servers bytes."""
    for query_string in ("n=3&x=%C3%A9", b"n=3&x=%C3%A9"):
        scope = context.marimo_scope(
            {
                "type": "http",
                "path": "/p/",
                "query_string": query_string,
                "headers": [],
            },
            path="/p/",
            root_path="/p",
            user={},
            meta={},
            notebook_file="/f.py",
        )
        assert scope["query_string"] == b"n=3&x=%C3%A9"
