"""The wire between the bridge's processes (django_notebooks/kernels/wire.py):
typed messages, one framing, a size cap."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import marshal
import socket

import pytest

from django_notebooks.kernels import wire
from tests.helpers import START_FORK


def frame_of(payload: object) -> bytes:
    data = marshal.dumps(payload)
    return wire.LENGTH.pack(len(data)) + data


EXAMPLES = [
    wire.Ready("/tmp/x", "cgroups (v2)", "RLIMIT_DATA and RLIMIT_AS"),
    wire.StartFailed("ImportError: no"),
    wire.Fork(
        id=3,
        notebook="/n.py",
        slug="n",
        session_id="s_1",
        user="alice",
        options={"quiet": True, "session_ttl": 5},
        memory_mb=256,
        cell_timeout=None,
        unresponsive_after=135.0,
        session_ttl=5,
        log_output=False,
    ),
    wire.Forked(3, 1234, "/tmp/x/3.sock"),
    wire.ForkRefused(3, "OSError(11)"),
    wire.End(3, now=True),
    wire.Exited(3, "s_1", 1234, 9, "crashed"),
    wire.KernelNotice(3, "stopping", 2.0),
    wire.CellStarted(),
    wire.CellEnded(interrupted=True, out_of_memory=False),
    wire.Ping(7),
    wire.Pong(7),
    wire.Call(b"\x80pickled"),
    wire.Asgi({"type": "websocket.send", "text": "{}"}),
    wire.CallEnded(),
]


@pytest.mark.parametrize("sent", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_comes_back_as_it_was_sent(sent):
    frame = wire.encode(sent)
    (length,) = wire.LENGTH.unpack(frame[: wire.LENGTH.size])
    assert length == len(frame) - wire.LENGTH.size
    assert wire.decode(frame[wire.LENGTH.size :]) == sent


def test_messages_split_and_joined_anyhow_are_read_in_order():
    stream = b"".join(wire.encode(m) for m in EXAMPLES)
    decoder = wire.Decoder()
    got = []
    for start in range(0, len(stream), 7):
        got += decoder.feed(stream[start : start + 7])
    assert got == EXAMPLES
    assert decoder.feed(b"") == []


def test_a_frame_over_the_cap_is_refused_before_it_is_read():
    decoder = wire.Decoder()
    with pytest.raises(wire.WireError, match="bytes"):
        decoder.feed(wire.LENGTH.pack(wire.MAX_FRAME + 1))
    with pytest.raises(wire.WireError):
        wire.encode(wire.Asgi({"type": "x", "body": b"x" * (wire.MAX_FRAME + 1)}))


@pytest.mark.parametrize(
    "payload",
    [
        ("NoSuchMessage", {}),  # an unknown tag
        ("Ping", {"nmber": 1}),  # a field it does not have
        ("Ping", {}),  # a field missing
        [1, 2],  # not a (tag, fields) pair
        "Ping",
    ],
)
def test_what_is_no_message_ends_the_connection(payload):
    with pytest.raises(wire.WireError):
        wire.Decoder().feed(frame_of(payload))


def test_a_pickle_is_never_unpickled():
    import pickle

    data = pickle.dumps(("Ping", {"number": 1}))
    with pytest.raises(wire.WireError):
        wire.decode(data)


def test_marimos_enum_close_codes_cross_as_their_values():
    class Code(enum.IntEnum):
        FORBIDDEN = 1008

    class Reason(enum.StrEnum):
        NO = "MARIMO_NO"

    sent = wire.Asgi(
        {"type": "websocket.close", "code": Code.FORBIDDEN, "reason": Reason.NO}
    )
    got = wire.decode(wire.encode(sent)[wire.LENGTH.size :])
    assert got.message == {
        "type": "websocket.close",
        "code": 1008,
        "reason": "MARIMO_NO",
    }
    assert type(got.message["code"]) is int


def test_a_blocking_socket_sends_and_receives_messages():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        wire.send(ours, wire.Ping(1))
        wire.send(ours, wire.Pong(1))
        receive = wire.receiver(theirs)
        got: list[object] = []
        while len(got) < 2:
            got += receive() or []
        assert got == [wire.Ping(1), wire.Pong(1)]
        ours.close()
        assert receive() is None  # the other end closed


@pytest.mark.asyncio
async def test_an_asyncio_stream_reads_messages_then_its_end():
    reader = asyncio.StreamReader()
    reader.feed_data(wire.encode(wire.CellStarted()) + wire.encode(wire.Pong(2)))
    reader.feed_eof()
    assert await wire.read(reader) == wire.CellStarted()
    assert await wire.read(reader) == wire.Pong(2)
    assert await wire.read(reader) is None


def test_fields_at_their_default_are_left_out_for_older_readers():
    """A kernel host of the code deployed before a field was added reads
    a message that leaves the field at its default."""
    fork = dataclasses.replace(
        START_FORK, owner="o", running_only=True, log_output=False
    )
    _tag, fields = marshal.loads(wire.encode(fork)[wire.LENGTH.size :])
    assert {"pre_run", "caps", "person", "address"}.isdisjoint(fields)
    assert fields["owner"] == "o" and fields["running_only"] is True
    assert wire.decode(wire.encode(fork)[wire.LENGTH.size :]) == fork
    assert (
        "pre_run"
        in marshal.loads(
            wire.encode(dataclasses.replace(fork, pre_run="v"))[wire.LENGTH.size :]
        )[1]
    )
