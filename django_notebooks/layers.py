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

from typing import Any

from channels.layers import (
    DEFAULT_CHANNEL_LAYER,
    InMemoryChannelLayer,
    channel_layers,
    get_channel_layer,
)

# Where the in-process layer is kept, in Channels' own registry of layers, so
# that consumers find it by alias as they find the project's.
IN_PROCESS_ALIAS = "django_notebooks.in_process"


def alias() -> str:
    """The alias of the layer for the bridge's own messages: the project's
    default layer, or the in-process one when it has none."""
    if get_channel_layer(DEFAULT_CHANNEL_LAYER) is not None:
        return DEFAULT_CHANNEL_LAYER
    # Channels forgets its layers when CHANNEL_LAYERS changes (in tests):
    # the in-process layer comes back then, as the project's would.
    channel_layers.backends.setdefault(IN_PROCESS_ALIAS, InMemoryChannelLayer())
    return IN_PROCESS_ALIAS


def bridge_layer() -> Any:
    """The layer for the bridge's own messages (never ``None``)."""
    return get_channel_layer(alias())
