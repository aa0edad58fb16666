import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def _(mo):
    # Public notebooks are served to anonymous visitors too: their
    # request.user has is_authenticated False and an empty username.
    _request = mo.app_meta().request
    _user = (_request.user if _request else None) or {}
    _name = _user.get("username") or "visitor"
    mo.md(
        f"""
        # Savings calculator

        Hello, **{_name}**. This notebook is public: no login needed.
        Save every month, earn interest every month, and see where you are
        year by year.
        """
    )
    return


@app.cell
def _(mo):
    deposit = mo.ui.slider(0, 1000, step=50, value=200, label="Monthly deposit")
    rate = mo.ui.slider(0, 10, step=0.5, value=4, label="Yearly interest (%)")
    years = mo.ui.slider(1, 30, value=10, label="Years")
    mo.vstack([deposit, rate, years])
    return deposit, rate, years


@app.function
def yearly_balances(deposit, yearly_rate_percent, years):
    """(year, paid in, balance) at the end of each year."""
    monthly_rate = yearly_rate_percent / 100 / 12
    balance = 0.0
    rows = []
    for year in range(1, years + 1):
        for _month in range(12):
            balance = balance * (1 + monthly_rate) + deposit
        rows.append((year, deposit * 12 * year, balance))
    return rows


@app.cell
def _(deposit, mo, rate, years):
    _rows = yearly_balances(deposit.value, rate.value, years.value)
    _largest = max(_rows[-1][2], 1)
    _lines = [
        f"| {_year} | {_paid:,.0f} | {_balance:,.0f} | {_balance - _paid:,.0f} "
        f"| {'█' * round(24 * _balance / _largest)} |"
        for _year, _paid, _balance in _rows
    ]
    mo.md(
        f"After **{years.value} years** you have **{_rows[-1][2]:,.0f}**, "
        f"of which **{_rows[-1][2] - _rows[-1][1]:,.0f}** is interest.\n\n"
        "| Year | Paid in | Balance | Interest | |\n"
        "|---:|---:|---:|---:|:---|\n" + "\n".join(_lines)
    )
    return


if __name__ == "__main__":
    app.run()
