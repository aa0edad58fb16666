"""Attack: driving someone else's marimo session with its id (stolen or
guessed). Session ids belong to the login that opened them."""

from __future__ import annotations

import pytest
import websockets

from tests.live import logged_in, new_session_id, square_output

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_session_ids_belong_to_whoever_opened_them(notebook_server):
    async with logged_in(notebook_server.url, "alice", "bob") as (alice, bob):
        async with alice.kernel("/notebooks/square/") as kernel:
            await kernel.read_until_completed()
            [slider] = kernel.ui_element_ids()

            stolen = await bob.post_kernel(
                "/notebooks/square/",
                "set_ui_element_value",
                kernel.session_id,
                {"objectIds": [slider], "values": [10]},
            )
            assert stolen.status_code == 403
            with pytest.raises(websockets.InvalidStatus):
                async with bob.kernel(
                    "/notebooks/square/", session_id=kernel.session_id
                ):
                    pass
            guessed = await alice.post_kernel(
                "/notebooks/square/",
                "set_ui_element_value",
                new_session_id(),
                {"objectIds": [slider], "values": [10]},
            )
            # Refused as a session that has ended: no process knows it.
            assert guessed.status_code == 410

            # alice's session was not touched: her next change still starts from 3.
            own = await kernel.set_ui_value(slider, 2)
            assert own.status_code == 200
            await kernel.read_until_completed()
            assert square_output(kernel.outputs) == [
                "square=9 user=alice",
                "square=4 user=alice",
            ]
