"""The notebook the kernel host runs once before it forks any kernel
process, so that every kernel process starts with marimo's lazy imports,
caches and first-use work done (kernels/child.py)."""

import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def _(mo):
    slider = mo.ui.slider(1, 10, value=3, label="**warm** `up`")
    slider
    return (slider,)


@app.cell
def _(mo, slider):
    mo.md(f"*warm*: {slider.value}")
    return


if __name__ == "__main__":
    app.run()
