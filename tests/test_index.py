"""The notebook index page: its cards, its empty states and its template.
(Which notebooks it lists is tested in tests/test_views.py.)"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

from tests.helpers import notebooks_with
from tests.settings import NOTEBOOKS_DIR, TEMPLATES

pytestmark = pytest.mark.django_db


def logged_in(username: str = "alice") -> Client:
    client = Client()
    client.force_login(User.objects.create_user(username))
    return client


def test_cards_show_title_description_and_link():
    entry = {
        "path": NOTEBOOKS_DIR / "square.py",
        "title": "Squares <b>live</b>",
        "description": "Numbers & their <script>squares</script>.",
    }
    with notebooks_with(NOTEBOOKS={"square": entry}, DIRECTORIES={}):
        html = logged_in().get("/notebooks/").content.decode()
    assert "1 notebook you can open." in html
    assert (
        '<h2><a href="/notebooks/square/">Squares &lt;b&gt;live&lt;/b&gt;</a></h2>'
        in html
    )
    assert "<p>Numbers &amp; their &lt;script&gt;squares&lt;/script&gt;.</p>" in html
    assert "<script" not in html


def test_directory_and_public_notebooks_are_marked():
    html = logged_in().get("/notebooks/").content.decode()
    assert '<span class="dn-badge">lab</span>' in html
    assert '<span class="dn-badge">public</span>' in html
    assert "<code>lab/demo</code>" in html


def test_the_page_needs_nothing_from_elsewhere():
    html = logged_in().get("/notebooks/").content.decode()
    assert not re.search(r"<(script|link|img)\b", html), "everything is inline"
    assert '<meta name="viewport"' in html


def test_anonymous_users_are_offered_to_log_in():
    html = Client().get("/notebooks/").content.decode()
    assert "1 notebook you can open." in html
    assert '<a href="/accounts/login/?next=/notebooks/">Log in</a> to see more' in html

    with notebooks_with(NOTEBOOKS={}, DIRECTORIES={}):
        html = Client().get("/notebooks/?page=2").content.decode()
    assert "Log in to see your notebooks" in html
    assert 'href="/accounts/login/?next=/notebooks/%3Fpage%3D2"' in html


@notebooks_with(NOTEBOOKS={}, DIRECTORIES={})
def test_logged_in_users_without_notebooks_get_an_empty_state():
    html = logged_in().get("/notebooks/").content.decode()
    assert "There are no notebooks you can open." in html
    assert "/accounts/login/" not in html
    assert '<ul class="dn-notebooks">' not in html


def index_with_template(tmp_path, name: str, source: str) -> str:
    """The index page, with ``django_notebooks/<name>`` overridden by
    ``source`` in a project template directory."""
    folder = tmp_path / "django_notebooks"
    folder.mkdir()
    (folder / name).write_text(source)
    with override_settings(TEMPLATES=[{**TEMPLATES[0], "DIRS": [tmp_path]}]):
        return logged_in().get("/notebooks/").content.decode()


def test_the_template_and_its_blocks_can_be_overridden(tmp_path):
    html = index_with_template(
        tmp_path,
        "index.html",
        '{% extends "django_notebooks/index.html" %}'
        "{% block notebook %}<li>{{ notebook.slug }}</li>{% endblock %}",
    )
    assert "<li>square</li>" in html and "<li>lab/demo</li>" in html
    assert "Notebooks</h1>" in html


def test_the_inline_style_can_be_swapped_for_a_stylesheet(tmp_path):
    # For a Content-Security-Policy that refuses inline styles.
    html = index_with_template(
        tmp_path,
        "base.html",
        '{% extends "django_notebooks/base.html" %}'
        '{% block style %}<link rel="stylesheet" href="/static/site.css">{% endblock %}',
    )
    assert "<style" not in html and ".dn-notebook" not in html
    assert '<link rel="stylesheet" href="/static/site.css">' in html
    assert '<a href="/notebooks/square/">Square</a>' in html
