"""What the HTTP app keeps for the page's sign-in: the session table, the ticket book, the audit function
and the clock (app keys set by ``build_app``), the cookie, and the audit record of an HTTP event.

Cookie: ``serialmuxd_session`` = the opaque session id (``auth.websessions``), ``HttpOnly`` (page scripts
never see it, so an injected script cannot send it elsewhere), ``SameSite=Strict`` (never sent on a request
another site starts, including cross-site WebSocket upgrades), ``Path=/``, ``Secure`` when the listener
speaks TLS.  No ``Max-Age``: it is a browser-session cookie, while the server enforces the idle and the
absolute lifetime; a cookie kept past them is refused anyway.

Which clients get the Basic challenge: ``from_browser`` tells the page's requests and browser navigations
(``X-Requested-With``, any ``Sec-Fetch-*`` header, or an ``Accept`` naming ``text/html``) from API clients;
only the latter get ``WWW-Authenticate: Basic`` on a 401, so a browser never shows its own password dialog
and the page sends people to ``/signin`` instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ...auth.tickets import Ticket, TicketBook
from ...auth.websessions import WebSession, WebSessions
from ...core.access import Identity
from ...obs.audit import AuditFn
from .common import IDENTITY_KEY, SETTINGS_KEY, identity

SESSION_COOKIE = "serialmuxd_session"
CSRF_HEADER = "X-CSRF-Token"
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

SESSIONS_KEY: web.AppKey[WebSessions] = web.AppKey("web_sessions")
TICKETS_KEY: web.AppKey[TicketBook] = web.AppKey("tickets")
AUDIT_KEY: web.AppKey[AuditFn] = web.AppKey("audit")
CLOCK_KEY: web.AppKey[Callable[[], float]] = web.AppKey("clock")
# The signed-in session a request was authenticated by (absent for Basic, Bearer, certificate, ticket).
WEB_SESSION_KEY: web.RequestKey[WebSession] = web.RequestKey("web_session", WebSession)
# The console ticket a WebSocket upgrade was authenticated by (its WebSocket belongs to the ticket's session).
TICKET_KEY: web.RequestKey[Ticket] = web.RequestKey("ticket", Ticket)


def now(request: web.Request) -> float:
    clock = request.app.get(CLOCK_KEY)
    return clock() if clock is not None else time.monotonic()


def is_tls(request: web.Request) -> bool:
    settings = request.app.get(SETTINGS_KEY)
    return request.secure or (settings is not None and settings.tls)


def cookie_attributes(request: web.Request) -> dict[str, Any]:
    return {"path": "/", "httponly": True, "samesite": "Strict", "secure": is_tls(request)}


def cleared_cookie_header(request: web.Request) -> str:
    """A ``Set-Cookie`` value that makes the browser forget a stale session cookie (for error answers)."""
    secure = "; Secure" if is_tls(request) else ""
    return f"{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict{secure}"


def from_browser(request: web.Request) -> bool:
    """A request from a browser (the page's script, a navigation) rather than an API client.

    The page's own fetches say so with ``X-Requested-With``; browsers add ``Sec-Fetch-Mode`` (and the other
    ``Sec-Fetch-*``) to every request to a secure context (HTTPS, and http://localhost); a navigation over
    plain HTTP still names ``text/html`` in ``Accept``.  curl, aiohttp, requests and websocat send none of
    these, so they keep getting the Basic challenge."""
    headers = request.headers
    return (
        "X-Requested-With" in headers
        or "Sec-Fetch-Mode" in headers
        or "text/html" in headers.get("Accept", "").lower()
    )


def audit(event: str, request: web.Request, who: Identity | None = None, **fields: Any) -> None:
    """One audit event about ``request``: who (user, source address, transport, how they signed in), the
    signed-in session's label where there is one, and ``fields`` (port, result, reason, ...).

    The event name comes first, like every ``audit(`` call in the daemon, so the test that scans the
    sources for audit events checks these names against the closed set too."""
    trail = request.app.get(AUDIT_KEY)
    if trail is None:
        return
    if who is None:
        who = request.get(IDENTITY_KEY) or identity(request, "http")
    # The same names as ``Identity.audit_fields`` uses for the hubs' and the authenticator's events.
    record: dict[str, Any] = {"user": who.user, "source": who.address, "transport": who.transport}
    if who.method:
        record["method"] = who.method
    session = request.get(WEB_SESSION_KEY)
    if session is not None:
        record["web_session"] = session.label
    record.update(fields)
    trail(event, **record)
