"""Is a state-changing request coming from this site?"""

from __future__ import annotations

import pytest
from django.test import override_settings

from django_notebooks.origins import is_trusted_origin, request_source_is_trusted

HOST = "example.com"
TRUSTED = [
    "https://partner.example.org",
    "https://*.corp.example.net",
    "http://localhost:3000/",
]


def trusted(origin: str, *, host: str = HOST, scheme: str = "https") -> bool:
    return is_trusted_origin(origin, host=host, scheme=scheme)


def source(
    *, origin=None, referer=None, fetch_site=None, host=HOST, scheme="https"
) -> bool:
    return request_source_is_trusted(
        origin=origin, referer=referer, fetch_site=fetch_site, host=host, scheme=scheme
    )


def test_same_origin_is_trusted():
    assert trusted("https://example.com")
    assert trusted("http://127.0.0.1:8000", host="127.0.0.1:8000", scheme="http")


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://example.com",  # other scheme
        "https://example.com:8443",  # other port
        "https://sub.example.com",
        "https://example.com.evil.example",
        "https://evilexample.com",
        "",
    ],
)
def test_other_origins_are_not_trusted(origin):
    assert not trusted(origin)


def test_null_origin_is_never_trusted():
    # Sandboxed iframes and file: pages send "null".
    assert not trusted("null")
    assert not trusted("null", host="null", scheme="https")


@override_settings(CSRF_TRUSTED_ORIGINS=TRUSTED)
def test_csrf_trusted_origins_exact():
    assert trusted("https://partner.example.org")
    assert trusted("http://localhost:3000")  # trailing slash in the setting
    assert not trusted("http://partner.example.org")
    assert not trusted("https://partner.example.org:444")
    assert not trusted("https://x.partner.example.org")


@override_settings(CSRF_TRUSTED_ORIGINS=TRUSTED)
def test_csrf_trusted_origins_wildcard():
    assert trusted("https://app.corp.example.net")
    assert trusted("https://a.b.corp.example.net")
    assert not trusted("http://app.corp.example.net")  # scheme must match
    assert not trusted("https://corp.example.net.evil.example")
    assert not trusted("https://evilcorp.example.net")


def test_no_trusted_origins_by_default():
    assert not trusted("https://partner.example.org")


def test_origin_header_decides_when_present():
    assert source(origin="https://example.com")
    assert not source(origin="https://evil.example")
    assert not source(origin="null")
    # A same-site Referer does not rescue a foreign Origin.
    assert not source(
        origin="https://evil.example", referer="https://example.com/notebooks/"
    )
    assert not source(
        origin="null",
        referer="https://example.com/notebooks/",
        fetch_site="same-origin",
    )


def test_referer_is_the_fallback_without_origin():
    assert source(referer="https://example.com/notebooks/square/")
    assert not source(referer="https://evil.example/page")
    assert not source(referer="http://example.com/notebooks/")
    assert not source(referer="not a url")


@override_settings(CSRF_TRUSTED_ORIGINS=TRUSTED)
def test_referer_from_a_trusted_origin():
    assert source(referer="https://app.corp.example.net/dashboard")


def test_sec_fetch_site():
    assert not source(fetch_site="cross-site")
    assert not source(fetch_site="same-site")
    assert source(fetch_site="same-origin")
    assert source(fetch_site="none")  # typed into the address bar
    assert not source(fetch_site="cross-site", origin="https://evil.example")
    # Without Origin, a cross-site request is refused whatever its Referer says.
    assert not source(fetch_site="cross-site", referer="https://example.com/")


@override_settings(CSRF_TRUSTED_ORIGINS=TRUSTED)
def test_cross_site_request_from_a_trusted_origin():
    # A trusted origin is another site: its requests are cross-site.
    assert source(fetch_site="cross-site", origin="https://partner.example.org")


def test_requests_without_any_browser_header_are_from_programs():
    assert source()
