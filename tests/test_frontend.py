"""Where notebook pages load marimo's frontend from (the FRONTEND setting)."""

from pathlib import Path

import marimo
from django.core.management import call_command
from django.test import override_settings

from django_notebooks.marimo import frontend
from tests.settings import DJANGO_NOTEBOOKS

VERSION = marimo.__version__


def with_frontend(value):
    return override_settings(DJANGO_NOTEBOOKS={**DJANGO_NOTEBOOKS, "FRONTEND": value})


def test_bridge_mode_points_at_this_apps_view():
    assert frontend.asset_url() == f"/notebooks/_marimo/{VERSION}"


def test_staticfiles_mode_points_at_static_url():
    with with_frontend("staticfiles"):
        assert frontend.asset_url() == f"/static/django_notebooks/marimo/{VERSION}"


def test_marimo_mode_leaves_marimo_to_serve_its_files():
    with with_frontend("marimo"):
        assert frontend.asset_url() is None


def test_a_cdn_url_is_passed_to_marimo():
    with with_frontend("https://cdn.example/marimo/{version}"):
        assert frontend.asset_url() == "https://cdn.example/marimo/{version}"


def test_collectstatic_gathers_the_frontend_under_its_version(tmp_path):
    with override_settings(
        STATIC_ROOT=tmp_path,
        STATICFILES_FINDERS=["django_notebooks.finders.MarimoFrontendFinder"],
        INSTALLED_APPS=[
            "django.contrib.staticfiles",
            "django_notebooks",
            "channels",
            "django.contrib.auth",
            "django.contrib.contenttypes",
        ],
    ):
        call_command("collectstatic", interactive=False, verbosity=0)
    collected = tmp_path / "django_notebooks" / "marimo" / VERSION
    scripts = list((collected / "assets").glob("*.js"))
    assert len(scripts) > 100
    assert (collected / "favicon.ico").is_file()
    assert not (collected / "index.html").exists()  # marimo's page template is no asset
    source = Path(marimo.__file__).parent / "_static" / "assets" / scripts[0].name
    assert scripts[0].read_bytes() == source.read_bytes()


def test_finder_finds_each_file_by_its_static_path():
    from django_notebooks.finders import MarimoFrontendFinder

    finder = MarimoFrontendFinder()
    name = next(iter(finder.list([])))[0]
    found = finder.find(f"django_notebooks/marimo/{VERSION}/{name}")
    assert found and Path(found).is_file()
    assert finder.find(f"django_notebooks/marimo/0.0.1/{name}") is None
    assert finder.find(f"django_notebooks/marimo/{VERSION}/{name}", find_all=True) == [
        found
    ]
