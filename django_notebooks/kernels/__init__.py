"""Where a notebook session's kernel runs: in a process of its own
(``ISOLATION = "process"``, the default) or as marimo's thread inside the
web server process (``"thread"``).

The rest of the bridge asks ``router.app_for()`` for the ASGI app that
serves a notebook and ``router.end_session()`` to end a session's kernel,
whichever mode is in force. The modules, from the web process inwards:

- ``router``: the mode in force; a session's calls to its kernel process.
- ``processes``: the web process's kernel processes, started and ended.
- ``forking``: the web process's handle on its fork server.
- ``forkserver``: the process that forks them, warm and without threads.
- ``tunnel``: ASGI calls over a local socket.
- ``child``: a kernel process, under its limits.
- ``cells``: the cell it runs, to interrupt it or report its memory error.

See docs/topics/isolation.md.
"""
