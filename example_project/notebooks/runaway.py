import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    import mmap
    import os
    import signal
    import subprocess
    import time

    import marimo as mo

    return mmap, mo, os, signal, subprocess, time


@app.cell
def _(mo, os):
    mo.md(f"""
    # Misbehaving cells

    This notebook's kernel runs in a process of its own (pid {os.getpid()}),
    not in the web server (pid {os.getppid()} is the machine's kernel host
    it came from; `ps` calls them `django-notebooks kernel runaway ...` and
    `django-notebooks kernel-host ...`). Its limits
    in the settings: a cell may run 10 seconds and allocate 256 MB. Pick
    what the next cell should do, and watch the page, and the rest of the
    site, while it does.
    """)
    return


@app.cell
def _(mo):
    action = mo.ui.dropdown(
        {
            "Nothing": "nothing",
            "Loop for ever": "loop",
            "Sleep for an hour (in C)": "sleep",
            "Allocate 4 GB": "allocate",
            "Map 1 GB of shared memory": "mmap",
            "Start a process that sleeps": "spawn",
            "Crash the kernel": "crash",
        },
        value="Nothing",
        label="The next cell should",
    )
    action
    return (action,)


@app.cell
def _(action, mmap, mo, os, signal, subprocess, time):
    _said = ""
    if action.value == "loop":
        # Stopped after CELL_TIMEOUT (10 s): the cell shows as interrupted.
        while True:
            pass
    elif action.value == "sleep":
        # Deaf to the interrupt until the sleep ends: 5 seconds after
        # CELL_TIMEOUT its kernel is ended, and the page says so.
        time.sleep(3600)
    elif action.value == "allocate":
        # More than MEMORY_MB (256): MemoryError, and the page says so.
        _held = bytearray(4 * 1024**3)
    elif action.value == "mmap":
        # Shared memory counts too: the mapping is refused.
        _mapping = mmap.mmap(-1, 1024**3)
    elif action.value == "spawn":
        # It ends with this session (its kernel's process group): look for
        # it with ps after closing the tab.
        _sleeper = subprocess.Popen(["sleep", "3600"])
        _said = f" Process {_sleeper.pid} started; `ps` shows it."
    elif action.value == "crash":
        # The kernel process dies: this session ends, no other one does.
        os.kill(os.getpid(), signal.SIGKILL)
    mo.md(f"Done: {action.selected_key}.{_said}")
    return


if __name__ == "__main__":
    app.run()
