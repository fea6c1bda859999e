"""HTTP front end: versioned JSON API, WebSocket consoles, the browser console page, ``/healthz``.

Runs on the daemon's loop (``AppRunner`` + ``TCPSite`` in our own lifecycle; ``web.run_app`` would own the
loop).  Every error is JSON ``{"code", "message"}`` with a stable ``code`` and the right status; codes are
listed in ``ERROR_CODES`` and in the OpenAPI document (``/api/v1/openapi.json``).

WebSocket sessions are ordinary hub sessions: ``WsConnection`` implements ``hub.SessionSink``.  The hub must
never await a client, so guest bytes go into a per-connection queue that a writer task drains with
``send_bytes``; above ``client_buffer_bytes`` queued the session counts as behind (the hub stops feeding it
and later resumes it from the ring, telling it how many bytes it missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from ..adapters import Action, AdapterError, AdapterErrorKind
from ..config import PORT_NAME_RE
from ..core.access import Identity
from ..core.keys import MAX_KEYS_PER_REQUEST, key_bytes
from ..hub import AttachMode, EndReason, InputRefused, Notice, PortHub, PortState, Session
from ..proto import wsmsg
from ..web import CONSOLE_PAGE, INDEX_PAGE, MISSING_VENDOR_HINT, STATIC_DIR, VENDOR_DIR, missing_vendor_files
from .openapi import openapi_document
from .telnet import peer_text

if TYPE_CHECKING:
    from ..daemon import Daemon

log = structlog.get_logger("serialmuxd.http")

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")

# WebSocket close codes (4000-4999 are ours; documented in the README and the OpenAPI document).
WS_CLOSE_EVICTED = 4000
WS_CLOSE_DISABLED = 4001
WS_CLOSE_BAD_MESSAGE = 4002
WS_CLOSE_FELL_BEHIND = 4003
WS_CLOSE_DENIED = 4005
_END_CODES: dict[EndReason, int] = {
    EndReason.EVICTED: WS_CLOSE_EVICTED,
    EndReason.DISABLED: WS_CLOSE_DISABLED,
    EndReason.FELL_BEHIND: WS_CLOSE_FELL_BEHIND,
    EndReason.DENIED: WS_CLOSE_DENIED,
    EndReason.SHUTDOWN: int(WSCloseCode.GOING_AWAY),
    EndReason.PROTOCOL: WS_CLOSE_BAD_MESSAGE,
}

ERROR_CODES = {
    "bad_request": 400,
    "forbidden": 403,
    "misdirected": 421,
    "unknown_port": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "console_in_use": 409,
    "not_supported": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "offset_unavailable": 416,
    "console_disabled": 503,
    "console_offline": 503,
    "input_queue_full": 503,
    "hypervisor_unavailable": 503,
    "hypervisor_refused": 502,
    "hypervisor_failed": 502,
    "hypervisor_timeout": 504,
}
_ADAPTER_ERROR_CODES = {
    AdapterErrorKind.TIMEOUT: "hypervisor_timeout",
    AdapterErrorKind.UNAVAILABLE: "hypervisor_unavailable",
    AdapterErrorKind.REFUSED: "hypervisor_refused",
    AdapterErrorKind.UNSUPPORTED: "not_supported",
    AdapterErrorKind.FAILED: "hypervisor_failed",
}

_MAX_SCROLLBACK_LIMIT = 16 * 1024 * 1024
_WS_FRAME_BYTES = 64 * 1024
_MAX_QUEUED_EVENTS = 1000
_CLOSE_FLUSH_TIMEOUT_S = 5.0
_SYSRQ_KEY_DELAY_S = 0.3  # Linux accepts the SysRq key within 5 s after BREAK; leave the UART time to settle
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ApiError(Exception):
    """An error answer: JSON ``{"code", "message"}`` with the status of ``ERROR_CODES[code]``."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.body = {"code": code, "message": message, **extra}

    def response(self) -> web.Response:
        return web.json_response(self.body, status=ERROR_CODES[self.code])


