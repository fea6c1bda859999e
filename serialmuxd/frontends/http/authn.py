"""Who is asking: every HTTP request and WebSocket upgrade is authenticated here, before any handler runs.

With ``[auth]`` a request must carry credentials — a TLS client certificate that maps to a user, HTTP Basic
(a user's password, or a token as the password), or ``Authorization: Bearer`` (a token or an OIDC JWT) —
or it gets ``401`` with ``WWW-Authenticate`` (a browser then asks for a user name and password and sends
them with the page's API calls and WebSocket upgrades too).  Only the liveness check, the OpenAPI document
and the page's static files are open without them.  Credentials that fail get ``401`` as well; an address or
user name that failed too often gets ``429`` with ``Retry-After`` until its delay has passed.  What an
authenticated identity may do is decided later, by the hub's policy (``403`` when it may not).

The identity is stored on the request for ``common.identity``; nothing here knows about consoles.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ...core.access import Identity
from ..telnet import peer_text
from .common import CONTROL_KEY, IDENTITY_KEY
from .errors import ApiError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Open without credentials: the load balancer's liveness check, the API description, the page's own files.
_OPEN_PATHS = frozenset({"/healthz", "/api/v1/openapi.json", "/favicon.ico"})
_OPEN_PREFIXES = ("/static/",)
_CHALLENGE = 'Basic realm="serialmuxd", charset="UTF-8", Bearer realm="serialmuxd"'


def _peer(request: web.Request) -> Identity:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return Identity("http", peer_text(peer) if peer else str(request.remote))


def _unauthorized(message: str) -> ApiError:
    return ApiError("unauthorized", message, headers={"WWW-Authenticate": _CHALLENGE})


def _certificate_names(request: web.Request) -> tuple[str, ...]:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is None:
        return ()
    from ...tls import client_identities  # the ssl module only where TLS is in use

    return client_identities(ssl_object)


async def authenticate(request: web.Request) -> Identity:
    peer = _peer(request)
    door = request.app[CONTROL_KEY].authentication
    if door is None:
        return peer  # no [auth]: loopback-only daemon, no credentials asked
    auth = door.authenticator
    header = request.headers.get("Authorization")
    if header is None:
        by_certificate = auth.certificate(peer, _certificate_names(request))
        if by_certificate is not None:
            return by_certificate
        if door.anonymous:
            return peer
        raise _unauthorized("sign in: this serialmuxd requires credentials")
    scheme, _, value = header.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    user = ""
    if scheme == "basic":
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError("bad_request", "malformed Basic credentials") from None
        if not sep:
            raise ApiError("bad_request", "malformed Basic credentials")
    elif scheme != "bearer":
        raise _unauthorized(f"unsupported authorization scheme {scheme[:20]!r}; use Basic or Bearer")
    delay = auth.delay_s(peer, user)
    if delay > 0:
        # Too many failures from this address (or for this user): no verification at all until the delay
        # has passed, so a brute force costs the attacker time and us nothing.
        raise ApiError(
            "too_many_attempts",
            f"too many failed sign-ins; try again in {math.ceil(delay)} s",
            headers={"Retry-After": str(math.ceil(delay))},
        )
    found = await (auth.password(peer, user, password) if scheme == "basic" else auth.bearer(peer, value))
    if found is None:
        raise _unauthorized("wrong user name, password or token")
    return found


def authentication_middleware() -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES):
            request[IDENTITY_KEY] = _peer(request)
        else:
            request[IDENTITY_KEY] = await authenticate(request)
        return await handler(request)

    return middleware
