import marimo

__generated_with = "0.25.2"
app = marimo.App()

with app.setup:
    import os
    import signal
    import time

    import marimo as mo


@app.cell
def _():
    mo.md(f"kernel pid={os.getpid()}")
    return


@app.cell
def _():
    action = mo.ui.dropdown(
        ["nothing", "loop", "sleep", "allocate", "crash"], value="nothing"
    )
    action
    return (action,)


@app.cell
def _(action):
    # What a notebook may do wrong: loop, block in C, allocate, crash.
    if action.value == "loop":
        while True:
            pass
    elif action.value == "sleep":
        time.sleep(3600)
    elif action.value == "allocate":
        held = bytearray(4 * 1024**3)
        del held
    elif action.value == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    mo.md(f"done {action.value}")
    return


if __name__ == "__main__":
    app.run()
