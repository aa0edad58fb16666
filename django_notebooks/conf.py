"""The ``DJANGO_NOTEBOOKS`` setting, with defaults.

The setting is read when it is used, never at import time, so that
``override_settings`` in tests and settings changed at runtime are honoured.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

SETTING_NAME = "DJANGO_NOTEBOOKS"

DEFAULTS: dict[str, Any] = {
    # slug -> path, or slug -> {"path": ..., "title", "description", "public",
    # "groups", "permissions", "access"}
    "NOTEBOOKS": {},
    # key -> directory path, or key -> {"path": ..., same access keys}; every
    # marimo notebook in the directory is served at <key>/<file stem>/.
    "DIRECTORIES": {},
    # Options passed to marimo.create_asgi_app(); see docs/reference/settings.
    "MARIMO": {},
    # Who serves marimo's frontend files: "bridge" (compressed, cached for a
    # year), "staticfiles" (collectstatic), "marimo", or a CDN URL with
    # {version}. See frontend.py.
    "FRONTEND": "bridge",
    # Dotted path to callable(user) -> dict: what notebooks see as request.user.
    "USER_CONTEXT": None,
    # Dotted path to callable(request_or_scope) -> dict: request.meta.
    "REQUEST_META": None,
    # Cookie names that notebook code may read; every other cookie is removed.
    "ALLOWED_COOKIES": [],
    # Open kernel websockets one user (or anonymous visitor) may have at once.
    "MAX_SESSIONS_PER_USER": 20,
    # Largest websocket message a browser may send (marimo's frontend sends
    # none: everything goes through HTTP POSTs).
    "MAX_WEBSOCKET_MESSAGE_BYTES": 64 * 1024,
    # Answer 404 (not 403) for notebooks the user may not open, and ask
    # anonymous users to log in for unknown ones, so that deny answers never
    # tell whether a notebook exists.
    "CONCEAL_FORBIDDEN": False,
    # Show the notebook's absolute file path in its page (marimo does).
    "EXPOSE_FILE_PATHS": False,
}

# marimo options this project decides itself: a token would add marimo's own
# login on top of Django's, and the bridge already refuses cross-site calls.
RESERVED_MARIMO_OPTIONS = frozenset({"token"})


@cache
def get_config() -> dict[str, Any]:
    """The effective setting: the project's values over the defaults."""
    user_config = getattr(settings, SETTING_NAME, {}) or {}
    return {**DEFAULTS, **user_config}


def get(name: str) -> Any:
    """One key of the effective setting."""
    return get_config()[name]


def marimo_options() -> dict[str, Any]:
    """Keyword arguments for ``marimo.create_asgi_app()``."""
    options = {"quiet": True, **get("MARIMO")}
    for name in RESERVED_MARIMO_OPTIONS:
        options.pop(name, None)
    return options


def import_hook(name: str) -> Any:
    """Import the callable a dotted-path setting names, or ``None`` if unset."""
    dotted_path = get(name)
    if not dotted_path:
        return None
    if callable(dotted_path):
        return dotted_path
    return _import_cached(dotted_path)


@cache
def _import_cached(dotted_path: str) -> Any:
    return import_string(dotted_path)


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        get_config.cache_clear()
        _import_cached.cache_clear()
