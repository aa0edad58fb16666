"""Is a request coming from this site?

marimo's kernel API takes POSTs with any Content-Type and no CSRF token, and
its frontend sends none, so Django's token check cannot guard it. Browsers do
say where a request comes from (``Origin``, ``Referer``, ``Sec-Fetch-Site``);
the bridge refuses kernel POSTs and websockets that come from another site,
the same test Django's CSRF middleware applies to the ``Origin`` header.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.utils.http import is_same_domain


def _trusted_origins() -> tuple[list[str], list[str]]:
    exact, wildcard_hosts = [], []
    for origin in getattr(settings, "CSRF_TRUSTED_ORIGINS", []):
        if "*" in origin:
            parts = urlsplit(origin)
            wildcard_hosts.append(parts.scheme + "://" + parts.netloc.lstrip("*"))
        else:
            exact.append(origin.rstrip("/"))
    return exact, wildcard_hosts


def is_trusted_origin(origin: str, *, host: str, scheme: str) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) is this site or trusted."""
    if not origin or origin == "null":
        return False
    if origin == f"{scheme}://{host}":
        return True
    exact, wildcard = _trusted_origins()
    if origin in exact:
        return True
    parts = urlsplit(origin)
    for pattern in wildcard:
        pattern_parts = urlsplit(pattern)
        if parts.scheme == pattern_parts.scheme and is_same_domain(
            parts.netloc, "." + pattern_parts.netloc.lstrip(".")
        ):
            return True
    return False


def request_source_is_trusted(
    *,
    origin: str | None,
    referer: str | None,
    fetch_site: str | None,
    host: str,
    scheme: str,
) -> bool:
    """Whether a state-changing request comes from this site.

    A browser always sends ``Origin`` on a cross-origin POST and on a
    websocket handshake; requests carrying none of these headers come from
    programs, not from a page an attacker controls, and are let through.
    """
    if fetch_site == "cross-site" and not origin:
        return False
    if origin is not None:
        return is_trusted_origin(origin, host=host, scheme=scheme)
    if referer:
        parts = urlsplit(referer)
        return is_trusted_origin(
            f"{parts.scheme}://{parts.netloc}", host=host, scheme=scheme
        )
    return fetch_site in (None, "same-origin", "none")
