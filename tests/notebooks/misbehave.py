import marimo

__generated_with = "0.25.2"
app = marimo.App()

with app.setup:
    import mmap
    import multiprocessing
    import os
    import signal
    import subprocess
    import threading
    import time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import shared_memory

    import marimo as mo

    HOLD_SECONDS = 20


@app.cell
def _():
    # A heading, for the browser tests of the notice bar's place.
    mo.md("# A notebook that misbehaves on request")
    return


@app.cell
def _():
    mo.md(f"kernel pid={os.getpid()}")
    return


@app.cell
def _():
    action = mo.ui.dropdown(
        [
            "nothing",
            "loop",
            "sleep",
            "allocate",
            "mmap",
            "shm",
            "spawn",
            "thread",
            "print",
            "crash",
            "hold",
        ],
        value="nothing",
    )
    action
    return (action,)


@app.cell
def _(action):
    # What a notebook may do wrong: loop, block in C, allocate (privately or
    # in shared mappings), start processes or a thread that outlive the
    # cell, print a lot, crash, or hold the GIL for about HOLD_SECONDS.
    started = []
    said = ""
    if action.value == "loop":
        while True:
            pass
    elif action.value == "sleep":
        time.sleep(3600)
    elif action.value == "allocate":
        held = bytearray(4 * 1024**3)
        del held
    elif action.value == "mmap":
        mapping = mmap.mmap(-1, 1024**3)
        for offset in range(0, len(mapping), 4096):
            mapping[offset] = 1
        mapping.close()
    elif action.value == "shm":
        block = shared_memory.SharedMemory(create=True, size=1024**3)
        try:
            for offset in range(0, block.size, 4096):
                block.buf[offset] = 1
        finally:
            block.close()
            block.unlink()
    elif action.value == "spawn":
        started.append(subprocess.Popen(["sleep", "600"]))
        forked = multiprocessing.get_context("fork").Process(
            target=time.sleep, args=(600,)
        )
        forked.start()
        started.append(forked)
        pool = ProcessPoolExecutor(1)
        pool.submit(time.sleep, 600)
        started.append(pool)
        left = subprocess.Popen(["sleep", "600"], start_new_session=True)
        started.append(left)
        pids = [started[0].pid, forked.pid, *pool._processes]
        said = f"children={','.join(map(str, pids))} setsid={left.pid}"
    elif action.value == "thread":

        def spin():
            while True:
                pass

        threading.Thread(target=spin, daemon=True).start()
    elif action.value == "print":
        for line in range(200):
            print(f"notebook output line {line}")
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
    mo.md(f"done {action.value} {said}")
    return (started,)


if __name__ == "__main__":
    app.run()
