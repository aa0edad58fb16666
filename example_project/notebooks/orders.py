import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    import datetime

    import marimo as mo

    return datetime, mo


@app.cell
def _(datetime):
    # Made-up orders; a real notebook would query the database.
    ORDERS = [
        {
            "day": datetime.date(2025, 1, 1) + datetime.timedelta(days=9 * n),
            "region": ["North", "South", "East", "West"][n % 4],
            "amount": 100 + (37 * n) % 400,
        }
        for n in range(30)
    ]
    return (ORDERS,)


@app.cell
def _(mo):
    # The URL's parameters, validated by demo.forms.OrdersQuery before this
    # notebook ran: an invalid link never gets here, it gets a 400 page.
    _request = mo.app_meta().request
    query = (_request.meta.get("query") if _request else None) or {}
    return (query,)


@app.cell
def _(ORDERS, mo, query):
    # Dates arrive as datetime.date, so they compare with the orders' days.
    since, until, region = query.get("since"), query.get("until"), query.get("region")
    rows = [
        order
        for order in ORDERS
        if (not since or order["day"] >= since)
        and (not until or order["day"] <= until)
        and region in ("", None, order["region"])
    ]
    mo.vstack(
        [
            mo.md(
                f"""
                # Orders

                **{len(rows)} orders** from {since or "the start"} to
                {until or "today"}, in {region or "every region"}.

                This notebook's URL takes `region`, `since` and `until`. Try
                [North since February](?region=North&since=2025-02-01), or a
                [link with a bad date](?since=2025-02-30), which gets a 400
                page instead of the notebook.
                """
            ),
            mo.ui.table(
                [{**order, "day": order["day"].isoformat()} for order in rows],
                selection=None,
            ),
        ]
    )
    return


if __name__ == "__main__":
    app.run()
