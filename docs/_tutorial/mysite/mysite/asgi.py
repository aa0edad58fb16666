import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

# Set Django up first: the imports below use its settings and models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

import django_notebooks.routing  # noqa: E402
from django_notebooks.asgi import FastPathMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": FastPathMiddleware(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(
                URLRouter(django_notebooks.routing.websocket_urlpatterns)
            )
        ),
    }
)
