"""The OpenAPI 3.1 document served at ``/api/v1/openapi.json``.  A test checks that it lists exactly the
routes the app serves, so the two cannot drift apart."""

from __future__ import annotations

from typing import Any

from ... import __version__
from .errors import ERROR_CODES

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
        for s in statuses
    }


def _op(
    summary: str,
    *,
    ok: str = "OK",
    errors: tuple[int, ...] = (404,),
    body: Any = None,
    params: list[dict[str, Any]] | None = None,
    ok_content: Any = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": ok}, **_errors(*errors)}}
    if ok_content is not None:
        op["responses"]["200"]["content"] = ok_content
    if body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
}
_PORT = {"$ref": "#/components/schemas/Port"}
_TICKET = {
    "type": "object",
    "required": ["ticket", "expires_in"],
    "properties": {
        "ticket": {"type": "string"},
        "expires_in": {"type": "integer", "description": "seconds"},
        "mode": {"enum": ["rw", "ro"]},
    },
}
_SESSION = {
    "type": "object",
    "properties": {
        "auth": {"type": "boolean", "description": "false: this serialmuxd asks for no credentials"},
        "user": {"type": ["string", "null"]},
        "method": {"type": ["string", "null"], "description": "password, token, certificate, oidc, session"},
        "csrf": {"type": "string", "description": "send as X-CSRF-Token (cookie sessions only)"},
        "idle_timeout_s": {"type": "number"},
        "expires_in": {"type": "integer", "description": "seconds until the absolute lifetime"},
    },
}
_SIGN_IN_METHODS = {
    "type": "object",
    "required": ["oidc"],
    "properties": {
        "oidc": {
            "type": ["object", "null"],
            "description": "null without [auth.oidc] client_id",
            "properties": {
                "provider": {"type": "string", "description": "the name on the page's button"},
                "start": {
                    "type": "string",
                    "description": "the page to navigate to (?next=PATH: a path on this server to return "
                    "to); it redirects to the provider, whose answer comes back to /signin/oidc/callback",
                },
            },
        }
    },
}
_SIGN_IN = {
    "type": "object",
    "required": ["user", "password"],
    "properties": {"user": {"type": "string"}, "password": {"type": "string", "format": "password"}},
}


def _session_paths() -> dict[str, Any]:
    sign_in = _op(
        "Sign in (the console page's form): sets the HttpOnly cookie serialmuxd_session and returns the "
        "CSRF token that every state-changing request authenticated by that cookie must send as "
        "X-CSRF-Token. Throttled like Basic (429 with Retry-After).",
        errors=(400, 401, 409, 415, 429),
        ok_content={
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"user": {"type": "string"}, "csrf": {"type": "string"}},
                }
            }
        },
    )
    sign_in["requestBody"] = {"required": True, "content": {"application/json": {"schema": _SIGN_IN}}}
    return {
        "get": _op(
            "Who this request is authenticated as (and the CSRF token of a cookie session)",
            errors=(401,),
            ok_content={"application/json": {"schema": _SESSION}},
        ),
        "post": sign_in,
        "delete": _op(
            "Sign out: ends the cookie's session (everywhere=1: all of this user's), clears the cookie",
            errors=(400, 401, 403),
            params=[_q("everywhere", {"enum": ["1"]}, "end every signed-in session of this user")],
        ),
    }


_JSON_PORT = {"application/json": {"schema": _PORT}}


