import marimo

app = marimo.App()


@app.cell
def _():
    import json

    import marimo as mo

    return json, mo


@app.cell
def _(mo):
    slider = mo.ui.slider(1, 10, value=3, label="n")
    slider
    return (slider,)


@app.cell
def _(json, mo, slider):
    # Depends on the slider, so that a widget change (a kernel call, with the
    # session's meta) runs it again.
    request = mo.app_meta().request
    query = request.meta.get("query") if request else None
    seen = {
        "run": slider.value,
        "query": query,
        "types": {name: type(value).__name__ for name, value in (query or {}).items()},
        "meta_keys": sorted(request.meta) if request else None,
        "query_params": dict(mo.query_params().to_dict()),
    }
    mo.md("QUERY " + json.dumps(seen, sort_keys=True, default=str))
    return


if __name__ == "__main__":
    app.run()
