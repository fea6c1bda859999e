"""WebSocket consoles: ``GET /api/v1/ports/{name}/ws?mode=rw|ro&from=OFFSET``.

A WebSocket session is an ordinary hub session: ``WsConnection`` implements ``hub.SessionSink``.  The hub
never awaits a client, so guest bytes and JSON events go, in order, into a ``FrameQueue`` that a writer task
drains (guest bytes that find the queue empty and the transport's buffer empty are written as a frame at
once: a keystroke echo costs no task wake-up); above ``client_buffer_bytes`` queued the session counts as
behind (the hub stops feeding it and later resumes it from the ring, telling it how many bytes it missed),
and events queued while behind are bounded by the shared ``OutputBudget``.  Control messages (text frames)
are parsed by ``proto.wsmsg`` and passed to the session; the hub decides whether this session may do them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Iterable
from typing import Any, Protocol, cast

from aiohttp import WSCloseCode, WSMsgType, web

from ...core.access import AttachMode, Identity
from ...hub import EndReason, Notice, PortState, Session
from ...proto import wsmsg
from ..output import CLOSE_FLUSH_TIMEOUT_S, FrameQueue, OutputBudget
from . import wsstrict
from .common import SETTINGS_KEY, console, identity, int_param
from .errors import ApiError
from .sessions import audit
from .signins import SIGNINS_KEY

# WebSocket close codes (4000-4999 are ours; documented in the README and the OpenAPI document).
WS_CLOSE_EVICTED = 4000
WS_CLOSE_DISABLED = 4001
WS_CLOSE_BAD_MESSAGE = 4002
WS_CLOSE_FELL_BEHIND = 4003
WS_CLOSE_DENIED = 4005
WS_CLOSE_LIMIT = 4006
_END_CODES: dict[EndReason, int] = {
    EndReason.EVICTED: WS_CLOSE_EVICTED,
    EndReason.DISABLED: WS_CLOSE_DISABLED,
    EndReason.FELL_BEHIND: WS_CLOSE_FELL_BEHIND,
    EndReason.DENIED: WS_CLOSE_DENIED,
    EndReason.LIMIT: WS_CLOSE_LIMIT,
    EndReason.SHUTDOWN: int(WSCloseCode.GOING_AWAY),
    EndReason.PROTOCOL: WS_CLOSE_BAD_MESSAGE,
    EndReason.DETACHED: int(WSCloseCode.OK),
}


class _FrameSink(Protocol):
    """The transport methods the direct path uses (uvloop's transports do not subclass asyncio's)."""

    def write(self, data: bytes) -> None: ...

    def writelines(self, data: Iterable[bytes]) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...


def _is_frame_sink(transport: object) -> bool:
    return all(
        hasattr(transport, name) for name in ("write", "writelines", "is_closing", "get_write_buffer_size")
    )


_COPY_BELOW = 16 * 1024  # smaller payloads are joined to their header (one small copy, one write)


def _frame_header(length: int) -> bytes:
    """RFC 6455 header of one unfragmented, unmasked (server) binary frame; no extensions (compress=False)."""
    if length < 126:
        return bytes((0x82, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


def _binary_frame(data: bytes) -> bytes:
    return _frame_header(len(data)) + data


def _binary_frames(data: bytes) -> tuple[bytes, bytes]:
    return _frame_header(len(data)), data


class WsConnection:
    """One WebSocket console session; implements ``hub.SessionSink``.

    Output (guest bytes and JSON events, in order) goes through ``_queue``; ``_writer`` sends it.  Input
    is read by the handler's receive loop, which waits on ``input_allowed`` when the device is full.
    """

    def __init__(
        self, ws: web.WebSocketResponse, limit_bytes: int, transport: asyncio.BaseTransport | None = None
    ) -> None:
        self.ws = ws
        self._transport = transport
        # What send_output may write frames to directly (aiohttp writes its own frames to the same transport).
        self._direct = cast(_FrameSink, transport) if _is_frame_sink(transport) else None
        self.session: Session | None = None
        self._queue = FrameQueue()
        self._budget = OutputBudget(limit_bytes)
        self._wakeup = asyncio.Event()
        self.input_allowed = asyncio.Event()
        self.input_allowed.set()
        self.close_code: int | None = None
        self.close_reason = ""
        self._abort_timer: asyncio.TimerHandle | None = None
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    # SessionSink
    def session_started(self, session: Session) -> None:
        self.session = session

    def send_output(self, data: bytes) -> None:
        if self.close_code is not None:
            return
        out = self._direct
        if (
            out is not None
            and not self._queue
            and not self.ws.closed  # a close frame went out: nothing may follow it
            and not out.is_closing()
            and not out.get_write_buffer_size()
        ):
            # Nothing queued and the kernel took everything so far: the frame goes out now, as telnet's
            # bytes do (no wake-up of the writer task, no queue).  Frame order is kept: only an empty queue
            # lets a frame bypass it, and every frame aiohttp writes (pings, the close) is written whole.
            if len(data) < _COPY_BELOW:
                out.write(_binary_frame(data))
            else:
                out.writelines(_binary_frames(data))
            return
        self._queue.push_bytes(data)
        self._wakeup.set()
        self._pause_if_full()

    def send_notice(self, notice: Notice) -> None:
        event = {"type": "notice", "kind": str(notice.kind), "text": notice.text, **notice.fields}
        if notice.hint is not None:  # the page or client says how in its own words (serialmux: "~f")
            event["hint"] = str(notice.hint)
        self.send_event(event)

    def send_event(self, event: dict[str, Any]) -> None:
        if self.close_code is not None:
            return
        text = json.dumps(event)
        if self._budget.written(len(text)):
            # Events are not subject to the output pause; a client that reads nothing at all must not
            # make them pile up without end.
            self.close_session("not reading: too much unsent output", EndReason.FELL_BEHIND)
            return
        self._queue.push_text(text)
        self._wakeup.set()
        self._pause_if_full()

    def _pause_if_full(self) -> None:
        # Everything queued occupies the client's buffer, events too: over the limit the session is behind.
        if self._queue.queued_bytes > self._budget.limit_bytes and not self._budget.paused:
            self._budget.pause()
            if self.session is not None:
                self.session.pause_output()

    def close_session(self, reason: str, kind: EndReason) -> None:
        if self.close_code is not None:
            return
        self.close_code = _END_CODES[kind]  # first: from here on send_event adds nothing (and cannot recurse)
        self.close_reason = reason
        if self.session is not None:
            self.session.detach()  # closes we start ourselves (bad message, not reading); no-op for the hub's
        self._queue.push_text(json.dumps({"type": "closing", "reason": reason, "code": self.close_code}))
        self._wakeup.set()
        self.input_allowed.set()  # a receive loop parked on device back-pressure must see the close
        # A client that stopped reading never lets the close frame out: cut the connection after a while.
        self._abort_timer = asyncio.get_running_loop().call_later(CLOSE_FLUSH_TIMEOUT_S, self._abort_if_open)

    def _abort_if_open(self) -> None:
        # Not isinstance(asyncio.Transport): uvloop's transports do not subclass it.
        abort = getattr(self._transport, "abort", None)
        if self._transport is not None and abort is not None and not self._transport.is_closing():
            abort()

    def pause_input(self) -> None:
        self.input_allowed.clear()

    def resume_input(self) -> None:
        self.input_allowed.set()

    # internals
    async def _write_loop(self) -> None:
        try:
            while True:
                while self._queue:
                    item = self._queue.pop()
                    if isinstance(item, str):
                        await self.ws.send_str(item)
                    else:  # a chunk as it came (no copy), or a coalesced bytearray (copied once here)
                        await self.ws.send_bytes(item if isinstance(item, bytes) else bytes(item))
                    if self._budget.paused and self._queue.queued_bytes <= self._budget.limit_bytes // 4:
                        self._budget.resume()
                        if self.session is not None:
                            self.session.resume_output()
                if self.close_code is not None:
                    # Close codes' reasons are limited to 123 bytes by RFC 6455.
                    await self.ws.close(code=self.close_code, message=self.close_reason.encode()[:123])
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
        except (ConnectionError, RuntimeError):
            return  # the client went away; the handler's receive loop ends and detaches

    async def finish(self) -> None:
        if self.close_code is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_FLUSH_TIMEOUT_S)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        if self._abort_timer is not None:
            self._abort_timer.cancel()


def _bad_message(conn: WsConnection, reason: str) -> None:
    conn.close_session(f"bad message: {reason}", EndReason.PROTOCOL)


async def _control(conn: WsConnection, session: Session, text: str, key_profile: str) -> None:
    """Act on one text frame (see ``proto.wsmsg``); a bad one closes only this session (4002)."""
    try:
        message = wsmsg.parse_control(text)
    except wsmsg.BadMessage as exc:
        _bad_message(conn, str(exc))
        return
    match message:
        case wsmsg.Resize(cols, rows):
            session.window_size_changed(cols, rows)
        case wsmsg.Break():
            session.send_break()
        case wsmsg.TakeOver():
            session.take_over()
        case wsmsg.ReadOnly():
            session.become_viewer()
        case wsmsg.AnswerTakeover(accept):
            session.answer_takeover(accept)
        case wsmsg.Key(name):
            try:
                session.send_key(name)
            except KeyError:
                _bad_message(conn, f"unknown key {name[:20]!r} for key profile {key_profile}")
        case wsmsg.SysRq(key):
            await session.send_sysrq(key)
        case wsmsg.Who():
            session.who()
        case wsmsg.Ping():
            conn.send_event({"type": "pong"})


class _CloseAudit:
    """``wsstrict.CloseReport`` for one connection: audits a protocol close or a heartbeat cut with who was
    on it, the console and the hub session (once attached)."""

    def __init__(self, request: web.Request, who: Identity, port: str) -> None:
        self._request = request
        self._who = who
        self._port = port
        self.session_id: int | None = None

    def __call__(self, fault: wsstrict.PeerFault, code: int, reason: str) -> None:
        fields = {"port": self._port, "session": self.session_id, "code": code, "reason": reason}
        if fault is wsstrict.PeerFault.HEARTBEAT:
            audit("heartbeat_cut", self._request, self._who, result="closed", **fields)
        else:
            audit("ws_protocol_close", self._request, self._who, result="closed", **fields)


class WebSocketConsoles:
    """The WebSocket endpoint and the connections it holds (capped by ``http.max_connections``)."""

    def __init__(self) -> None:
        self.connections: set[WsConnection] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target = console(request)
        mode_text = request.query.get("mode", "rw")
        if mode_text not in ("rw", "ro"):
            raise ApiError("bad_request", f"mode must be rw or ro, got {mode_text[:10]!r}")
        mode = AttachMode.INTERACTIVE if mode_text == "rw" else AttachMode.READ_ONLY
        from_offset = int_param(request, "from", None, 0, 2**63)
        end = target.stream_end
        if from_offset is not None and from_offset > end:
            raise ApiError("bad_request", f"from={from_offset} is beyond the end of the stream ({end})")
        status = target.status()
        if status.state is PortState.DISABLED:
            raise ApiError("console_disabled", f"console {target.name} is disabled: {status.state_reason}")
        settings = request.app[SETTINGS_KEY]
        if len(self.connections) >= settings.max_connections:
            raise ApiError(
                "too_many_connections",
                f"this server has its maximum of {settings.max_connections} WebSocket consoles",
            )
        refusal = wsstrict.refuse_handshake(request)  # what aiohttp lets through (version 8, two Upgrades)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse(
            heartbeat=settings.ws_heartbeat_s,
            max_msg_size=wsstrict.aiohttp_max_msg_size(settings.ws_max_message_bytes),
            compress=False,
            autoclose=False,  # wsstrict.receive answers close frames: 1002 for codes never sent on the wire
        )
        who = identity(request, "ws")
        report = _CloseAudit(request, who, target.name)
        wsstrict.require_masked_frames(request, report)
        await ws.prepare(request)
        conn = WsConnection(ws, target.config.client_buffer_bytes, request.transport)
        self.connections.add(conn)
        sign_ins = request.app[SIGNINS_KEY]
        sign_ins.opened(conn, request, who)  # ends with the sign-in it was opened under
        conn.send_event(
            {"type": "hello", "port": target.name, "mode": mode_text, "offset": target.stream_end}
        )
        session = target.attach(conn, who, mode, from_offset=from_offset)
        try:
            if session is not None:
                report.session_id = session.id
                while (msg := await wsstrict.receive(ws, settings.ws_max_message_bytes, report)) is not None:
                    if conn.close_code is not None:
                        break
                    if msg.type is WSMsgType.BINARY:
                        session.input(msg.data)
                    else:
                        await _control(conn, session, msg.data, target.config.key_profile)
                    if not conn.input_allowed.is_set():  # the device is full: wait (no coroutine otherwise)
                        await conn.input_allowed.wait()
        finally:
            self.connections.discard(conn)
            sign_ins.closed(conn)
            if session is not None:
                session.detach()
            await conn.finish()
            if not ws.closed:
                await ws.close()
        return ws

    def close_all(self, reason: str) -> None:
        """on_shutdown: WebSocket handlers would otherwise keep the runner's cleanup waiting."""
        for conn in list(self.connections):
            conn.close_session(reason, EndReason.SHUTDOWN)
