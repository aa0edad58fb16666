"""System checks: configuration mistakes reported by ``manage.py check`` and
at server start, instead of at the first request.

:func:`register_checks` registers them; the app's ``ready()`` calls it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any

import marimo
from channels.security.websocket import OriginValidator
from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import storages
from django.utils.module_loading import import_string

from django_notebooks import conf, query, registry
from django_notebooks.marimo import visitor

Check = Callable[..., list[CheckMessage]]


def _when_settings_load(check: Check) -> Check:
    """A check that reads DJANGO_NOTEBOOKS: when the setting does not load,
    check_settings says why, and this one stays quiet rather than repeat it
    (or crash)."""

    @wraps(check)
    def checked(*args: Any, **kwargs: Any) -> list[CheckMessage]:
        try:
            conf.get_settings()
        except ImproperlyConfigured:
            return []
        return check(*args, **kwargs)

    return checked


def check_installation(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if not apps.is_installed("channels"):
        errors.append(
            Error(
                "'channels' is not in INSTALLED_APPS.",
                hint="Add 'daphne' (first) and 'channels' to INSTALLED_APPS: "
                "the kernel websocket is a Channels consumer.",
                id="django_notebooks.E001",
            )
        )
    if not getattr(settings, "ASGI_APPLICATION", None):
        errors.append(
            Error(
                "ASGI_APPLICATION is not set.",
                hint="Set ASGI_APPLICATION = 'yourproject.asgi.application' and "
                "route 'websocket' to django_notebooks.routing.websocket_urlpatterns.",
                id="django_notebooks.E002",
            )
        )
    return errors


# The oldest marimo this package works with. pyproject.toml requires the same
# ("marimo>=..."); tests/test_checks.py fails if the two differ.
MARIMO_MINIMUM_VERSION = "0.25.2"


def _version_tuple(version: str) -> tuple[int, ...] | None:
    """(0, 25, 2) for "0.25.2", "0.25.2.dev3" or "0.25.2rc1"; None if the
    version does not start with numbers."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        return None
    return tuple(int(part or 0) for part in match.groups())


