import marimo

app = marimo.App()


@app.cell
def _():
    import json

    import marimo as mo

    request = mo.app_meta().request
    seen = {
        "user": request.user if request else None,
        "meta": request.meta if request else None,
        "headers": sorted(dict(request.headers).keys()) if request else None,
        "cookies": sorted(dict(request.cookies).keys()) if request else None,
        "path": request.url["path"] if request else None,
    }
    mo.md("WHOAMI " + json.dumps(seen, sort_keys=True, default=str))
    return


if __name__ == "__main__":
    app.run()
