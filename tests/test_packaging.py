"""The package builds into an sdist and a wheel that pass ``twine check``; the
wheel holds the templates, static files and migrations, not the tests or the
example; and installed from the wheel into a new virtual environment, it
carries the tutorial through."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.live import ROOT

PACKAGE = ROOT / "django_notebooks"


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """The wheel and the sdist, as ``python -m build`` makes them (the wheel
    is built from the sdist, so both must hold every file)."""
    outdir = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(outdir), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    [wheel] = outdir.glob("*.whl")
    [sdist] = outdir.glob("*.tar.gz")
    return wheel, sdist


def package_files() -> set[str]:
    """The files of the package in this checkout that it needs installed:
    its modules (migrations and template tags among them), templates and
    static files, as paths relative to the checkout."""
    files = set()
    for path in PACKAGE.rglob("*"):
        relative = path.relative_to(PACKAGE)
        if not path.is_file() or "__pycache__" in relative.parts:
            continue
        if path.suffix == ".py" or relative.parts[0] in ("templates", "static"):
            files.add(path.relative_to(ROOT).as_posix())
    return files | {"django_notebooks/py.typed"}


@pytest.mark.e2e
def test_wheel_and_sdist_build_and_hold_the_right_files(dists):
    wheel, sdist = dists
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", str(wheel), str(sdist)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    names = zipfile.ZipFile(wheel).namelist()
    assert "django_notebooks/templates/django_notebooks/index.html" in names
    assert "django_notebooks/templates/django_notebooks/embed.html" in names
    assert "django_notebooks/templatetags/notebooks.py" in names
    assert "django_notebooks/static/django_notebooks/embed.js" in names
    assert "django_notebooks/static/django_notebooks/embed.css" in names
    assert "django_notebooks/migrations/__init__.py" in names
    assert "django_notebooks/migrations/0001_initial.py" in names
    assert "django_notebooks/py.typed" in names
    assert "django_notebooks/asgi.py" in names
    missing = sorted(package_files() - set(names))
    assert not missing, f"the wheel lacks {missing}"
    assert not [
        n
        for n in names
        if n.startswith(("tests/", "example_project/", "bench/", "docs/"))
    ]


@pytest.mark.e2e
@pytest.mark.fresh_install
def test_the_wheel_in_a_fresh_virtualenv_carries_the_tutorial(dists, tmp_path):
    """Step 1 of the tutorial with the wheel: a virtual environment without
    this machine's packages, the wheel installed with its dependencies from
    the package index; then docs/_tutorial/verify.py follows the tutorial
    with that environment's django-admin, manage.py and Daphne."""
    wheel, _ = dists
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    python = env_dir / "bin" / "python"

    def run(*args: str, timeout: float = 900) -> str:
        result = subprocess.run(
            [str(python), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, (
            f"{' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
        return result.stdout

    run("-m", "pip", "install", "-q", str(wheel))
    run("-m", "pip", "check")

    # Every file the checkout has is in the installed package.
    installed = Path(
        run("-c", "import django_notebooks; print(django_notebooks.__file__)").strip()
    ).parent
    assert installed.is_relative_to(env_dir), installed
    missing = sorted(
        name for name in package_files() if not (installed.parent / name).is_file()
    )
    assert not missing, f"the installed package lacks {missing}"

    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "docs" / "_tutorial" / "verify.py"),
            "--python",
            str(python),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ok: the project uses the installed package" in result.stdout
    assert "The tutorial works" in result.stdout
