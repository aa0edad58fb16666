"""The test project's WSGI entry point, for gunicorn beside an ASGI server
(tests/e2e/test_wsgi_side_by_side.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
application = get_wsgi_application()
