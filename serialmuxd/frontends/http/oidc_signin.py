"""The console page's sign-in with the OpenID provider: the authorization code flow with PKCE (RFC 6749 §4.1,
RFC 7636, OpenID Connect Core §3.1), written out here (about a hundred lines of aiohttp) rather than taken
from a client library: the flow is three requests, and every check in it is one we want to see.

Theory of operation
-------------------
``GET /signin/oidc?next=PATH`` (the page's "Sign in with …" button) makes three random values: ``state``
(ties the provider's answer to this flow), ``nonce`` (ties the ID token to it) and a PKCE ``code_verifier``
(only its S256 ``code_challenge`` goes to the provider, so a code caught on the way back is useless without
the verifier, which never leaves this process).  All three, the ``redirect_uri`` and the page to return
to are kept **server-side** in ``PendingFlows``; the browser gets only an opaque flow id in the cookie
``serialmuxd_oidc`` and is sent (303) to the provider's ``authorization_endpoint`` from its discovery
document (``JwtVerifier.endpoints``).

``GET /signin/oidc/callback?code&state`` (the provider sends the browser back here):

1. the flow the cookie names is **taken** from the table: single use whatever happens next, so a replayed
   callback (the same URL and cookie again) finds nothing; a flow older than ``FLOW_LIFETIME_S`` is refused;
2. an ``error`` from the provider (the user denied consent, …) ends it here, before the state is looked at:
   an error signs nobody in, and some providers leave the state off their error answers;
3. ``state`` must equal the flow's, compared in constant time;
4. the code is exchanged at the ``token_endpoint`` with the ``code_verifier`` and the same
   ``redirect_uri``; the client authenticates with ``client_secret_basic`` (or ``client_secret_post``
   when that is all the provider takes; a public client without a secret relies on PKCE alone);
5. the ID token is verified by a ``JwtVerifier`` whose audience is the client id, and its ``nonce`` must be
   the flow's;
6. the user and groups claims make the identity (``method = "oidc"``), which gets a web session exactly as
   the password form's does (``WebSessions.create``, the same ``serialmuxd_session`` cookie) and the audit
   event ``login_ok`` with method ``oidc``.

Every refusal is audited ``login_failed`` (method ``oidc``, a fixed reason) and ends on ``/signin`` with
``?oidc_error=CODE`` (``PageError``): a closed set of codes the sign-in page turns into its own words, so
nothing the provider or an attacker put into the URL is ever shown.

**The flow cookie** is ``HttpOnly``, ``Path=/signin/oidc`` (sent to these two routes only), ``Max-Age`` of
the flow's lifetime, ``Secure`` over TLS, and ``SameSite=Lax``, not ``Strict`` like the session cookie: the
provider's redirect back is a top-level navigation that another site started, and ``Strict`` cookies are
left off exactly those, so the callback would never find its flow.  ``Lax`` still keeps it off every
cross-site subrequest and POST; and it is no credential: all it can do is finish a sign-in that this
browser started, with a code the provider gave this browser.

**The way back.** For the same reason the session cookie set on the callback's answer would not be sent on a
redirect from there (the whole redirect chain counts as started by the provider's site), and the console
page would send the browser to ``/signin`` once more.  So a successful callback answers with a tiny page
that moves on by ``<meta http-equiv="refresh">``: a navigation our own page starts, which carries the new
``Strict`` cookie.  (Checked in Chromium: a 302 there arrives without the cookie, the refresh with it.)

**Redirects stay on this server.** ``next`` is checked when the flow starts (``safe_next``: a path, no
scheme or host, no ``//`` or backslash, printable ASCII only, nothing under ``/signin``; anything else is
``/``) and kept in the flow; the callback takes nothing from its URL but ``code``, ``state`` and ``error``.
The ``redirect_uri`` is ``{scheme}://{Host}/signin/oidc/callback``: the Host has passed the browser guard
(only names this server serves), and the scheme is https when the listener speaks TLS.

``PendingFlows`` is pure (no I/O, the clock passed in); ``OidcSignin`` does the HTTP.  The table is bounded
(``MAX_FLOWS``; starting one more drops the oldest), since anyone may start a flow without credentials.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from aiohttp import web
from yarl import URL

from ...auth.websessions import LABEL_CHARS, session_key
from ...config import OidcConfig
from ...core.access import Identity
from ...errors import StartupError
from .common import identity
from .errors import ApiError
from .sessions import SESSION_COOKIE, SESSIONS_KEY, audit, cookie_attributes, is_tls, now

if TYPE_CHECKING:
    from ...auth.oidc import JwtVerifier, ProviderEndpoints

START_PATH: Final = "/signin/oidc"
CALLBACK_PATH: Final = "/signin/oidc/callback"
METHODS_PATH: Final = "/api/v1/signin"
# Reachable without credentials: they are how one gets them (authn.py's middleware lets them through).
OPEN_PATHS: Final = frozenset({START_PATH, CALLBACK_PATH, METHODS_PATH})

FLOW_COOKIE: Final = "serialmuxd_oidc"
FLOW_LIFETIME_S: Final = 600.0  # time to get through the provider's pages
MAX_FLOWS: Final = 4096
RANDOM_BYTES: Final = 32  # of the flow id, state and nonce
VERIFIER_BYTES: Final = 48  # code_verifier: 64 characters (RFC 7636 §4.1 wants 43 to 128)
SCOPE: Final = "openid profile"  # profile: preferred_username, the default user claim
MAX_NEXT_CHARS: Final = 2048
MAX_CODE_CHARS: Final = 4096
MAX_RESPONSE_BYTES: Final = 1024 * 1024
MAX_SECRET_BYTES: Final = 4096
MAX_EXCHANGES: Final = 16  # token requests in flight at once: a flood of callbacks cannot flood the provider
_PROVIDER_WORD = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # an OAuth error code we may quote in the audit trail
_NO_STORE = {"Cache-Control": "no-store"}


class PageError(enum.StrEnum):
    """``/signin?oidc_error=…``: the sign-in page shows its own sentence for each (signin.js)."""

    EXPIRED = "expired"  # no flow for this browser: too slow, already used, or the cookie was dropped
    STATE = "state"  # the answer does not belong to this browser's sign-in
    DENIED = "denied"  # the provider (or the user there) said no
    FAILED = "failed"  # the code exchange or the ID token was refused
    UNAVAILABLE = "unavailable"  # the provider could not be reached


class FlowRefusal(enum.StrEnum):
    """Why a callback found no flow to finish (the audit reason)."""

    NO_FLOW = "no sign-in in progress for this browser (already finished, or no cookie)"
    EXPIRED = "sign-in flow expired"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def code_challenge(code_verifier: str) -> str:
    """RFC 7636 §4.2, S256: BASE64URL(SHA256(ASCII(code_verifier))), unpadded."""
    return _b64url(hashlib.sha256(code_verifier.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class Flow:
    """One sign-in between ``/signin/oidc`` and its callback; never leaves the server."""

    state: str
    nonce: str
    code_verifier: str = dataclasses.field(repr=False)
    redirect_uri: str
    next_path: str
    created_s: float

    def state_matches(self, presented: str | None) -> bool:
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), self.state.encode("ascii"))


class PendingFlows:
    """Flows by the SHA-256 of their cookie's id (as ``WebSessions`` keeps sessions), oldest first."""

    def __init__(self, lifetime_s: float = FLOW_LIFETIME_S, max_flows: int = MAX_FLOWS) -> None:
        self.lifetime_s = lifetime_s
        self.max_flows = max_flows
        self._flows: OrderedDict[str, Flow] = OrderedDict()

    def __len__(self) -> int:
        return len(self._flows)

    def start(self, redirect_uri: str, next_path: str, now: float) -> tuple[str, Flow]:
        """A new flow: ``(flow_id, flow)``; the id goes into the cookie and is not kept."""
        self._prune(now)
        while len(self._flows) >= self.max_flows:
            self._flows.popitem(last=False)
        flow_id = secrets.token_urlsafe(RANDOM_BYTES)
        flow = Flow(
            state=secrets.token_urlsafe(RANDOM_BYTES),
            nonce=secrets.token_urlsafe(RANDOM_BYTES),
            code_verifier=secrets.token_urlsafe(VERIFIER_BYTES),
            redirect_uri=redirect_uri,
            next_path=next_path,
            created_s=now,
        )
        self._flows[session_key(flow_id)] = flow
        return flow_id, flow

    def take(self, flow_id: str | None, now: float) -> Flow | FlowRefusal:
        """The live flow ``flow_id`` names; it is gone from the table afterwards, whatever the answer."""
        if not flow_id or len(flow_id) > 128:
            return FlowRefusal.NO_FLOW
        flow = self._flows.pop(session_key(flow_id), None)
        if flow is None:
            return FlowRefusal.NO_FLOW
        if now - flow.created_s >= self.lifetime_s:
            return FlowRefusal.EXPIRED
        return flow

    def _prune(self, now: float) -> None:
        # Every flow has the same lifetime, so the expired ones are at the front.
        while self._flows:
            oldest = next(iter(self._flows.values()))
            if now - oldest.created_s < self.lifetime_s:
                break
            self._flows.popitem(last=False)