def check_marimo_version(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    installed = _version_tuple(marimo.__version__)
    minimum = _version_tuple(MARIMO_MINIMUM_VERSION)
    if installed is None or minimum is None or installed >= minimum:
        return []
    return [
        Error(
            f"marimo {marimo.__version__} is installed; django_notebooks needs "
            f"marimo {MARIMO_MINIMUM_VERSION} or newer.",
            hint=f"Upgrade it: pip install 'marimo>={MARIMO_MINIMUM_VERSION}'.",
            id="django_notebooks.E014",
        )
    ]


def _invalid_name(what: str) -> Error:
    return Error(
        f"{what} is not valid.",
        hint="Use letters, digits, '-' and '_', starting with a letter or digit.",
        id="django_notebooks.E004",
    )


@_when_settings_load
def check_notebooks(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    try:
        notebooks = registry.explicit_notebooks()
        directories = registry.directories()
    except ImproperlyConfigured as error:
        return [
            Error(
                str(error),
                hint="See the DJANGO_NOTEBOOKS settings reference.",
                id="django_notebooks.E003",
            )
        ]
    errors: list[CheckMessage] = []
    for slug, notebook in notebooks.items():
        if not registry.NAME_PATTERN.fullmatch(slug):
            errors.append(_invalid_name(f"Notebook slug {slug!r}"))
        path = Path(notebook.path)
        if not path.is_file():
            errors.append(
                Error(
                    f"Notebook {slug!r}: file {str(path)!r} does not exist.",
                    hint="Fix the path in DJANGO_NOTEBOOKS['NOTEBOOKS'].",
                    id="django_notebooks.E005",
                )
            )
        elif not registry.is_marimo_notebook(path):
            errors.append(
                Error(
                    f"Notebook {slug!r}: {str(path)!r} is not a marimo notebook.",
                    hint="A marimo notebook defines app = marimo.App(...); "
                    "create one with 'marimo new'.",
                    id="django_notebooks.E006",
                )
            )
        if notebook.public and (
            notebook.groups or notebook.permissions or notebook.access
        ):
            errors.append(
                Warning(
                    f"Notebook {slug!r} is public, so its groups, permissions "
                    "and access rules are ignored.",
                    hint="Remove 'public': True or the access rules.",
                    id="django_notebooks.W001",
                )
            )
    for key, options in directories.items():
        if key in notebooks:
            errors.append(
                Error(
                    f"{key!r} names both a notebook and a directory.",
                    hint=f"Rename one of them: they share the URL {key}/.",
                    id="django_notebooks.E007",
                )
            )
        if not registry.NAME_PATTERN.fullmatch(key):
            errors.append(_invalid_name(f"Directory key {key!r}"))
        if not Path(options["path"]).is_dir():
            errors.append(
                Error(
                    f"Directory {key!r}: {str(options['path'])!r} is not a directory.",
                    hint="Fix the path in DJANGO_NOTEBOOKS['DIRECTORIES'].",
                    id="django_notebooks.E008",
                )
            )
    return errors


def _entry_options(option: str) -> list[tuple[str, Any]]:
    """One option of every NOTEBOOKS and DIRECTORIES entry, with where it
    is; raises ImproperlyConfigured for a malformed entry (E003)."""
    return [
        (f"Notebook {slug!r}", getattr(notebook, option))
        for slug, notebook in registry.explicit_notebooks().items()
    ] + [
        (f"Directory {key!r}", options.get(option))
        for key, options in registry.directories().items()
    ]


@_when_settings_load
def check_query_options(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    try:
        entries = _entry_options("query")
    except ImproperlyConfigured:
        return []  # E003 says it
    errors: list[CheckMessage] = []
    for where, option in entries:
        if option is None:
            continue
        try:
            query.resolve(option)
        except Exception as error:  # an import may fail in any way
            errors.append(
                Error(
                    f"{where}: the 'query' option {option!r} is not usable: {error}",
                    hint="Name a django.forms.Form or pydantic.BaseModel "
                    "subclass, or its dotted path.",
                    id="django_notebooks.E013",
                )
            )
    return errors


def _layers(app: Any) -> list[Any]:
    """An ASGI app and the apps it wraps, outermost first (Channels'
    middleware keeps the wrapped app in ``inner``, routers in
    ``application``, most other ASGI middleware in ``app``)."""
    chain: list[Any] = []
    while app is not None and len(chain) < 20:
        chain.append(app)
        app = (
            getattr(app, "inner", None)
            or getattr(app, "application", None)
            or getattr(app, "app", None)
        )
    return chain


def _routes_kernel_consumer(router: Any) -> bool:
    from django_notebooks.consumers import KernelConsumer

    for route in getattr(router, "routes", ()):
        callback = getattr(route, "callback", None)
        if getattr(callback, "consumer_class", None) is KernelConsumer:
            return True
        if _routes_kernel_consumer(callback):
            return True
    return False


def check_websocket_stack(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    asgi_path = getattr(settings, "ASGI_APPLICATION", None)
    if not asgi_path:
        return []  # E002 says it
    try:
        application = import_string(asgi_path)
    except Exception as error:
        return [
            Error(
                f"ASGI_APPLICATION {asgi_path!r} cannot be imported: {error}",
                hint="Point ASGI_APPLICATION at your project's asgi.application.",
                id="django_notebooks.E009",
            )
        ]
    mapping = getattr(application, "application_mapping", None)
    if mapping is None:
        return []  # not a ProtocolTypeRouter: nothing we can inspect
    websocket_app = mapping.get("websocket")
    chain = _layers(websocket_app)
    warnings: list[CheckMessage] = []
    http_app = mapping.get("http")
    from django_notebooks.asgi import FastPathMiddleware

    if http_app is not None and not any(
        isinstance(layer, FastPathMiddleware) for layer in _layers(http_app)
    ):
        warnings.append(
            Warning(
                "The HTTP application is not wrapped in FastPathMiddleware: "
                "every widget change goes through Django's request machinery.",
                hint="Use 'http': FastPathMiddleware(get_asgi_application()) "
                "(from django_notebooks.asgi). Without it a widget round trip "
                "took 1.44x to 1.64x as long as with bare marimo, with it "
                "1.02x to 1.06x (docs: performance). Silence this check if "
                "your stack leaves it out on purpose.",
                id="django_notebooks.W007",
            )
        )
    if not any(_routes_kernel_consumer(layer) for layer in chain):
        warnings.append(
            Warning(
                "The kernel websocket is not routed: notebooks will load but "
                "never run.",
                hint="Route 'websocket' in your ProtocolTypeRouter to "
                "URLRouter(django_notebooks.routing.websocket_urlpatterns).",
                id="django_notebooks.W002",
            )
        )
    if websocket_app is not None and not any(
        isinstance(layer, OriginValidator) for layer in chain
    ):
        warnings.append(
            Warning(
                "The websocket stack has no origin validator.",
                hint="Wrap it in channels.security.websocket."
                "AllowedHostsOriginValidator. The notebook websocket refuses "
                "other sites by itself, your other consumers do not.",
                id="django_notebooks.W003",
            )
        )
    return warnings


def check_channel_layer(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    backend = layers.get("default", {}).get("BACKEND", "")
    if not backend:
        return [
            Warning(
                "CHANNEL_LAYERS has no default layer: logging out or losing "
                "access closes open notebook sessions in this server process "
                "only (over the bridge's in-process layer), and kernel calls "
                "cannot be forwarded between server processes.",
                hint="Running more than one server process? Set CHANNEL_LAYERS, "
                "e.g. channels_redis.pubsub.RedisPubSubChannelLayer. Running "
                "exactly one? Silence this warning.",
                id="django_notebooks.W004",
            )
        ]
    if backend.endswith("InMemoryChannelLayer") and not settings.DEBUG:
        return [
            Warning(
                "The in-memory channel layer reaches only this process: with "
                "several server processes, kernel calls cannot be forwarded to "
                "the process that holds a notebook session, and logging out "
                "does not close sessions in the other processes.",
                hint="Running more than one server process (uvicorn --workers, "
                "several daphne instances)? Use "
                "channels_redis.pubsub.RedisPubSubChannelLayer. Running exactly one? "
                "Silence this warning.",
                id="django_notebooks.W005",
            )
        ]
    return []


@_when_settings_load
def check_isolation(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W008: kernels in processes were asked for where there can be none."""
    from django_notebooks.kernels import router

    if conf.get_settings().ISOLATION != router.PROCESS or router.can_fork():
        return []
    return [
        Warning(
            'ISOLATION is "process", but this platform cannot fork: notebook '
            "kernels run as threads inside the server process.",
            hint="Set DJANGO_NOTEBOOKS['ISOLATION'] = \"thread\" to say so and "
            "silence this check. CELL_TIMEOUT and MEMORY_MB do nothing in "
            "thread mode, and a cell that crashes takes the server down "
            "(docs: topics/isolation).",
            id="django_notebooks.W008",
        )
    ]


@_when_settings_load
def check_anonymous_share(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W009: anonymous visitors may hold every session of a process."""
    limits = conf.get_settings().LIMITS
    server, anonymous = limits.MAX_SESSIONS, limits.MAX_ANONYMOUS_SESSIONS
    if server is None or (anonymous is not None and anonymous < server):
        return []
    return [
        Warning(
            f"LIMITS['MAX_ANONYMOUS_SESSIONS'] is {anonymous!r} and "
            f"LIMITS['MAX_SESSIONS'] is {server!r}: anonymous visitors may "
            "hold every session of a server process, and logged-in users are "
            "then told that the server is busy.",
            hint="Set MAX_ANONYMOUS_SESSIONS below MAX_SESSIONS (left out, "
            "it is half of MAX_SESSIONS). On a site without logins, silence "
            "this check (docs: topics/limits).",
            id="django_notebooks.W009",
        )
    ]


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Each key of DJANGO_NOTEBOOKS: known (E010), of its type (E015, E012 for
    FRONTEND), and marimo's options ones marimo takes (E011)."""
    try:
        project = conf.project_setting()
    except ImproperlyConfigured as error:
        return [
            Error(
                str(error),
                hint="DJANGO_NOTEBOOKS = {'NOTEBOOKS': {...}, ...}: see the "
                "settings reference.",
                id="django_notebooks.E015",
            )
        ]
    errors: list[CheckMessage] = []
    unknown = conf.unknown_keys()
    if unknown:
        errors.append(
            Error(
                f"DJANGO_NOTEBOOKS has unknown keys {unknown}.",
                hint=f"Known keys: {sorted(conf.KEYS)}. Check the spelling.",
                id="django_notebooks.E010",
            )
        )
    errors.extend(
        Error(problem.message, hint=problem.hint, id=problem.check_id)
        for problem in conf.problems()
    )
    marimo_options = project.get("MARIMO") or {}
    accepted = set(inspect.signature(marimo.create_asgi_app).parameters)
    unknown_options = (
        sorted(set(marimo_options) - accepted)
        if isinstance(marimo_options, dict)
        else []
    )
    if unknown_options:
        errors.append(
            Error(
                f"DJANGO_NOTEBOOKS['MARIMO'] has options marimo.create_asgi_app() "
                f"does not take: {unknown_options}.",
                hint=f"marimo {marimo.__version__} takes {sorted(accepted)}.",
                id="django_notebooks.E011",
            )
        )
    return errors


@_when_settings_load
def check_hooks(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Every dotted path the setting names for a function imports (E016);
    ``query`` options have their own check (E013)."""
    config = conf.get_settings()
    paths = [
        (f"DJANGO_NOTEBOOKS[{name!r}]", getattr(config, name))
        for name in ("USER_CONTEXT", "REQUEST_META")
    ]
    try:
        paths += [
            (f"{where}: 'access'", value) for where, value in _entry_options("access")
        ]
    except ImproperlyConfigured:
        pass  # E003 says it; the top-level hooks are still checked
    return [
        Error(
            f"{where} is {value!r}, {problem}",
            hint="Give the dotted path of a function, e.g. "
            "'myproject.notebooks.user_context', or the function itself.",
            id="django_notebooks.E016",
        )
        for where, value in paths
        if isinstance(value, str) and (problem := _hook_problem(value))
    ]


def _hook_problem(dotted_path: str) -> str | None:
    """What is wrong with a dotted path that should name a function."""
    try:
        target = conf.import_object(dotted_path)
    except Exception as error:  # an import may fail in any way
        return f"which cannot be imported: {error}"
    if not callable(target):
        return f"which names {type(target).__name__}, not a function."
    return None


FRONTEND_FINDER = "django_notebooks.finders.MarimoFrontendFinder"


@_when_settings_load
def check_frontend(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """The staticfiles finder that FRONTEND = "staticfiles" needs (W006);
    the value itself is check_settings' (E012)."""
    finders = getattr(settings, "STATICFILES_FINDERS", [])
    if conf.get_settings().FRONTEND == "staticfiles" and FRONTEND_FINDER not in finders:
        return [
            Warning(
                "FRONTEND is 'staticfiles' but collectstatic will not find "
                "marimo's frontend.",
                hint=f"Add {FRONTEND_FINDER!r} to STATICFILES_FINDERS.",
                id="django_notebooks.W006",
            )
        ]
    return []


@_when_settings_load
def check_snapshots(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """The ``snapshot`` and ``static`` options (snapshots/)."""
    try:
        notebooks = registry.all_notebooks()
    except ImproperlyConfigured:
        return []  # check_notebooks says why
    errors: list[CheckMessage] = []
    alias = conf.get_settings().SNAPSHOT_STORAGE
    if any(notebook.snapshot for notebook in notebooks):
        try:
            storages[alias]
        except ImproperlyConfigured as error:
            errors.append(
                Error(
                    f"SNAPSHOT_STORAGE names the storage {alias!r}, which Django "
                    f"cannot give: {error}",
                    hint="Name a storage of the STORAGES setting, or leave "
                    'SNAPSHOT_STORAGE unset for "default".',
                    id="django_notebooks.E023",
                )
            )
    for notebook in notebooks:
        where = f"Notebook {notebook.slug!r}"
        if notebook.static and notebook.snapshot is None:
            errors.append(
                Error(
                    f"{where} is static but has no 'snapshot' option: its page "
                    "is its snapshot.",
                    hint='Add e.g. "snapshot": {"refresh": 600}.',
                    id="django_notebooks.E019",
                )
            )
        if notebook.snapshot is None:
            continue
        for label in notebook.snapshot.models:
            try:
                apps.get_model(label)
            except (LookupError, ValueError):
                errors.append(
                    Error(
                        f"{where}: snapshot model {label!r} is not an installed model.",
                        hint="Name models as 'app_label.ModelName', e.g. 'shop.Order'.",
                        id="django_notebooks.E020",
                    )
                )
        if notebook.snapshot.as_user is None and visitor.reads_the_visitor(
            notebook.path
        ):
            errors.append(
                Error(
                    f"{where} has a snapshot, but its cells read the visitor "
                    "(mo.app_meta(), mo.query_params() or mo.cli_args()): every "
                    "viewer would see a page made for nobody.",
                    hint="Set snapshot's 'as_user' to the username whose view "
                    "every viewer may see, or remove the 'snapshot' option.",
                    id="django_notebooks.E021",
                )
            )
        if notebook.static and notebook.query is not None:
            errors.append(
                Error(
                    f"{where} is static but has a 'query' option: its page is "
                    "the same for every query.",
                    hint="Remove 'query', or 'static' (the snapshot then shows "
                    "first and the kernel reads the query).",
                    id="django_notebooks.E022",
                )
            )
    return errors


def register_checks() -> None:
    """Register every check with Django's framework (``AppConfig.ready``).
    Registering twice is harmless: the framework keeps a set."""
    for check in (
        check_installation,
        check_marimo_version,
        check_notebooks,
        check_query_options,
        check_channel_layer,
        check_isolation,
        check_anonymous_share,
        check_settings,
        check_hooks,
        check_snapshots,
    ):
        register(check, Tags.compatibility)
    register(check_websocket_stack, Tags.security)
    register(check_frontend, Tags.staticfiles)
