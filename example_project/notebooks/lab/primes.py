import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    import itertools

    import marimo as mo

    return itertools, mo


@app.cell
def _(mo):
    mo.md("""
    # Primes

    A notebook from the `lab` directory: every marimo notebook dropped
    into `example_project/notebooks/lab/` is served at
    `/notebooks/lab/<file name>/` to logged-in users, without a restart.
    """)
    return


@app.cell
def _(mo):
    limit = mo.ui.slider(10, 500, step=10, value=100, show_value=True)
    mo.md(f"Primes up to {limit}")
    return (limit,)


@app.function
def primes_up_to(largest):
    """The sieve of Eratosthenes."""
    is_prime = [False, False] + [True] * (largest - 1)
    for number in range(2, int(largest**0.5) + 1):
        if is_prime[number]:
            for multiple in range(number * number, largest + 1, number):
                is_prime[multiple] = False
    return [number for number, prime in enumerate(is_prime) if prime]


@app.cell
def _(itertools, limit, mo):
    _primes = primes_up_to(limit.value)
    _twins = [(p, q) for p, q in itertools.pairwise(_primes) if q - p == 2]
    mo.md(
        f"""
        There are **{len(_primes)}** primes up to {limit.value}, and
        **{len(_twins)}** pairs of twin primes.

        {", ".join(map(str, _primes))}
        """
    )
    return


if __name__ == "__main__":
    app.run()
