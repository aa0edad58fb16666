"""``manage.py notebooks list | check | export`` and the headless runs behind
them (:mod:`django_notebooks.marimo.headless`), with real marimo processes."""

from __future__ import annotations

import json
import os
import shutil
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from django_notebooks import registry
from django_notebooks.marimo import headless
from tests.settings import DJANGO_NOTEBOOKS, NOTEBOOKS_DIR

ROOT = NOTEBOOKS_DIR.parent.parent
BROKEN = NOTEBOOKS_DIR / "broken.py"
WITH_BROKEN = {
    **DJANGO_NOTEBOOKS,
    "NOTEBOOKS": {**DJANGO_NOTEBOOKS["NOTEBOOKS"], "broken": BROKEN},
}
# For list when the project's urls.py does not include ours.
urlpatterns: list = []


def notebooks(*args: str) -> tuple[str, str]:
    """Run ``manage.py notebooks <args>``; its stdout and stderr."""
    out, err = StringIO(), StringIO()
    call_command("notebooks", *args, stdout=out, stderr=err, no_color=True)
    return out.getvalue(), err.getvalue()


def failing(*args: str) -> tuple[CommandError, str, str]:
    """Run a ``manage.py notebooks`` command that must fail; its error,
    stdout and stderr."""
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("notebooks", *args, stdout=out, stderr=err, no_color=True)
    return raised.value, out.getvalue(), err.getvalue()


def notebook_file(directory: Path, name: str, body: str) -> Path:
    """A one-cell marimo notebook (the cell's body indented by the caller)."""
    path = directory / f"{name}.py"
    path.write_text(
        "import marimo\n\napp = marimo.App()\n\n\n@app.cell\ndef _():\n"
        f"{body}\n    return\n"
    )
    return path


def a_rule(user, notebook):
    return True


# list


