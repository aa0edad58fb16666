import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def _():
    # Made-up numbers; a real report would query the database or an API.
    _columns = ("month", "region", "product", "units", "revenue")
    SALES = [
        dict(zip(_columns, row, strict=True))
        for row in [
            ("2025-01", "North", "Widgets", 120, 2400),
            ("2025-01", "South", "Gadgets", 45, 3150),
            ("2025-01", "East", "Widgets", 80, 1600),
            ("2025-01", "West", "Gizmos", 30, 2700),
            ("2025-02", "North", "Gadgets", 60, 4200),
            ("2025-02", "South", "Widgets", 150, 3000),
            ("2025-02", "East", "Gizmos", 25, 2250),
            ("2025-02", "West", "Widgets", 95, 1900),
            ("2025-03", "North", "Gizmos", 40, 3600),
            ("2025-03", "South", "Gadgets", 70, 4900),
            ("2025-03", "East", "Widgets", 110, 2200),
            ("2025-03", "West", "Gadgets", 55, 3850),
        ]
    ]
    return (SALES,)


@app.cell
def _(mo):
    _request = mo.app_meta().request
    _user = (_request.user if _request else None) or {}
    _groups = ", ".join(_user.get("groups", [])) or "no groups"
    mo.md(
        f"""
        # Sales report

        Only members of the **sales** group can open this notebook; you are
        **{_user.get("username")}** ({_groups}).
        """
    )
    return


@app.cell
def _(SALES, mo):
    _regions = sorted({row["region"] for row in SALES})
    # A page may pick the region in the URL (?region=North), as the demo's
    # embedding page does with {% notebook "sales" region="North" %}.
    _asked = mo.query_params().get("region")
    region = mo.ui.dropdown(
        ["All regions", *_regions],
        value=_asked if _asked in _regions else "All regions",
        label="Region",
    )
    min_revenue = mo.ui.slider(0, 5000, step=250, value=0, label="Minimum revenue")
    mo.hstack([region, min_revenue], justify="start", gap=2)
    return min_revenue, region


@app.cell
def _(SALES, min_revenue, region):
    rows = [
        row
        for row in SALES
        if region.value in ("All regions", row["region"])
        and row["revenue"] >= min_revenue.value
    ]
    return (rows,)


@app.cell
def _(mo, rows):
    _units = sum(row["units"] for row in rows)
    _revenue = sum(row["revenue"] for row in rows)
    _totals = mo.md(f"**{len(rows)} sales**: {_units:,} units, revenue {_revenue:,}.")
    _table = mo.ui.table(rows, selection=None) if rows else mo.md("_No sales match._")
    mo.vstack([_totals, _table])
    return


if __name__ == "__main__":
    app.run()
