import marimo

app = marimo.App()


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def _(mo):
    slider = mo.ui.slider(1, 10, value=3, label="n")
    slider
    return (slider,)


@app.cell
def _(mo, slider):
    request = mo.app_meta().request
    user = request.user if request else None
    mo.md(f"square={slider.value**2} user={user['username'] if user else None}")
    return


if __name__ == "__main__":
    app.run()