def test_list_shows_every_notebook_with_its_url_access_and_file():
    out, _ = notebooks("list")
    lines = out.splitlines()
    assert lines[0].split() == ["SLUG", "TITLE", "URL", "ACCESS", "FILE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == [nb.slug for nb in registry.all_notebooks()]
    assert rows["square"].split() == [
        "square",
        "Square",
        "/notebooks/square/",
        "login",
        str(NOTEBOOKS_DIR / "square.py"),
    ]
    assert "/notebooks/hello/" in rows["hello"] and " public " in rows["hello"]
    assert "login; groups: sales" in rows["sales"]
    assert "login; permissions: auth.view_user, auth.change_user" in rows["report"]
    assert "login; access: tests.access_rules.is_ops" in rows["ops"]
    # A notebook found in a directory.
    assert rows["lab/demo"].split()[:4] == [
        "lab/demo",
        "Demo",
        "/notebooks/lab/demo/",
        "login",
    ]


def test_list_json():
    out, _ = notebooks("list", "--json")
    entries = {entry["slug"]: entry for entry in json.loads(out)}
    assert list(entries) == [nb.slug for nb in registry.all_notebooks()]
    assert entries["report"] == {
        "slug": "report",
        "title": "Report",
        "description": "",
        "file": str(NOTEBOOKS_DIR / "whoami.py"),
        "file_exists": True,
        "directory": None,
        "url": "/notebooks/report/",
        "public": False,
        "login_required": True,
        "groups": [],
        "permissions": ["auth.view_user", "auth.change_user"],
        "access": None,
    }
    assert entries["hello"]["public"] is True
    assert entries["hello"]["login_required"] is False
    assert entries["sales"]["groups"] == ["sales"]
    assert entries["ops"]["access"] == "tests.access_rules.is_ops"
    assert entries["lab/demo"]["directory"] == "lab"


@override_settings(
    DJANGO_NOTEBOOKS={
        "NOTEBOOKS": {
            "gone": NOTEBOOKS_DIR / "gone.py",
            "ruled": {"path": NOTEBOOKS_DIR / "square.py", "access": a_rule},
        }
    }
)
def test_list_marks_missing_files_and_names_access_callables():
    out, _ = notebooks("list")
    assert f"{NOTEBOOKS_DIR / 'gone.py'} (missing)" in out
    assert "access: tests.test_commands.a_rule" in out
    entries = json.loads(notebooks("list", "--json")[0])
    assert [e["file_exists"] for e in entries] == [False, True]
    assert entries[1]["access"] == "tests.test_commands.a_rule"


@override_settings(ROOT_URLCONF="tests.test_commands")
def test_list_without_our_urls():
    out, _ = notebooks("list")
    assert "(not routed)" in out
    assert json.loads(notebooks("list", "--json")[0])[0]["url"] is None


@override_settings(DJANGO_NOTEBOOKS={})
def test_list_with_no_notebooks():
    assert "No notebooks" in notebooks("list")[0]
    assert json.loads(notebooks("list", "--json")[0]) == []


@override_settings(DJANGO_NOTEBOOKS={"NOTEBOOKS": {"sq": {"pth": "x.py"}}})
def test_a_bad_setting_is_a_command_error():
    with pytest.raises(CommandError, match=r"'pth'.*manage\.py check"):
        notebooks("list")


# check


def test_check_passes_notebooks_that_read_the_request_and_expands_directories():
    # whoami and square read mo.app_meta().request.user, which is None here.
    out, _ = notebooks("check", "square", "whoami", "lab")
    assert "Checking 3 notebooks" in out
    for slug in ("square", "whoami", "lab/demo"):
        assert f"\n{slug} ... ok (" in out
    assert "3 notebooks ran without errors." in out


@override_settings(DJANGO_NOTEBOOKS=WITH_BROKEN)
def test_check_reports_each_failing_cell_and_exits_non_zero():
    error, out, _ = failing("check", "hello", "broken")
    assert error.returncode == 1  # manage.py's exit status
    assert str(error) == (
        "1 of 2 notebooks failed: broken (run with -v 2 for the tracebacks)"
    )
    assert "\nhello ... ok (" in out
    assert "\nbroken ... FAILED (" in out
    # Named cells by name, others by position in the file (the setup block
    # and the @app.function count).
    assert "  divide: ZeroDivisionError: float division by zero\n" in out
    assert "  cell 5: An ancestor raised an exception (ZeroDivisionError)" in out
    assert "  cell 6: ValueError: this cell fails on its own\n" in out
    assert "cell 7" not in out  # the cell that works
    assert "Traceback" not in out
    assert "mo.app_meta().request is None" not in out


@override_settings(DJANGO_NOTEBOOKS=WITH_BROKEN)
def test_check_verbosity_2_shows_the_tracebacks():
    _, out, _ = failing("check", "broken", "-v", "2")
    assert "Traceback (most recent call last)" in out
    assert 'raise ValueError("this cell fails on its own")' in out
    assert "ratio = math.pi / 0" in out


def test_check_unknown_slug_runs_nothing():
    error, out, _ = failing("check", "square", "nope")
    assert "No notebook 'nope'" in str(error)
    assert "square, hello" in str(error)  # the known ones
    assert out == ""


@pytest.mark.parametrize("timeout", ["0", "-1"])
def test_check_timeout_must_be_positive(timeout):
    error, _, _ = failing("check", "square", "--timeout", timeout)
    assert "--timeout" in str(error)


def test_check_unguarded_request_fails_with_a_note(tmp_path):
    unguarded = notebook_file(
        tmp_path,
        "unguarded",
        "    import marimo as mo\n\n    mo.app_meta().request.user",
    )
    with override_settings(DJANGO_NOTEBOOKS={"NOTEBOOKS": {"unguarded": unguarded}}):
        # No slug: every notebook.
        error, out, _ = failing("check")
    assert "Checking 1 notebook " in out
    assert "  cell 1: AttributeError: 'NoneType' object has no attribute 'user'" in out
    assert "mo.app_meta().request is None" in out
    assert str(error).startswith("1 of 1 notebook failed: unguarded")


def test_a_notebook_that_hangs_is_stopped_with_its_kernel(tmp_path):
    pid_file = tmp_path / "kernel.pid"
    hangs = notebook_file(
        tmp_path,
        "hangs",
        f"    import os, time\n\n    open({str(pid_file)!r}, 'w').write(str(os.getpid()))"
        "\n    time.sleep(600)",
    )
    run = headless.check(registry.Notebook("hangs", hangs, "Hangs"), timeout=15)
    assert run.failures == (
        headless.CellFailure("notebook", "did not finish within 15 seconds"),
    )
    assert not run.ok and 15 <= run.seconds < 30
    kernel = int(pid_file.read_text())  # the cell did start
    deadline = time.monotonic() + 10
    while _alive(kernel) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(kernel)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its exited parent) is not running.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[1][0] == "Z")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (NOTEBOOKS_DIR / "gone.py", "is not a file"),
        (NOTEBOOKS_DIR / "lab" / "helpers.py", "is not a marimo notebook"),
    ],
)
def test_check_a_file_that_is_no_notebook(path, message):
    run = headless.check(registry.Notebook("x", path, "X"))
    assert not run.ok
    [failure] = run.failures
    assert failure.cell == "notebook" and message in failure.message


