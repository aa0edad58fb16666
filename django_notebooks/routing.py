"""Websocket URL patterns for the project's ASGI application::

    "websocket": AllowedHostsOriginValidator(
        AuthMiddlewareStack(URLRouter(django_notebooks.routing.websocket_urlpatterns))
    ),

The pattern takes any path ending in ``/ws``; the consumer then resolves it
through the project's URLconf, so notebooks are found wherever urls.py
included ``django_notebooks.urls``. List the project's own websocket routes
before these ones.
"""

from django.urls import re_path

from django_notebooks.consumers import KernelConsumer

websocket_urlpatterns = [
    # (?s): a path with an encoded newline must reach the consumer (which
    # refuses it) rather than match no route (which Channels answers with 500).
    re_path(r"(?s)^.+/ws\Z", KernelConsumer.as_asgi(), name="django_notebooks_kernel"),
]
