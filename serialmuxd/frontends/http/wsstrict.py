"""RFC 6455 strictness on top of aiohttp's WebSocket server, with public APIs only (aiohttp 3.14).

What aiohttp does not do, and where it is done here (the rules themselves are in ``proto.wshandshake``):

* Handshake (§4.2.1, §4.4): aiohttp accepts versions 8 and 7 and reads only the first of duplicated
  headers.  ``refuse_handshake`` runs before ``ws.prepare``: 426 with ``Sec-WebSocket-Version: 13`` for
  a wrong or missing version, 400 for the rest, both in our JSON error shape.
* Masking (§5.1): aiohttp's frame reader accepts unmasked client frames and offers no switch.
  ``require_masked_frames`` puts a pass-through protocol between the connection's transport and aiohttp
  (``transport.set_protocol``: asyncio's public API, supported by uvloop too).  It follows the frame
  boundaries and hands aiohttp only the bytes before the first unmasked frame; then it sends close 1002
  and closes the connection, so no byte of that frame reaches the console.  It must be installed after
  the handshake checks (then ``prepare`` cannot refuse and leave an HTTP connection behind the filter)
  and before ``prepare`` (a client may send its first frame as soon as it reads the 101).
* Close codes (§7.4): aiohttp answers every close frame with 1000, including codes that must never be on
  the wire (1005, 1006, 1015) and codes of 5000 and above.  With ``autoclose=False`` our ``receive``
  answers them with 1002.
* Message size: aiohttp's ``max_msg_size`` refuses messages of that size *or more*; ours refuses only
  larger ones (``http.ws_max_message_bytes``).  ``aiohttp_max_msg_size`` converts, and ``receive`` checks
  the size again so the documented limit holds even if aiohttp's comparison changes.

Every close for a protocol error (1002 from the filter, from a close code, or from aiohttp's frame reader;
1007 for text that is not UTF-8; 1009 for a message too big) and every heartbeat cut (aiohttp's ping got
no pong: a dead peer or a broken path) is passed to the handler's ``CloseReport``, which audits it
(``ws_protocol_close``, ``heartbeat_cut``).

Known limit: frames a client sends before it has read the 101 response (RFC 6455 §4.1 forbids that) may
reach aiohttp before the filter is in place and are not checked.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import WebSocketError, WSMessage, WSMsgType, web

from ...proto import wshandshake
from .errors import ApiError

log = structlog.get_logger("serialmuxd.http")


class PeerFault(enum.Enum):
    """How a connection ended when it was the peer's fault."""

    PROTOCOL = "protocol"  # closed with 1002, 1007 or 1009
    HEARTBEAT = "heartbeat"  # no pong: cut


# (fault, close code, reason)
CloseReport = Callable[[PeerFault, int, str], None]
_PROTOCOL_CODES = frozenset({1002, 1007, 1009})


def _ignore(fault: PeerFault, code: int, reason: str) -> None:
    return None


def refuse_handshake(request: web.Request) -> web.Response | None:
    """The answer to an upgrade request that breaks RFC 6455 §4.2.1, or None to go on with ``prepare``."""
    refusal = wshandshake.check_handshake(
        request.headers.items(), (request.version.major, request.version.minor)
    )
    if refusal is None:
        return None
    if refusal.upgrade_required:
        return web.json_response(
            {"code": "upgrade_required", "message": refusal.reason},
            status=426,
            # RFC 7231 §6.5.15 wants Upgrade on a 426; RFC 6455 §4.4 the versions we speak.
            headers={"Sec-WebSocket-Version": wshandshake.SUPPORTED_VERSION, "Upgrade": "websocket"},
        )
    return ApiError("bad_request", refusal.reason).response()


def aiohttp_max_msg_size(limit_bytes: int) -> int:
    """``max_msg_size`` for a limit of ``limit_bytes`` inclusive (aiohttp refuses sizes >= its value)."""
    return limit_bytes + 1


