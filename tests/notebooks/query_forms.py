"""The query classes the query-parameter notebooks name (tests/settings.py)."""

from __future__ import annotations

import datetime

import pydantic
from django import forms

REGIONS = [("north", "North"), ("south", "South")]


class SalesQuery(forms.Form):
    """A report's parameters, the Django way."""

    region = forms.ChoiceField(choices=REGIONS)
    since = forms.DateField()
    limit = forms.IntegerField(min_value=1, max_value=100, required=False)

    def clean(self):
        cleaned = super().clean()
        since = cleaned.get("since")
        if since is not None and since > datetime.date(2100, 1, 1):
            raise forms.ValidationError("Reports end in 2100.")
        return cleaned


class SalesModel(pydantic.BaseModel):
    """The same parameters as a pydantic model."""

    region: str = pydantic.Field(pattern="^(north|south)$")
    since: datetime.date
    limit: int | None = pydantic.Field(default=None, ge=1, le=100)
