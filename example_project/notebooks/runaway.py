import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    import os
    import signal

    import marimo as mo

    return mo, os, signal


@app.cell
def _(mo, os):
    mo.md(f"""
    # Misbehaving cells

    This notebook's kernel runs in a process of its own (pid {os.getpid()}),
    not in the web server (pid {os.getppid()} is the fork server it came
    from). Its limits in the settings: a cell may run 10 seconds and
    allocate 256 MB. Pick what the next cell should do, and watch the page,
    and the rest of the site, while it does.
    """)
    return


@app.cell
def _(mo):
    action = mo.ui.dropdown(
        {
            "Nothing": "nothing",
            "Loop for ever": "loop",
            "Allocate 4 GB": "allocate",
            "Crash the kernel": "crash",
        },
        value="Nothing",
        label="The next cell should",
    )
    action
    return (action,)


@app.cell
def _(action, mo, os, signal):
    if action.value == "loop":
        # Stopped after CELL_TIMEOUT (10 s): the cell shows as interrupted.
        while True:
            pass
    elif action.value == "allocate":
        # More than MEMORY_MB (256): MemoryError, and the page says so.
        _held = bytearray(4 * 1024**3)
    elif action.value == "crash":
        # The kernel process dies: this session ends, no other one does.
        os.kill(os.getpid(), signal.SIGKILL)
    mo.md(f"Done: {action.selected_key}.")
    return


if __name__ == "__main__":
    app.run()
