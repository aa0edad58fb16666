import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

import django_notebooks.routing  # noqa: E402
from django_notebooks.asgi import FastPathMiddleware  # noqa: E402

# DJANGO_NOTEBOOKS_TEST_FAST_PATH=0 serves everything through Django's views,
# so the end-to-end tests can cover both ways.
fast_path = os.environ.get("DJANGO_NOTEBOOKS_TEST_FAST_PATH", "1") == "1"

application = ProtocolTypeRouter(
    {
        "http": FastPathMiddleware(django_asgi_app) if fast_path else django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(
                URLRouter(django_notebooks.routing.websocket_urlpatterns)
            )
        ),
    }
)

# DJANGO_NOTEBOOKS_TEST_SIGNAL_LOG=1 prints each session signal to the
# server's log, for the end-to-end tests to see that it was sent.
if os.environ.get("DJANGO_NOTEBOOKS_TEST_SIGNAL_LOG"):
    from django_notebooks import signals  # noqa: E402

    def _print_signal(sender, signal, session_id, **kwargs):
        name = "started" if signal is signals.notebook_session_started else "ended"
        print(f"SIGNAL notebook_session_{name} {session_id}", flush=True)

    signals.notebook_session_started.connect(_print_signal, weak=False)
    signals.notebook_session_ended.connect(_print_signal, weak=False)
