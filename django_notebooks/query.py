"""Query parameters validated before a notebook runs.

A notebook entry may name a Django :class:`~django.forms.Form` or a pydantic
model in its ``query`` option. The page's query string is validated with it
twice: when the page loads (an invalid query gets a 400 page listing the
errors) and when the kernel websocket opens (an invalid query closes it with
a notice), since the websocket is what runs the notebook. The cleaned values
reach notebook code as ``mo.app_meta().request.meta["query"]``, as Python
objects (a ``DateField`` gives a ``date``).

marimo's frontend copies the page's query string into the websocket's URL,
but one value per name (the last), and adds ``session_id``. Both checks
therefore look at the same thing: the last value of each name, without
marimo's own parameters.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.core.exceptions import TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render

from django_notebooks import conf, notices
from django_notebooks.marimo import routes
from django_notebooks.notices import Notice
from django_notebooks.registry import Notebook

# Where errors that belong to no single parameter are filed, as in Django forms.
NON_FIELD_ERRORS = "__all__"
TOO_MANY = "Too many query parameters."
TEMPLATE = "django_notebooks/query_invalid.html"


@dataclass(frozen=True)
class QueryResult:
    """The outcome of validating a notebook's query parameters."""

    # The form's cleaned_data, or the pydantic model dumped to a dict.
    cleaned: dict[str, Any] = field(default_factory=dict)
    # Messages by parameter name (NON_FIELD_ERRORS for the others).
    errors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def is_valid(self) -> bool:
        return not self.errors

    def messages(self) -> list[tuple[str | None, str]]:
        """``(parameter name or None, message)`` for every error."""
        return [
            (None if name == NON_FIELD_ERRORS else name, message)
            for name, messages in self.errors.items()
            for message in messages
        ]


class InvalidQuery(Exception):
    """A notebook session refused because of its query parameters."""

    def __init__(self, notebook: Notebook, result: QueryResult) -> None:
        super().__init__(f"Invalid query parameters for notebook {notebook.slug!r}.")
        self.notebook = notebook
        self.result = result

    @property
    def notice(self) -> Notice:
        """What the page says: each problem, as text (never HTML: messages
        may quote the input, such as ChoiceField's)."""
        return notices.invalid_query(list(self.result.messages()))


def is_pydantic_model(cls: Any) -> bool:
    """Whether ``cls`` is a pydantic (v2) model class. pydantic is not
    imported here: a module that defines a model has imported it already."""
    pydantic = sys.modules.get("pydantic")
    return (
        pydantic is not None
        and isinstance(cls, type)
        and issubclass(cls, pydantic.BaseModel)
    )


def resolve(option: Any) -> type:
    """The Form or pydantic model class a ``query`` option names (the class,
    or its dotted path).

    Raises ``ImportError`` for a dotted path that does not import and
    ``TypeError`` for anything else that is neither (check E013 says so at
    startup).
    """
    cls = conf.import_object(option)
    if isinstance(cls, type) and (
        issubclass(cls, forms.BaseForm) or is_pydantic_model(cls)
    ):
        return cls
    raise TypeError(
        f"must be a Django Form or a pydantic BaseModel subclass, not {cls!r}"
    )


def query_class(notebook: Notebook) -> type | None:
    """The Form or pydantic model the notebook's ``query`` option names."""
    return None if notebook.query is None else resolve(notebook.query)


def notebook_parameters(source: QueryDict | bytes | str) -> QueryDict:
    """The parameters a notebook's query validates: the last value of each
    name, without marimo's own (see the module docstring).

    Raises ``TooManyFieldsSent`` beyond ``DATA_UPLOAD_MAX_NUMBER_FIELDS``.
    """
    # Django's parser: invalid percent-encoded UTF-8 becomes U+FFFD, not an error.
    given = source if isinstance(source, QueryDict) else QueryDict(source)
    parameters = QueryDict(mutable=True)
    for name, values in given.lists():
        if name not in routes.QUERY_PARAMETERS:
            parameters.setlist(name, values[-1:])
    return parameters


def validate_query(
    notebook: Notebook, source: QueryDict | bytes | str
) -> QueryResult | None:
    """Validate ``source`` (``request.GET`` or a raw query string) with the
    notebook's ``query`` class; ``None`` when the notebook has none.

    Synchronous: a form's fields and clean methods may query the database.
    """
    cls = query_class(notebook)
    if cls is None:
        return None
    try:
        parameters = notebook_parameters(source)
    except TooManyFieldsSent:
        return QueryResult(errors={NON_FIELD_ERRORS: [TOO_MANY]})
    if is_pydantic_model(cls):
        return _validate_with_model(cls, parameters)
    form = cls(data=parameters)
    if form.is_valid():
        return QueryResult(cleaned=dict(form.cleaned_data))
    return QueryResult(
        errors={
            name: [error["message"] for error in errors]
            for name, errors in form.errors.get_json_data().items()
        }
    )


def _validate_with_model(model: Any, parameters: QueryDict) -> QueryResult:
    import pydantic  # only projects that name a pydantic model need it

    try:
        # Strings, as a form gets them: pydantic's lax mode turns "3" into 3
        # and "2024-05-01" into a date.
        instance = model.model_validate(dict(parameters.items()))
    except pydantic.ValidationError as error:
        errors: dict[str, list[str]] = {}
        for detail in error.errors(include_url=False, include_input=False):
            name = str(detail["loc"][0]) if detail["loc"] else NON_FIELD_ERRORS
            errors.setdefault(name, []).append(detail["msg"])
        return QueryResult(errors=errors)
    return QueryResult(cleaned=instance.model_dump())


def session_query(notebook: Notebook, query_string: bytes | str) -> dict[str, Any]:
    """The cleaned values for a new session's ``request.meta["query"]``.

    Raises :class:`InvalidQuery` when the query does not validate.
    """
    result = validate_query(notebook, query_string)
    assert result is not None, "only for notebooks with a query option"
    if not result.is_valid:
        raise InvalidQuery(notebook, result)
    return result.cleaned


def page_refusal(request: HttpRequest, notebook: Notebook) -> HttpResponse | None:
    """The 400 page listing why a notebook page's query parameters were
    refused, or ``None`` when they are valid (or the notebook checks none).

    Synchronous: validation and the template may query the database.
    """
    result = validate_query(notebook, request.META.get("QUERY_STRING", ""))
    if result is None or result.is_valid:
        return None
    return render(
        request,
        TEMPLATE,
        {
            "notebook": notebook,
            "errors": [
                (None if name == NON_FIELD_ERRORS else name, messages)
                for name, messages in result.errors.items()
            ],
            "page_url": request.path,
        },
        status=400,
    )
