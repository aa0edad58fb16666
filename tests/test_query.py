"""Query parameters validated by a notebook's ``query`` option: the
validation itself, the 400 page, the kernel websocket's refusal, what
``request.meta`` gets, and check E013."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys

import pydantic
import pytest
from django import forms
from django.conf import settings
from django.test import AsyncClient, override_settings

from django_notebooks import checks, consumers, context, notices, query, registry
from tests.helpers import (
    communicator,
    first_run,
    logged_in_client,
    login,
    new_session_id,
    printed,
)
from tests.live import ROOT
from tests.notebooks.query_forms import SalesModel, SalesQuery
from tests.settings import NOTEBOOKS_DIR

pytestmark = pytest.mark.django_db(transaction=True)

FORM = "tests.notebooks.query_forms.SalesQuery"
MODEL = "tests.notebooks.query_forms.SalesModel"
QUERY_NOTEBOOK = NOTEBOOKS_DIR / "query.py"
VALID = "region=north&since=2024-05-01&limit=4"


def notebook(option=FORM) -> registry.Notebook:
    return registry.Notebook("q", QUERY_NOTEBOOK, "Q", query=option)


def with_query_notebooks(**extra):
    """The test settings plus notebooks that validate their query."""
    return override_settings(
        DJANGO_NOTEBOOKS={
            **settings.DJANGO_NOTEBOOKS,
            "NOTEBOOKS": {
                **settings.DJANGO_NOTEBOOKS["NOTEBOOKS"],
                "q-form": {"path": QUERY_NOTEBOOK, "query": FORM},
                "q-model": {"path": QUERY_NOTEBOOK, "query": SalesModel},
                "q-public": {"path": QUERY_NOTEBOOK, "query": FORM, "public": True},
            },
            "DIRECTORIES": {"lab": {"path": NOTEBOOKS_DIR / "lab", "query": FORM}},
            **extra,
        }
    )


# Validation


@pytest.mark.parametrize("option", [FORM, MODEL, SalesQuery, SalesModel])
def test_valid_query_gives_python_values(option):
    result = query.validate_query(notebook(option), VALID)
    assert result.is_valid
    assert result.cleaned == {
        "region": "north",
        "since": datetime.date(2024, 5, 1),
        "limit": 4,
    }


@pytest.mark.parametrize("option", [FORM, MODEL])
def test_invalid_query_lists_errors_by_parameter(option):
    result = query.validate_query(
        notebook(option), "region=west&since=2024-13-01&limit=0"
    )
    assert not result.is_valid
    assert result.cleaned == {}
    assert sorted(result.errors) == ["limit", "region", "since"]
    assert all(messages for messages in result.errors.values())


@pytest.mark.parametrize("option", [FORM, MODEL])
def test_missing_required_parameters_are_errors(option):
    result = query.validate_query(notebook(option), "")
    assert sorted(result.errors) == ["region", "since"]


def test_form_wide_errors_are_filed_under_all():
    result = query.validate_query(notebook(), "region=north&since=2200-01-02")
    assert result.errors == {"__all__": ["Reports end in 2100."]}
    assert result.messages() == [(None, "Reports end in 2100.")]


class CheckedModel(pydantic.BaseModel):
    start: datetime.date
    end: datetime.date

    @pydantic.model_validator(mode="after")
    def ordered(self):
        if self.end < self.start:
            raise ValueError("end is before start")
        return self


def test_model_wide_errors_are_filed_under_all():
    result = query.validate_query(
        notebook(CheckedModel), "start=2024-05-02&end=2024-05-01"
    )
    assert list(result.errors) == ["__all__"]
    assert "end is before start" in result.errors["__all__"][0]


def test_a_notebook_without_the_option_validates_nothing():
    assert query.validate_query(notebook(None), "anything=at&all") is None


@pytest.mark.parametrize("option", [FORM, MODEL])
def test_the_last_value_of_a_repeated_parameter_counts(option):
    # As in the websocket's URL, where marimo's frontend keeps the last one.
    result = query.validate_query(
        notebook(option), "region=west&region=north&since=2024-05-01"
    )
    assert result.cleaned["region"] == "north"


class StrictModel(pydantic.BaseModel, extra="forbid"):
    region: str


def test_marimos_own_parameters_never_reach_the_form():
    result = query.validate_query(
        notebook(StrictModel),
        "region=north&session_id=s_abc123&access_token=x&refresh_token=y",
    )
    assert result.cleaned == {"region": "north"}


@pytest.mark.parametrize("option", [FORM, MODEL])
@pytest.mark.parametrize(
    "garbage",
    [
        b"region=%ff%fe&since=2024-05-01",  # not UTF-8 once decoded
        b"region=\xff\xfe&since=2024-05-01",  # raw bytes, not even encoded
        "region=%&since=%zz",
        "region=nor%00th&since=2024-05-01",
        "=&&==&region",
        "region=" + "x" * 100_000,
    ],
)
def test_garbage_is_an_invalid_query_not_an_exception(option, garbage):
    result = query.validate_query(notebook(option), garbage)
    assert not result.is_valid
    assert "region" in result.errors


def test_too_many_parameters_is_an_invalid_query():
    many = "&".join(f"p{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS))
    result = query.validate_query(notebook(), many + "&" + VALID)
    assert result.errors == {"__all__": [query.TOO_MANY]}


def test_a_form_alone_does_not_import_pydantic():
    code = (
        "import sys, django\n"
        "django.setup()\n"
        "from django import forms\n"
        "from django_notebooks import query, registry\n"
        "class Form(forms.Form):\n"
        "    region = forms.CharField()\n"
        "nb = registry.Notebook('q', None, 'Q', query=Form)\n"
        "assert query.validate_query(nb, 'region=north').is_valid\n"
        "assert query.validate_query(nb, 'region=').errors\n"
        "assert 'pydantic' not in sys.modules, 'pydantic was imported'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        check=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ("tests.notebooks.query_forms.Nope", ImportError),
        ("nowhere.at.all", ImportError),
        ("tests.notebooks.query_forms.REGIONS", TypeError),
        (forms.CharField, TypeError),
        (SalesQuery(), TypeError),
    ],
)
def test_an_unusable_option_raises(option, error):
    with pytest.raises(error):
        query.validate_query(notebook(option), VALID)


def test_the_notice_names_each_field_and_quotes_what_was_sent_as_text():
    result = query.validate_query(notebook(), "region=<img src=x onerror=alert(1)>")
    notice = query.InvalidQuery(notebook(), result).notice
    assert notice.title == "Invalid query parameters"
    # The page's script sets it as text (tests/browser/test_notices.py).
    assert "region: " in notice.text
    assert "<img src=x onerror=alert(1)>" in notice.text


# request.meta


def test_session_meta_holds_the_cleaned_query_over_the_hooks_key():
    def hook(scope):
        return {"site": "tests", "query": "from the hook"}

    with override_settings(
        DJANGO_NOTEBOOKS={**settings.DJANGO_NOTEBOOKS, "REQUEST_META": hook}
    ):
        _user, meta = context.session_context(
            None, {"query_string": VALID.encode()}, notebook()
        )
        assert meta == {
            "site": "tests",
            "query": {
                "region": "north",
                "since": datetime.date(2024, 5, 1),
                "limit": 4,
            },
        }
        # Without a query option the hook's key is left alone.
        _user, meta = context.session_context(None, {}, notebook(None))
        assert meta["query"] == "from the hook"


def test_an_invalid_session_query_raises_before_the_hook_runs():
    calls = []
    with override_settings(
        DJANGO_NOTEBOOKS={**settings.DJANGO_NOTEBOOKS, "REQUEST_META": calls.append}
    ):
        with pytest.raises(query.InvalidQuery) as raised:
            context.session_context(None, {"query_string": b"region=x"}, notebook())
    assert calls == []
    assert sorted(raised.value.result.errors) == ["region", "since"]


# The page


@with_query_notebooks()
async def test_invalid_query_gets_the_400_page_listing_each_error():
    client = await logged_in_client("alice")
    response = await client.get(
        "/notebooks/q-form/?region=<script>alert(1)</script>&since=tomorrow&limit=0"
    )
    assert response.status_code == 400
    assert "django_notebooks/query_invalid.html" in [t.name for t in response.templates]
    page = response.content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for name in ("region", "since", "limit"):
        assert f"<code>{name}</code>" in page
    assert "Enter a valid date." in page
    assert 'href="/notebooks/q-form/"' in page
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"


@with_query_notebooks()
@pytest.mark.parametrize("slug", ["q-form", "q-model", "lab/demo"])
async def test_valid_query_serves_the_page(slug):
    client = await logged_in_client("alice")
    response = await client.get(f"/notebooks/{slug}/?{VALID}")
    assert response.status_code == 200
    assert "<marimo-" in response.content.decode()


@with_query_notebooks()
@pytest.mark.parametrize("slug", ["q-model", "lab/demo"])
async def test_every_kind_of_entry_refuses_an_invalid_query(slug):
    client = await logged_in_client("alice")
    response = await client.get(f"/notebooks/{slug}/?region=west")
    assert response.status_code == 400


@with_query_notebooks()
@pytest.mark.parametrize(
    "garbage",
    [
        "region=%ff%fe&since=2024-05-01",
        "region=north&region=%C0%AF&since=%",
        "region=nor%00th&since=2024-05-01",
        "&".join(["region=north"] * 1500),
        "since=2024-05-01&region=" + "%E2%82" * 2000,
    ],
)
async def test_garbage_queries_get_400_never_500(garbage):
    client = await logged_in_client("alice")
    response = await client.get(f"/notebooks/q-form/?{garbage}")
    assert response.status_code == 400


@with_query_notebooks()
async def test_access_is_decided_before_the_query_is_looked_at():
    # Anonymous users learn nothing about the parameters: they log in first.
    response = await AsyncClient().get("/notebooks/q-form/?region=west")
    assert response.status_code == 302
    # Public notebooks check the query for everyone.
    response = await AsyncClient().get("/notebooks/q-public/?region=west")
    assert response.status_code == 400


@with_query_notebooks()
async def test_the_redirect_to_the_slash_keeps_the_query_for_the_check():
    client = await logged_in_client("alice")
    response = await client.get("/notebooks/q-form?region=west")
    assert response.status_code == 302
    assert response["Location"] == "/notebooks/q-form/?region=west"


@with_query_notebooks()
async def test_only_the_page_checks_the_query():
    # Assets and files below the page carry no notebook parameters.
    client = await logged_in_client("alice")
    response = await client.get("/notebooks/q-form/health?region=west")
    assert response.status_code == 200


async def test_the_400_page_template_can_be_overridden(tmp_path, settings):
    (tmp_path / "django_notebooks").mkdir()
    (tmp_path / "django_notebooks" / "query_invalid.html").write_text(
        "OURS {{ notebook.slug }}{% for name, messages in errors %} {{ name }}"
        "{% endfor %}"
    )
    settings.TEMPLATES = [
        {**settings.TEMPLATES[0], "DIRS": [tmp_path, *settings.TEMPLATES[0]["DIRS"]]}
    ]
    with with_query_notebooks():
        client = await logged_in_client("alice")
        response = await client.get("/notebooks/q-form/?since=2024-05-01")
    assert response.status_code == 400
    assert response.content.decode() == "OURS q-form region"


# The kernel websocket


@with_query_notebooks()
async def test_websocket_with_an_invalid_query_closes_with_a_notice():
    sessionid = await login("alice")
    ws = communicator(
        f"/notebooks/q-form/ws?session_id={new_session_id()}&region=<b>west</b>",
        sessionid=sessionid,
    )
    try:
        connected, _ = await ws.connect(timeout=10)
        assert connected  # accepted, so that the page can say why
        notice = json.loads(await ws.receive_from(timeout=10))
        closed = await ws.receive_output(timeout=10)
    finally:
        await ws.disconnect()
    assert notice["op"] == notices.OP
    assert notice["data"]["title"] == "Invalid query parameters"
    # Plain text: the page sets it as text, so what was sent cannot be HTML.
    assert "region: " in notice["data"]["text"]
    assert "since: " in notice["data"]["text"]
    assert closed == {
        "type": "websocket.close",
        "code": consumers.CLOSE_BAD_REQUEST,
        "reason": "MARIMO_NO_SESSION",
    }


async def test_websocket_refuses_before_looking_at_the_query():
    sessionid = await login("bob")
    with override_settings(
        DJANGO_NOTEBOOKS={
            **settings.DJANGO_NOTEBOOKS,
            "NOTEBOOKS": {
                "q-form": {"path": QUERY_NOTEBOOK, "query": FORM, "groups": ["x"]}
            },
        }
    ):
        ws = communicator(
            f"/notebooks/q-form/ws?session_id={new_session_id()}&region=west",
            sessionid=sessionid,
        )
        try:
            connected, code = await ws.connect(timeout=10)
        finally:
            await ws.disconnect()
    assert (connected, code) == (False, consumers.CLOSE_REFUSED)


@with_query_notebooks()
async def test_the_notebook_gets_the_cleaned_values(close_marimo_sessions):
    sessionid = await login("alice")
    frames = await first_run(
        f"/notebooks/q-model/ws?session_id={new_session_id()}&{VALID}", sessionid
    )
    seen = printed(frames, "QUERY")
    assert seen["query"] == {"region": "north", "since": "2024-05-01", "limit": 4}
    assert seen["types"] == {"region": "str", "since": "date", "limit": "int"}
    assert seen["meta_keys"] == ["query", "site"]


# Check E013


@pytest.mark.parametrize(
    ("option", "text"),
    [
        ("tests.notebooks.query_forms.Nope", "Nope"),
        ("nowhere.at.all", "nowhere"),
        ("tests.notebooks.query_forms.REGIONS", "must be a Django Form"),
        (forms.CharField, "must be a Django Form"),
    ],
)
@pytest.mark.parametrize("where", ["NOTEBOOKS", "DIRECTORIES"])
def test_e013_an_unusable_query_option(option, text, where):
    path = QUERY_NOTEBOOK if where == "NOTEBOOKS" else NOTEBOOKS_DIR / "lab"
    with override_settings(
        DJANGO_NOTEBOOKS={where: {"sales": {"path": path, "query": option}}}
    ):
        [message] = checks.check_query_options()
    assert message.id == "django_notebooks.E013"
    assert "'sales'" in message.msg
    assert text in message.msg
    assert "Form" in message.hint


def test_usable_query_options_pass_the_check():
    with with_query_notebooks():
        assert checks.check_query_options() == []


# The documentation's examples


def documented(first_line: str) -> dict:
    """Run the code block of docs/topics/query-parameters.md that starts with
    ``first_line``; its globals."""
    text = (ROOT / "docs" / "topics" / "query-parameters.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    [code] = [block for block in blocks if block.startswith(first_line)]
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(code, "query-parameters.md", "exec", dont_inherit=True), namespace)
    return namespace


@pytest.mark.parametrize("first_line", ["# reports/forms.py", "# reports/queries.py"])
def test_the_documented_examples_validate(first_line):
    cls = documented(first_line)["SalesQuery"]
    result = query.validate_query(notebook(cls), "region=north&since=2025-01-01")
    assert result.cleaned == {
        "region": "north",
        "since": datetime.date(2025, 1, 1),
        "limit": None,
    }
    result = query.validate_query(notebook(cls), "region=west&since=2025-01-01")
    assert list(result.errors) == ["region"]


def test_the_documented_form_checks_the_year():
    cls = documented("# reports/forms.py")["SalesQuery"]
    result = query.validate_query(notebook(cls), "region=north&since=2019-12-31")
    assert result.errors == {"__all__": ["Reports start in 2020."]}
