"""The migrations the package ships match its models, on the installed
Django (a new Django may see a change that an older one did not)."""

from io import StringIO

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_migrations_match_the_models():
    out = StringIO()
    try:
        call_command(
            "makemigrations",
            "django_notebooks",
            check=True,
            dry_run=True,
            stdout=out,
            verbosity=2,
        )
    except SystemExit:
        pytest.fail(f"The models have changes without a migration:\n{out.getvalue()}")
