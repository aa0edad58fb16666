"""The ``DJANGO_NOTEBOOKS`` setting, as one typed object.

:func:`get_settings` reads the setting when it is used, never at import time,
so that ``override_settings`` in tests and settings changed at runtime are
honoured; the object is cached until the setting changes. Each key has a type
rule (:data:`KEYS`): a wrong value raises ``ImproperlyConfigured`` when the
setting is read, and check ``django_notebooks.E015`` (or the key's own check)
reports it at startup, before the first request.

Every dotted path the setting holds (hooks, access rules, query forms) is
imported by :func:`import_object`, cached until the setting changes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import cache, wraps
from typing import Any, TypeVar, cast

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from django_notebooks import limits

SETTING_NAME = "DJANGO_NOTEBOOKS"

# A function, or the dotted path of one.
Hook = str | Callable[..., Any] | None

# Who serves marimo's frontend files besides a URL; see marimo/frontend.py.
FRONTEND_MODES = ("bridge", "staticfiles", "marimo")

# marimo options this project decides itself: a token would add marimo's own
# login on top of Django's, and the bridge already refuses cross-site calls.
RESERVED_MARIMO_OPTIONS = frozenset({"token"})


@dataclass(frozen=True)
class NotebookSettings:
    """The effective ``DJANGO_NOTEBOOKS`` setting: the project's values over
    the defaults, one attribute per key (docs: reference/settings)."""

    #: slug -> path, or slug -> {"path": ..., "title", "description",
    #: "public", "groups", "permissions", "access", "query"}.
    NOTEBOOKS: Mapping[str, Any]
    #: key -> directory, or key -> {"path": ..., access keys}: every marimo
    #: notebook in the directory is served at <key>/<file stem>/.
    DIRECTORIES: Mapping[str, Any]
    #: Options passed to marimo.create_asgi_app().
    MARIMO: Mapping[str, Any]
    #: "bridge", "staticfiles", "marimo", or the URL of a copy of marimo's
    #: frontend (it may contain {version}).
    FRONTEND: str
    #: callable(user) -> dict: what notebooks see as request.user.
    USER_CONTEXT: Hook
    #: callable(scope) -> dict: what notebooks see as request.meta.
    REQUEST_META: Hook
    #: Cookie names notebook code may read; every other cookie is removed.
    ALLOWED_COOKIES: tuple[str, ...]
    #: Sessions with a live kernel one user (or anonymous visitor) may have:
    #: open pages, and closed tabs whose kernel waits out ``session_ttl``.
    MAX_SESSIONS_PER_USER: int | None
    #: Largest websocket message a browser may send (marimo's frontend
    #: sends none: everything goes through HTTP POSTs).
    MAX_WEBSOCKET_MESSAGE_BYTES: int
    #: Bytes the server sends a page ahead of what the page has read; then
    #: it takes no more output from the notebook until the page catches up.
    MAX_UNREAD_WEBSOCKET_BYTES: int
    #: Seconds a page may read nothing while output waits for it, before
    #: its websocket is closed.
    WEBSOCKET_READ_TIMEOUT: float
    #: 404 (not 403) for notebooks the user may not open, and a login for
    #: unknown ones, so that no answer tells whether a notebook exists.
    CONCEAL_FORBIDDEN: bool
    #: Leave the notebook's absolute file path in its page (marimo does).
    EXPOSE_FILE_PATHS: bool
    #: Limits on sessions (limits.py; a notebook's ``limits`` option may
    #: set the per-session ones for itself).
    LIMITS: limits.Limits
    #: Where sessions' kernels run: "process" (one process each) or
    #: "thread" (marimo's threads inside the server process).
    ISOLATION: str
    #: Put what notebook code prints in the server's log (process mode:
    #: bounded, each line marked with its notebook and session).
    LOG_NOTEBOOK_OUTPUT: bool
    #: Seconds the machine's kernel host keeps its kernels with no web
    #: server connected (a restart, a deploy), before it ends them.
    KERNEL_HOST_GRACE: float
    #: Kernels the host keeps forked ahead for each notebook in use, so that
    #: a new session takes one instead of waiting for a fork.
    KERNEL_SPARES: int
    #: Seconds a spare waits for a session before it is replaced (a
    #: pre-run spare's outputs are as old as that at most).
    KERNEL_SPARE_MAX_AGE: float
    #: Seconds at least between two makings of a notebook's snapshot that
    #: saves of its models asked for (saves in between wait, then make one).
    SNAPSHOT_MIN_INTERVAL: float
    #: Seconds a snapshot's run and export may take, in all.
    SNAPSHOT_TIMEOUT: float
    #: The alias in Django's STORAGES where snapshots are kept.
    SNAPSHOT_STORAGE: str


@dataclass(frozen=True)
class Key:
    """One key of the setting: its default and the rule its value follows."""

    default: Any
    #: What a valid value is, in the words of the check's hint.
    expected: str
    is_valid: Callable[[Any], bool]
    #: The system check that reports a wrong value.
    check_id: str = "django_notebooks.E015"
    #: Turns a valid value into the attribute's type.
    convert: Callable[[Any], Any] = lambda value: value
    #: What is wrong with an invalid value, one sentence each, where the
    #: type alone would not say (a dict with a wrong entry).
    explain: Callable[[Any], list[str]] | None = None


def _is_mapping(value: Any) -> bool:
    return isinstance(value, Mapping)


def is_hook(value: Any) -> bool:
    """A function, its dotted path, or ``None``."""
    return value is None or isinstance(value, str) or callable(value)


def is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def is_name_list(value: Any) -> bool:
    """A list (tuple, set) of strings; a string is not one, although Python
    iterates it: ``"csrftoken"`` would mean the cookies ``c``, ``s``, ..."""
    return (
        isinstance(value, Collection)
        and not isinstance(value, str | bytes | Mapping)
        and all(isinstance(item, str) for item in value)
    )


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def is_positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _is_frontend(value: Any) -> bool:
    return isinstance(value, str) and (
        value in FRONTEND_MODES or "://" in value or value.startswith("/")
    )


KEYS: dict[str, Key] = {
    "NOTEBOOKS": Key({}, "a dict of slug -> path or entry", _is_mapping),
    "DIRECTORIES": Key({}, "a dict of key -> directory or entry", _is_mapping),
    "MARIMO": Key({}, "a dict of marimo.create_asgi_app() options", _is_mapping),
    "FRONTEND": Key(
        "bridge",
        f"one of {list(FRONTEND_MODES)} or the URL of a copy of marimo's "
        "frontend (it may contain {version})",
        _is_frontend,
        check_id="django_notebooks.E012",
    ),
    "USER_CONTEXT": Key(None, "a function, its dotted path, or None", is_hook),
    "REQUEST_META": Key(None, "a function, its dotted path, or None", is_hook),
    "ALLOWED_COOKIES": Key(
        (),
        'a list of cookie names, e.g. ["theme"]',
        is_name_list,
        convert=tuple,
    ),
    "MAX_SESSIONS_PER_USER": Key(
        20,
        "a positive integer, or None for no cap",
        lambda value: value is None or _is_positive_int(value),
    ),
    "MAX_WEBSOCKET_MESSAGE_BYTES": Key(
        64 * 1024, "a positive integer (bytes)", _is_positive_int
    ),
    "MAX_UNREAD_WEBSOCKET_BYTES": Key(
        4 * 1024 * 1024, "a positive integer (bytes)", _is_positive_int
    ),
    "WEBSOCKET_READ_TIMEOUT": Key(
        60, "a positive number (seconds)", is_positive_number
    ),
    "CONCEAL_FORBIDDEN": Key(False, "True or False", is_bool),
    "EXPOSE_FILE_PATHS": Key(False, "True or False", is_bool),
    "LIMITS": Key(
        {},
        f"a dict of {list(limits.NAMES)}, each {limits.EXPECTED}",
        limits.is_valid_setting,
        check_id="django_notebooks.E017",
        convert=limits.from_setting,
        explain=lambda value: limits.problems(
            value,
            where=f"{SETTING_NAME}['LIMITS']",
            allowed=frozenset(limits.NAMES),
        ),
    ),
    "ISOLATION": Key(
        "process",
        '"process" or "thread"',
        lambda value: value in ("process", "thread"),
        check_id="django_notebooks.E018",
    ),
    "LOG_NOTEBOOK_OUTPUT": Key(False, "True or False", is_bool),
    "KERNEL_SPARES": Key(
        1,
        "a number of kernels, 0 or more",
        lambda value: value == 0 or _is_positive_int(value),
    ),
    "KERNEL_SPARE_MAX_AGE": Key(600, "a positive number (seconds)", is_positive_number),
    "SNAPSHOT_MIN_INTERVAL": Key(
        10,
        "a number of seconds, 0 or more",
        lambda value: value == 0 or is_positive_number(value),
    ),
    "SNAPSHOT_TIMEOUT": Key(300, "a positive number (seconds)", is_positive_number),
    "SNAPSHOT_STORAGE": Key(
        "default",
        "the alias of a storage in Django's STORAGES setting",
        lambda value: isinstance(value, str) and bool(value),
    ),
    "KERNEL_HOST_GRACE": Key(
        60,
        "a number of seconds, 0 or more",
        lambda value: value == 0 or is_positive_number(value),
    ),
}


@dataclass(frozen=True)
class Problem:
    """A value in the project's setting that breaks its key's rule."""

    key: str
    message: str
    hint: str
    check_id: str


def project_setting() -> Mapping[str, Any]:
    """The project's ``DJANGO_NOTEBOOKS`` as written (``None`` is empty)."""
    value = getattr(django_settings, SETTING_NAME, None) or {}
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(
            f"{SETTING_NAME} must be a dict, not {type(value).__name__}."
        )
    return value


