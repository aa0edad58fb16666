"""Attack: notebook pages or notebook code reading secrets: session and CSRF
cookies, Authorization headers, the server's file paths."""

from __future__ import annotations

import pytest

from tests.live import ROOT, NotebookClient
from tests.settings import NOTEBOOKS_DIR

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_page_does_not_reveal_server_paths(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        page = (await client.http.get("/notebooks/square/")).text
    assert "square.py" in page
    assert str(NOTEBOOKS_DIR) not in page
    assert str(ROOT) not in page
