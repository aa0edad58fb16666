"""The channel layer that carries the bridge's own messages.

Revocation (logging out, losing access) and an administrator's "terminate"
reach the consumers holding notebook sessions over the project's channel
layer. A project that configures none is still protected within its one
process: the bridge then uses an in-process layer of its own for these
messages. Several server processes need a shared layer (``channels_redis``)
for them to reach every process, and for kernel calls to be forwarded
between processes, which use the project's layer only (checks W004, W005).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from channels.layers import (
    DEFAULT_CHANNEL_LAYER,
    InMemoryChannelLayer,
    channel_layers,
    get_channel_layer,
)

logger = logging.getLogger(__name__)

# Where the in-process layer is kept, in Channels' own registry of layers, so
# that consumers find it by alias as they find the project's.
IN_PROCESS_ALIAS = "django_notebooks.in_process"


def alias() -> str:
    """The alias of the layer for the bridge's own messages: the project's
    default layer, or the in-process one when it has none."""
    if get_channel_layer(DEFAULT_CHANNEL_LAYER) is not None:
        return str(DEFAULT_CHANNEL_LAYER)
    # Channels forgets its layers when CHANNEL_LAYERS changes (in tests):
    # the in-process layer comes back then, as the project's would.
    channel_layers.backends.setdefault(IN_PROCESS_ALIAS, InMemoryChannelLayer())
    return IN_PROCESS_ALIAS


def bridge_layer() -> Any:
    """The layer for the bridge's own messages (never ``None``)."""
    return get_channel_layer(alias())


class LayerUnavailable(Exception):
    """The channel layer failed (Redis unreachable, say)."""


class GuardedLayer:
    """A kernel websocket's view of the channel layer, where a failing layer
    ends only the layer's part of the websocket, never the websocket.

    Channels ends a consumer whose layer fails: an open notebook would die
    with Redis, and a new one answered 500. Through this guard a channel
    that cannot be read is retried every ``RETRY_EVERY`` seconds while the
    notebook goes on (only revocation and forwarded calls wait), and group
    changes raise :class:`LayerUnavailable`, for the consumer to refuse a
    new session that could not be revoked.
    """

    RETRY_EVERY = 1.0

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.layer, name)

    async def new_channel(self, *args: Any, **kwargs: Any) -> str:
        # The arguments pass through as given: layers disagree on the default
        # prefix ("specific" on channels_redis's list-based layer, which adds
        # the dot), and its channels must all share the process's prefix.
        try:
            channel: str = await self.layer.new_channel(*args, **kwargs)
        except Exception:
            self._failed("create a channel")
            # A name nothing sends to: the notebook is refused anyway.
            return f"specific.unreachable!{uuid.uuid4().hex}"
        return channel

    async def receive(self, channel: str) -> Any:
        while True:
            try:
                message = await self.layer.receive(channel)
            except Exception:
                self._failed("read a channel")
                await asyncio.sleep(self.RETRY_EVERY)
            else:
                self.failed = False
                return message

    async def group_add(self, group: str, channel: str) -> None:
        await self._guarded(self.layer.group_add(group, channel))

    async def group_discard(self, group: str, channel: str) -> None:
        await self._guarded(self.layer.group_discard(group, channel))

    async def _guarded(self, call: Any) -> None:
        try:
            await call
        except Exception as error:
            self._failed("join or leave a group")
            raise LayerUnavailable(str(error)) from error

    def _failed(self, what: str) -> None:
        if not self.failed:
            logger.warning(
                "The channel layer failed to %s for a notebook websocket: "
                "revocation and forwarded kernel calls wait for it.",
                what,
                exc_info=True,
            )
        self.failed = True