def unknown_keys() -> list[str]:
    """Keys of the project's setting this app does not know (check E010)."""
    return sorted(set(project_setting()) - set(KEYS))


def problems() -> list[Problem]:
    """Each key whose value breaks its rule, in the order of :data:`KEYS`."""
    project = project_setting()
    found = []
    for name, key in KEYS.items():
        if name in project and not key.is_valid(project[name]):
            value = project[name]
            message = (
                " ".join(key.explain(value))
                if key.explain
                else f"{SETTING_NAME}[{name!r}] is {value!r} ({type(value).__name__})."
            )
            found.append(
                Problem(
                    key=name,
                    message=message,
                    hint=f"Use {key.expected}.",
                    check_id=key.check_id,
                )
            )
    return found


@cache
def get_settings() -> NotebookSettings:
    """The effective setting; raises ``ImproperlyConfigured`` for a value
    that breaks its key's rule. Cached until the setting changes."""
    wrong = problems()
    if wrong:
        raise ImproperlyConfigured(f"{wrong[0].message} {wrong[0].hint}")
    project = project_setting()
    return NotebookSettings(
        **{
            name: key.convert(project.get(name, key.default))
            for name, key in KEYS.items()
        }
    )


T = TypeVar("T")


def per_setting(function: Callable[[], T]) -> Callable[[], T]:
    """Memoise a function of the setting until the setting changes."""
    memo: list[Any] = [None, None]

    @wraps(function)
    def wrapper() -> T:
        config = get_settings()
        if memo[0] is not config:
            memo[:] = [config, function()]
        return cast(T, memo[1])

    return wrapper


def marimo_options() -> dict[str, Any]:
    """Keyword arguments for ``marimo.create_asgi_app()``."""
    options = {"quiet": True, **get_settings().MARIMO}
    for name in RESERVED_MARIMO_OPTIONS:
        options.pop(name, None)
    return options


def import_object(value: Any) -> Any:
    """What a setting's dotted path names (imported once), or ``value``
    itself when it is not a string (a function or class given directly)."""
    return _import_cached(value) if isinstance(value, str) else value


def import_hook(name: str) -> Any:
    """The function a hook key (``USER_CONTEXT``, ``REQUEST_META``) names,
    or ``None`` if unset."""
    value = getattr(get_settings(), name)
    return import_object(value) if value else None


@cache
def _import_cached(dotted_path: str) -> Any:
    return import_string(dotted_path)


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        get_settings.cache_clear()
        _import_cached.cache_clear()
