"""RFC 6455 rules for a client's WebSocket that aiohttp leaves to the application, sans-I/O.

aiohttp (3.14) accepts a handshake with ``Sec-WebSocket-Version: 8`` or ``7`` (drafts this server never
spoke), reads only the first of two ``Upgrade`` or ``Sec-WebSocket-Key`` headers, and reads client frames
whether they are masked or not.  This module holds the checks, with no I/O of its own:

* ``check_handshake(headers, http_version)``: the opening handshake of §4.2.1, headers in (every header
  line, duplicates kept), a ``HandshakeRefusal`` or None out.  A wrong or missing version is told apart
  (``upgrade_required``): §4.4 wants 426 with ``Sec-WebSocket-Version: 13`` so that the client can retry.
* ``ClientFrameChecker``: §5.1, "a server MUST close the connection upon receiving a frame that is not
  masked".  It follows the frame boundaries of the client's byte stream (header, extended length, masking
  key, payload) and says how much of each chunk may go on to the frame parser: everything before the
  first unmasked frame, nothing from it on.  It parses no payload; aiohttp still does all the rest.
* ``close_reply_code(code)``: the code to answer a client's close frame with.  §7.4 reserves 1005, 1006
  and 1015 for reporting and forbids them on the wire, and codes outside the registered ranges mean
  nothing; a close frame carrying one is a protocol error (1002), the others are answered with 1000.
* ``close_frame(code, reason)``: the server's (unmasked) close frame, for failing a connection whose
  stream can no longer be trusted.
"""

from __future__ import annotations

import base64
import binascii
import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass

SUPPORTED_VERSION = "13"
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_MESSAGE_TOO_BIG = 1009