def openapi_document() -> dict[str, Any]:
    port_paths: dict[str, Any] = {
        "/api/v1/ports/{name}": {"get": _op("State of one console", ok_content=_JSON_PORT)},
        "/api/v1/ports/{name}/scrollback": {
            "get": _op(
                "Scrollback bytes from an absolute offset (headers X-Scrollback-Start/End/Offset/Next)",
                errors=(400, 404, 416),
                params=[
                    _q("from", {"type": "integer", "minimum": 0}, "absolute offset; default: oldest kept"),
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 16777216}, "max bytes"),
                    _q("format", {"enum": ["raw", "text"]}, "raw bytes, or text with control chars escaped"),
                    _q("download", {"enum": ["1"]}, "send as an attachment"),
                ],
                ok_content={"application/octet-stream": {}, "text/plain": {}},
            )
        },
        "/api/v1/ports/{name}/recording": {
            "get": _op(
                "Scrollback as an asciicast v2 recording with the guest's original timing",
                errors=(400, 404, 416),
                params=[
                    _q("from", {"type": "integer", "minimum": 0}, "absolute offset; default: oldest kept"),
                    _q("to", {"type": "integer", "minimum": 0}, "absolute offset; default: the stream end"),
                    _q("download", {"enum": ["1"]}, "send as an attachment (NAME-STAMP.cast)"),
                ],
                ok_content={"application/x-asciicast": {}},
            )
        },
        "/api/v1/ports/{name}/ws": {
            "get": _op(
                "WebSocket console. Binary frames: console bytes both ways. Text frames: JSON control "
                "messages (client: resize, break, take_over, read_only, answer_takeover, key, sysrq, who, "
                "ping) and events (server: hello, notice{kind, text, hint?}, closing, pong; "
                "hint: take_over). "
                "Close codes: 4000 evicted, "
                "4001 disabled, 4002 bad message, 4003 fell behind, 4005 denied, 4006 too many sessions, "
                "1001 shutdown, 1002 protocol error, 1009 message too big.",
                ok="101 Switching Protocols",
                errors=(400, 401, 403, 404, 426, 503),
                params=[
                    _q("mode", {"enum": ["rw", "ro"]}, "rw asks for the writer lease; ro watches"),
                    _q(
                        "from", {"type": "integer", "minimum": 0}, "resume from this offset instead of replay"
                    ),
                    _q(
                        "ticket",
                        {"type": "string"},
                        "single-use console ticket (POST .../ticket) for this console and mode, instead of "
                        "credentials; a replayed, expired or mismatched one is 401",
                    ),
                ],
            )
        },
        "/api/v1/ports/{name}/ticket": {
            "post": _op(
                "A single-use ticket for this console's WebSocket (?ticket=): valid 60 s, bound to the "
                "caller, the console and the mode",
                errors=(400, 401, 403, 404, 415),
                body={"type": "object", "properties": {"mode": {"enum": ["rw", "ro"], "default": "rw"}}},
                ok_content={"application/json": {"schema": _TICKET}},
            )
        },
        "/api/v1/ports/{name}/break": {
            "post": _op(
                "Send a serial BREAK (only while nobody holds the writer lease)", errors=(404, 409, 415, 503)
            )
        },
        "/api/v1/ports/{name}/sysrq": {
            "post": _op(
                "Linux magic SysRq: BREAK then the key",
                errors=(400, 404, 409, 415, 503),
                body={
                    "type": "object",
                    "properties": {"key": {"type": "string", "maxLength": 1}},
                    "required": ["key"],
                },
            )
        },
        "/api/v1/ports/{name}/keys": {
            "post": _op(
                "Send named keys (F1-F12, arrows, ...) per the port's key profile",
                errors=(400, 404, 409, 415, 503),
                body={
                    "type": "object",
                    "properties": {"keys": {"type": "array", "maxItems": 64, "items": {"type": "string"}}},
                    "required": ["keys"],
                },
            )
        },
        "/api/v1/ports/{name}/nmi": {
            "post": _op(
                "Inject a non-maskable interrupt ([ports.hypervisor]; audited)",
                errors=(404, 409, 415, 502, 503, 504),
            )
        },
        "/api/v1/ports/{name}/reset": {
            "post": _op(
                "Hard-reset the machine ([ports.hypervisor]; audited)", errors=(404, 409, 415, 502, 503, 504)
            )
        },
        "/api/v1/ports/{name}/restart": {
            "post": _op(
                "Graceful restart: ACPI power button / guest reboot ([ports.hypervisor]; audited)",
                errors=(404, 409, 415, 502, 503, 504),
            )
        },
        "/api/v1/ports/{name}/start": {
            "post": _op(
                "Start the machine (qmp: resume a paused or powered-off QEMU; ipmi: power on; libvirt: boot)",
                errors=(404, 409, 415, 502, 503, 504),
            )
        },
        "/api/v1/ports/{name}/state": {
            "get": _op(
                "The machine's state from the hypervisor: running, paused, shutdown, stopped, crashed, "
                "unknown",
                errors=(404, 409),
            )
        },
        "/api/v1/ports/{name}/enable": {"post": _op("Enable the console (persists)", ok_content=_JSON_PORT)},
        "/api/v1/ports/{name}/disable": {
            "post": _op(
                "Disable the console: closes its sessions and releases the device (persists)",
                ok_content=_JSON_PORT,
                body={"type": "object", "properties": {"reason": {"type": "string"}}},
            )
        },
    }
    for item in port_paths.values():
        for op in item.values():
            op.setdefault("parameters", []).insert(0, _NAME)
    console_state = {
        "type": "object",
        "properties": {"enabled": {"type": "boolean"}, "reason": {"type": "string"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "serialmuxd", "version": __version__},
        "paths": {
            "/healthz": {"get": _op("Liveness and port states", errors=())},
            "/api/v1/openapi.json": {"get": _op("This document", errors=())},
            "/api/v1/session": _session_paths(),
            "/api/v1/signin": {
                "get": _op(
                    "The ways to sign in on the page besides its password form (open without credentials)",
                    errors=(),
                    ok_content={"application/json": {"schema": _SIGN_IN_METHODS}},
                )
            },
            "/api/v1/ports": {
                "get": _op(
                    "All consoles",
                    errors=(),
                    ok_content={
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"ports": {"type": "array", "items": _PORT}},
                            }
                        }
                    },
                )
            },
            **port_paths,
            "/api/v1/console": {
                "get": _op(
                    "Global console switch",
                    errors=(),
                    ok_content={"application/json": {"schema": console_state}},
                ),
                "post": _op(
                    "Enable or disable every console (persists)", errors=(400, 415), body=console_state
                ),
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"enum": list(ERROR_CODES)},
                        "message": {"type": "string"},
                    },
                },
                "Port": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "group": {"type": ["string", "null"]},
                        "state": {"enum": ["connecting", "online", "offline", "disabled"]},
                        "state_reason": {"type": "string"},
                        "device": {"type": "string"},
                        "writer": {"type": ["object", "null"]},
                        "viewers": {"type": "integer"},
                        "sessions": {"type": "integer"},
                        "scrollback": {"type": "object"},
                        "bytes_from_device": {"type": "integer"},
                        "bytes_to_device": {"type": "integer"},
                        "key_profile": {"enum": ["xterm", "vt100+"]},
                        "hypervisor": {"type": ["object", "null"]},
                    },
                },
            }
        },
    }
