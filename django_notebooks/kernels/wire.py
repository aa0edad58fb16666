"""The one wire between the bridge's processes: a web process, its fork
server and the kernel processes.

Every message is a frame: its length (four bytes, network order), then the
message encoded with :mod:`marshal` (fast, and it never runs code) as a
``(tag, fields)`` pair. A frame longer than :data:`MAX_FRAME` ends the
connection it came on: nothing on the other side of a socket makes a
process hold more than that for one message.

Messages are typed: each is a small frozen dataclass, registered under its
class name by :func:`message`, and a reader gets the dataclass back (an
unknown tag, or fields that do not fit, end the connection too). Fields are
plain values: ``str``, ``bytes``, numbers, ``bool``, ``None``, lists,
tuples and dicts of them.

Three conversations use it:

- a web process and the kernel host (``forking.py``, ``forkserver.py``):
  :class:`Fork`, :class:`End`, :class:`Forked`, :class:`Exited`, ...;
- the kernel host and each kernel process, on the kernel's own status
  channel (``child.py``): :class:`CellStarted`, :class:`CellEnded`,
  :class:`Ping`, :class:`Pong`;
- one ASGI call from the web process to a kernel process, one connection per
  call (``tunnel.py``): :class:`Call`, then :class:`Asgi` messages both
  ways, then :class:`CallEnded`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import marshal
import socket
import struct
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

LENGTH = struct.Struct("!I")
# Larger than any message the bridge lets through: request bodies are capped
# by Django's DATA_UPLOAD_MAX_MEMORY_SIZE, a page's websocket frames never
# reach a kernel, and a response body comes in chunks.
MAX_FRAME = 64 * 1024 * 1024
# Bytes read from a socket at a time.
READ_SIZE = 256 * 1024


class WireError(Exception):
    """A frame that breaks the wire's rules: the connection ends."""


_MESSAGES: dict[str, type[Any]] = {}
_FIELDS: dict[type[Any], tuple[str, ...]] = {}
_DEFAULTS: dict[type[Any], dict[str, Any]] = {}
M = TypeVar("M")


@dataclass_transform(frozen_default=True)
def message(cls: type[M]) -> type[M]:
    """Register a class as a message of the wire (by its class name), made
    a frozen dataclass."""
    made: Any = dataclasses.dataclass(frozen=True, slots=True)(cls)
    _MESSAGES[cls.__name__] = made
    _FIELDS[made] = tuple(field.name for field in dataclasses.fields(made))
    _DEFAULTS[made] = {
        field.name: field.default
        for field in dataclasses.fields(made)
        if field.default is not dataclasses.MISSING
    }
    return made  # type: ignore[no-any-return]


def encode(sent: Any) -> bytes:
    """The frame of a message.

    Fields at their default are left out: a process of the code deployed
    before a field was added (a kernel host kept across a deploy) reads
    the message as long as the new field is not used."""
    defaults = _DEFAULTS[type(sent)]
    fields = {}
    for name in _FIELDS[type(sent)]:
        value = getattr(sent, name)
        if name in defaults and _same(value, defaults[name]):
            continue
        fields[name] = value
    try:
        data = marshal.dumps((type(sent).__name__, fields))
    except ValueError:
        data = marshal.dumps((type(sent).__name__, _plain(fields)))
    if len(data) > MAX_FRAME:
        raise WireError(f"a {type(sent).__name__} of {len(data)} bytes")
    return LENGTH.pack(len(data)) + data


def _same(value: Any, default: Any) -> bool:
    return type(value) is type(default) and bool(value == default)


def _plain(value: Any) -> Any:
    """``value`` with enums as their values (marimo closes a websocket with
    an ``IntEnum`` code and a ``str`` enum reason)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    return value


def decode(data: bytes) -> Any:
    """The message a frame's payload holds."""
    try:
        tag, fields = marshal.loads(data)
        return _MESSAGES[tag](**fields)
    except (ValueError, TypeError, KeyError, EOFError) as error:
        raise WireError(f"a frame that is no message: {error!r}") from None


def _length(header: bytes) -> int:
    (length,) = LENGTH.unpack(header)
    if length > MAX_FRAME:
        raise WireError(f"a frame of {length} bytes")
    return int(length)


