"""Query parameters of the example's notebooks, validated by django_notebooks
before the notebook runs (the ``query`` key of a DJANGO_NOTEBOOKS entry)."""

from django import forms

REGIONS = ["North", "South", "East", "West"]


class OrdersQuery(forms.Form):
    """``/notebooks/orders/?region=North&since=2025-02-01``; all optional."""

    region = forms.ChoiceField(
        choices=[("", "All regions"), *((name, name) for name in REGIONS)],
        required=False,
    )
    since = forms.DateField(required=False)
    until = forms.DateField(required=False)

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and until < since:
            raise forms.ValidationError("'until' is before 'since'.")
        return cleaned
