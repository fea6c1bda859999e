"""QEMU's QMP, client side, sans I/O: bytes in, typed events out, bytes to send.

Theory of operation
-------------------
QMP is newline-delimited JSON over a stream socket.  QEMU speaks first with a greeting (``{"QMP": ...}``);
the client must send ``qmp_capabilities`` before any other command; afterwards every command carries an
``id`` and its reply (``{"return": ...}`` or ``{"error": {"class", "desc"}}``) carries the same id, while
asynchronous events (``{"event": "RESET", "data": ..., "timestamp": ...}``) may arrive between them at any
time.  ``QmpProtocol`` is the whole of that and nothing else: bytes in (``receive_data``), typed events out
(``events_received``), bytes to write (``data_to_send``).  It has no socket, no clock, no asyncio and no
logging, so it is tested by feeding it bytes, whole and one at a time (``tests/unit/test_qmp_proto.py``),
and ``adapters/qmp.py`` owns everything that waits: the connection, deadlines, reconnects.  Its phases::

    GREETING --greeting--> NEGOTIATING (qmp_capabilities queued) --its return--> READY
    any phase --EOF--> CLOSED;  any phase --bad input--> CLOSED + QmpProtocolError

One transition table (``_TRANSITIONS``) holds every allowed (phase, input) pair; a missing pair is a
protocol error.  Replies are matched to commands by id; a reply to an id that was never sent, or sent and
already answered, is a protocol error too, since no caller could be told.

Inputs are bounded: a line longer than ``max_line_bytes`` (1 MiB; QEMU's replies here are well under 10 KiB)
is a protocol error, so a confused or hostile peer cannot grow our memory.  Scanning for the newline resumes
where the last scan stopped, so a line fed one byte at a time costs O(n), not O(n²).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from ..errors import SerialmuxdError

__all__ = [
    "MAX_LINE_BYTES",
    "QmpClosed",
    "QmpErrorReply",
    "QmpEvent",
    "QmpGreeting",
    "QmpInput",
    "QmpPhase",
    "QmpProtocol",
    "QmpProtocolError",
    "QmpProtocolEvent",
    "QmpReady",
    "QmpReturn",
    "brief_json",
]

MAX_LINE_BYTES = 1 << 20


class QmpProtocolError(SerialmuxdError):
    """QEMU (or whatever answers on the socket) broke the QMP protocol; the connection is unusable."""


class QmpPhase(enum.Enum):
    GREETING = "greeting"  # waiting for {"QMP": ...}
    NEGOTIATING = "negotiating"  # qmp_capabilities sent, waiting for its return
    READY = "ready"  # commands allowed
    CLOSED = "closed"  # EOF or protocol error; terminal


class QmpInput(enum.Enum):
    GREETING = "greeting"
    REPLY = "reply"
    EVENT = "event"
    EOF = "eof"


# The one transition table.  A (phase, input) pair that is missing is a protocol error.
_TRANSITIONS: dict[tuple[QmpPhase, QmpInput], QmpPhase] = {
    (QmpPhase.GREETING, QmpInput.GREETING): QmpPhase.NEGOTIATING,
    (QmpPhase.GREETING, QmpInput.EOF): QmpPhase.CLOSED,
    (QmpPhase.NEGOTIATING, QmpInput.REPLY): QmpPhase.READY,  # only the reply to qmp_capabilities
    (QmpPhase.NEGOTIATING, QmpInput.EVENT): QmpPhase.NEGOTIATING,
    (QmpPhase.NEGOTIATING, QmpInput.EOF): QmpPhase.CLOSED,
    (QmpPhase.READY, QmpInput.REPLY): QmpPhase.READY,
    (QmpPhase.READY, QmpInput.EVENT): QmpPhase.READY,
    (QmpPhase.READY, QmpInput.EOF): QmpPhase.CLOSED,
}


@dataclass(frozen=True, slots=True)
class QmpGreeting:
    version: str  # "7.2.22"
    package: str  # "Debian 1:7.2+dfsg-7+deb12u18"
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QmpReady:
    """``qmp_capabilities`` was accepted: commands may be sent."""


@dataclass(frozen=True, slots=True)
class QmpReturn:
    command_id: int
    command: str
    value: object


@dataclass(frozen=True, slots=True)
class QmpErrorReply:
    command_id: int
    command: str
    error_class: str  # "GenericError", "CommandNotFound", ...
    desc: str  # QEMU's own words, e.g. "The command foo has not been found"


@dataclass(frozen=True, slots=True)
class QmpEvent:
    name: str  # "RESET", "STOP", ...
    data: Mapping[str, object] = field(default_factory=dict)
    timestamp_s: float | None = None  # QEMU's host clock when the event happened


@dataclass(frozen=True, slots=True)
class QmpClosed:
    """The peer closed the stream (``unfinished_bytes`` of a message were pending)."""

    unfinished_bytes: int = 0


QmpProtocolEvent: TypeAlias = QmpGreeting | QmpReady | QmpReturn | QmpErrorReply | QmpEvent | QmpClosed


class QmpProtocol:
    """The client side of QMP, sans I/O.  See the module docstring for the phases.

    ``receive_data(b"")`` means EOF.  A protocol error raises ``QmpProtocolError`` from ``receive_data`` and
    closes the protocol; events parsed before the bad line are still returned by ``events_received``.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.phase = QmpPhase.GREETING
        self.greeting: QmpGreeting | None = None
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no newline: keeps byte-by-byte feeding O(n)
        self._events: list[QmpProtocolEvent] = []
        self._outgoing = bytearray()
        self._next_id = 1
        self._awaiting: dict[int, str] = {}  # id -> command name, for every command not yet answered
        self._capabilities_id: int | None = None

    # -- public API -------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.phase is QmpPhase.CLOSED:
            if not data:
                return
            raise QmpProtocolError("data received after the connection closed")
        if not data:
            self._advance(QmpInput.EOF)
            self._events.append(QmpClosed(len(self._buffer)))
            self._buffer.clear()
            return
        self._buffer += data
        while True:
            newline = self._buffer.find(b"\n", self._scanned)
            if newline < 0:
                self._scanned = len(self._buffer)
                if len(self._buffer) > self.max_line_bytes:
                    self._fail(f"message longer than {self.max_line_bytes} bytes without a newline")
                return
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            self._scanned = 0
            if len(line) > self.max_line_bytes:
                self._fail(f"message of {len(line)} bytes exceeds the limit of {self.max_line_bytes}")
            if line.strip():
                self._receive_message(line)

    def events_received(self) -> list[QmpProtocolEvent]:
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def send_command(self, name: str, arguments: Mapping[str, object] | None = None) -> int:
        """Queue a command; returns its id.  Only in phase READY (the client waits for ``QmpReady``)."""
        if self.phase is not QmpPhase.READY:
            raise RuntimeError(f"cannot send {name!r} in QMP phase {self.phase.value}")
        return self._queue(name, arguments)

    @property
    def awaiting_reply(self) -> Mapping[int, str]:
        """Commands sent and not yet answered (id -> name)."""
        return dict(self._awaiting)

    # -- internals --------------------------------------------------------------------------------------

    def _queue(self, name: str, arguments: Mapping[str, object] | None) -> int:
        command_id = self._next_id
        self._next_id += 1
        message: dict[str, object] = {"execute": name, "id": command_id}
        if arguments:
            message["arguments"] = dict(arguments)
        self._outgoing += json.dumps(message, separators=(",", ":")).encode() + b"\n"
        self._awaiting[command_id] = name
        return command_id

    def _fail(self, reason: str) -> None:
        self.phase = QmpPhase.CLOSED
        self._buffer.clear()
        raise QmpProtocolError(reason)

    def _advance(self, received: QmpInput) -> None:
        following = _TRANSITIONS.get((self.phase, received))
        if following is None:
            self._fail(f"unexpected {received.value} in phase {self.phase.value}")
        else:
            self.phase = following

    def _receive_message(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            shown = line[:80].decode("utf-8", "backslashreplace")
            self._fail(f"not JSON: {shown!r}")
            return
        if not isinstance(message, dict):
            self._fail(f"expected a JSON object, got {type(message).__name__}")
            return
        if "QMP" in message:
            self._receive_greeting(message["QMP"])
        elif "event" in message:
            self._receive_event(message)
        elif "return" in message or "error" in message:
            self._receive_reply(message)
        else:
            self._fail(f"message is neither greeting, reply nor event: keys {sorted(message)[:5]}")

    def _receive_greeting(self, body: object) -> None:
        self._advance(QmpInput.GREETING)
        if not isinstance(body, dict):
            self._fail("malformed greeting")
            return
        version = body.get("version")
        text, package = "?", ""
        if isinstance(version, dict):
            numbers = version.get("qemu")
            if isinstance(numbers, dict):
                text = ".".join(str(numbers.get(part, "?")) for part in ("major", "minor", "micro"))
            package = str(version.get("package", ""))
        capabilities = body.get("capabilities", [])
        caps = tuple(str(c) for c in capabilities) if isinstance(capabilities, list) else ()
        self.greeting = QmpGreeting(text, package, caps)
        self._events.append(self.greeting)
        # Out-of-band execution is not enabled: in-order replies are all an adapter needs.
        self._capabilities_id = self._queue("qmp_capabilities", None)

    def _receive_event(self, message: dict[str, object]) -> None:
        self._advance(QmpInput.EVENT)
        name = message["event"]
        data = message.get("data", {})
        if not isinstance(name, str) or not isinstance(data, dict):
            self._fail("malformed event")
            return
        stamp = message.get("timestamp")
        timestamp_s: float | None = None
        if isinstance(stamp, dict):
            seconds, micros = stamp.get("seconds"), stamp.get("microseconds")
            if isinstance(seconds, int) and isinstance(micros, int):
                timestamp_s = seconds + micros / 1e6
        self._events.append(QmpEvent(name, data, timestamp_s))

    def _receive_reply(self, message: dict[str, object]) -> None:
        command_id = message.get("id")
        if isinstance(command_id, bool) or not isinstance(command_id, int):
            # QEMU answers without an id only when it could not parse our command: a bug on our side,
            # but also what a confused peer would send.  Either way no caller can be matched.
            self._fail(f"reply without a usable id: {brief_json(message)}")
            return
        command = self._awaiting.pop(command_id, None)
        if command is None:
            self._fail(f"reply to id {command_id}, which was never sent or already answered")
            return
        self._advance(QmpInput.REPLY)
        error = message.get("error")
        if command_id == self._capabilities_id:
            self._capabilities_id = None
            if error is not None:
                self._fail(f"qmp_capabilities refused: {brief_json(error)}")
                return
            self._events.append(QmpReady())
            return
        if error is not None:
            if not isinstance(error, dict):
                self._fail(f"malformed error reply: {brief_json(message)}")
                return
            self._events.append(
                QmpErrorReply(command_id, command, str(error.get("class", "?")), str(error.get("desc", "")))
            )
        else:
            self._events.append(QmpReturn(command_id, command, message["return"]))


def brief_json(value: object) -> str:
    """``value`` as JSON for a message, cut to 120 characters: enough to recognise, never a whole reply."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."