async def receive(
    ws: web.WebSocketResponse, limit_bytes: int, report: CloseReport = _ignore
) -> WSMessage | None:
    """The next text or binary message, or None once the connection is closing (for ``autoclose=False``).

    A client's close frame is answered here: with 1000, or with 1002 when its code is one that must never
    be sent.  Pings and pongs are handled inside aiohttp (``autoping``).  Closes that are the peer's fault
    go to ``report``.
    """
    msg = await ws.receive()
    if msg.type is WSMsgType.CLOSE:
        code = wshandshake.close_reply_code(msg.data)
        if code == wshandshake.CLOSE_PROTOCOL_ERROR:
            report(PeerFault.PROTOCOL, code, f"close frame with code {msg.data}, which is never sent")
        await ws.close(code=code)
        return None
    if msg.type is WSMsgType.BINARY:
        size = len(msg.data)
    elif msg.type is WSMsgType.TEXT:
        text: str = msg.data
        size = len(text) if len(text) * 4 <= limit_bytes else len(text.encode())
    else:
        _report_end(ws, msg, report)
        return None  # CLOSING, CLOSED, ERROR: aiohttp has closed or is closing with the right code
    if size > limit_bytes:
        report(
            PeerFault.PROTOCOL,
            wshandshake.CLOSE_MESSAGE_TOO_BIG,
            f"message of {size} bytes (limit {limit_bytes})",
        )
        await ws.close(code=wshandshake.CLOSE_MESSAGE_TOO_BIG, message=b"message too big")
        return None
    return msg


def _report_end(ws: web.WebSocketResponse, msg: WSMessage, report: CloseReport) -> None:
    """Why aiohttp ended the connection, if it was the peer's fault: its frame reader's protocol errors come
    as an ERROR message with a ``WebSocketError``; a missed pong leaves a ``TimeoutError`` as the socket's
    exception (also when the handler was not waiting in ``receive`` at the time)."""
    error = msg.data if msg.type is WSMsgType.ERROR else ws.exception()
    if isinstance(error, WebSocketError) and error.code in _PROTOCOL_CODES:
        report(PeerFault.PROTOCOL, int(error.code), str(error)[:120])
    elif isinstance(error, asyncio.TimeoutError):
        report(PeerFault.HEARTBEAT, int(ws.close_code or 1006), "no pong within the heartbeat")


class _MaskedFramesOnly(asyncio.Protocol):
    """Sits between a WebSocket connection's transport and aiohttp's protocol; see the module docstring."""

    def __init__(self, transport: asyncio.Transport, inner: Any, peer: str, report: CloseReport) -> None:
        self._transport = transport
        self._inner = inner  # aiohttp's RequestHandler: every callback is passed on to it
        self._peer = peer
        self._report = report
        self._checker = wshandshake.ClientFrameChecker()

    def data_received(self, data: bytes) -> None:
        passed = self._checker.receive_data(data)
        if passed:
            self._inner.data_received(data if passed == len(data) else data[:passed])
        if self._checker.violation is not None and not self._transport.is_closing():
            log.info("ws_protocol_error", peer=self._peer, reason=self._checker.violation)
            self._report(PeerFault.PROTOCOL, wshandshake.CLOSE_PROTOCOL_ERROR, self._checker.violation)
            # Frames are written whole, never across an await, so this cannot land inside one of aiohttp's.
            self._transport.write(
                wshandshake.close_frame(wshandshake.CLOSE_PROTOCOL_ERROR, b"unmasked frame")
            )
            self._transport.close()

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def require_masked_frames(request: web.Request, report: CloseReport = _ignore) -> None:
    """Close the connection with 1002 at the first unmasked client frame (call just before ``prepare``)."""
    transport = request.transport
    if transport is not None:
        inner = transport.get_protocol()
        transport.set_protocol(_MaskedFramesOnly(transport, inner, str(request.remote), report))