# Headers a handshake carries once: a second one is ambiguous (which one did a proxy in front act on?).
_SINGLE_HEADERS = ("Host", "Upgrade", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin")
_KEY_BYTES = 16
# Codes a peer may send (RFC 6455 §7.4.1 and the IANA registry; 3000-4999 are for libraries and apps).
_SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


@dataclass(frozen=True, slots=True)
class HandshakeRefusal:
    """Why an upgrade request is refused; ``upgrade_required``: answer 426 naming the supported version."""

    reason: str
    upgrade_required: bool = False


def _shown(value: str) -> str:
    return repr(value[:40])


def check_handshake(
    headers: Iterable[tuple[str, str]], http_version: tuple[int, int] = (1, 1)
) -> HandshakeRefusal | None:
    """Check an opening handshake (RFC 6455 §4.2.1); None when it may be accepted."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(value)

    if tuple(http_version) < (1, 1):
        return HandshakeRefusal("a WebSocket handshake needs HTTP/1.1")
    for name in _SINGLE_HEADERS:
        if len(values.get(name.lower(), ())) > 1:
            return HandshakeRefusal(f"more than one {name} header")
    upgrade = values.get("upgrade", [""])[0]
    if upgrade.strip().lower() != "websocket":
        return HandshakeRefusal(f"not a WebSocket handshake: Upgrade is {_shown(upgrade)}, not 'websocket'")
    tokens = {t.strip().lower() for line in values.get("connection", ()) for t in line.split(",")}
    if "upgrade" not in tokens:
        return HandshakeRefusal("not a WebSocket handshake: Connection does not include 'Upgrade'")

    versions = values.get("sec-websocket-version")
    if not versions:
        return HandshakeRefusal(
            f"Sec-WebSocket-Version is missing; this server speaks {SUPPORTED_VERSION}", upgrade_required=True
        )
    if versions[0].strip() != SUPPORTED_VERSION:
        return HandshakeRefusal(
            f"Sec-WebSocket-Version {_shown(versions[0])} is not supported; this server speaks "
            f"{SUPPORTED_VERSION}",
            upgrade_required=True,
        )

    key = values.get("sec-websocket-key", [""])[0].strip()
    try:
        decoded = base64.b64decode(key, validate=True) if len(key) == 24 else b""
    except binascii.Error:
        decoded = b""
    if len(decoded) != _KEY_BYTES:
        return HandshakeRefusal("Sec-WebSocket-Key must be 16 bytes in base64")

    # A GET handshake has no body; one declared anyway would be read as the first WebSocket frames.
    if any(v.strip() != "0" for v in values.get("content-length", ())) or "transfer-encoding" in values:
        return HandshakeRefusal("a WebSocket handshake has no body")
    return None


def is_sendable_close_code(code: int) -> bool:
    """Whether a close frame may carry ``code`` (RFC 6455 §7.4)."""
    return code in _SENDABLE_CLOSE_CODES or 3000 <= code <= 4999


def close_reply_code(code: int | None) -> int:
    """The code to answer a client's close frame with; ``None`` or 0: the frame carried no code."""
    if not code or is_sendable_close_code(code):
        return CLOSE_NORMAL
    return CLOSE_PROTOCOL_ERROR


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """A server-to-client close frame (FIN, opcode 8, unmasked); the reason is cut to the 123 bytes."""
    payload = struct.pack("!H", code) + reason[:123]
    return bytes((0x88, len(payload))) + payload


class _FrameState(enum.Enum):
    HEADER = enum.auto()  # the 2 bytes with FIN/opcode and MASK/length
    LENGTH = enum.auto()  # the 2- or 8-byte extended payload length
    MASK_KEY = enum.auto()  # the 4-byte masking key
    PAYLOAD = enum.auto()  # payload bytes, counted and passed on unread
    FAILED = enum.auto()  # an unmasked frame was seen: nothing more is passed on


class ClientFrameChecker:
    """Follows the frames of a client's byte stream and stops it at the first unmasked frame.

    ``receive_data(chunk)`` returns how many leading bytes of ``chunk`` may be passed to the frame parser.
    States run HEADER -> (LENGTH) -> MASK_KEY -> (PAYLOAD) -> HEADER for every frame; a header whose MASK
    bit is clear goes to FAILED, which keeps everything from that header on.  The header's first byte may
    already have been passed on in an earlier chunk: a frame parser does nothing with half a header, so
    no byte of the frame's payload is ever passed on.  Bytes are passed on without copying any payload.
    """

    def __init__(self) -> None:
        self.state = _FrameState.HEADER
        self.violation: str | None = None
        self._header = bytearray()  # the part of a header/length/key seen so far
        self._need = 2  # bytes still wanted in the current state
        self._length_bytes = 0
        self._payload_left = 0

    def receive_data(self, data: bytes) -> int:
        if self.state is _FrameState.FAILED:
            return 0
        pos = 0
        end = len(data)
        while pos < end:
            state = self.state
            if state is _FrameState.PAYLOAD:
                take = min(self._payload_left, end - pos)
                pos += take
                self._payload_left -= take
                if self._payload_left == 0:
                    self._next(_FrameState.HEADER, 2)
                continue
            take = min(self._need, end - pos)
            self._header += data[pos : pos + take]
            self._need -= take
            if self._need:
                return end  # the rest of this header comes with the next chunk
            frame_start = pos + take - len(self._header)  # may be negative: started in an earlier chunk
            pos += take
            if state is _FrameState.HEADER:
                second = self._header[1]
                if not second & 0x80:
                    self.state = _FrameState.FAILED
                    self.violation = "unmasked frame from the client (RFC 6455 section 5.1)"
                    return max(frame_start, 0)
                length = second & 0x7F
                if length == 126:
                    self._next(_FrameState.LENGTH, 2)
                elif length == 127:
                    self._next(_FrameState.LENGTH, 8)
                else:
                    self._payload_left = length
                    self._next(_FrameState.MASK_KEY, 4)
            elif state is _FrameState.LENGTH:
                self._payload_left = int.from_bytes(self._header, "big")
                self._next(_FrameState.MASK_KEY, 4)
            else:  # MASK_KEY
                if self._payload_left:
                    self._next(_FrameState.PAYLOAD, 0)
                else:
                    self._next(_FrameState.HEADER, 2)
        return end

    def _next(self, state: _FrameState, need: int) -> None:
        self.state = state
        self._need = need
        self._header.clear()
