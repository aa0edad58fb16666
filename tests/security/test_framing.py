"""Attack: clickjacking. Notebook pages may be framed by this site (the
embedding tag needs it), never by another: X-Frame-Options SAMEORIGIN on
everything the notebook views answer, whatever marimo says."""

from __future__ import annotations

import pytest

from tests.live import NotebookClient

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.mark.parametrize(
    "path",
    ["/notebooks/square/", "/notebooks/square/health", "/notebooks/square/favicon.ico"],
)
async def test_notebook_responses_allow_same_origin_framing_only(notebook_server, path):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("alice")
        response = await client.http.get(path)
    assert response.status_code == 200
    assert response.headers["x-frame-options"] == "SAMEORIGIN"


async def test_refusals_are_not_frameable_by_other_sites(notebook_server):
    async with NotebookClient(notebook_server.url) as client:
        await client.login("bob")
        response = await client.http.get("/notebooks/sales/")
    assert response.status_code == 403
    assert response.headers["x-frame-options"] in ("DENY", "SAMEORIGIN")
