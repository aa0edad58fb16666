"""The channel layer of the bridge's own messages (django_notebooks/sessions/layers.py)."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.test import override_settings

from django_notebooks.sessions import layers


def test_the_projects_layer_when_it_has_one():
    assert layers.alias() == "default"
    assert layers.bridge_layer() is get_channel_layer()


def test_an_in_process_layer_without_channel_layers():
    with override_settings(CHANNEL_LAYERS={}):
        assert get_channel_layer() is None
        assert layers.alias() == layers.IN_PROCESS_ALIAS
        layer = layers.bridge_layer()
        assert isinstance(layer, InMemoryChannelLayer)
        assert layers.bridge_layer() is layer  # one per process


class FlakyLayer:
    """A layer whose every call fails until ``up`` is set."""

    def __init__(self) -> None:
        self.up = False
        self.reads = 0

    async def new_channel(self, prefix: str = "specific.") -> str:
        if not self.up:
            raise ConnectionError("Redis is down")
        return prefix + "abc"

    async def receive(self, channel: str) -> dict:
        self.reads += 1
        if not self.up:
            raise ConnectionError("Redis is down")
        return {"type": "notebooks.revoke"}

    async def group_add(self, group: str, channel: str) -> None:
        if not self.up:
            raise ConnectionError("Redis is down")


async def test_a_failing_layer_is_retried_not_fatal(monkeypatch, caplog):
    monkeypatch.setattr(layers.GuardedLayer, "RETRY_EVERY", 0.01)
    flaky = FlakyLayer()
    guarded = layers.GuardedLayer(flaky)
    channel = await guarded.new_channel()
    assert channel.startswith("specific.unreachable!")
    with pytest.raises(layers.LayerUnavailable):
        await guarded.group_add("group", channel)
    reading = asyncio.ensure_future(guarded.receive(channel))
    while flaky.reads < 3:
        await asyncio.sleep(0.01)
    assert not reading.done() and guarded.failed
    flaky.up = True
    assert await asyncio.wait_for(reading, 5) == {"type": "notebooks.revoke"}
    assert not guarded.failed
    # Said once, not once per retry.
    assert caplog.text.count("The channel layer failed") == 1


async def test_the_guard_names_channels_as_the_layer_does():
    """channels_redis's list-based layer adds the dot to its prefix itself:
    every channel of a process must share that prefix, or the process reads
    some of them never."""
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=["redis://127.0.0.1:6379/0"])
    channel = await layers.GuardedLayer(layer).new_channel()
    assert channel.startswith(f"specific.{layer.client_prefix}!")
    assert layer.non_local_name(channel) == layer.non_local_name(
        await layer.new_channel()
    )