class Decoder:
    """Messages out of a byte stream read in pieces (a non-blocking socket)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """The messages completed by ``data``, in order."""
        self._buffer += data
        found = []
        while len(self._buffer) >= LENGTH.size:
            length = _length(bytes(self._buffer[: LENGTH.size]))
            end = LENGTH.size + length
            if len(self._buffer) < end:
                break
            found.append(decode(bytes(self._buffer[LENGTH.size : end])))
            del self._buffer[:end]
        return found


def send(sock: socket.socket, sent: Any) -> None:
    """Send a message on a blocking socket."""
    sock.sendall(encode(sent))


def receiver(sock: socket.socket) -> Callable[[], list[Any] | None]:
    """A function that reads what ``sock`` has (blocking until something
    comes) and returns the messages it completed; ``None`` once the other
    end has closed (or reset) the connection."""
    decoder = Decoder()

    def receive() -> list[Any] | None:
        try:
            data = sock.recv(READ_SIZE)
        except (ConnectionError, TimeoutError):
            return None
        if not data:
            return None
        return decoder.feed(data)

    return receive


async def read(reader: asyncio.StreamReader) -> Any | None:
    """The next message on an asyncio stream, ``None`` once it has ended."""
    try:
        header = await reader.readexactly(LENGTH.size)
        data = await reader.readexactly(_length(header))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return decode(data)


# A web process and the kernel host.


@message
class Ready:
    """The kernel host (process ``pid``) is ready: its first message to each
    web process that connects. Its kernels' sockets are in ``directory``;
    ``containment`` and ``memory`` say what keeps kernels in bounds on this
    machine (``cgroups.Mechanisms``)."""

    directory: str
    containment: str
    memory: str
    pid: int = 0


@message
class StartFailed:
    """The kernel host could not get ready."""

    error: str


@message
class Fork:
    """The kernel process of one notebook session: the one the host runs
    for it already, if ``owner`` opened it (a page reconnecting after a
    deploy), else a new one, forked."""

    id: int
    notebook: str
    #: For the kernel's process title and the log: the notebook's slug and
    #: the session's id and owner, in words.
    slug: str
    session_id: str
    user: str
    options: dict[str, Any]
    memory_mb: int | None
    cell_timeout: int | None
    #: Seconds without an answer to its parent after which a kernel that
    #: runs no cell is taken for stopped (limits.call_deadline()).
    unresponsive_after: float
    session_ttl: float
    #: Whether what notebook code prints goes to the server's log.
    log_output: bool
    #: Who opened the session (``records.owner_hash``): only they get its
    #: running kernel back.
    owner: str = ""
    #: Only the session's running kernel: fork none (:class:`ForkRefused`
    #: with :data:`NOT_RUNNING` if it does not run here).
    running_only: bool = False
    #: Whose session it is, for the caps the host keeps over the machine's
    #: kernels: the person (``user:<id>`` or ``visitor:<id>``), the client
    #: address, and the caps (``owners.Caps``' fields; none: no cap).
    person: str = ""
    address: str | None = None
    caps: dict[str, int | None] | None = None
    #: The notebook file's version, if its spares run it ahead (it does not
    #: read the visitor: ``kernels/pre_run.py``); empty: they do not.
    pre_run: str = ""


@message
class Forked:
    """The kernel process of fork request ``id`` runs; it takes calls on
    ``socket_path``. ``kernel``: its id (the request's, unless the session's
    kernel was running already: ``resumed``)."""

    id: int
    pid: int
    socket_path: str
    kernel: int = 0
    resumed: bool = False


@message
class ForkRefused:
    """Fork request ``id`` could not be carried out; ``cap``: the cap on
    sessions that refuses it (``owners.Claim``'s value), if one does."""

    id: int
    error: str
    cap: str = ""


#: ForkRefused's error when a ``running_only`` request's session has no
#: kernel running here.
NOT_RUNNING = "no kernel of the session runs here"


# Seconds a kernel gets to end on SIGTERM before its group is killed.
END_GRACE = 2.0


@message
class End:
    """End kernel ``id`` (its whole process group): ``SIGTERM``, then
    ``SIGKILL`` after :data:`END_GRACE` seconds; at once with ``now``."""

    id: int
    now: bool = False


class Cause(enum.StrEnum):
    """Why a kernel process ended, as its parent saw it."""

    #: The web process asked (the session ended: terminate, revocation,
    #: idle, a start abandoned).
    ASKED = "asked"
    #: Its page was gone for ``session_ttl``: it ended by itself.
    CLOSED = "closed"
    #: A cell ran past ``CELL_TIMEOUT`` and did not stop when interrupted.
    TIMEOUT = "timeout"
    #: It stopped answering its parent while no cell ran.
    UNRESPONSIVE = "unresponsive"
    #: Its memory limit's out-of-memory killer ended it (cgroup).
    MEMORY = "memory"
    #: It died otherwise: a crash, a signal from elsewhere, an exit status.
    CRASHED = "crashed"


@message
class Exited:
    """Kernel ``id`` (process ``pid``, of session ``session_id``) has ended,
    with wait ``status``."""

    id: int
    session_id: str
    pid: int
    status: int
    cause: str


@message
class KernelNotice:
    """Something the page of kernel ``id`` should be told (see
    :class:`Happening`); the session goes on."""

    id: int
    what: str
    seconds: float


class Happening(enum.StrEnum):
    """What :class:`KernelNotice` reports."""

    #: A cell ran past CELL_TIMEOUT: it is being interrupted.
    STOPPING = "stopping"
    #: The interrupted cell has stopped.
    STOPPED = "stopped"
    #: A cell's memory ran out (its allocation failed).
    OUT_OF_MEMORY = "out_of_memory"


# A kernel process and its kernel host (the kernel's status channel).


@message
class CellStarted:
    """The kernel began running a cell."""


@message
class CellEnded:
    """The cell ended; ``interrupted``: by the interrupt at CELL_TIMEOUT;
    ``out_of_memory``: it failed for lack of memory."""

    interrupted: bool = False
    out_of_memory: bool = False


@message
class Assigned:
    """A spare kernel (forked ahead, for no session yet) is the kernel of
    session ``session_id`` of ``user`` (in words, for its title) now."""

    session_id: str
    user: str


@message
class PageOpened:
    """The session's page connected its websocket (the kernel counts as
    an open page's under the caps)."""


@message
class PageClosed:
    """The session's page is gone: its kernel is a closed tab's, which a
    new session of the same person may replace at a cap."""


@message
class Ping:
    number: int


@message
class Pong:
    number: int


# One ASGI call from a web process to a kernel process.


@message
class Call:
    """The call's scope, pickled: what a project puts in ``request.meta``
    (a model instance, a date) must reach notebook code as it is. Only the
    kernel process unpickles, and only this; nothing from a kernel process
    is ever unpickled."""

    scope: bytes


@message
class Asgi:
    """One ASGI message: the caller's ``receive`` or the app's ``send``."""

    message: dict[str, Any]


@message
class CallEnded:
    """The app has returned: the call is over."""
