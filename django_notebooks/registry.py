"""Which notebooks exist, where their files are and who may open them.

Notebooks come from two places in the ``DJANGO_NOTEBOOKS`` setting:

- ``NOTEBOOKS``: explicit entries, served at ``<slug>/``;
- ``DIRECTORIES``: every marimo notebook in a directory, served at
  ``<key>/<file stem>/`` and picked up without a restart.

A URL location (what follows the prefix the project chose in its urls.py) is
turned into a notebook and the sub-path below it by :func:`locate`. Anything
that is not plainly a notebook of ours is ``None``: traversal, hidden or
private names, non-``.py`` files and symlinks that leave the directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from django_notebooks import conf, limits

# A slug or file stem: no dots (so no traversal, no hidden files), no leading
# underscore (marimo's convention for private modules), no slashes.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
ACCESS_KEYS = ("public", "groups", "permissions", "access")
ENTRY_KEYS = frozenset(
    {
        "path",
        "title",
        "description",
        "query",
        "limits",
        "pre_run",
        "snapshot",
        "static",
        *ACCESS_KEYS,
    }
)
SNAPSHOT_KEYS = frozenset({"refresh", "models", "as_user"})

# The type of each option but "path" and "query" (check E013 tries those).
# A string where a list belongs would be read letter by letter.
ENTRY_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "title": (lambda value: isinstance(value, str), "a string"),
    "description": (lambda value: isinstance(value, str), "a string"),
    "public": (conf.is_bool, "True or False"),
    "groups": (conf.is_name_list, 'a list of group names, e.g. ["analysts"]'),
    "permissions": (
        conf.is_name_list,
        'a list of permissions, e.g. ["sales.view_order"]',
    ),
    "access": (conf.is_hook, "a function (user, notebook) -> bool, or its dotted path"),
    "pre_run": (conf.is_bool, "True or False"),
    "static": (conf.is_bool, "True or False"),
    "snapshot": (
        lambda value: not _snapshot_problems(value),
        '{"refresh": seconds or None, "models": ["app_label.Model", ...], '
        '"as_user": "username"} (every key optional)',
    ),
}


# How much of a file is read to tell whether it is a marimo notebook.
MARKER_READ_BYTES = 256 * 1024


@dataclass(frozen=True)
class SnapshotOptions:
    """A notebook's ``snapshot`` option: when its snapshot is made again
    (snapshots/: the page made ahead, shown before or instead of a kernel)."""

    #: Seconds after which the snapshot is made again (None: only when a
    #: model changes, the file changes, or someone asks).
    refresh: float | None = None
    #: ``app_label.Model`` names whose saves and deletes make it again.
    models: tuple[str, ...] = ()
    #: The username the snapshot is made as (every viewer sees what this
    #: user would); None: made with nobody signed in.
    as_user: str | None = None


def _snapshot_problems(value: Any) -> list[str]:
    """What is wrong with a ``snapshot`` option's value (empty: nothing)."""
    if not isinstance(value, Mapping):
        return ["it must be a dict"]
    found = []
    unknown = set(value) - SNAPSHOT_KEYS
    if unknown:
        found.append(f"unknown keys {sorted(unknown)}")
    refresh = value.get("refresh")
    if refresh is not None and not conf.is_positive_number(refresh):
        found.append("'refresh' must be a positive number of seconds or None")
    if "models" in value and not conf.is_name_list(value["models"]):
        found.append("'models' must be a list of 'app_label.Model' names")
    as_user = value.get("as_user")
    if as_user is not None and not (isinstance(as_user, str) and as_user):
        found.append("'as_user' must be a username")
    return found


def _snapshot_options(value: Mapping[str, Any] | None) -> SnapshotOptions | None:
    if value is None:
        return None
    refresh = value.get("refresh")
    return SnapshotOptions(
        refresh=float(refresh) if refresh is not None else None,
        models=tuple(value.get("models", ())),
        as_user=value.get("as_user"),
    )


