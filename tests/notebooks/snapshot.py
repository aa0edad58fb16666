"""A notebook for snapshots (tests/test_snapshots.py, tests/e2e/): it shows
how many auth groups the database holds (a figure a model save changes),
takes as long as DJANGO_NOTEBOOKS_TEST_RUN_SECONDS says, and has a widget."""

import marimo

app = marimo.App()


@app.cell
def _():
    import os
    import time

    import marimo as mo

    return mo, os, time


@app.cell
def _(os, time):
    time.sleep(float(os.environ.get("DJANGO_NOTEBOOKS_TEST_RUN_SECONDS") or 0))
    try:
        from django.contrib.auth.models import Group

        figure = Group.objects.count()
    except Exception:  # no database here (the in-process tests' is in memory)
        figure = "none"
    return (figure,)


@app.cell
def _(mo):
    slider = mo.ui.slider(1, 10, value=4, label="n")
    slider
    return (slider,)


@app.cell
def _(figure, mo, slider):
    mo.md(f"groups={figure} square={slider.value**2}")
    return


if __name__ == "__main__":
    app.run()
