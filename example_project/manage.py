#!/usr/bin/env python
"""Django's command-line utility for the example project.

Start the demo with ``python example_project/manage.py demo`` from the
repository root, or ``python manage.py demo`` from this directory.
"""

import os
import sys
from pathlib import Path

EXAMPLE_DIR = Path(__file__).resolve().parent
REPOSITORY_DIR = EXAMPLE_DIR.parent


def main() -> None:
    # This directory holds the project's modules (example, demo); the
    # repository root holds django_notebooks, so the example runs the code it
    # ships with, whether or not the package is installed, from any directory.
    sys.path[:0] = [str(EXAMPLE_DIR), str(REPOSITORY_DIR)]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
