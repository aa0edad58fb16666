import marimo

__generated_with = "0.25.2"
app = marimo.App()

with app.setup:
    import os

    import marimo as mo


@app.cell
def _():
    # What the kernel keeps: the first slider's value, set before a restart
    # of the web server, shows in the output after it, when the second
    # slider makes the output cell run again.
    kept = mo.ui.slider(1, 10, value=3, label="kept")
    kept
    return (kept,)


@app.cell
def _():
    moved = mo.ui.slider(1, 10, value=1, label="moved")
    moved
    return (moved,)


@app.cell
def _(kept, moved):
    mo.md(f"kept={kept.value} moved={moved.value} pid={os.getpid()}")
    return


if __name__ == "__main__":
    app.run()
