"""Who is asking: every HTTP request and WebSocket upgrade is authenticated here, before any handler runs.

With ``[auth]`` a request must carry credentials, tried in this order:

1. ``?ticket=`` — a single-use console ticket (``auth.tickets``), only on a console's WebSocket upgrade, for
   that console and mode; a replayed, expired or mismatched one is ``401`` (audited ``ticket_refused``);
2. ``Authorization: Basic`` (a user's password, or a token as the password) or ``Bearer`` (a token or an
   OIDC JWT);
3. the page's ``serialmuxd_session`` cookie (``auth.websessions``); a session past its idle or absolute
   lifetime is ``401`` (audited ``session_expired``) and the browser is told to drop the cookie;
4. a TLS client certificate that maps to a user;
5. nothing, where ``[auth] anonymous`` allows it.

Otherwise ``401``.  Browsers (``sessions.from_browser``) are not offered ``Basic`` in the challenge (only
``Bearer``, which no browser turns into a dialog), so the page's own sign-in form is what people see: a
navigation to ``/`` or ``/console/…`` without credentials is redirected (``303``) to
``/signin?next=…``, and the page's scripts go there on a ``401``.  API clients get
``WWW-Authenticate: Basic …, Bearer …`` as before.  An address or user name that failed too often gets
``429`` with ``Retry-After`` until its delay has passed, for Basic and for the sign-in form alike.

**CSRF.** A browser attaches the cookie by itself, so a request authenticated by it that changes state
(POST, PUT, PATCH, DELETE) must also carry ``X-CSRF-Token`` equal to the session's token, which only the
page's own script can read (``GET /api/v1/session``); otherwise ``403 forbidden``.  Basic, Bearer,
certificates and tickets need none: a browser never adds such a header or query parameter to a request
another site starts.  The Origin check (``guard.py``) and ``SameSite=Strict`` stay in front of this.

Open without credentials: the liveness check, the OpenAPI document, the page's static files, the sign-in
page and ``POST /api/v1/session`` (signing in is how one gets credentials; it is throttled like Basic), and
the OIDC sign-in's routes (``oidc_signin.OPEN_PATHS``: it gets its credentials from the provider).
What an authenticated identity may do is decided later, by the hub's policy (``403`` when it may not).
The identity is stored on the request for ``common.identity``; nothing here knows about consoles.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ...auth.authenticator import certificate_names
from ...auth.setup import FrontDoor
from ...core.access import Identity
from .common import CONTROL_KEY, IDENTITY_KEY, peer_identity
from .errors import ApiError
from .oidc_signin import OPEN_PATHS as OIDC_OPEN_PATHS
from .sessions import (
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSIONS_KEY,
    STATE_CHANGING_METHODS,
    TICKET_KEY,
    TICKETS_KEY,
    WEB_SESSION_KEY,
    audit,
    cleared_cookie_header,
    from_browser,
    now,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Open without credentials: the load balancer's liveness check, the API description, the page's own files
# and its sign-in form (with the OpenID provider's start, callback and the list of ways to sign in).
_OPEN_PATHS = frozenset({"/healthz", "/api/v1/openapi.json", "/favicon.ico", "/signin"}) | OIDC_OPEN_PATHS
_OPEN_PREFIXES = ("/static/",)
_SIGN_IN = ("POST", "/api/v1/session")  # checks the password itself (signin.py)
_WS_ROUTE = "/api/v1/ports/{name}/ws"
_CHALLENGE = 'Basic realm="serialmuxd", charset="UTF-8", Bearer realm="serialmuxd"'
_BROWSER_CHALLENGE = 'Bearer realm="serialmuxd"'  # RFC 9110 wants a challenge on every 401; no dialog


def _peer(request: web.Request) -> Identity:
    return peer_identity(request, "http")


def unauthorized(request: web.Request, message: str, *, stale_cookie: bool = False) -> ApiError:
    headers = {"WWW-Authenticate": _BROWSER_CHALLENGE if from_browser(request) else _CHALLENGE}
    if stale_cookie:
        headers["Set-Cookie"] = cleared_cookie_header(request)
    return ApiError("unauthorized", message, headers=headers)


def refuse_if_throttled(door: FrontDoor, peer: Identity, user: str) -> None:
    delay = door.authenticator.delay_s(peer, user)
    if delay > 0:
        # Too many failures from this address (or for this user): no verification at all until the delay
        # has passed, so a brute force costs the attacker time and us nothing.
        raise ApiError(
            "too_many_attempts",
            f"too many failed sign-ins; try again in {math.ceil(delay)} s",
            headers={"Retry-After": str(math.ceil(delay))},
        )


async def check_password(
    request: web.Request, door: FrontDoor, peer: Identity, user: str, password: str
) -> Identity:
    """A user name and password from Basic or from the sign-in form: throttled, verified, audited (by the
    authenticator); ``401`` or ``429`` when it fails."""
    refuse_if_throttled(door, peer, user)
    found = await door.authenticator.password(peer, user, password)
    if found is None:
        raise unauthorized(request, "wrong user name, password or token")
    return found


def _by_ticket(request: web.Request, peer: Identity, value: str) -> Identity:
    resource = request.match_info.route.resource
    upgrade = resource is not None and resource.canonical == _WS_ROUTE and request.method == "GET"
    port = request.match_info.get("name") if upgrade else None
    mode = request.query.get("mode", "rw")
    outcome = request.app[TICKETS_KEY].redeem(value, port, mode, now(request))
    ticket = outcome.ticket
    if not outcome.ok or ticket is None:
        who = dataclasses.replace(peer, user=ticket.identity.user) if ticket is not None else peer
        audit(
            "ticket_refused",
            request,
            who,
            port=port,
            mode=mode[:8],
            web_session=ticket.web_session if ticket is not None else None,
            grant_id=ticket.label if ticket is not None else None,
            result="refused",
            reason=str(outcome.refusal),
        )
        raise unauthorized(request, f"console ticket refused: {outcome.refusal}; ask for a new one")
    request[TICKET_KEY] = ticket
    found = dataclasses.replace(
        peer, user=ticket.identity.user, groups=ticket.identity.groups, method="ticket"
    )
    audit(
        "ticket_used",
        request,
        dataclasses.replace(found, transport="ws"),
        port=port,
        mode=mode,
        web_session=ticket.web_session,
        grant_id=ticket.label,
        result="ok",
    )
    return found


def _by_session(request: web.Request, peer: Identity) -> tuple[Identity | None, bool]:
    """The identity of the signed-in session the cookie names, and whether a stale cookie was presented."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None, False
    found = request.app[SESSIONS_KEY].lookup(value, now(request))
    if found.expired is not None:
        audit(
            "session_expired",
            request,
            dataclasses.replace(peer, user=found.expired.user, method="session"),
            web_session=found.expired.label,
            result="refused",
            reason=f"{found.reason} lifetime reached",
        )
    session = found.session
    if session is None:
        return None, True
    request[WEB_SESSION_KEY] = session
    who = dataclasses.replace(peer, user=session.user, groups=session.identity.groups, method="session")
    if request.method in STATE_CHANGING_METHODS and not session.csrf_matches(
        request.headers.get(CSRF_HEADER)
    ):
        audit(
            "access_denied",
            request,
            who,
            path=request.path[:200],
            result="refused",
            reason=f"cookie-authenticated {request.method} without a matching {CSRF_HEADER}",
        )
        raise ApiError(
            "forbidden",
            f"a signed-in page must send its {CSRF_HEADER} header with this request (GET /api/v1/session)",
            csrf_required=True,
        )
    return who, False


