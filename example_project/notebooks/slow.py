import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    import time

    import marimo as mo

    return mo, time


@app.cell
def _(mo):
    mo.md(
        """
        # Slow report

        Its data takes two seconds to load, as a slow query would. The
        notebook has a snapshot (see the settings), so its page shows the
        last snapshot's outputs at once, while your own kernel starts behind
        them and runs the notebook for you. The region picker works once
        your kernel is ready.
        """
    )
    return


@app.cell
def _(time):
    # Stands for a slow query or API call. This cell runs once per session:
    # picking a region below reruns only the cells that read the picker.
    time.sleep(2)
    # Made-up figures: units sold per region and month.
    UNITS = {
        "North": [120, 60, 40, 95, 130, 110],
        "South": [45, 150, 70, 80, 60, 125],
        "East": [80, 25, 110, 90, 70, 100],
        "West": [30, 95, 55, 65, 120, 85],
    }
    MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun"]
    return MONTHS, UNITS


@app.cell
def _(UNITS, mo):
    region = mo.ui.dropdown(list(UNITS), value="North", label="Region")
    region
    return (region,)


@app.cell
def _(MONTHS, UNITS, mo, region):
    _units = UNITS[region.value]
    _rows = "\n".join(
        f"| {month} | {count} | {'█' * (count // 10)} |"
        for month, count in zip(MONTHS, _units, strict=True)
    )
    mo.md(
        f"**{sum(_units)}** units sold in the {region.value}, January to June.\n\n"
        "| Month | Units | |\n| --- | ---: | --- |\n" + _rows
    )
    return


if __name__ == "__main__":
    app.run()
