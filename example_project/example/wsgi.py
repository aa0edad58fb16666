"""WSGI entry point, for serving the project's pages with a WSGI server
(gunicorn) beside an ASGI server that serves /notebooks/: see "WSGI and ASGI
side by side" in docs/topics/deployment.md. Both need a shared channel layer
(channels_redis) instead of this project's in-memory one."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")
application = get_wsgi_application()
