"""A kernel websocket handshake that reaches Django's HTTP views (a WSGI
server such as gunicorn, runserver without Daphne) gets a 501 that says how
to route it, instead of marimo's bare 404 and a page that never runs."""

from __future__ import annotations

from django.test import AsyncClient, Client

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade"}


def assert_explains(response, prefix: str = "/notebooks/") -> None:
    assert response.status_code == 501
    text = response.content.decode()
    assert "reached a server without websocket support" in text
    assert f"serve {prefix} with Daphne or uvicorn" in text


def test_under_wsgi(caplog):
    response = Client().get("/notebooks/square/ws?session_id=s_abc123", headers=UPGRADE)
    assert_explains(response)
    # The server log says it too, where whoever deploys looks first.
    assert "serve /notebooks/ with Daphne or uvicorn" in caplog.text


async def test_under_asgi_for_any_location():
    # Whatever the notebook (even one that does not exist): nothing about
    # notebooks is revealed, and the access decision is not needed.
    for path in ("/notebooks/sales/ws", "/notebooks/nope/ws", "/notebooks/lab/demo/ws"):
        assert_explains(await AsyncClient().get(path, headers=UPGRADE))


async def test_ordinary_requests_are_not_affected():
    response = await AsyncClient().get("/notebooks/hello/", headers={"Upgrade": "h2c"})
    assert response.status_code == 200
