"""Every HTTP error is JSON ``{"code", "message"}`` with a stable ``code`` and the status it implies.

The hub refuses with a ``RefusalKind`` and an adapter fails with an ``AdapterErrorKind``; this module is the
one place that maps both to HTTP.  Codes are listed in ``ERROR_CODES`` and in the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ...adapters import AdapterErrorKind
from ...hub.status import RefusalKind, Refused

ERROR_CODES = {
    "bad_request": 400,
    "unauthorized": 401,
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
    "too_many_attempts": 429,
    "upgrade_required": 426,
    "console_disabled": 503,
    "console_offline": 503,
    "input_queue_full": 503,
    "too_many_connections": 503,
    "hypervisor_unavailable": 503,
    "hypervisor_refused": 502,
    "hypervisor_failed": 502,
    "hypervisor_timeout": 504,
}
ADAPTER_ERROR_CODES = {
    AdapterErrorKind.TIMEOUT: "hypervisor_timeout",
    AdapterErrorKind.UNAVAILABLE: "hypervisor_unavailable",
    AdapterErrorKind.REFUSED: "hypervisor_refused",
    AdapterErrorKind.UNSUPPORTED: "not_supported",
    AdapterErrorKind.FAILED: "hypervisor_failed",
}
REFUSAL_CODES = {
    RefusalKind.FORBIDDEN: "forbidden",
    RefusalKind.IN_USE: "console_in_use",
    RefusalKind.DISABLED: "console_disabled",
    RefusalKind.OFFLINE: "console_offline",
    RefusalKind.QUEUE_FULL: "input_queue_full",
    RefusalKind.NOT_SUPPORTED: "not_supported",
    RefusalKind.UNKNOWN_KEY: "bad_request",
    RefusalKind.LIMIT: "too_many_connections",
}
SECURITY_HEADERS = {
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

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.headers = headers
        self.body = {"code": code, "message": message, **extra}

    @classmethod
    def from_refusal(cls, refusal: Refused) -> ApiError:
        if refusal.writer:
            return cls(REFUSAL_CODES[refusal.kind], str(refusal), writer=refusal.writer)
        return cls(REFUSAL_CODES[refusal.kind], str(refusal))

    def response(self) -> web.Response:
        return web.json_response(self.body, status=ERROR_CODES[self.code], headers=self.headers)


def _error_for(exc: web.HTTPException) -> web.Response:
    """Turn aiohttp's own errors (404 route, 405, 413 body) into our JSON shape."""
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status, "bad_request"
    )
    status = exc.status if exc.status in (404, 405, 413) else 400
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return web.json_response({"code": code, "message": exc.reason}, status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def errors_and_headers(guard: Callable[[web.Request], None]) -> Any:
    """The app's one middleware: the browser guard, our error shape, security headers on every answer."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            guard(request)
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except Refused as exc:
            response = ApiError.from_refusal(exc).response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _error_for(exc)
        if not response.prepared:
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    return middleware
