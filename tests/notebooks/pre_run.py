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
    # Counts its runs in the file the tests name (a line with its kernel's
    # pid each), and takes as long as they say.
    _runs = os.environ.get("DJANGO_NOTEBOOKS_TEST_RUNS")
    if _runs:
        with open(_runs, "a") as _file:
            _file.write(f"{os.getpid()}\n")
    time.sleep(float(os.environ.get("DJANGO_NOTEBOOKS_TEST_RUN_SECONDS") or 0))
    return


@app.cell
def _(mo):
    slider = mo.ui.slider(1, 10, value=3, label="n")
    slider
    return (slider,)


@app.cell
def _(mo, slider):
    mo.md(f"cube={slider.value**3}")
    return


if __name__ == "__main__":
    app.run()