@dataclass(frozen=True)
class Notebook:
    """A notebook the project serves."""

    slug: str
    path: Path
    title: str
    description: str = ""
    public: bool = False
    groups: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    # A dotted path to, or a callable(user, notebook) -> bool.
    access: Any = None
    # A Form or pydantic model (or its dotted path) for the page's query
    # parameters; see query.py.
    query: Any = None
    directory: str | None = field(default=None, compare=False)
    # The entry's ``limits`` option: per-session limits over the project's.
    limits: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # Whether spare kernels may run it before a visitor comes, when its
    # cells do not read the visitor (marimo/visitor.py).
    pre_run: bool = field(default=True, compare=False)
    # When a snapshot of its outputs is made (None: never); with ``static``
    # the snapshot is its page, and no kernel runs for visitors.
    snapshot: SnapshotOptions | None = field(default=None, compare=False)
    static: bool = field(default=False, compare=False)

    @property
    def requires_login(self) -> bool:
        return not self.public


@dataclass(frozen=True)
class Location:
    """A notebook and the part of the URL below its page."""

    notebook: Notebook
    subpath: str
    # False when the URL named the notebook without its trailing slash.
    has_slash: bool = True

    def mount(self, path: str) -> str:
        """The URL of the notebook's page within ``path``, the full URL path
        of a request at this location (what marimo's app is mounted at)."""
        return path[: len(path) - len(self.subpath)]


def _entry_options(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, str | Path):
        return {"path": Path(value)}
    if isinstance(value, Mapping):
        unknown = set(value) - ENTRY_KEYS
        if unknown:
            raise ImproperlyConfigured(
                f"DJANGO_NOTEBOOKS entry {name!r} has unknown keys "
                f"{sorted(unknown)}; allowed keys are {sorted(ENTRY_KEYS)}."
            )
        if "path" not in value:
            raise ImproperlyConfigured(
                f"DJANGO_NOTEBOOKS entry {name!r} needs a 'path' key."
            )
        for key, (is_valid, expected) in ENTRY_RULES.items():
            if key in value and not is_valid(value[key]):
                raise ImproperlyConfigured(
                    f"DJANGO_NOTEBOOKS entry {name!r}: {key!r} is "
                    f"{value[key]!r}; use {expected}."
                )
        wrong_limits = limits.problems(
            value.get("limits", {}),
            where=f"DJANGO_NOTEBOOKS entry {name!r}: 'limits'",
            allowed=limits.SESSION_LIMITS,
        )
        if wrong_limits:
            raise ImproperlyConfigured(" ".join(wrong_limits))
        return {**value, "path": Path(value["path"])}
    raise ImproperlyConfigured(
        f"DJANGO_NOTEBOOKS entry {name!r} must be a path or a dict with a "
        f"'path' key, not {type(value).__name__}."
    )


