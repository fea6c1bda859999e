"""What every HTTP handler needs: the control surface, the console named in the URL, the peer's identity,
and strict parsing of query parameters and JSON bodies."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web

from ...config import PORT_NAME_RE, HttpSettings
from ...control import Console, ConsoleControl
from ...core.access import Identity
from ..telnet import peer_text
from .errors import ApiError

CONTROL_KEY: web.AppKey[ConsoleControl] = web.AppKey("control")
# The request's authenticated identity (authn.py's middleware sets it before any handler runs).
IDENTITY_KEY: web.RequestKey[Identity] = web.RequestKey("identity", Identity)
SETTINGS_KEY: web.AppKey[HttpSettings] = web.AppKey("settings")


def control(request: web.Request) -> ConsoleControl:
    return request.app[CONTROL_KEY]


def console(request: web.Request) -> Console:
    """The console named in the URL, or a 404 ``unknown_port`` (also when the caller may not view it)."""
    name = request.match_info["name"]
    found = (
        control(request).console(name, identity(request, "http")) if PORT_NAME_RE.fullmatch(name) else None
    )
    if found is None:
        raise ApiError("unknown_port", f"no console named {name[:64]!r}")
    return found


def identity(request: web.Request, transport: str) -> Identity:
    """Who sent the request (authenticated by authn.py's middleware), as seen by ``transport``."""
    found: Identity | None = request.get(IDENTITY_KEY)
    if found is not None:
        return dataclasses.replace(found, transport=transport)
    return peer_identity(request, transport)


def peer_identity(request: web.Request, transport: str) -> Identity:
    """The peer before authentication: where the request came from, nobody yet."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return Identity(transport, peer_text(peer) if peer else str(request.remote))


def int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 20:
        raise ApiError("bad_request", f"{name} must be an integer between {low} and {high}, got {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise ApiError("bad_request", f"{name} must be between {low} and {high}, got {value}")
    return value


async def json_body(request: web.Request) -> dict[str, Any]:
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
