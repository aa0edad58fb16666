"""Where a web process finds its machine's kernel host: a Unix socket in a
private folder, named for the project and for the code it runs.

Every web process of one project on one machine (same settings module,
same database, same user) computes the same name, and so shares one host.
A deploy that changes the code (any Python file of the project's installed
apps, its settings, or the versions of Django, Channels, marimo and this
package) gives a new name: new sessions run in a new host, forked from the
new code, while the old host keeps the sessions that started on the old
code until they end (docs: topics/deployment).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from django.apps import apps
from django.conf import settings

FOLDER_PREFIX = "django-notebooks-hosts-"
# Folders below an app that hold no code of its own.
SKIPPED_FOLDERS = frozenset(
    {"node_modules", "__pycache__", "static", "templates", "locale", "venv"}
)
# Python files looked at, at most, per app (a project at its repository's
# root must not make every web process read a whole tree).
MAX_FILES_PER_APP = 2000
PACKAGES = ("django", "channels", "marimo", "django-notebooks")


class UnsafeFolder(RuntimeError):
    """The hosts' folder exists, but is not this user's alone."""


def host_folder() -> Path:
    """The private folder of this user's kernel hosts (``0700``), made if
    needed; :class:`UnsafeFolder` if another user could reach into it."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    folder = base / f"{FOLDER_PREFIX}{os.getuid()}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = folder.lstat()
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or info.st_mode & 0o077
    ):
        raise UnsafeFolder(
            f"{folder} must be a folder of user {os.getuid()} that no one "
            "else may read or write (mode 0700)"
        )
    return folder


def project_key() -> str:
    """The same for every web process of this project on this machine: its
    settings module and its database. (Not its folder: a deploy into a new
    release folder is the same project, and must find its sessions.)"""
    database = settings.DATABASES.get("default", {})
    parts = [
        os.environ.get("DJANGO_SETTINGS_MODULE", ""),
        str(database.get("ENGINE", "")),
        str(database.get("NAME", "")),
        str(database.get("HOST", "")),
    ]
    return _digest(parts)


@functools.cache
def code_key() -> str:
    """Changes with the code every kernel runs: the Python files of the
    installed apps and of the settings, and the versions of the packages
    the kernels import. Read once per web process: the code it runs."""
    parts = [sys.version]
    for name in PACKAGES:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} -")
    files: set[Path] = set()
    for app in apps.get_app_configs():
        files.update(_python_files(Path(app.path)))
    # Notebooks are not the kernels' code: each session reads its own file
    # when it starts (an edited notebook runs in the next session).
    files -= _notebook_files()
    settings_module = sys.modules.get(os.environ.get("DJANGO_SETTINGS_MODULE", ""))
    if settings_module is not None and getattr(settings_module, "__file__", None):
        files.add(Path(settings_module.__file__).resolve())  # type: ignore[arg-type]
    for path in sorted(files):
        try:
            info = path.stat()
        except OSError:
            continue
        parts.append(f"{path} {info.st_mtime_ns} {info.st_size}")
    return _digest(parts)


def _notebook_files() -> set[Path]:
    from django_notebooks import registry

    try:
        notebooks = registry.all_notebooks()
    except Exception:  # a setting the checks report: nothing to leave out
        return set()
    return {Path(notebook.path).resolve() for notebook in notebooks}


def host_socket() -> Path:
    """The socket of the kernel host for this project and this code."""
    return host_folder() / f"{project_key()}-{code_key()}.sock"


def code_of(socket: Path) -> str:
    """The code key in a host's socket name."""
    return socket.stem.rpartition("-")[2]


def older_hosts() -> list[Path]:
    """The sockets of this project's other kernel hosts on this machine
    (running older code, or left by a host that was killed), newest first."""
    own = host_socket()
    found = [path for path in own.parent.glob(f"{project_key()}-*.sock") if path != own]
    return sorted(found, key=_modified, reverse=True)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def lock_file() -> Path:
    """Held while a web process starts the project's kernel host, so that
    two starting at once make one."""
    return host_folder() / f"{project_key()}.lock"


def _python_files(root: Path) -> Iterator[Path]:
    count = 0
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".") and name not in SKIPPED_FOLDERS
        ]
        for name in names:
            if name.endswith(".py"):
                count += 1
                if count > MAX_FILES_PER_APP:
                    return
                # Resolved: a link to a notebook is that notebook.
                yield (Path(folder) / name).resolve()


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