def safe_next(raw: str | None) -> str:
    """Where to go after signing in: ``raw`` if it is a path on this server, otherwise ``/``.

    Refused: a scheme or host (``https://evil``, ``//evil``), a backslash (``/\\evil`` is ``//evil`` to a
    browser), anything outside printable ASCII (browsers drop tabs and newlines, so ``/<TAB>/evil`` would
    become ``//evil``), and the sign-in pages themselves (a loop).  The fragment is dropped."""
    if not raw or len(raw) > MAX_NEXT_CHARS or not raw.startswith("/") or raw.startswith("//"):
        return "/"
    if "\\" in raw or any(not "!" <= c <= "~" for c in raw):
        return "/"
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc:
        return "/"
    if parts.path == "/signin" or parts.path.startswith("/signin/"):
        return "/"
    return parts.path + (f"?{parts.query}" if parts.query else "")


@dataclass(frozen=True, slots=True)
class OidcClient:
    """``[auth.oidc]`` as the page's sign-in uses it (built by ``load_client``)."""

    issuer: str
    client_id: str
    client_secret: str | None = dataclasses.field(default=None, repr=False)  # never in a repr or a log
    user_claim: str = "preferred_username"
    groups_claim: str = "groups"
    redirect_uri: str = ""  # configured (behind a TLS-terminating proxy), else built from the request

    @property
    def provider_name(self) -> str:
        """What the button says: "Sign in with NAME" (the issuer's host)."""
        return urlsplit(self.issuer).hostname or self.issuer


