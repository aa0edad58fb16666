"""Where a notebook session's kernel runs: in a process of its own
(``ISOLATION = "process"``, the default) or as marimo's thread inside the
web server process (``"thread"``).

The rest of the bridge asks ``router.app_for()`` for the ASGI app that
serves a notebook and ``router.end_session()`` to end a session's kernel,
whichever mode is in force. The modules, from the web process inwards:

- ``router``: the mode in force; a session's calls to its kernel process.
- ``processes``: the web process's kernel processes, started, reached
  (another web process's) and ended.
- ``forking``: the web process's connection to its machine's kernel host.
- ``location``: where that host listens (per project and code).
- ``forkserver``: the kernel host, which forks them, warm and without
  threads; kernels forked ahead (spares); the caps over the machine.
- ``tunnel``: ASGI calls over a local socket.
- ``child``: a kernel process, under its limits.
- ``cells``: the cell it runs, to interrupt it or report its memory error.

See docs/topics/isolation.md.
"""
