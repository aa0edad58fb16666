import marimo

app = marimo.App()


@app.cell
def _():
    import marimo as mo

    mo.md("lab demo notebook")
    return


if __name__ == "__main__":
    app.run()
