"""``{% notebook %}``: what it renders for each user, its options, and its
answer for notebooks that do not exist. (tests/browser/test_embed.py loads
such a page in Chromium.)"""

from __future__ import annotations

import logging
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, Group, User
from django.core.exceptions import ImproperlyConfigured
from django.http import QueryDict
from django.template import Context, RequestContext, Template, TemplateSyntaxError
from django.template.loader import render_to_string
from django.test import RequestFactory, override_settings

from django_notebooks import registry
from django_notebooks.templatetags.notebooks import NotebookDoesNotExist
from tests.settings import TEMPLATES, TESTS_DIR

pytestmark = pytest.mark.django_db

PAGE = "/reports/?year=2025"


class Tags(HTMLParser):
    """The start tags of an HTML fragment, with their (unescaped) attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]

    def one(self, tag: str) -> dict[str, str | None]:
        [attrs] = self.all(tag)
        return attrs

    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def user(username: str, *, groups: tuple[str, ...] = ()) -> User:
    person = User.objects.create_user(username)
    for name in groups:
        person.groups.add(Group.objects.get_or_create(name=name)[0])
    return person


def render(source: str, who=None, path: str = PAGE, **context) -> str:
    request = RequestFactory().get(path)
    request.user = who or AnonymousUser()
    template = Template("{% load notebooks %}" + source)
    return template.render(RequestContext(request, context))


def notebooks_with(**options):
    return override_settings(DJANGO_NOTEBOOKS={**settings.DJANGO_NOTEBOOKS, **options})


def frame_of(html: str) -> dict[str, str | None]:
    return Tags(html).one("iframe")


# Users who may open the notebook


def test_a_user_who_may_open_the_notebook_gets_a_lazy_self_sizing_iframe():
    html = render('{% notebook "sales" %}', user("alice", groups=("sales",)))
    tags = Tags(html)
    frame = tags.one("iframe")
    assert frame["src"] == "/notebooks/sales/"
    assert frame["title"] == "Sales"
    assert frame["loading"] == "lazy"
    assert frame["class"] == "dn-embed"
    assert "data-notebook-autosize" in frame
    assert "height" not in frame
    assert tags.one("script") == {
        "src": "/static/django_notebooks/embed.js",
        "defer": None,
    }
    assert tags.one("link") == {
        "rel": "stylesheet",
        "href": "/static/django_notebooks/embed.css",
    }
    assert not [attrs for _, attrs in tags.tags if "style" in attrs], (
        "inline styles are refused by a strict Content-Security-Policy"
    )


def test_directory_notebooks_public_notebooks_and_notebook_objects():
    alice = user("alice")
    assert frame_of(render('{% notebook "lab/demo" %}', alice))["src"] == (
        "/notebooks/lab/demo/"
    )
    # A public notebook needs no login.
    assert frame_of(render('{% notebook "hello" %}'))["src"] == "/notebooks/hello/"
    # The index's Notebook objects work too.
    demo = registry.get_notebook("lab/demo")
    html = render("{% notebook demo %}", alice, demo=demo)
    assert frame_of(html)["title"] == "Demo"


def test_the_assets_are_linked_once_however_many_notebooks_a_page_has(tmp_path):
    (tmp_path / "layout.html").write_text("<main>{% block body %}{% endblock %}</main>")
    (tmp_path / "page.html").write_text(
        "{% extends 'layout.html' %}{% load notebooks %}{% block body %}"
        "{% notebook 'square' %}"
        "{% include 'part.html' with request=request only %}"
        "{% notebook 'hello' height=300 %}{% endblock %}"
    )
    (tmp_path / "part.html").write_text("{% load notebooks %}{% notebook 'whoami' %}")
    request = RequestFactory().get("/")
    request.user = user("alice")
    with override_settings(TEMPLATES=[{**TEMPLATES[0], "DIRS": [tmp_path]}]):
        tags = Tags(render_to_string("page.html", request=request))
    assert [frame["src"] for frame in tags.all("iframe")] == [
        "/notebooks/square/",
        "/notebooks/whoami/",
        "/notebooks/hello/",
    ]
    assert len(tags.all("script")) == 1
    assert len(tags.all("link")) == 1
    # Each rendering of a page links them again.
    assert len(Tags(render('{% notebook "hello" %}')).all("script")) == 1


# Options


def test_height_fixes_the_height_and_turns_off_auto_sizing():
    alice = user("alice")
    for height in ("600", "'600'", "'600px'"):
        frame = frame_of(render(f'{{% notebook "square" height={height} %}}', alice))
        assert frame["height"] == "600"
        assert "data-notebook-autosize" not in frame
    frame = frame_of(render('{% notebook "square" height=size %}', alice, size=420))
    assert frame["height"] == "420"


@pytest.mark.parametrize("height", ["'50%'", "'tall'", "-3", "True"])
def test_a_height_that_is_not_pixels_is_an_error(height):
    with pytest.raises(TemplateSyntaxError, match="height must be a number of pixels"):
        render(f'{{% notebook "square" height={height} %}}', user("alice"))


def test_title_and_class():
    html = render(
        '{% notebook "square" title="Squares, live" class="wide framed" %}',
        user("alice"),
    )
    frame = frame_of(html)
    assert frame["title"] == "Squares, live"
    assert frame["class"] == "dn-embed wide framed"


def test_keywords_and_query_become_the_pages_query_string():
    alice = user("alice")
    frame = frame_of(render('{% notebook "square" region="eu" n=3 %}', alice))
    assert frame["src"] == "/notebooks/square/?region=eu&n=3"

    html = render(
        '{% notebook "square" query=params region="eu" year=None %}',
        alice,
        params={"region": "us", "title": "Q1", "data-x": 1, "year": 2025},
    )
    src = urlsplit(frame_of(html)["src"])
    assert src.path == "/notebooks/square/"
    # Keywords win over query=, and None leaves a name out; query= carries
    # names that are no identifiers (data-x) or options of the tag.
    assert parse_qs(src.query) == {"region": ["eu"], "title": ["Q1"], "data-x": ["1"]}
    assert frame_of(html)["title"] == "Square"
    # request.GET passes on: one value per name, the last.
    request_get = QueryDict("region=us&region=eu&n=2")
    html = render('{% notebook "square" query=get %}', alice, get=request_get)
    assert frame_of(html)["src"] == "/notebooks/square/?region=eu&n=2"


def test_a_query_parameter_has_one_value():
    with pytest.raises(TemplateSyntaxError, match="'tag' has several values"):
        render('{% notebook "square" tag=tags %}', user("alice"), tags=["a", "b"])


def test_query_must_be_a_dict():
    with pytest.raises(TemplateSyntaxError, match="query must be a dict"):
        render('{% notebook "square" query="a=1" %}', user("alice"))


def test_title_and_query_are_escaped():
    hostile = '"><script>alert(1)</script>'
    html = render(
        "{% notebook 'square' title=hostile note=hostile query=more %}",
        user("alice"),
        hostile=hostile,
        more={"x&y": "1&2=3"},
    )
    assert "<script>alert" not in html
    frame = frame_of(html)
    assert frame["title"] == hostile
    assert parse_qs(urlsplit(frame["src"]).query) == {
        "note": [hostile],
        "x&y": ["1&2=3"],
    }
    assert len(Tags(html).tags) == 3  # link, iframe, script: nothing injected


def test_notebook_titles_from_the_settings_are_escaped():
    hostile = '<img src=x onerror="alert(1)">'
    entry = {"path": TESTS_DIR / "notebooks" / "square.py", "title": hostile}
    with notebooks_with(NOTEBOOKS={"square": entry}):
        html = render('{% notebook "square" %}', user("alice"))
        assert "<img" not in html
        assert frame_of(html)["title"] == hostile
        placeholder = render('{% notebook "square" %}')
        assert "<img" not in placeholder
        assert hostile in Tags(placeholder).words()


def test_as_stores_the_html_in_a_variable():
    html = render(
        '{% notebook "square" as frame %}<div>{{ frame }}</div>', user("alice")
    )
    assert html.startswith("<div>") and frame_of(html)["src"] == "/notebooks/square/"


# Users who may not open it


def test_anonymous_users_are_asked_to_log_in_with_a_link_back_to_the_page():
    html = render('{% notebook "sales" %}')
    tags = Tags(html)
    assert not tags.all("iframe") and not tags.all("script")
    assert tags.one("div")["class"] == "dn-embed-unavailable dn-embed-login_required"
    assert tags.words() == "Log in to see the notebook Sales ."
    assert tags.one("a")["href"] == "/accounts/login/?next=/reports/%3Fyear%3D2025"


@override_settings(LOGIN_URL="login")
def test_the_login_link_follows_login_url_as_a_url_name_or_with_a_query():
    link = Tags(render('{% notebook "square" %}', path="/p/")).one("a")["href"]
    assert link == "/accounts/login/?next=/p/"
    with override_settings(LOGIN_URL="https://sso.example.com/login?app=reports"):
        link = Tags(render('{% notebook "square" %}', path="/p/")).one("a")["href"]
    assert link == "https://sso.example.com/login?app=reports&next=/p/"


def test_users_without_access_are_told_so():
    bob = user("bob")
    tags = Tags(render('{% notebook "sales" class="wide" %}', bob))
    assert not tags.all("iframe")
    assert tags.one("div")["class"] == "dn-embed-unavailable dn-embed-forbidden wide"
    assert tags.words() == "You do not have access to the notebook Sales ."
    assert not tags.all("a")
    # The project's own rule and permissions count, as for the notebook's URL.
    for slug in ("ops", "report"):
        assert "You do not have access" in render(f'{{% notebook "{slug}" %}}', bob)
    assert frame_of(render('{% notebook "ops" %}', user("ops-dan")))


def test_inactive_users_are_asked_to_log_in():
    bob = user("bob")
    bob.is_active = False
    html = render('{% notebook "square" %}', bob)
    assert Tags(html).words() == "Log in to see the notebook Square ."


@notebooks_with(CONCEAL_FORBIDDEN=True)
def test_with_conceal_forbidden_the_placeholder_says_no_more_than_the_url():
    bob = user("bob")
    forbidden = render('{% notebook "sales" %}', bob)
    assert Tags(forbidden).words() == "This notebook is not available."
    assert "Sales" not in forbidden
    # Forbidden and missing notebooks look alike...
    assert render('{% notebook "no-such-thing" %}', bob) == forbidden
    # ...and so, to anonymous users, do private and missing ones.
    private = render('{% notebook "sales" %}')
    assert Tags(private).words() == "Log in to see this notebook."
    assert render('{% notebook "no-such-thing" %}') == private
    # A title the page itself gives is the page's to show.
    assert "Quarterly" in render('{% notebook "sales" title="Quarterly" %}', bob)


def test_the_placeholder_can_be_overridden(tmp_path):
    folder = tmp_path / "django_notebooks"
    folder.mkdir()
    (folder / "embed_unavailable.html").write_text(
        "<aside>{{ reason }}|{{ notebook.slug }}|{{ login_url }}</aside>"
    )
    with override_settings(TEMPLATES=[{**TEMPLATES[0], "DIRS": [tmp_path]}]):
        html = render('{% notebook "sales" %}', path="/p/")
    assert html == "<aside>login_required|sales|/accounts/login/?next=/p/</aside>"


# Notebooks that do not exist, and pages without the request


@override_settings(DEBUG=True)
def test_an_unknown_notebook_is_an_error_when_templates_are_debugged():
    alice = user("alice")
    with pytest.raises(NotebookDoesNotExist, match="'no-such-thing'"):
        render('{% notebook "no-such-thing" %}', alice)
    with pytest.raises(NotebookDoesNotExist):
        render('{% notebook "lab/helpers" %}', alice)  # not a notebook


def test_an_unknown_notebook_logs_a_warning_and_shows_the_placeholder(caplog):
    with caplog.at_level(logging.WARNING, "django_notebooks"):
        html = render('{% notebook "no-such-thing" %}', user("alice"), path="/p/")
    assert Tags(html).words() == "This notebook is not available."
    assert "no-such-thing" not in html
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "'no-such-thing'" in record.getMessage()
    assert "/p/" in record.getMessage()


def test_without_the_request_in_the_context_the_tag_says_how_to_fix_it():
    template = Template('{% load notebooks %}{% notebook "hello" %}')
    with pytest.raises(ImproperlyConfigured, match="context_processors.request"):
        template.render(Context({}))


# URLs come from the project's URLconf


@override_settings(ROOT_URLCONF="tests.urls_prefix")
def test_the_src_is_reversed_under_the_projects_prefix():
    frame = frame_of(render('{% notebook "lab/demo" x=1 %}', user("alice")))
    assert frame["src"] == "/deep/under/here/lab/demo/?x=1"
