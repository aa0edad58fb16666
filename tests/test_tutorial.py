"""The tutorial in docs/tutorial.md works as written: docs/_tutorial/verify.py
builds its project from the very files the page shows, in a temporary
directory, runs the development server and checks every claim the page makes."""

import subprocess
import sys

import pytest

from tests.live import ROOT


@pytest.mark.e2e
def test_the_tutorial_works_as_written():
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "_tutorial" / "verify.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "The tutorial works" in result.stdout
