"""Hooks that django_notebooks calls, named in settings.DJANGO_NOTEBOOKS."""

from typing import Any

from django.conf import settings


def request_meta(request_or_scope: Any) -> dict[str, Any]:
    """What notebooks see as ``mo.app_meta().request.meta``.

    django_notebooks passes the ``HttpRequest`` for HTTP requests and the
    ASGI scope (a dict) when a notebook's kernel websocket opens; this hook
    needs neither. Return plain values and never secrets: notebook code can
    print them.
    """
    return {"site": "Example Project", "debug": settings.DEBUG}
