"""The versioned JSON API: console state, scrollback, putting bytes on the line, hypervisor actions,
enable/disable.  Handlers parse and validate the request, call the console (which decides access and
arbitration) and serialise the typed answer; they decide nothing themselves."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from ...adapters import Action, AdapterError
from ...core.keys import MAX_KEYS_PER_REQUEST
from ...hub.status import PortStatus
from .common import console, control, identity, int_param, json_body
from .errors import ADAPTER_ERROR_CODES, ApiError
from .openapi import openapi_document
from .sessions import audit

log = structlog.get_logger("serialmuxd.http")

_MAX_SCROLLBACK_LIMIT = 16 * 1024 * 1024


def port_json(status: PortStatus) -> dict[str, Any]:
    body = dataclasses.asdict(status)
    body["state"] = str(status.state)
    if status.hypervisor is not None:
        body["hypervisor"]["actions"] = list(status.hypervisor.actions)
    return body


def sanitize(data: bytes) -> str:
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


async def healthz(request: web.Request) -> web.Response:
    states: dict[str, int] = {}
    consoles = control(request).consoles(identity(request, "http"))
    for item in consoles:
        state = str(item.status().state)
        states[state] = states.get(state, 0) + 1
    return web.json_response({"status": "ok", "ports": len(consoles), "states": states})


async def list_ports(request: web.Request) -> web.Response:
    visible = control(request).consoles(identity(request, "http"))
    group = request.query.get("group")
    ports = [port_json(c.status()) for c in visible if group is None or c.config.group == group]
    return web.json_response({"ports": ports})


async def get_port(request: web.Request) -> web.Response:
    return web.json_response(port_json(console(request).status()))


async def scrollback(request: web.Request) -> web.StreamResponse:
    target = console(request)
    ring_start, ring_end = target.scrollback_bounds()
    start = int_param(request, "from", ring_start, 0, 2**63)
    capacity = target.status().scrollback.capacity
    limit = int_param(request, "limit", min(capacity, _MAX_SCROLLBACK_LIMIT), 1, _MAX_SCROLLBACK_LIMIT)
    assert start is not None and limit is not None
    if start > ring_end:
        raise ApiError(
            "bad_request", f"from={start} is beyond the end of the stream ({ring_end})", end=ring_end
        )
    if start < ring_start:
        raise ApiError(
            "offset_unavailable",
            f"from={start} has been overwritten; the oldest available offset is {ring_start}",
            start=ring_start,
            end=ring_end,
        )
    fmt = request.query.get("format", "raw")
    if fmt not in ("raw", "text"):
        raise ApiError("bad_request", f"format must be raw or text, got {fmt[:20]!r}")
    who = identity(request, "http")
    result = target.scrollback(who, start, limit)
    # Who read how much of a console's past, never what it said (the audit trail holds no console text).
    audit(
        "scrollback_download",
        request,
        who,
        port=target.name,
        bytes=len(result.data),
        offset=result.offset,
        format=fmt,
        attachment=request.query.get("download") == "1",
        result="ok",
    )
    headers = {
        "X-Scrollback-Start": str(result.start),
        "X-Scrollback-End": str(result.end),
        "X-Scrollback-Offset": str(result.offset),
        "X-Scrollback-Next": str(result.offset + len(result.data)),
        "Cache-Control": "no-store",
    }
    if request.query.get("download") == "1":
        stamp = time.strftime("%Y%m%dT%H%M%S")
        suffix = "txt" if fmt == "text" else "log"
        headers["Content-Disposition"] = f'attachment; filename="{target.name}-{stamp}.{suffix}"'
    if fmt == "text":
        return web.Response(
            text=sanitize(result.data), content_type="text/plain", charset="utf-8", headers=headers
        )
    return web.Response(body=result.data, content_type="application/octet-stream", headers=headers)


async def post_break(request: web.Request) -> web.Response:
    target = console(request)
    await json_body(request)
    target.api_break(identity(request, "http"))
    return web.json_response({"ok": True})


async def post_sysrq(request: web.Request) -> web.Response:
    target = console(request)
    body = await json_body(request)
    key = body.get("key")
    if not isinstance(key, str) or len(key) != 1 or not key.isascii() or not key.isprintable():
        raise ApiError("bad_request", 'body must be {"key": "<one printable character>"}, e.g. {"key": "s"}')
    await target.api_sysrq(identity(request, "http"), key)
    return web.json_response({"ok": True})


async def post_keys(request: web.Request) -> web.Response:
    target = console(request)
    body = await json_body(request)
    keys = body.get("keys")
    if not isinstance(keys, list) or not keys or len(keys) > MAX_KEYS_PER_REQUEST:
        raise ApiError(
            "bad_request", f'body must be {{"keys": [NAME, ...]}} with 1..{MAX_KEYS_PER_REQUEST} names'
        )
    sent = target.api_keys(identity(request, "http"), [str(k) for k in keys])
    return web.json_response({"ok": True, "bytes": sent})


def vm_handler(action: Action) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        target = console(request)
        await json_body(request)
        try:
            await target.api_action(identity(request, "http"), action)
        except AdapterError as exc:
            log.warning("vm_action_failed", port=target.name, action=str(action), error=str(exc))
            # The adapter's detail names sockets/hosts: the operator's log has it; the client gets the kind.
            raise ApiError(
                ADAPTER_ERROR_CODES[exc.kind], f"{action} on {target.name} failed: {exc.kind}"
            ) from None
        return web.json_response({"ok": True, "action": str(action)})

    return handler


async def vm_state(request: web.Request) -> web.Response:
    report = await console(request).api_vm_state(identity(request, "http"))
    return web.json_response({"state": str(report.state), "reason": report.reason})


async def post_enable(request: web.Request) -> web.Response:
    target = console(request)
    await json_body(request)
    await control(request).set_port_enabled(identity(request, "http"), target.name, True, "")
    return web.json_response(port_json(target.status()))


async def post_disable(request: web.Request) -> web.Response:
    target = console(request)
    body = await json_body(request)
    who = identity(request, "http")
    reason = str(body.get("reason") or f"disabled through the API by {who}")[:200]
    await control(request).set_port_enabled(who, target.name, False, reason)
    return web.json_response(port_json(target.status()))


def _switch_json(request: web.Request) -> dict[str, Any]:
    switch = control(request).console_switch()
    return {"enabled": switch.enabled, "reason": switch.reason}


async def get_console(request: web.Request) -> web.Response:
    return web.json_response(_switch_json(request))


async def post_console(request: web.Request) -> web.Response:
    body = await json_body(request)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise ApiError("bad_request", 'body must be {"enabled": true|false, "reason": "..."}')
    who = identity(request, "http")
    reason = str(body.get("reason") or f"disabled through the API by {who}")[:200]
    await control(request).set_console_enabled(who, enabled, "" if enabled else reason)
    return web.json_response(_switch_json(request))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/api/v1/openapi.json", openapi)
    r.add_get("/api/v1/ports", list_ports)
    r.add_get("/api/v1/ports/{name}", get_port)
    r.add_get("/api/v1/ports/{name}/scrollback", scrollback)
    r.add_post("/api/v1/ports/{name}/break", post_break)
    r.add_post("/api/v1/ports/{name}/sysrq", post_sysrq)
    r.add_post("/api/v1/ports/{name}/keys", post_keys)
    r.add_post("/api/v1/ports/{name}/nmi", vm_handler(Action.NMI))
    r.add_post("/api/v1/ports/{name}/reset", vm_handler(Action.RESET))
    r.add_post("/api/v1/ports/{name}/restart", vm_handler(Action.RESTART))
    r.add_post("/api/v1/ports/{name}/start", vm_handler(Action.START))
    r.add_get("/api/v1/ports/{name}/state", vm_state)
    r.add_post("/api/v1/ports/{name}/enable", post_enable)
    r.add_post("/api/v1/ports/{name}/disable", post_disable)
    r.add_get("/api/v1/console", get_console)
    r.add_post("/api/v1/console", post_console)