def test_headless_runs_write_nothing_next_to_the_notebook(tmp_path):
    copy = tmp_path / "broken.py"
    shutil.copy(BROKEN, copy)
    run = headless.check(registry.Notebook("broken", copy, "Broken"))
    assert [f.cell for f in run.failures] == ["divide", "cell 5", "cell 6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.py"]


def test_a_notebook_can_set_django_up_in_a_headless_run(tmp_path):
    # As docs/reference/commands.md shows, for notebooks that use models.
    uses_django = notebook_file(
        tmp_path,
        "uses_django",
        "    import django\n    from django.apps import apps\n\n"
        "    if not apps.ready:\n        django.setup()\n"
        "    from django.conf import settings\n"
        "    from django.contrib.auth.models import User\n\n"
        "    assert settings.ROOT_URLCONF == 'tests.urls', settings.ROOT_URLCONF",
    )
    run = headless.check(registry.Notebook("uses_django", uses_django, "Django"))
    assert run.ok, run.output


# The notebooks in our docs and example project run headless as they are.
DOCUMENTED_NOTEBOOKS = [
    ROOT / "docs" / "_tutorial" / "mysite" / "notebooks" / "hello.py",
    *sorted((ROOT / "example_project" / "notebooks").rglob("*.py")),
]


@pytest.mark.parametrize(
    "path", DOCUMENTED_NOTEBOOKS, ids=[p.stem for p in DOCUMENTED_NOTEBOOKS]
)
def test_documented_notebooks_pass_the_check(path):
    run = headless.check(registry.Notebook(path.stem, path, path.stem))
    assert run.ok, run.output


# export


def test_export_writes_the_outputs_without_the_code(tmp_path):
    out, _ = notebooks("export", "square", "-o", str(tmp_path / "sub" / "sq.html"))
    page = (tmp_path / "sub" / "sq.html").read_text()
    assert out.strip() == f"Wrote {tmp_path / 'sub' / 'sq.html'}"
    assert "square=9 user=None" in page  # the cell's output, run headless
    assert "mo.ui.slider" not in page
    assert str(NOTEBOOKS_DIR) not in page


def test_export_include_code_and_default_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    notebooks("export", "lab/demo", "--include-code")
    page = (tmp_path / "lab-demo.html").read_text()
    assert "lab demo notebook" in page
    assert "mo.md(" in page  # the code


@override_settings(
    DJANGO_NOTEBOOKS={**DJANGO_NOTEBOOKS, "MARIMO": {"include_code": True}}
)
def test_export_follows_the_include_code_setting(tmp_path):
    destination = headless.export_html(
        registry.get_notebook("square"), tmp_path / "sq.html"
    )
    assert "mo.ui.slider" in destination.read_text()


@override_settings(DJANGO_NOTEBOOKS=WITH_BROKEN)
def test_export_with_failing_cells_writes_the_page_and_fails(tmp_path):
    error, _, err = failing("export", "broken", "-o", str(tmp_path / "b.html"))
    assert str(error) == (
        f"Wrote {tmp_path / 'b.html'}, but 3 cells failed: the page shows their errors."
    )
    assert "  divide: ZeroDivisionError: float division by zero" in err
    assert "this cell fails on its own" in (tmp_path / "b.html").read_text()


def test_export_unknown_slug(tmp_path):
    error, _, _ = failing("export", "lab/nope", "-o", str(tmp_path / "x.html"))
    assert "No notebook 'lab/nope'" in str(error)
    assert not (tmp_path / "x.html").exists()


def test_export_timeout(tmp_path):
    slow = notebook_file(tmp_path, "slow", "    import time\n\n    time.sleep(600)")
    with pytest.raises(headless.HeadlessError, match="did not finish within 5 seconds"):
        headless.export_html(
            registry.Notebook("slow", slow, "Slow"), tmp_path / "s.html", timeout=5
        )
