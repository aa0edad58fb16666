"""Which notebooks exist and which URL locations name them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_notebooks import registry
from tests.settings import NOTEBOOKS_DIR

NOTEBOOK_SOURCE = (NOTEBOOKS_DIR / "lab" / "demo.py").read_text()


def notebooks_setting(**values):
    return override_settings(DJANGO_NOTEBOOKS=values)


@pytest.fixture
def lab(tmp_path):
    """A notebooks directory of our own, served as ``lab``."""
    directory = tmp_path / "lab"
    directory.mkdir()
    (directory / "demo.py").write_text(NOTEBOOK_SOURCE)
    with notebooks_setting(
        NOTEBOOKS={"square": NOTEBOOKS_DIR / "square.py"},
        DIRECTORIES={"lab": {"path": directory, "groups": ["science"]}},
    ):
        yield directory


# Explicit entries


def test_explicit_entry_as_a_path_gets_a_title_from_its_slug():
    with notebooks_setting(
        NOTEBOOKS={"sales_report-2024": str(NOTEBOOKS_DIR / "square.py")}
    ):
        notebook = registry.get_notebook("sales_report-2024")
    assert notebook.path == NOTEBOOKS_DIR / "square.py"
    assert notebook.title == "Sales report 2024"
    assert notebook.requires_login
    assert (notebook.groups, notebook.permissions, notebook.access) == ((), (), None)


def test_explicit_entry_as_a_dict_keeps_its_options():
    entry = {
        "path": str(NOTEBOOKS_DIR / "whoami.py"),
        "title": "Who am I?",
        "description": "Shows the user",
        "groups": ["a", "b"],
        "permissions": ["auth.view_user"],
        "access": "tests.access_rules.is_ops",
    }
    with notebooks_setting(
        NOTEBOOKS={
            "who": entry,
            "hi": {"path": NOTEBOOKS_DIR / "square.py", "public": True},
        }
    ):
        who = registry.get_notebook("who")
        hi = registry.get_notebook("hi")
    assert who.path == NOTEBOOKS_DIR / "whoami.py"
    assert isinstance(who.path, Path)
    assert who.title == "Who am I?"
    assert who.description == "Shows the user"
    assert who.groups == ("a", "b")
    assert who.permissions == ("auth.view_user",)
    assert who.access == "tests.access_rules.is_ops"
    assert hi.title == "Hi"
    assert hi.public and not hi.requires_login


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": NOTEBOOKS_DIR / "square.py", "group": ["typo"]}, "unknown keys"),
        ({"title": "No path"}, "'path'"),
        (42, "must be a path or a dict"),
    ],
)
def test_bad_entries_are_improperly_configured(entry, message):
    with notebooks_setting(NOTEBOOKS={"bad": entry}):
        with pytest.raises(ImproperlyConfigured, match=message) as error:
            registry.all_notebooks()
    assert "'bad'" in str(error.value)


def test_unknown_key_in_a_directory_entry_is_improperly_configured(tmp_path):
    with notebooks_setting(
        DIRECTORIES={"lab": {"path": tmp_path, "permisions": ["x"]}}
    ):
        with pytest.raises(ImproperlyConfigured, match="permisions"):
            registry.locate("lab/demo/")


def test_registry_follows_setting_changes():
    with notebooks_setting(NOTEBOOKS={"one": NOTEBOOKS_DIR / "square.py"}):
        assert [n.slug for n in registry.all_notebooks()] == ["one"]
    with notebooks_setting(NOTEBOOKS={"two": NOTEBOOKS_DIR / "square.py"}):
        assert [n.slug for n in registry.all_notebooks()] == ["two"]
        assert registry.get_notebook("one") is None


# locate()


def test_locate_page_subpaths_and_missing_slash():
    page = registry.locate("square/")
    assert page.notebook.slug == "square"
    assert (page.subpath, page.has_slash) == ("", True)

    api = registry.locate("square/api/kernel/set_ui_element_value")
    assert api.notebook.slug == "square"
    assert (api.subpath, api.has_slash) == ("api/kernel/set_ui_element_value", True)

    assert registry.locate("square/ws").subpath == "ws"
    assert (
        registry.locate("square/assets/index-abc.js").subpath == "assets/index-abc.js"
    )

    bare = registry.locate("square")
    assert bare.notebook.slug == "square"
    assert bare.has_slash is False


def test_locate_directory_notebooks(lab):
    page = registry.locate("lab/demo/")
    assert page.notebook.slug == "lab/demo"
    assert page.notebook.path == (lab / "demo.py").resolve()
    assert page.notebook.title == "Demo"
    assert page.notebook.directory == "lab"
    # A directory's access options apply to its notebooks.
    assert page.notebook.groups == ("science",)
    assert page.subpath == ""
    assert registry.locate("lab/demo/ws").subpath == "ws"
    assert registry.locate("lab/demo").has_slash is False


@pytest.mark.parametrize(
    "location",
    ["", "/", "nope/", "nope", "lab", "lab/", "lab/nope/", "Square/"],
)
def test_locations_that_name_no_notebook(lab, location):
    assert registry.locate(location) is None


@pytest.mark.parametrize(
    "location",
    [
        "lab/../square/",
        "lab/./demo/",
        "lab/demo/../../square/",
        "lab/demo/./ws",
        "square/assets/../../lab/demo/",
        "square/..",
        "..",
        "lab/demo\\..\\x/",
        "lab\\demo/",
        "square/assets\\..\\x",
    ],
)
def test_dot_segments_and_backslashes_are_refused(lab, location):
    assert registry.locate(location) is None


def test_private_hidden_and_non_notebook_files_are_refused(lab):
    (lab / "_private.py").write_text(NOTEBOOK_SOURCE)
    (lab / ".hidden.py").write_text(NOTEBOOK_SOURCE)
    (lab / "helpers.py").write_text("def helper():\n    return 1\n")
    (lab / "notes.txt").write_text(NOTEBOOK_SOURCE)
    (lab / "two.dots.py").write_text(NOTEBOOK_SOURCE)
    (lab / "package.py").mkdir()
    for name in (
        "_private",
        ".hidden",
        "helpers",
        "notes.txt",
        "notes",
        "two.dots",
        "two",
        "package",
        "demo.py",
    ):
        assert registry.locate(f"lab/{name}/") is None, name
    assert [n.slug for n in registry.directory_notebooks("lab")] == ["lab/demo"]


def test_symlinks_leaving_the_directory_are_refused(lab, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text(NOTEBOOK_SOURCE)
    (lab / "escape.py").symlink_to(outside)
    (lab / "relative.py").symlink_to(os.path.join("..", "outside.py"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "inner.py").write_text(NOTEBOOK_SOURCE)
    (lab / "sub").symlink_to(elsewhere, target_is_directory=True)

    assert registry.locate("lab/escape/") is None
    assert registry.locate("lab/relative/") is None
    assert registry.locate("lab/sub/inner/") is None
    assert [n.slug for n in registry.directory_notebooks("lab")] == ["lab/demo"]


def test_symlink_staying_inside_the_directory_is_served(lab):
    (lab / "alias.py").symlink_to(lab / "demo.py")
    found = registry.locate("lab/alias/")
    assert found.notebook.path == (lab / "demo.py").resolve()


def test_dangling_symlink_is_refused(lab):
    (lab / "dangling.py").symlink_to(lab / "gone.py")
    assert registry.locate("lab/dangling/") is None


def test_files_added_after_start_appear_and_removed_ones_disappear(lab):
    assert registry.locate("lab/fresh/") is None
    (lab / "fresh.py").write_text(NOTEBOOK_SOURCE)
    assert registry.locate("lab/fresh/").notebook.slug == "lab/fresh"
    assert registry.get_notebook("lab/fresh").title == "Fresh"
    assert "lab/fresh" in [n.slug for n in registry.all_notebooks()]
    (lab / "fresh.py").unlink()
    assert registry.locate("lab/fresh/") is None
    assert "lab/fresh" not in [n.slug for n in registry.all_notebooks()]


def test_a_file_that_becomes_a_notebook_is_picked_up(lab):
    path = lab / "draft.py"
    path.write_text("print('not yet')\n")
    assert registry.locate("lab/draft/") is None
    path.write_text(NOTEBOOK_SOURCE)
    # The answer is remembered per modification time; make sure the rewrite
    # gets a new one even on file systems with a coarse clock.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert registry.locate("lab/draft/") is not None


def test_a_missing_directory_has_no_notebooks(tmp_path):
    with notebooks_setting(DIRECTORIES={"gone": tmp_path / "gone"}):
        assert list(registry.directory_notebooks("gone")) == []
        assert registry.locate("gone/demo/") is None
        assert registry.all_notebooks() == []


# get_notebook() and all_notebooks()


def test_get_notebook(lab):
    assert registry.get_notebook("square").path == NOTEBOOKS_DIR / "square.py"
    assert registry.get_notebook("lab/demo").slug == "lab/demo"
    assert registry.get_notebook("nope") is None
    assert registry.get_notebook("lab/nope") is None
    assert registry.get_notebook("square/ws") is None
    assert registry.get_notebook("lab/demo/ws") is None
    assert registry.get_notebook("lab/../square") is None


def test_all_notebooks_in_settings_order_then_directories_sorted(lab):
    (lab / "alpha.py").write_text(NOTEBOOK_SOURCE)
    (lab / "zeta.py").write_text(NOTEBOOK_SOURCE)
    (lab / "helpers.py").write_text("x = 1\n")
    assert [n.slug for n in registry.all_notebooks()] == [
        "square",
        "lab/alpha",
        "lab/demo",
        "lab/zeta",
    ]


def test_all_notebooks_of_the_test_settings():
    slugs = [n.slug for n in registry.all_notebooks()]
    assert slugs[:8] == [
        "square",
        "hello",
        "sales",
        "report",
        "ops",
        "whoami",
        "files",
        "cpu",
    ]
    # lab/ holds demo.py, plus a private file, a helper module, a text
    # file and a symlink to a file outside: only demo is a notebook.
    assert slugs[8:] == ["lab/demo"]
