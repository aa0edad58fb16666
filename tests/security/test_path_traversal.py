"""Attack: path traversal out of a notebook directory, hidden and private
files, non-notebooks, symlinks that leave the directory. All 404."""

from __future__ import annotations

import pytest

from tests.live import NotebookClient

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.mark.parametrize(
    "path",
    [
        "/notebooks/lab/../square/",
        "/notebooks/lab/%2e%2e/square/",
        "/notebooks/lab/..%2fsquare/",
        "/notebooks/lab/%2e%2e%2f%2e%2e%2fsettings/",
        "/notebooks/lab/demo%2f..%2f..%2fsquare/",
        "/notebooks/lab/_private/",
        "/notebooks/lab/.hidden/",
        "/notebooks/lab/helpers/",
        "/notebooks/lab/notes.txt/",
        "/notebooks/lab/notes/",
        "/notebooks/lab/escape/",
        "/notebooks/square/assets/../../whoami/",
    ],
)
async def test_directory_paths_that_are_not_notebooks_are_404(notebook_server, path):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        assert await client.raw_get(path) == 404
