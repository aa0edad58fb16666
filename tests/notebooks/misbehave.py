import marimo

__generated_with = "0.25.2"
app = marimo.App()

with app.setup:
    import os
    import signal
    import time

    import marimo as mo

    HOLD_SECONDS = 20


@app.cell
def _():
    mo.md(f"kernel pid={os.getpid()}")
    return


@app.cell
def _():
    action = mo.ui.dropdown(
        ["nothing", "loop", "sleep", "allocate", "crash", "hold"], value="nothing"
    )
    action
    return (action,)


@app.cell
def _(action):
    # What a notebook may do wrong: loop, block in C, allocate, crash, or
    # hold the GIL for about HOLD_SECONDS.
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
    elif action.value == "hold":
        # One builtin sum() over a range never lets go of the GIL, and
        # allocates nothing: nothing else in this process runs until it ends.
        # Its length is measured here, in CPU time (which a busy machine
        # does not stretch), so that it takes about HOLD_SECONDS of CPU on
        # any machine: as long or longer, never shorter.
        measured = time.thread_time()
        sum(range(10**7))
        per_item = (time.thread_time() - measured) / 10**7
        sum(range(int(HOLD_SECONDS / per_item)))
    mo.md(f"done {action.value}")
    return


if __name__ == "__main__":
    app.run()
