"""Everything that knows marimo.

- ``routes``: marimo's URLs below a notebook, the few the bridge lets
  through, its session header, close reasons and virtual-file names.
- ``internals``: the few marimo internals the bridge cannot avoid (each
  checked by tests/test_marimo_contract.py).
- ``apps``: the marimo ASGI app of each notebook file.
- ``forwarding``: calling that app from a Django view.
- ``pages``: what the bridge changes in a notebook's page.
- ``frontend``: marimo's frontend files, served compressed.
- ``orm``: the cell executor that lets cells use Django's ORM.
- ``headless``: running a notebook without a browser (checks, commands).
- ``autoreload``: keeping runserver's reloader alive beside marimo kernels.
"""
