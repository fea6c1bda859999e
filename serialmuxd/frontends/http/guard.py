"""Keep web pages the operator happens to visit away from the consoles (DNS rebinding, cross-site requests).

* DNS rebinding: a page on evil.example re-pointed to 127.0.0.1 sends ``Host: evil.example``.  Served are
  only: the listen address, loopback names, ``http.allowed_hosts`` (e.g. the name a reverse proxy forwards)
  and, on a wildcard listener, any IP literal.
* Cross-site requests: a browser adds ``Origin`` to POSTs and WebSocket upgrades; one from another origin
  could otherwise take over a console or reset a VM through a plain HTML form.  Accepted are the request's
  own origin and origins on ``http.allowed_hosts`` (a TLS-terminating proxy's page is ``https://name`` while
  the request reaching us is plain http).  Tools such as curl or websocat send no Origin and are not
  affected.

Both refusals are audited (``host_refused``, ``origin_refused``) with the source address and what was
asked for; the user is not known yet, since the guard runs before authentication (so that a cross-site
request costs no password check).  A peer decides how often these happen (a script hammering the WebSocket
with a bad Origin), so they are rate-limited like malformed requests in the daemon's log
(``obs.logging.LogRateLimiter``, the same interval and burst): per event, the first
``BURST_BAD_REQUEST`` refusals of each ``RATE_INTERVAL_S`` are audited one by one, the rest are counted,
and when the interval ends one more record of the same event says how many (``suppressed``) and shows the
last of them.  Every refusal is still answered, and none goes uncounted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ...config import HttpSettings
from ...obs.audit import AuditFn
from ...obs.logging import BURST_BAD_REQUEST, LogRateLimiter
from .common import identity
from .errors import ApiError
from .sessions import AUDIT_KEY
from .sessions import audit as audit_request  # not "audit(": the scan for event names checks audit_refusal(

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_and_port(authority: str) -> tuple[str, int | None]:
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


class RefusalAudit:
    """``audit`` for the guard's refusals, rate-limited per event (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._limiter = LogRateLimiter()
        self._clock = clock
        self._last: dict[str, tuple[AuditFn, dict[str, Any]]] = {}  # event -> the last suppressed one

    def __call__(self, event: str, request: web.Request, **fields: Any) -> None:
        verdict = self._limiter.admit(event, self._clock(), BURST_BAD_REQUEST)
        if verdict.unreported:
            self._report(event, verdict.unreported)
        if verdict.log:
            audit_request(event, request, **fields)
            return
        trail = request.app.get(AUDIT_KEY)
        if trail is None:
            return
        who = identity(request, "http")
        self._last[event] = (trail, {**who.audit_fields(), **fields})
        if verdict.flush_in_s is not None:
            # The count is recorded when the interval ends, even if the flood stops now.
            loop = asyncio.get_running_loop()
            loop.call_later(max(verdict.flush_in_s, 0.0) + 0.01, self._flush, event)

    def _flush(self, event: str) -> None:
        count = self._limiter.flush(event, self._clock())
        if count:
            self._report(event, count)

    def _report(self, event: str, count: int) -> None:
        last = self._last.pop(event, None)
        if last is None:
            return
        trail, fields = last
        interval = self._limiter.interval_s
        trail(
            event,
            **{
                **fields,
                "suppressed": count,
                "interval_s": interval,
                "reason": f"{count} more refused within {interval:g} s, counted but not recorded one by one "
                f"(the last of them is shown): {fields.get('reason', '')}",
            },
        )


def browser_guard(settings: HttpSettings) -> Callable[[web.Request], None]:
    """The check for one listener's settings; raises ``ApiError`` (421 or 403)."""
    audit_refusal = RefusalAudit()
    listen = settings.listen
    wildcard = listen is not None and listen.host in ("0.0.0.0", "::", "")
    named = _LOOPBACK_NAMES | set(settings.allowed_hosts) | ({listen.host.lower()} if listen else set())
    allowed_origins = set(settings.allowed_hosts)

    def guard(request: web.Request) -> None:
        host, port = host_and_port(request.host)
        if host not in named and not (wildcard and _is_ip_literal(host)):
            audit_refusal(
                "host_refused",
                request,
                host=host[:64],
                path=request.path[:200],
                result="refused",
                reason="Host is not a name this server serves (DNS rebinding?)",
            )
            raise ApiError("misdirected", f"this server does not serve host {host[:64]!r}")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        origin = request.headers.get("Origin")
        if origin is None or (request.method in _SAFE_METHODS and not upgrade):
            return
        scheme, _, authority = origin.partition("://")
        origin_host, origin_port = host_and_port(authority)
        default_port = 443 if scheme == "https" else 80
        same_origin = (origin_host, origin_port or default_port) == (host, port or 80)
        if not (same_origin or origin_host in allowed_origins):
            audit_refusal(
                "origin_refused",
                request,
                origin=origin[:80],
                path=request.path[:200],
                upgrade=upgrade,
                result="refused",
                reason="cross-origin request",
            )
            raise ApiError("forbidden", f"cross-origin request from {origin[:80]!r} refused")

    return guard
