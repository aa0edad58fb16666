"""The package builds into an sdist and a wheel that pass ``twine check``; the
wheel holds the templates and static files, not the tests or the example."""

import subprocess
import sys
import zipfile

import pytest

from tests.live import ROOT


@pytest.mark.e2e
def test_wheel_and_sdist_build_and_hold_the_right_files(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    [wheel] = tmp_path.glob("*.whl")
    [sdist] = tmp_path.glob("*.tar.gz")
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", str(wheel), str(sdist)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    names = zipfile.ZipFile(wheel).namelist()
    assert "django_notebooks/templates/django_notebooks/index.html" in names
    assert "django_notebooks/py.typed" in names
    assert "django_notebooks/asgi.py" in names
    assert not [
        n
        for n in names
        if n.startswith(("tests/", "example_project/", "bench/", "docs/"))
    ]