async def authenticate(request: web.Request) -> Identity:
    peer = _peer(request)
    door = request.app[CONTROL_KEY].authentication
    if door is None:
        return peer  # no [auth]: loopback-only daemon, no credentials asked
    ticket = request.query.get("ticket")
    if ticket is not None:
        return _by_ticket(request, peer, ticket)
    auth = door.authenticator
    header = request.headers.get("Authorization")
    if header is None:
        by_session, stale_cookie = _by_session(request, peer)
        if by_session is not None:
            return by_session
        by_certificate = auth.certificate(peer, certificate_names(request.transport))
        if by_certificate is not None:
            return by_certificate
        if door.anonymous:
            return peer
        if stale_cookie:
            raise unauthorized(request, "your sign-in has ended: sign in again", stale_cookie=True)
        raise unauthorized(request, "sign in: this serialmuxd requires credentials")
    scheme, _, value = header.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "basic":
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError("bad_request", "malformed Basic credentials") from None
        if not sep:
            raise ApiError("bad_request", "malformed Basic credentials")
        return await check_password(request, door, peer, user, password)
    if scheme != "bearer":
        raise unauthorized(request, f"unsupported authorization scheme {scheme[:20]!r}; use Basic or Bearer")
    refuse_if_throttled(door, peer, "")
    found = await auth.bearer(peer, value)
    if found is None:
        raise unauthorized(request, "wrong user name, password or token")
    return found


def _sign_in_redirect(request: web.Request, refusal: ApiError) -> web.Response | None:
    """For a browser navigating to one of the pages without credentials: go to the sign-in form, and come
    back here afterwards (``next`` is only ever a path on this server: signin.js checks it again)."""
    path = request.path
    if request.method not in ("GET", "HEAD") or not (path == "/" or path.startswith("/console/")):
        return None
    navigating = request.headers.get("Sec-Fetch-Mode", "navigate") == "navigate"
    if not navigating or "text/html" not in request.headers.get("Accept", "").lower():
        return None
    headers = {"Location": "/signin?" + urlencode({"next": request.raw_path}), "Cache-Control": "no-store"}
    if refusal.headers and "Set-Cookie" in refusal.headers:
        headers["Set-Cookie"] = refusal.headers["Set-Cookie"]  # the stale cookie goes, redirect or not
    return web.Response(status=303, headers=headers)


def authentication_middleware() -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES) or (request.method, path) == _SIGN_IN:
            request[IDENTITY_KEY] = _peer(request)
        else:
            try:
                request[IDENTITY_KEY] = await authenticate(request)
            except ApiError as exc:
                redirect = _sign_in_redirect(request, exc) if exc.code == "unauthorized" else None
                if redirect is None:
                    raise
                return redirect
        return await handler(request)

    return middleware
