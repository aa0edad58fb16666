"""``manage.py notebooks list | check | export | snapshot | kernel-host``:
the served notebooks from the command line, and the machine's kernel host
as a service of its own.

``snapshot`` makes notebooks' snapshots now (see
:mod:`django_notebooks.snapshots.keeper`), in this process.

``check`` and ``export`` run notebooks headless, each in its own process
(see :mod:`django_notebooks.marimo.headless`). ``kernel-host`` becomes the
kernel host of this project and code (see
:mod:`django_notebooks.kernels.forking`), for a systemd unit or a container
of its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import NoReverseMatch, reverse

from django_notebooks import registry
from django_notebooks.kernels import forking, forkserver, location, router
from django_notebooks.marimo import headless
from django_notebooks.registry import Notebook
from django_notebooks.snapshots import keeper

# What a notebook that reads `mo.app_meta().request.user` without a guard
# raises in a headless run, where the request is None.
NO_REQUEST_SYMPTOM = "'NoneType' object has no attribute"


class Command(BaseCommand):
    help = "List the notebooks this project serves, check that they run, export them."

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(
            dest="subcommand",
            metavar="{list,check,export,snapshot,kernel-host}",
            required=True,
        )
        listing = subcommands.add_parser(
            "list",
            help="Every notebook with its slug, title, URL, access rules and file.",
        )
        listing.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Print a JSON list instead of a table.",
        )
        checking = subcommands.add_parser(
            "check",
            help="Run notebooks headless and report the cells that fail "
            "(exit status 1 if any does).",
        )
        checking.add_argument(
            "slugs",
            nargs="*",
            metavar="slug",
            help="Notebooks to check: slugs, or directory keys for all the "
            "notebooks of a directory. Default: every notebook.",
        )
        checking.add_argument(
            "--timeout",
            type=float,
            default=120,
            help="Seconds one notebook may run before it counts as failed "
            "(default: 120).",
        )
        # Also after the subcommand, where people put it ("check -v 2");
        # SUPPRESS keeps the main parser's value when it is not given here.
        checking.add_argument(
            "-v",
            "--verbosity",
            type=int,
            choices=[0, 1, 2, 3],
            default=argparse.SUPPRESS,
            help="2 prints marimo's output and the tracebacks of failing cells.",
        )
        exporting = subcommands.add_parser(
            "export", help="Write a static HTML snapshot of a notebook's outputs."
        )
        exporting.add_argument("slug", help="The notebook, e.g. sales or lab/demo.")
        exporting.add_argument(
            "-o",
            "--output",
            type=Path,
            help="The HTML file to write (default: <slug>.html in the current "
            "directory, '/' in the slug replaced by '-').",
        )
        exporting.add_argument(
            "--include-code",
            action="store_true",
            default=None,
            help="Show the notebook's code (default: as the MARIMO setting's "
            "include_code, off unless set).",
        )
        exporting.add_argument(
            "--no-include-code", dest="include_code", action="store_false"
        )
        exporting.add_argument(
            "--timeout",
            type=float,
            default=300,
            help="Seconds the notebook may run (default: 300).",
        )
        snapshotting = subcommands.add_parser(
            "snapshot",
            help="Make the snapshots of notebooks with a 'snapshot' option now "
            "(exit status 1 if one fails; the old one stays served).",
        )
        snapshotting.add_argument(
            "slugs",
            nargs="*",
            metavar="slug",
            help="Notebooks (or directory keys). Default: every notebook with "
            "a 'snapshot' option.",
        )
        hosting = subcommands.add_parser(
            "kernel-host",
            help="Run this project's kernel host in the foreground, as a service "
            "of its own (a systemd unit, a container): the server processes "
            "of the machine use it instead of starting one.",
        )
        hosting.add_argument(
            "--grace",
            type=float,
            default=None,
            help="End, with its kernels, once no server process has used it for "
            "this many seconds (default: run until stopped, by SIGTERM).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["subcommand"].replace("-", "_")
        try:
            getattr(self, f"handle_{name}")(**options)
        except ImproperlyConfigured as error:
            raise CommandError(
                f"{error} (run 'manage.py check' for the configuration errors)"
            ) from error

    # kernel-host

    def handle_kernel_host(self, *, grace: float | None, **options: Any) -> None:
        if router.isolation() != router.PROCESS:
            raise CommandError(
                'Kernels run as threads in the server (ISOLATION = "thread", or '
                "a platform that cannot fork): there is no kernel host to run."
            )
        self.stdout.write(f"Kernel host of this project: {location.host_socket()}")
        self.stdout.flush()
        _run_kernel_host(grace)

    # list

    def handle_list(self, *, as_json: bool, **options: Any) -> None:
        notebooks = registry.all_notebooks()
        if as_json:
            self.stdout.write(json.dumps([describe(nb) for nb in notebooks], indent=2))
            return
        if not notebooks:
            self.stdout.write("No notebooks: DJANGO_NOTEBOOKS lists none.")
            return
        rows = [("SLUG", "TITLE", "URL", "ACCESS", "FILE")]
        for notebook in notebooks:
            file = str(notebook.path)
            if not Path(notebook.path).is_file():
                file += " (missing)"
            rows.append(
                (
                    notebook.slug,
                    notebook.title,
                    notebook_url(notebook) or "(not routed)",
                    access_summary(notebook),
                    file,
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        for index, row in enumerate(rows):
            line = "  ".join(
                [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
                + [row[4]]
            )
            self.stdout.write(self.style.MIGRATE_HEADING(line) if index == 0 else line)

    # check

    def handle_check(
        self, *, slugs: list[str], timeout: float, verbosity: int, **options: Any
    ) -> None:
        notebooks = self._select(slugs)
        if timeout <= 0:
            raise CommandError("--timeout must be a positive number of seconds.")
        self.stdout.write(
            f"Checking {_plural(len(notebooks), 'notebook')} "
            f"(at most {timeout:g} s each)..."
        )
        failed = []
        for notebook in notebooks:
            self.stdout.write(f"{notebook.slug} ... ", ending="")
            self.stdout.flush()
            run = headless.check(notebook, timeout=timeout)
            if run.ok:
                self.stdout.write(self.style.SUCCESS(f"ok ({run.seconds:.1f} s)"))
                continue
            failed.append((notebook, run))
            self.stdout.write(self.style.ERROR(f"FAILED ({run.seconds:.1f} s)"))
            for failure in run.failures:
                message = failure.message.replace("\n", "\n    ")
                self.stdout.write(f"  {failure.cell}: {message}")
            if verbosity >= 2 and run.output.strip():
                self.stdout.write("  marimo's output:")
                self.stdout.write("    " + run.output.strip().replace("\n", "\n    "))
        if any(
            NO_REQUEST_SYMPTOM in failure.message
            for _, run in failed
            for failure in run.failures
        ):
            self.stdout.write(
                self.style.NOTICE(
                    "Note: a headless run has no request, so "
                    "mo.app_meta().request is None. Read it as "
                    "`request = mo.app_meta().request` and handle None."
                )
            )
        if failed:
            raise CommandError(
                f"{len(failed)} of {_plural(len(notebooks), 'notebook')} failed: "
                + ", ".join(notebook.slug for notebook, _ in failed)
                + (" (run with -v 2 for the tracebacks)" if verbosity < 2 else "")
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"{_plural(len(notebooks), 'notebook')} ran without errors."
            )
        )

    # snapshot

    def handle_snapshot(self, *, slugs: list[str], **options: Any) -> None:
        notebooks = self._select(slugs) if slugs else keeper.snapshot_notebooks()
        without = [notebook.slug for notebook in notebooks if not notebook.snapshot]
        if without and slugs:
            raise CommandError(
                f"No 'snapshot' option: {', '.join(without)}. Add one to the "
                "notebook's entry in DJANGO_NOTEBOOKS."
            )
        failed = []
        for notebook in notebooks:
            if not notebook.snapshot:
                continue
            self.stdout.write(f"{notebook.slug} ... ", ending="")
            self.stdout.flush()
            row = keeper.make_now(notebook, reason="command")
            if row is None:
                self.stdout.write("being made by another process")
            elif row.last_error:
                failed.append(notebook.slug)
                self.stdout.write(self.style.ERROR(f"FAILED: {row.last_error}"))
            else:
                self.stdout.write(
                    self.style.SUCCESS(f"made ({row.seconds:.1f} s, {row.size} bytes)")
                )
        if failed:
            raise CommandError(
                f"{_plural(len(failed), 'snapshot')} could not be made: "
                + ", ".join(failed)
            )
        if not notebooks:
            self.stdout.write("No notebook has a 'snapshot' option.")

    def _select(self, slugs: list[str]) -> list[Notebook]:
        if not slugs:
            return registry.all_notebooks()
        selected: dict[str, Notebook] = {}
        directories = registry.directories()
        for slug in slugs:
            slug = slug.strip("/")
            if slug in directories and slug not in registry.explicit_notebooks():
                for notebook in registry.directory_notebooks(slug):
                    selected.setdefault(notebook.slug, notebook)
                continue
            selected.setdefault(slug, self._get(slug))
        return list(selected.values())

    def _get(self, slug: str) -> Notebook:
        notebook = registry.get_notebook(slug.strip("/"))
        if notebook is None:
            known = ", ".join(nb.slug for nb in registry.all_notebooks()) or "none"
            raise CommandError(
                f"No notebook {slug!r}. Known notebooks: {known} "
                "(see 'manage.py notebooks list')."
            )
        return notebook

    # export

    def handle_export(
        self,
        *,
        slug: str,
        output: Path | None,
        include_code: bool | None,
        timeout: float,
        **options: Any,
    ) -> None:
        notebook = self._get(slug)
        destination = output or Path(f"{notebook.slug.replace('/', '-')}.html")
        try:
            path = headless.export_html(
                notebook, destination, timeout=timeout, include_code=include_code
            )
        except headless.CellsFailed as error:
            for failure in error.failures:
                self.stderr.write(f"  {failure.cell}: {failure.message}")
            raise CommandError(
                f"Wrote {error.path}, but {_plural(len(error.failures), 'cell')} "
                "failed: the page shows their errors."
            ) from error
        except headless.HeadlessError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(self.style.SUCCESS(f"Wrote {path}"))


def describe(notebook: Notebook) -> dict[str, Any]:
    """A notebook as plain data, for ``list --json``."""
    return {
        "slug": notebook.slug,
        "title": notebook.title,
        "description": notebook.description,
        "file": str(notebook.path),
        "file_exists": Path(notebook.path).is_file(),
        "directory": notebook.directory,
        "url": notebook_url(notebook),
        "public": notebook.public,
        "login_required": notebook.requires_login,
        "groups": list(notebook.groups),
        "permissions": list(notebook.permissions),
        "access": _callable_name(notebook.access),
    }


def access_summary(notebook: Notebook) -> str:
    """``public``, or ``login`` and the rules on top of it."""
    if notebook.public:
        return "public"
    rules = ["login"]
    if notebook.groups:
        rules.append("groups: " + ", ".join(notebook.groups))
    if notebook.permissions:
        rules.append("permissions: " + ", ".join(notebook.permissions))
    if notebook.access:
        rules.append(f"access: {_callable_name(notebook.access)}")
    return "; ".join(rules)


def notebook_url(notebook: Notebook) -> str | None:
    """The notebook's page path, or None if urls.py does not include ours."""
    try:
        return reverse("django_notebooks:notebook", args=[notebook.slug])
    except NoReverseMatch:
        return None


def _run_kernel_host(grace: float | None) -> NoReturn:
    """Become the kernel host of this project and code (never returns):
    its socket is bound here, under the lock web processes take to start
    one, so that none starts another meanwhile; then this process is the
    host (``exec``), for SIGTERM to reach it."""
    try:
        path = location.host_socket()
    except location.UnsafeFolder as error:
        raise CommandError(str(error)) from None
    with forking.locked(location.lock_file()):
        running = forking.connect(path)
        if running is not None:
            running.close()
            raise CommandError(
                f"A kernel host already runs for this project and code: {path}"
            )
        listener = forkserver.listen(str(path))
    os.set_inheritable(listener.fileno(), True)
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            forking.SERVER_MODULE,
            str(path),
            forkserver.GRACE,
            str(math.inf if grace is None else grace),
            *forking.spare_options(),
            forkserver.LISTENING,
            str(listener.fileno()),
        ],
    )


def _callable_name(access: Any) -> str | None:
    if access is None or isinstance(access, str):
        return access
    module = getattr(access, "__module__", None)
    name = getattr(access, "__qualname__", None) or repr(access)
    return f"{module}.{name}" if module else name


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
