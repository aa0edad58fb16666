"""What a cell sees of its thread's event loop: tests/test_marimo_contract.py
checks that marimo runs cells through the bridge's executor (orm.py)."""

import marimo

app = marimo.App()


@app.cell
def _():
    import asyncio
    import json

    import marimo as mo

    return asyncio, json, mo


@app.cell
def _(asyncio, json, mo):
    mo.md("LOOP-SYNC " + json.dumps(asyncio._get_running_loop() is not None))
    return


@app.cell
async def _(asyncio, json, mo):
    await asyncio.sleep(0)
    mo.md("LOOP-ASYNC " + json.dumps(asyncio._get_running_loop() is not None))
    return


if __name__ == "__main__":
    app.run()
