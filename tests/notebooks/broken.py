import marimo

app = marimo.App()

with app.setup:
    import math


@app.function
def halve(number):
    return number / 2


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def divide():
    # A named cell that raises.
    ratio = math.pi / 0
    return (ratio,)


@app.cell
def _(ratio):
    # Never runs: an ancestor raised.
    ratio + 1
    return


@app.cell
def _():
    raise ValueError("this cell fails on its own")
    return


@app.cell
def _(mo):
    mo.md(f"half of four is {halve(4)}")
    return


if __name__ == "__main__":
    app.run()