def load_client(oidc: OidcConfig | None) -> OidcClient | None:
    """The page's OIDC client, or None without ``[auth.oidc] client_id``.  The secret file is read now, so
    a missing or unreadable one, or one that other users can read, stops the start naming the file."""
    if oidc is None or not oidc.client_id:
        return None
    secret = _read_secret(oidc.client_secret_file) if oidc.client_secret_file is not None else None
    return OidcClient(
        oidc.issuer, oidc.client_id, secret, oidc.user_claim, oidc.groups_claim, oidc.redirect_uri
    )


def _read_secret(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise StartupError(f"{path}: cannot read the OIDC client secret: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise StartupError(f"{path}: the OIDC client secret is not a regular file")
        if mode & 0o027:  # like a TLS key: the daemon's group may read it, nobody else
            raise StartupError(
                f"{path}: the OIDC client secret is accessible by other users (mode "
                f"{stat.S_IMODE(mode):04o}): chmod 600 {path} (or 640, group of the daemon's user)"
            )
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    try:
        secret = data.decode("utf-8").strip()  # the newline an editor or `echo` adds is not part of it
    except UnicodeDecodeError:
        raise StartupError(f"{path}: the OIDC client secret is not UTF-8 text") from None
    if not secret or len(data) > MAX_SECRET_BYTES or "\n" in secret or "\r" in secret:
        raise StartupError(
            f"{path}: the OIDC client secret must be one line of 1 to {MAX_SECRET_BYTES} bytes"
        )
    return secret


class _ExchangeError(Exception):
    """The token endpoint gave no usable ID token; the message is a fixed reason for the audit trail."""

    def __init__(self, reason: str, page: PageError = PageError.FAILED) -> None:
        super().__init__(reason)
        self.page = page


class OidcSignin:
    """The flows, the ID-token verifier (audience: the client id) and the HTTP client for the token
    endpoint.  ``close`` (on the app's cleanup) ends both aiohttp sessions."""

    def __init__(
        self,
        client: OidcClient,
        verifier: JwtVerifier,
        *,
        session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
        flows: PendingFlows | None = None,
    ) -> None:
        self.client = client
        self.verifier = verifier
        self.flows = flows if flows is not None else PendingFlows()
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._exchanges = asyncio.Semaphore(MAX_EXCHANGES)

    async def close(self) -> None:
        await self.verifier.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def authorization_url(self, endpoints: ProviderEndpoints, flow: Flow) -> str:
        query = {
            "response_type": "code",
            "client_id": self.client.client_id,
            "redirect_uri": flow.redirect_uri,
            "scope": SCOPE,
            "state": flow.state,
            "nonce": flow.nonce,
            "code_challenge": code_challenge(flow.code_verifier),
            "code_challenge_method": "S256",
        }
        # update_query keeps parameters the endpoint itself carries (some providers name a tenant there).
        return str(URL(endpoints.authorization_endpoint).update_query(query))

    async def exchange(self, endpoints: ProviderEndpoints, flow: Flow, code: str) -> str:
        """The ID token for ``code`` (RFC 6749 §4.1.3 with RFC 7636 §4.5), or ``_ExchangeError``."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow.redirect_uri,
            "code_verifier": flow.code_verifier,
        }
        headers = {"Accept": "application/json"}
        secret = self.client.client_secret
        if secret is None:
            form["client_id"] = self.client.client_id  # a public client: PKCE is its only proof
        elif "client_secret_basic" in endpoints.token_auth_methods or (
            "client_secret_post" not in endpoints.token_auth_methods
        ):
            # RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
            pair = f"{quote(self.client.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")
        else:
            form["client_id"] = self.client.client_id
            form["client_secret"] = secret
        if self._session is None:
            self._session = self._session_factory()
        timeout_s = self.verifier.settings.fetch_timeout_s
        try:
            async with (
                asyncio.timeout(timeout_s),
                self._exchanges,
                self._session.post(
                    endpoints.token_endpoint, data=form, headers=headers, allow_redirects=False
                ) as response,
            ):
                status = response.status
                body = await _bounded_body(response)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # The type only: an exception's text may quote the URL, and nothing here should carry the code.
            raise _ExchangeError(
                f"token endpoint unreachable ({type(exc).__name__})", PageError.UNAVAILABLE
            ) from None
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict):
            raise _ExchangeError(f"token endpoint answered HTTP {status} without a JSON object")
        if status != 200:
            error = document.get("error")
            word = error if isinstance(error, str) and _PROVIDER_WORD.fullmatch(error) else "no error code"
            raise _ExchangeError(f"token endpoint answered HTTP {status} ({word})")
        id_token = document.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise _ExchangeError("token endpoint sent no id_token")
        return id_token


async def _bounded_body(response: aiohttp.ClientResponse) -> bytes:
    if response.content_length is not None and response.content_length > MAX_RESPONSE_BYTES:
        raise _ExchangeError(f"token response larger than {MAX_RESPONSE_BYTES} bytes")
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise _ExchangeError(f"token response larger than {MAX_RESPONSE_BYTES} bytes")
    return bytes(body)


SIGNIN_KEY: web.AppKey[OidcSignin] = web.AppKey("oidc_signin", OidcSignin)


def _signin(request: web.Request) -> OidcSignin:
    found = request.app.get(SIGNIN_KEY)
    if found is None:
        raise ApiError(
            "not_supported", "this serialmuxd has no [auth.oidc] client_id: sign in with a password"
        )
    return found


def _flow_cookie_attributes(request: web.Request) -> dict[str, Any]:
    # SameSite=Lax, not Strict: see the module docstring ("The flow cookie").
    return {"path": START_PATH, "httponly": True, "samesite": "Lax", "secure": is_tls(request)}


def _oidc_peer(request: web.Request) -> Identity:
    return dataclasses.replace(identity(request, "http"), method="oidc")


def _back_to_signin(request: web.Request, page: PageError, reason: str, next_path: str = "/") -> web.Response:
    """Audit the failure and send the browser to the sign-in form, which explains ``page`` in its words."""
    audit("login_failed", request, _oidc_peer(request), result="failed", reason=reason)
    query = urlencode({"oidc_error": page.value, "next": next_path})
    response = web.Response(status=303, headers={"Location": f"/signin?{query}", **_NO_STORE})
    attributes = _flow_cookie_attributes(request)
    response.del_cookie(FLOW_COOKIE, path=attributes["path"], secure=attributes["secure"], httponly=True)
    return response


async def get_methods(request: web.Request) -> web.Response:
    """``GET /api/v1/signin``: the ways to sign in besides the password form (open: the form asks it)."""
    found = request.app.get(SIGNIN_KEY)
    oidc = None if found is None else {"provider": found.client.provider_name, "start": START_PATH}
    return web.json_response({"oidc": oidc}, headers=_NO_STORE)


async def start(request: web.Request) -> web.StreamResponse:
    """``GET /signin/oidc``: a new flow, and off to the provider."""
    signin = _signin(request)
    next_path = safe_next(request.query.get("next"))
    endpoints = await signin.verifier.endpoints()
    if endpoints is None:
        return _back_to_signin(request, PageError.UNAVAILABLE, "provider unreachable", next_path)
    scheme = "https" if is_tls(request) else "http"
    redirect_uri = signin.client.redirect_uri or f"{scheme}://{request.host}{CALLBACK_PATH}"
    flow_id, flow = signin.flows.start(redirect_uri, next_path, now(request))
    response = web.Response(
        status=303, headers={"Location": signin.authorization_url(endpoints, flow), **_NO_STORE}
    )
    response.set_cookie(
        FLOW_COOKIE, flow_id, max_age=int(signin.flows.lifetime_s), **_flow_cookie_attributes(request)
    )
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    """``GET /signin/oidc/callback``: finish the flow, sign the browser in (see the module docstring)."""
    from ...auth.oidc import InvalidToken  # loaded with the verifier, only where OIDC is configured

    signin = _signin(request)
    query = request.query
    flow = signin.flows.take(request.cookies.get(FLOW_COOKIE), now(request))
    if isinstance(flow, FlowRefusal):
        return _back_to_signin(request, PageError.EXPIRED, flow.value)
    error = query.get("error")
    if error is not None:
        word = error if _PROVIDER_WORD.fullmatch(error) else "an unreadable error"
        return _back_to_signin(request, PageError.DENIED, f"provider answered {word}", flow.next_path)
    if not flow.state_matches(query.get("state")):
        return _back_to_signin(request, PageError.STATE, "state mismatch", flow.next_path)
    code = query.get("code")
    if not code or len(code) > MAX_CODE_CHARS:
        return _back_to_signin(request, PageError.FAILED, "no authorization code", flow.next_path)
    endpoints = await signin.verifier.endpoints()
    if endpoints is None:
        return _back_to_signin(request, PageError.UNAVAILABLE, "provider unreachable", flow.next_path)
    try:
        id_token = await signin.exchange(endpoints, flow, code)
        verified = await signin.verifier.verify(id_token, nonce=flow.nonce)
    except _ExchangeError as exc:
        return _back_to_signin(request, exc.page, str(exc), flow.next_path)
    except InvalidToken as exc:
        return _back_to_signin(request, PageError.FAILED, f"ID token refused: {exc.reason}", flow.next_path)
    who = dataclasses.replace(_oidc_peer(request), user=verified.user, groups=verified.groups)
    store = request.app[SESSIONS_KEY]
    previous = request.cookies.get(SESSION_COOKIE)
    if previous:
        store.revoke(previous)  # one browser, one session, as for the password form
    session_id, _csrf = store.create(who, now(request))
    audit(
        "login_ok",
        request,
        who,
        subject=verified.subject[:256],
        web_session=session_key(session_id)[:LABEL_CHARS],
        result="ok",
    )
    response = web.Response(
        text=_onward_page(flow.next_path), content_type="text/html", charset="utf-8", headers=_NO_STORE
    )
    response.set_cookie(SESSION_COOKIE, session_id, **cookie_attributes(request))
    attributes = _flow_cookie_attributes(request)
    response.del_cookie(FLOW_COOKIE, path=attributes["path"], secure=attributes["secure"], httponly=True)
    return response


def _onward_page(next_path: str) -> str:
    """The page that takes the browser on to ``next_path`` by a navigation of its own (module docstring,
    "The way back"); a link for browsers that do not follow refreshes.  ``next_path`` passed ``safe_next``."""
    target = html.escape(next_path, quote=True)
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="refresh" content="0;url={target}">\n'
        "<title>Signed in - serialmuxd</title>\n"
        '<link rel="stylesheet" href="/static/style.css">\n</head>\n'
        f'<body>\n<main>\n<p>Signed in. <a href="{target}">Continue</a></p>\n</main>\n</body>\n</html>\n'
    )


def add_routes(app: web.Application, oidc: OidcConfig | None) -> None:
    """The routes (always, so the route table and the API document do not depend on the configuration;
    without a client id they answer 409 ``not_supported``) and, with one, the sign-in itself."""
    client = load_client(oidc)
    if client is not None:
        from ...auth.oidc import JwtVerifier, OidcSettings, OidcSettingsError

        try:
            settings = OidcSettings(
                issuer=client.issuer,
                audience=client.client_id,  # an ID token's aud is the client it was issued to
                user_claim=client.user_claim,
                groups_claim=client.groups_claim,
            )
        except OidcSettingsError as exc:
            raise StartupError(f"[auth.oidc] {exc}") from None
        signin = OidcSignin(client, JwtVerifier(settings, aiohttp.ClientSession))
        app[SIGNIN_KEY] = signin

        async def close_signin(app: web.Application) -> None:
            await signin.close()

        app.on_cleanup.append(close_signin)
    app.router.add_get(METHODS_PATH, get_methods)
    app.router.add_get(START_PATH, start)
    app.router.add_get(CALLBACK_PATH, callback)
