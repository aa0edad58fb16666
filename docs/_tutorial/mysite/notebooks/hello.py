import marimo

app = marimo.App()


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def _(mo):
    request = mo.app_meta().request
    user = request.user if request is not None else None
    if user and user["is_authenticated"]:
        greeting = mo.md(f"# Hello, {user['display_name']}!")
    else:
        greeting = mo.md("# Hello, stranger!")
    greeting
    return


@app.cell
def _(mo):
    number = mo.ui.slider(1, 10, value=3, label="Pick a number")
    number
    return (number,)


@app.cell
def _(mo, number):
    mo.md(f"{number.value} squared is {number.value**2}.")
    return


if __name__ == "__main__":
    app.run()