def _error_for(exc: web.HTTPException) -> web.Response:
    """Turn aiohttp's own errors (404 route, 405, 413 body) into our JSON shape."""
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status, "bad_request"
    )
    status = exc.status if exc.status in (404, 405, 413) else 400
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return web.json_response({"code": code, "message": exc.reason}, status=status, headers=headers)


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _host_and_port(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` / ``[v6][:port]`` -> (lower-case host without brackets, port or None)."""
    authority = authority.lower()
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = authority.partition(":")
    if port_text and not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ApiError("bad_request", f"malformed Host or Origin {authority[:80]!r}")
    return host, int(port_text) if port_text else None


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _browser_guard(request: web.Request) -> None:
    """Keep web pages the operator happens to visit away from the consoles.

    * DNS rebinding: a page on evil.example re-pointed to 127.0.0.1 sends ``Host: evil.example``.  Served
      are only: the listen address, loopback names, ``http.allowed_hosts`` (e.g. the name a reverse proxy
      forwards) and, on a wildcard listener, any IP literal.
    * Cross-site requests: a browser adds ``Origin`` to POSTs and WebSocket upgrades; one from another
      origin could otherwise take over a console or reset a VM through a plain HTML form.  Accepted are the
      request's own origin and origins on ``http.allowed_hosts`` (a TLS-terminating proxy's page is
      ``https://name`` while the request reaching us is plain http).  Tools such as curl or websocat send no
      Origin and are not affected.
    """
    settings = _daemon(request).config.http
    host, port = _host_and_port(request.host)
    listen = settings.listen
    wildcard = listen is not None and listen.host in ("0.0.0.0", "::", "")
    named = _LOOPBACK_NAMES | set(settings.allowed_hosts) | ({listen.host.lower()} if listen else set())
    if host not in named and not (wildcard and _is_ip_literal(host)):
        raise ApiError("misdirected", f"this server does not serve host {host[:64]!r}")
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    origin = request.headers.get("Origin")
    if origin is None or (request.method in _SAFE_METHODS and not upgrade):
        return
    scheme, _, authority = origin.partition("://")
    origin_host, origin_port = _host_and_port(authority)
    default_port = 443 if scheme == "https" else 80
    same_origin = (origin_host, origin_port or default_port) == (host, port or 80)
    if not (same_origin or origin_host in settings.allowed_hosts):
        raise ApiError("forbidden", f"cross-origin request from {origin[:80]!r} refused")


@web.middleware
async def _errors_and_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        _browser_guard(request)
        response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error_for(exc)
    if not response.prepared:
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


# -- helpers ---------------------------------------------------------------------------------------------
def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON_KEY]


def _hub(request: web.Request) -> PortHub:
    name = request.match_info["name"]
    hub = _daemon(request).hubs.get(name) if PORT_NAME_RE.fullmatch(name) else None
    if hub is None:
        raise ApiError("unknown_port", f"no console named {name[:64]!r}")
    return hub


def _identity(request: web.Request, transport: str) -> Identity:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return Identity(transport, peer_text(peer) if peer else str(request.remote))


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 20:
        raise ApiError("bad_request", f"{name} must be an integer between {low} and {high}, got {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise ApiError("bad_request", f"{name} must be between {low} and {high}, got {value}")
    return value


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty body counts as ``{}``."""
    if not request.can_read_body:
        return {}
    if request.content_type != "application/json":
        raise ApiError(
            "unsupported_media_type", f"send application/json, not {request.content_type or 'no type'}"
        )
    body = await request.read()  # bounded by client_max_size (413)
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError("bad_request", f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError("bad_request", "the body must be a JSON object")
    return value


def port_json(hub: PortHub) -> dict[str, Any]:
    holder = hub.lease.holder
    sessions = list(hub.sessions.values())
    adapter = hub.adapter
    return {
        "name": hub.name,
        "state": str(hub.state),
        "state_reason": hub.state_reason,
        "state_since": hub.state_since,
        "device": hub.device_text,
        "writer": None if holder is None else {"who": holder.who, "since": holder.since},
        "viewers": sum(1 for s in sessions if not hub.lease.holds(s.id)),
        "sessions": len(sessions),
        "scrollback": {"start": hub.ring.start, "end": hub.ring.end, "capacity": hub.ring.capacity},
        "bytes_from_device": hub.bytes_from_device,
        "bytes_to_device": hub.bytes_to_device,
        "bytes_missed": hub.bytes_missed,
        "takeovers": hub.takeovers,
        "key_profile": hub.config.key_profile,
        "hypervisor": None
        if adapter is None
        else {
            "type": adapter.kind,
            "actions": sorted(str(a) for a in adapter.actions),
            "state": str(adapter.current.state),
            "state_reason": adapter.current.reason,
        },
    }


def _sanitize(data: bytes) -> str:
    """Guest bytes for people: text kept, control characters shown escaped (except \\n and \\t)."""
    text = data.decode("utf-8", "backslashreplace")
    out = []
    for ch in text:
        code = ord(ch)
        if ch in "\n\t" or (code >= 0x20 and code != 0x7F and not 0x80 <= code < 0xA0):
            out.append(ch)
        elif ch == "\r":
            continue
        else:
            out.append(f"\\x{code:02x}")
    return "".join(out)


# -- handlers: API ---------------------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    states: dict[str, int] = {}
    for hub in daemon.hubs.values():
        states[str(hub.state)] = states.get(str(hub.state), 0) + 1
    return web.json_response({"status": "ok", "ports": len(daemon.hubs), "states": states})


async def list_ports(request: web.Request) -> web.Response:
    return web.json_response({"ports": [port_json(h) for h in _daemon(request).hubs.values()]})


async def get_port(request: web.Request) -> web.Response:
    return web.json_response(port_json(_hub(request)))


async def scrollback(request: web.Request) -> web.StreamResponse:
    hub = _hub(request)
    ring = hub.ring
    start = _int_param(request, "from", ring.start, 0, 2**63)
    limit = _int_param(request, "limit", min(ring.capacity, _MAX_SCROLLBACK_LIMIT), 1, _MAX_SCROLLBACK_LIMIT)
    assert start is not None and limit is not None
    if start > ring.end:
        raise ApiError(
            "bad_request", f"from={start} is beyond the end of the stream ({ring.end})", end=ring.end
        )
    if start < ring.start:
        raise ApiError(
            "offset_unavailable",
            f"from={start} has been overwritten; the oldest available offset is {ring.start}",
            start=ring.start,
            end=ring.end,
        )
    result = ring.read(start, limit)
    headers = {
        "X-Scrollback-Start": str(ring.start),
        "X-Scrollback-End": str(ring.end),
        "X-Scrollback-Offset": str(result.offset),
        "X-Scrollback-Next": str(result.offset + len(result.data)),
        "Cache-Control": "no-store",
    }
    fmt = request.query.get("format", "raw")
    if fmt not in ("raw", "text"):
        raise ApiError("bad_request", f"format must be raw or text, got {fmt[:20]!r}")
    if request.query.get("download") == "1":
        stamp = time.strftime("%Y%m%dT%H%M%S")
        suffix = "txt" if fmt == "text" else "log"
        headers["Content-Disposition"] = f'attachment; filename="{hub.name}-{stamp}.{suffix}"'
    if fmt == "text":
        return web.Response(
            text=_sanitize(result.data), content_type="text/plain", charset="utf-8", headers=headers
        )
    return web.Response(body=result.data, content_type="application/octet-stream", headers=headers)


def _use_line(hub: PortHub, call: Callable[[], None]) -> None:
    """Run a hub call that puts bytes on the line; its refusal becomes the matching API error."""
    try:
        call()
    except InputRefused as exc:
        extra = {"writer": exc.writer} if exc.writer else {}
        raise ApiError(exc.code, str(exc), **extra) from None


async def post_break(request: web.Request) -> web.Response:
    hub = _hub(request)
    await _json_body(request)
    identity = _identity(request, "http")
    _use_line(hub, lambda: hub.api_break(identity))
    return web.json_response({"ok": True})


async def post_sysrq(request: web.Request) -> web.Response:
    hub = _hub(request)
    body = await _json_body(request)
    key = body.get("key")
    if not isinstance(key, str) or len(key) != 1 or not key.isascii() or not key.isprintable():
        raise ApiError("bad_request", 'body must be {"key": "<one printable character>"}, e.g. {"key": "s"}')
    identity = _identity(request, "http")
    _use_line(hub, lambda: hub.api_break(identity))
    await asyncio.sleep(_SYSRQ_KEY_DELAY_S)
    # Checked again: a writer may have attached, or the device gone, during the pause.
    _use_line(hub, lambda: hub.api_input(identity, key.encode(), "send SysRq"))
    return web.json_response({"ok": True})


async def post_keys(request: web.Request) -> web.Response:
    hub = _hub(request)
    body = await _json_body(request)
    keys = body.get("keys")
    if not isinstance(keys, list) or not keys or len(keys) > MAX_KEYS_PER_REQUEST:
        raise ApiError(
            "bad_request", f'body must be {{"keys": [NAME, ...]}} with 1..{MAX_KEYS_PER_REQUEST} names'
        )
    try:
        payload = b"".join(key_bytes(hub.config.key_profile, str(k)) for k in keys)
    except KeyError as exc:
        raise ApiError(
            "bad_request", f"unknown key {str(exc.args[0])[:20]!r} for key profile {hub.config.key_profile}"
        ) from None
    identity = _identity(request, "http")
    _use_line(hub, lambda: hub.api_input(identity, payload, "send keys"))
    return web.json_response({"ok": True, "bytes": len(payload)})


def _vm_handler(action: Action) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        hub = _hub(request)
        await _json_body(request)
        identity = _identity(request, "http")
        try:
            await hub.vm_action(action, identity)
        except AdapterError as exc:
            log.warning("vm_action_failed", port=hub.name, action=str(action), error=str(exc))
            # The adapter's detail names sockets/hosts: the operator's log has it; the client gets the kind.
            raise ApiError(
                _ADAPTER_ERROR_CODES[exc.kind], f"{action} on {hub.name} failed: {exc.kind}"
            ) from None
        return web.json_response({"ok": True, "action": str(action)})

    return handler


async def vm_state(request: web.Request) -> web.Response:
    hub = _hub(request)
    if hub.adapter is None:
        raise ApiError("not_supported", f"console {hub.name} has no [ports.hypervisor]")
    report = await hub.adapter.state_report()
    return web.json_response({"state": str(report.state), "reason": report.reason})


async def post_enable(request: web.Request) -> web.Response:
    hub = _hub(request)
    await _json_body(request)
    await _daemon(request).set_port_enabled(hub.name, True, "")
    return web.json_response(port_json(hub))


async def post_disable(request: web.Request) -> web.Response:
    hub = _hub(request)
    body = await _json_body(request)
    reason = str(body.get("reason") or f"disabled through the API by {_identity(request, 'http')}")[:200]
    await _daemon(request).set_port_enabled(hub.name, False, reason)
    return web.json_response(port_json(hub))


async def get_console(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    return web.json_response({"enabled": daemon.state.console_enabled, "reason": daemon.state.console_reason})


async def post_console(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    body = await _json_body(request)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise ApiError("bad_request", 'body must be {"enabled": true|false, "reason": "..."}')
    reason = str(body.get("reason") or f"disabled through the API by {_identity(request, 'http')}")[:200]
    await daemon.set_console_enabled(enabled, "" if enabled else reason)
    return web.json_response({"enabled": daemon.state.console_enabled, "reason": daemon.state.console_reason})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


# -- WebSocket -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Text:
    payload: str


class WsConnection:
    """One WebSocket console session; implements ``hub.SessionSink``.

    Output (guest bytes and JSON events, in order) goes through ``_queue``; ``_writer`` sends it.  Input
    is read by the handler's receive loop, which waits on ``_input_allowed`` when the device is full.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        hub: PortHub,
        mode: AttachMode,
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self.ws = ws
        self._transport = transport
        self._events_queued = 0
        self.hub = hub
        self.mode = mode
        self.session: Session | None = None
        self._queue: deque[bytes | _Text] = deque()
        self._queued_bytes = 0
        self._limit = hub.config.client_buffer_bytes
        self._wakeup = asyncio.Event()
        self._input_allowed = asyncio.Event()
        self._input_allowed.set()
        self._paused_output = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    # SessionSink
    def session_started(self, session: Session) -> None:
        self.session = session

    def send_output(self, data: bytes) -> None:
        if self.close_code is not None:
            return
        if self._queue and isinstance(self._queue[-1], bytes) and len(self._queue[-1]) < _WS_FRAME_BYTES:
            self._queue[-1] += data  # coalesce small chunks into one frame
        else:
            self._queue.append(data)
        self._queued_bytes += len(data)
        self._wakeup.set()
        if self._queued_bytes > self._limit and not self._paused_output and self.session is not None:
            self._paused_output = True
            self.session.pause_output()

    def send_notice(self, notice: Notice) -> None:
        self.send_event({"type": "notice", "kind": str(notice.kind), "text": notice.text, **notice.fields})

    def send_event(self, event: dict[str, Any]) -> None:
        if self.close_code is not None:
            return
        if self._events_queued >= _MAX_QUEUED_EVENTS:
            # Events are not subject to the output pause; a client that reads nothing at all must not
            # make them pile up without end.
            self.close_session("not reading: too many unsent events", EndReason.FELL_BEHIND)
            return
        self._events_queued += 1
        self._queue.append(_Text(json.dumps(event)))
        self._wakeup.set()

    def close_session(self, reason: str, kind: EndReason) -> None:
        if self.close_code is not None:
            return
        self.close_code = _END_CODES[kind]  # first: from here on send_event adds nothing (and cannot recurse)
        self.close_reason = reason
        if self.session is not None:
            self.session.detach()  # closes we start ourselves (bad message, not reading); no-op for the hub's
        self._queue.append(_Text(json.dumps({"type": "closing", "reason": reason, "code": self.close_code})))
        self._events_queued += 1
        self._wakeup.set()
        self._input_allowed.set()  # a receive loop parked on device back-pressure must see the close
        # A client that stopped reading never lets the close frame out: cut the connection after a while.
        asyncio.get_running_loop().call_later(_CLOSE_FLUSH_TIMEOUT_S, self._abort_if_open)

    def _abort_if_open(self) -> None:
        # Not isinstance(asyncio.Transport): uvloop's transports do not subclass it.
        abort = getattr(self._transport, "abort", None)
        if self._transport is not None and abort is not None and not self._transport.is_closing():
            abort()

    def pause_input(self) -> None:
        self._input_allowed.clear()

    def resume_input(self) -> None:
        self._input_allowed.set()

    # internals
    async def _write_loop(self) -> None:
        try:
            while True:
                while self._queue:
                    item = self._queue.popleft()
                    if isinstance(item, bytes):
                        self._queued_bytes -= len(item)
                        await self.ws.send_bytes(item)
                    else:
                        self._events_queued -= 1
                        await self.ws.send_str(item.payload)
                    if self._paused_output and self._queued_bytes <= self._limit // 4:
                        self._paused_output = False
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
                await asyncio.wait_for(asyncio.shield(self._writer), _CLOSE_FLUSH_TIMEOUT_S)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer


def _bad_message(conn: WsConnection, reason: str) -> None:
    conn.close_session(f"bad message: {reason}", EndReason.PROTOCOL)


async def _control(conn: WsConnection, session: Session, text: str) -> None:
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
        case wsmsg.TakeOver() if conn.mode is AttachMode.VIEWER:
            conn.send_event(
                {"type": "notice", "kind": "refused", "text": "this connection is read-only (mode=ro)"}
            )
        case wsmsg.TakeOver():
            session.take_over()
        case wsmsg.ReadOnly():
            session.become_viewer()
        case wsmsg.Key(name):
            try:
                session.input(key_bytes(conn.hub.config.key_profile, name))
            except KeyError:
                _bad_message(conn, f"unknown key {name[:20]!r} for key profile {conn.hub.config.key_profile}")
        case wsmsg.SysRq(key):
            if session.send_break():  # without a BREAK the key would just be typed into the shell
                await asyncio.sleep(_SYSRQ_KEY_DELAY_S)
                session.input(key.encode())
        case wsmsg.Who():
            session.who()
        case wsmsg.Ping():
            conn.send_event({"type": "pong"})


async def websocket(request: web.Request) -> web.StreamResponse:
    hub = _hub(request)
    mode_text = request.query.get("mode", "rw")
    if mode_text not in ("rw", "ro"):
        raise ApiError("bad_request", f"mode must be rw or ro, got {mode_text[:10]!r}")
    mode = AttachMode.INTERACTIVE if mode_text == "rw" else AttachMode.VIEWER
    from_offset = _int_param(request, "from", None, 0, 2**63)
    if from_offset is not None and from_offset > hub.ring.end:
        raise ApiError("bad_request", f"from={from_offset} is beyond the end of the stream ({hub.ring.end})")
    if hub.state is PortState.DISABLED:
        raise ApiError("console_disabled", f"console {hub.name} is disabled: {hub.state_reason}")
    settings = _daemon(request).config.http
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_heartbeat_s, max_msg_size=settings.ws_max_message_bytes, compress=False
    )
    await ws.prepare(request)
    conn = WsConnection(ws, hub, mode, request.transport)
    identity = _identity(request, "ws")
    conn.send_event({"type": "hello", "port": hub.name, "mode": mode_text, "offset": hub.ring.end})
    session = hub.attach(conn, identity, mode, from_offset=from_offset)
    try:
        if session is not None:
            async for msg in ws:
                if conn.close_code is not None:
                    break
                if msg.type is WSMsgType.BINARY:
                    session.input(msg.data)
                elif msg.type is WSMsgType.TEXT:
                    await _control(conn, session, msg.data)
                elif msg.type is WSMsgType.ERROR:
                    break
                await conn._input_allowed.wait()
    finally:
        if session is not None:
            session.detach()
        await conn.finish()
        if not ws.closed:
            await ws.close()
    return ws


# -- app -------------------------------------------------------------------------------------------------
def build_app(daemon: Daemon) -> web.Application:
    app = web.Application(
        client_max_size=daemon.config.http.max_body_bytes, middlewares=[_errors_and_headers]
    )
    app[DAEMON_KEY] = daemon
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/api/v1/openapi.json", openapi)
    r.add_get("/api/v1/ports", list_ports)
    r.add_get("/api/v1/ports/{name}", get_port)
    r.add_get("/api/v1/ports/{name}/scrollback", scrollback)
    r.add_get("/api/v1/ports/{name}/ws", websocket)
    r.add_post("/api/v1/ports/{name}/break", post_break)
    r.add_post("/api/v1/ports/{name}/sysrq", post_sysrq)
    r.add_post("/api/v1/ports/{name}/keys", post_keys)
    r.add_post("/api/v1/ports/{name}/nmi", _vm_handler(Action.NMI))
    r.add_post("/api/v1/ports/{name}/reset", _vm_handler(Action.RESET))
    r.add_post("/api/v1/ports/{name}/restart", _vm_handler(Action.RESTART))
    r.add_post("/api/v1/ports/{name}/start", _vm_handler(Action.START))
    r.add_get("/api/v1/ports/{name}/state", vm_state)
    r.add_post("/api/v1/ports/{name}/enable", post_enable)
    r.add_post("/api/v1/ports/{name}/disable", post_disable)
    r.add_get("/api/v1/console", get_console)
    r.add_post("/api/v1/console", post_console)
    _add_page_routes(app)
    app.on_shutdown.append(_close_websockets)
    return app


def _add_page_routes(app: web.Application) -> None:
    """The browser console page (``serialmuxd.web``): our sources, and xterm.js fetched at install time."""
    missing = missing_vendor_files()
    if missing:
        log.warning("console_page_incomplete", missing=missing, hint=MISSING_VENDOR_HINT)

    async def page_index(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(INDEX_PAGE, headers={"Cache-Control": "no-cache"})

    async def page_console(request: web.Request) -> web.StreamResponse:
        _hub(request)  # 404 for unknown names, before any page is served
        return web.FileResponse(CONSOLE_PAGE, headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", page_index)
    app.router.add_get("/console/{name}", page_console)
    if VENDOR_DIR.is_dir():
        app.router.add_static("/static/vendor/", VENDOR_DIR)
    app.router.add_static("/static/", STATIC_DIR)


async def _close_websockets(app: web.Application) -> None:
    """on_shutdown: WebSocket handlers would otherwise keep the runner's cleanup waiting."""
    for hub in app[DAEMON_KEY].hubs.values():
        for session in list(hub.sessions.values()):
            if isinstance(session.sink, WsConnection):
                hub._close_session(session, "serialmuxd is shutting down", EndReason.SHUTDOWN)
