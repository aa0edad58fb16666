"""Views of the test project that are not the app's."""

from __future__ import annotations

import functools
from typing import Any

from django.template.loader import render_to_string
from django.views.generic import TemplateView

PAGE_OF_SIZE = "bench/page_of_size.html"
TITLE = "A page of a given size"


@functools.cache
def _unpadded_size() -> int:
    return len(render_to_string(PAGE_OF_SIZE, {"title": TITLE, "padding": ""}))


class PageOfSize(TemplateView):
    """An ordinary Django page of ``size`` characters (ASCII: bytes too), a
    template rendered like any other: bench/snapshots.py compares a static
    notebook's page with it, through the same server and middleware."""

    template_name = PAGE_OF_SIZE

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["title"] = TITLE
        context["padding"] = "x" * max(0, kwargs["size"] - _unpadded_size())
        return context