def _title_from(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip().capitalize()


def _notebook(
    slug: str, path: Path, options: Mapping[str, Any], directory: str | None = None
) -> Notebook:
    stem = slug.rsplit("/", 1)[-1]
    return Notebook(
        slug=slug,
        path=path,
        title=options.get("title") or _title_from(stem),
        description=options.get("description", ""),
        public=bool(options.get("public", False)),
        groups=tuple(options.get("groups", ())),
        permissions=tuple(options.get("permissions", ())),
        access=options.get("access"),
        query=options.get("query"),
        directory=directory,
        limits=dict(options.get("limits") or {}),
        pre_run=bool(options.get("pre_run", True)),
        snapshot=_snapshot_options(options.get("snapshot")),
        static=bool(options.get("static", False)),
    )


def limits_of(notebook: Notebook) -> limits.Limits:
    """The limits each session of ``notebook`` runs under: the project's
    ``LIMITS`` with the notebook's own ``limits`` over them."""
    return limits.with_option(conf.get_settings().LIMITS, notebook.limits)


@conf.per_setting
def explicit_notebooks() -> dict[str, Notebook]:
    """The ``NOTEBOOKS`` entries, by slug."""
    notebooks = {}
    for slug, value in conf.get_settings().NOTEBOOKS.items():
        options = _entry_options(slug, value)
        notebooks[slug] = _notebook(slug, options["path"], options)
    return notebooks


@conf.per_setting
def directories() -> dict[str, dict[str, Any]]:
    """The ``DIRECTORIES`` entries, by key, as option dicts."""
    return {
        key: _entry_options(key, value)
        for key, value in conf.get_settings().DIRECTORIES.items()
    }


_marker_cache: dict[Path, tuple[int, bool]] = {}


def is_marimo_notebook(path: Path) -> bool:
    """Whether a file looks like a marimo notebook (it defines ``marimo.App``).

    The answer is remembered until the file changes, so that requests below a
    directory notebook do not read its file each time.
    """
    try:
        mtime = path.stat().st_mtime_ns
        cached = _marker_cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        with path.open("rb") as file:
            answer = b"marimo.App(" in file.read(MARKER_READ_BYTES)
    except OSError:
        return False
    _marker_cache[path] = (mtime, answer)
    return answer


def _directory_notebook(
    key: str, options: Mapping[str, Any], name: str
) -> Notebook | None:
    if not NAME_PATTERN.fullmatch(name):
        return None
    directory = Path(options["path"])
    candidate = directory / f"{name}.py"
    try:
        resolved = candidate.resolve(strict=True)
        # Symlinks may point anywhere: only files that really live inside
        # the directory are served.
        resolved.relative_to(directory.resolve(strict=True))
    except (OSError, ValueError, RuntimeError):
        return None
    if not resolved.is_file() or not is_marimo_notebook(resolved):
        return None
    # A directory's access rules apply to each of its notebooks; its title
    # and description describe the directory, not each notebook.
    rules = {k: v for k, v in options.items() if k not in ("title", "description")}
    return _notebook(f"{key}/{name}", resolved, rules, directory=key)


def directory_notebooks(key: str) -> Iterator[Notebook]:
    """The notebooks currently in one of the ``DIRECTORIES``, sorted by name."""
    options = directories()[key]
    try:
        names = sorted(p.stem for p in Path(options["path"]).glob("*.py"))
    except OSError:
        return
    for name in names:
        notebook = _directory_notebook(key, options, name)
        if notebook is not None:
            yield notebook


def all_notebooks() -> list[Notebook]:
    """Every notebook the project serves right now, in settings order."""
    notebooks = list(explicit_notebooks().values())
    for key in directories():
        notebooks.extend(directory_notebooks(key))
    return notebooks


def get_notebook(slug: str) -> Notebook | None:
    """The notebook with this slug (``name`` or ``directory/name``), if any."""
    location = locate(f"{slug}/")
    if location is None or location.subpath:
        return None
    return location.notebook


def locate(location: str) -> Location | None:
    """Split a URL location into a notebook and the sub-path below its page.

    ``location`` is the decoded URL path below the prefix where the project
    included ``django_notebooks.urls``, e.g. ``"sales/"``,
    ``"sales/api/kernel/set_ui_element_value"`` or ``"lab/demo/ws"``.
    """
    segments = location.split("/")
    # "." and ".." mean nothing to marimo: refusing them here keeps every
    # request inside the notebook the access decision was made for.
    if any(segment in (".", "..") or "\\" in segment for segment in segments):
        return None
    first = segments[0]
    explicit = explicit_notebooks()
    if first in explicit:
        notebook, rest = explicit[first], segments[1:]
    else:
        options = directories().get(first)
        if options is None or len(segments) < 2:
            return None
        in_directory = _directory_notebook(first, options, segments[1])
        if in_directory is None:
            return None
        notebook, rest = in_directory, segments[2:]
    if not rest:
        return Location(notebook, "", has_slash=False)
    return Location(notebook, "/".join(rest))
