"""``{% notebook %}``: a notebook inside any page of the project.

::

    {% load notebooks %}
    {% notebook "sales" %}
    {% notebook "sales" region="eu" height=600 title="EU sales" class="wide" %}
    {% notebook "lab/demo" query=params %}

Users who may open the notebook get an iframe of its page, which
``django_notebooks/embed.js`` sizes to the notebook's content. Everyone else
gets the ``django_notebooks/embed_unavailable.html`` placeholder. The rules
(the same as for the notebook's URL) are in docs/topics/embedding.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, cast

from django import template
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, QueryDict
from django.template import Engine
from django.urls import reverse
from django.utils.safestring import SafeString

from django_notebooks import access, conf, registry
from django_notebooks.access import Access
from django_notebooks.registry import Notebook

register = template.Library()
logger = logging.getLogger(__name__)

EMBED_TEMPLATE = "django_notebooks/embed.html"
UNAVAILABLE_TEMPLATE = "django_notebooks/embed_unavailable.html"
HEIGHT_PATTERN = re.compile(r"(\d+)(?:px)?")
# Where the tag remembers, for one rendering of a page, which of its static
# files it already linked (see _first_time).
ASSETS_KEY = "django_notebooks.embed_assets"


class NotebookDoesNotExist(LookupError):
    """``{% notebook %}`` named a notebook the project does not serve.

    Raised when template debugging is on (``DEBUG``); otherwise the tag logs
    a warning and renders the placeholder.
    """


@register.simple_tag(takes_context=True)
def notebook(
    context: template.Context,
    slug: str | Notebook,
    *,
    height: int | str | None = None,
    title: str | None = None,
    query: Mapping[str, Any] | None = None,
    **params: Any,
) -> SafeString:
    """An iframe of the notebook ``slug`` (``name`` or ``directory/name``, or
    a :class:`~django_notebooks.registry.Notebook`), or a placeholder for
    users who may not open it.

    ``height`` (pixels) fixes the frame's height instead of sizing it to the
    notebook; ``title`` replaces the notebook's title; ``class`` adds CSS
    classes; ``query`` (a dict) and any other keyword become query parameters
    of the notebook's page, which the notebook reads with
    ``mo.query_params()``.
    """
    css_class = str(params.pop("class", "") or "")
    request = _request(context)
    # Without AuthenticationMiddleware there is no user: nobody is logged in.
    user = getattr(request, "user", None)
    if isinstance(slug, Notebook):
        slug = slug.slug
    found = registry.get_notebook(str(slug))
    if found is None:
        if context.template is not None and context.template.engine.debug:
            raise NotebookDoesNotExist(
                f"{{% notebook %}} names no notebook: {slug!r}. The names are "
                "the keys of DJANGO_NOTEBOOKS['NOTEBOOKS'] and, for the files "
                "in DJANGO_NOTEBOOKS['DIRECTORIES'], 'directory/file stem'."
            )
        logger.warning(
            "{%% notebook %%} names no notebook: %r (on %s); "
            "showing the placeholder instead.",
            slug,
            request.path,
        )
        decision = (
            Access.LOGIN_REQUIRED
            if conf.get_settings().CONCEAL_FORBIDDEN
            and not getattr(user, "is_authenticated", False)
            else Access.FORBIDDEN
        )
        return _unavailable(context, request, None, decision, title, css_class)

    decision = access.decide(user, found)
    if decision is not Access.ALLOWED:
        return _unavailable(context, request, found, decision, title, css_class)

    return _render(
        context,
        EMBED_TEMPLATE,
        {
            "notebook": found,
            "src": _src(request, found, query, params),
            "title": title or found.title,
            "height": _pixels(height),
            "autosize": height is None,
            "css_class": css_class,
            "load_css": _first_time(context, "css"),
            "load_script": _first_time(context, "script"),
        },
    )


def _request(context: template.Context) -> HttpRequest:
    request = context.get("request")
    if request is None:
        raise ImproperlyConfigured(
            "{% notebook %} needs the request in the template context, to ask "
            "whether its user may open the notebook. Add "
            "'django.template.context_processors.request' to the "
            "'context_processors' of your DjangoTemplates backend in the "
            "TEMPLATES setting, and render with the request (render(request, "
            "...) or render_to_string(..., request=request))."
        )
    return cast(HttpRequest, request)


def _unavailable(
    context: template.Context,
    request: HttpRequest,
    found: Notebook | None,
    decision: Access,
    title: str | None,
    css_class: str,
) -> SafeString:
    """The placeholder for a notebook this user may not open (or an unknown
    one). With ``CONCEAL_FORBIDDEN`` it says no more than the notebook's URL
    would: forbidden and unknown notebooks look alike, and the notebook's
    title (from the settings) is not shown, only one given to the tag."""
    conceal = conf.get_settings().CONCEAL_FORBIDDEN
    if decision is Access.LOGIN_REQUIRED:
        reason = "login_required"
    elif found is None or conceal:
        reason = "unavailable"
    else:
        reason = "forbidden"
    shown = None if conceal else found
    return _render(
        context,
        UNAVAILABLE_TEMPLATE,
        {
            "reason": reason,
            "notebook": shown,
            "title": title or (shown.title if shown else ""),
            # LOGIN_URL?next=<this page>, as a refused notebook page redirects.
            "login_url": (
                redirect_to_login(request.get_full_path()).url
                if reason == "login_required"
                else ""
            ),
            "css_class": css_class,
            "load_css": _first_time(context, "css"),
        },
    )


def _render(context: template.Context, name: str, values: dict[str, Any]) -> SafeString:
    # As {% include %} does: the page's context plus ours, with the engine
    # that renders the page (so a project's override of the template wins).
    engine = context.template.engine if context.template else Engine.get_default()
    embed = engine.get_template(name)
    with context.push(values):
        return SafeString(embed.render(context))


def _first_time(context: template.Context, asset: str) -> bool:
    """Whether this is the first embed in this rendering to need ``asset``,
    so each static file is linked once however many notebooks a page has.

    The bottom dict of the render context is the one that every template of
    one rendering (extends, includes, ``include ... only``) shares.
    """
    shared = cast(dict[str, Any], context.render_context.dicts[0])
    linked: set[str] = shared.setdefault(ASSETS_KEY, set())
    if asset in linked:
        return False
    linked.add(asset)
    return True


def _src(
    request: HttpRequest,
    found: Notebook,
    query: Mapping[str, Any] | None,
    params: Mapping[str, Any],
) -> str:
    """The notebook page's URL, from the project's URLconf, with the query."""
    current_app = getattr(request, "current_app", None)
    if current_app is None and request.resolver_match is not None:
        current_app = request.resolver_match.namespace
    url = reverse(
        "django_notebooks:notebook", args=[found.slug], current_app=current_app
    )
    if query is not None and not isinstance(query, Mapping):
        raise template.TemplateSyntaxError(
            f"{{% notebook %}}: query must be a dict, not {type(query).__name__}."
        )
    encoded = QueryDict(mutable=True)
    # Keywords win over the same name in query=. A QueryDict (request.GET)
    # gives the last value of each name, as marimo does to the notebook.
    for source in (query or {}), params:
        for name, value in source.items():
            if isinstance(value, list | tuple | set):
                raise template.TemplateSyntaxError(
                    f"{{% notebook %}}: the query parameter {name!r} has several "
                    "values; a notebook reads one value per name."
                )
            if value is None:  # left out
                encoded.pop(str(name), None)
            else:
                encoded[str(name)] = str(value)
    query_string = encoded.urlencode()
    return f"{url}?{query_string}" if query_string else url


def _pixels(height: int | str | None) -> int | None:
    if height is None:
        return None
    match = HEIGHT_PATTERN.fullmatch(str(height).strip())
    if match is None or isinstance(height, bool):
        raise template.TemplateSyntaxError(
            f"{{% notebook %}}: height must be a number of pixels, such as 600 "
            f'or "600px", not {height!r}.'
        )
    return int(match.group(1))
