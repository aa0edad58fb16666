import marimo

app = marimo.App()


@app.cell
def _():
    import marimo as mo

    # A virtual file: marimo keeps it in memory and serves it at ./@file/...
    mo.download(data=b"0123456789" * 50_000, filename="digits.txt", label="Download")
    return


if __name__ == "__main__":
    app.run()
