import marimo

__generated_with = "0.25.2"
app = marimo.App()

with app.setup:
    import marimo as mo

    # About 25-35 ms of pure Python on a 2020s server core: enough that the
    # kernel's work, not the request handling, dominates an interaction.
    ROUNDS = 300_000


@app.function
def work(n: int, rounds: int = ROUNDS) -> int:
    """A fixed amount of CPU-bound work whose result depends on ``n`` (the
    benchmark computes the expected answers with this same function)."""
    total = n
    for i in range(rounds):
        total = (total * 31 + i) % 1_000_003
    return total


@app.cell
def _():
    slider = mo.ui.slider(1, 10, value=3, label="n")
    slider
    return (slider,)


@app.cell
def _(slider):
    mo.md(f"cpu n={slider.value} result={work(slider.value)}")
    return


if __name__ == "__main__":
    app.run()
