"""The tutorial in docs/tutorial.md works as written: docs/_tutorial/verify.py
builds its project from the very files the page shows, in a temporary
directory, runs the development server and checks every claim the page makes."""

import re
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


SHOWN = re.compile(
    r"<!-- The code of docs/(?P<path>\S+?)(?:, from line (?P<start>\d+))?: "
    r"tests/test_tutorial.py checks they agree. -->\n```[^\n]*\n(?P<code>.*?)\n```",
    re.S,
)


def test_the_page_shows_the_code_that_runs():
    """The tutorial is plain Markdown (readable on the repository page and in
    an editor); each code block marked so is the file verify.py runs."""
    page = (ROOT / "docs" / "tutorial.md").read_text()
    shown = list(SHOWN.finditer(page))
    assert len(shown) == 6
    for block in shown:
        lines = (ROOT / "docs" / block["path"]).read_text().split("\n")
        expected = "\n".join(lines[int(block["start"] or 1) - 1 :]).rstrip("\n")
        assert block["code"] == expected, (
            f"docs/tutorial.md shows another {block['path']}"
        )
