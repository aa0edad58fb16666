"""Sphinx configuration for the django_notebooks documentation.

Build with warnings as errors, from the repository root:

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _version() -> str:
    # Read, not imported: building the docs needs neither Django nor marimo.
    source = (ROOT / "django_notebooks" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', source, re.MULTILINE)
    if match is None:
        raise RuntimeError("django_notebooks/__init__.py has no __version__")
    return match.group(1)


project = "django_notebooks"
author = "django_notebooks developers"
copyright = "django_notebooks developers"
release = _version()
version = release

extensions = [
    "myst_parser",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_tutorial", "Thumbs.db", ".DS_Store"]

# Every cross-reference must resolve (a typo in {py:func}`...` is an error).
nitpicky = True

myst_enable_extensions = ["colon_fence", "deflist"]
# Give headings (down to ###) anchors, so pages can link to sections.
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"django_notebooks {release}"
pygments_style = "default"
