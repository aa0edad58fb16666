import marimo

__generated_with = "0.25.2"
app = marimo.App()

with app.setup:
    import marimo as mo


@app.cell
def _():
    # How many outputs to send, and how large each is (kilobytes): at first
    # as the page's query says (?count=30&size_kb=64), then as changed.
    query = mo.query_params()
    count = mo.ui.number(
        0, 100_000, value=int(query.get("count") or 0), label="outputs"
    )
    size_kb = mo.ui.number(
        1, 64 * 1024, value=int(query.get("size_kb") or 1024), label="KB each"
    )
    mo.hstack([count, size_kb])
    return count, size_kb


@app.cell
def _(count, size_kb):
    # One output after another, each replacing the last: every one is a
    # frame of its own on the page's websocket.
    filler = "x" * (size_kb.value * 1024)
    for number in range(1, count.value + 1):
        mo.output.replace(
            mo.Html(f"<pre>output {number} of {count.value}\n{filler}</pre>")
        )
    mo.md(f"sent {count.value} outputs")
    return


if __name__ == "__main__":
    app.run()
