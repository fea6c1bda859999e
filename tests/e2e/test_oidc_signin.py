"""The console page's sign-in with an OpenID provider (``frontends/http/oidc_signin.py``).

* **In headless Chromium**, against the daemon and a real oidc-provider-mock in a subprocess: the sign-in
  page offers "Sign in with 127.0.0.1", the provider's form takes a subject, the browser lands back on the
  console it asked for, signed in as the user claim, types on a console the groups claim grants as operator
  (``group_grants``) and the bytes reach the guest (a PTY); sign-out ends the session.  The daemon is
  reached as ``localhost`` and the provider as ``127.0.0.1``: two sites, so the provider's redirect back is
  a cross-site navigation, as in production (that is what needs the flow cookie's ``SameSite=Lax`` and the
  onward page).  Denying consent at the provider ends on the sign-in page with the page's own words.
* **Over HTTP** (aiohttp, no browser) against a stand-in provider written here, because oidc-provider-mock
  ignores PKCE, so only a token endpoint of our own can show what the daemon sends: the authorization
  request carries S256 of the verifier the token request then sends, with state and nonce; the client
  secret goes in Basic (or in the body, where that is all the provider takes) and nowhere else; a state
  mismatch, a replayed callback, an expired flow, a denied consent, a refused code, a wrong nonce and a
  token for another audience all end on ``/signin?oidc_error=…`` audited ``login_failed``; the page to
  return to is only ever a path on this server.  The daemon's app runs with a clock the test moves.
* ``JwtVerifier.verify(token, nonce=…)`` against ID tokens the real provider signed with and without one.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import html
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from serialmuxd.auth.oidc import InvalidToken, JwtVerifier, OidcSettings, RefusalReason
from serialmuxd.config import ListenAddress
from serialmuxd.daemon import Daemon
from serialmuxd.errors import StartupError
from serialmuxd.frontends.http import HttpFrontend
from serialmuxd.frontends.http.oidc_signin import FLOW_LIFETIME_S, safe_next
from serialmuxd.web import missing_vendor_files

from .support import GuestPty, eventually, running_daemon
from .test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS
from .test_oidc import Provider, running_provider

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

CLIENT_ID = "serialmuxd-page"
API_AUDIENCE = "serialmuxd-api"  # bearer tokens for the API: not what the page's ID tokens are issued to
SECRET = "page-client-Secret-5c0f-e2e"
SESSION_COOKIE = "serialmuxd_session"
FLOW_COOKIE = "serialmuxd_oidc"
OPERATOR_GROUP = "console-ops"
REFRESH_TARGET = re.compile(r'<meta http-equiv="refresh" content="0;url=([^"]*)">')


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write_secret(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "oidc-secret"
    path.write_text(SECRET + "\n")  # the newline `echo` leaves is not part of the secret
    path.chmod(mode)
    return path


def daemon_toml(tmp_path: Path, issuer: str, *, http: str = "", ports: str = "", client: bool = True) -> str:
    client_keys = (
        f'client_id = "{CLIENT_ID}"\nclient_secret_file = "{write_secret(tmp_path)}"' if client else ""
    )
    return f"""
[daemon]
log_level = "warning"
state_dir = "{tmp_path / "state"}"
[auth]
[auth.oidc]
issuer = "{issuer}"
audience = "{API_AUDIENCE}"
{client_keys}
[auth.oidc.group_grants]
{OPERATOR_GROUP} = [{{ role = "operator", ports = ["group:web"] }}]
[audit]
file = "{tmp_path / "audit.jsonl"}"
{http}
{ports or CAT_PORTS}
"""


CAT_PORTS = """
[[ports]]
name = "vm1"
group = "web"
device = "exec:/bin/cat"
[[ports]]
name = "db1"
device = "exec:/bin/cat"
"""


def audit_events(path: Path, event: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["event"] == event]


async def audited(path: Path, event: str, **fields: Any) -> dict[str, Any]:
    """The first ``event`` with these field values, once it is in the file."""
    found: list[dict[str, Any]] = []

    def present() -> bool:
        found[:] = [r for r in audit_events(path, event) if all(r.get(k) == v for k, v in fields.items())]
        return bool(found)

    await eventually(present, f"audit {event} {fields}")
    return found[0]


def cookies_set(response: aiohttp.ClientResponse) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        jar.load(header)
    return jar


# -- a stand-in provider: its token endpoint shows what the daemon sends ---------------------------------
@dataclass
class TokenRequest:
    form: dict[str, str]
    authorization: str | None


@dataclass
class StandIn:
    """Discovery, key set, an authorization endpoint that consents at once (a 302 back with a code) and a
    token endpoint that records every request and answers with an ID token it signs."""

    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    base: str = ""
    auth_methods: list[str] | None = None  # token_endpoint_auth_methods_supported, when set
    claims: dict[str, Any] = field(
        default_factory=lambda: {"preferred_username": "olga", "groups": [OPERATOR_GROUP]}
    )
    id_token_overrides: dict[str, Any] = field(default_factory=dict)  # merged into the next ID tokens
    token_error: tuple[int, dict[str, Any]] | None = None
    authorizations: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[TokenRequest] = field(default_factory=list)
    _codes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.base

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        return app

    async def _discovery(self, request: web.Request) -> web.Response:
        document: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.base}/authorize?tenant=ops",  # its own query is kept
            "token_endpoint": f"{self.base}/token",
            "jwks_uri": f"{self.base}/jwks",
        }
        if self.auth_methods is not None:
            document["token_endpoint_auth_methods_supported"] = self.auth_methods
        return web.json_response(document)

    async def _jwks(self, request: web.Request) -> web.Response:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})

    async def _authorize(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.authorizations.append(query)
        code = secrets.token_urlsafe(16)
        self._codes[code] = {"nonce": query.get("nonce"), "client_id": query.get("client_id")}
        location = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
        raise web.HTTPFound(location)

    async def _token(self, request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.token_requests.append(TokenRequest(form, request.headers.get("Authorization")))
        if self.token_error is not None:
            status, body = self.token_error
            return web.json_response(body, status=status)
        grant = self._codes.pop(form.get("code", ""), None)
        if grant is None:
            return web.json_response({"error": "invalid_grant"}, status=400)
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": grant["client_id"],
            "sub": "subject-of-olga",
            "iat": now,
            "exp": now + 300,
            **({"nonce": grant["nonce"]} if grant["nonce"] is not None else {}),
            **self.claims,
            **self.id_token_overrides,
        }
        id_token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})
        return web.json_response({"access_token": "opaque", "token_type": "Bearer", "id_token": id_token})


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@dataclass
class Clock:
    now: float = 10_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    daemon: Daemon
    base: str
    clock: Clock
    audit: Path
    standin: StandIn

    def client(self) -> aiohttp.ClientSession:
        # unsafe=True: aiohttp's jar otherwise ignores cookies from IP addresses such as 127.0.0.1.
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def start(self, http: aiohttp.ClientSession, next_path: str | None = None) -> dict[str, str]:
        """``GET /signin/oidc``: the query of the authorization request it redirects to."""
        params = {} if next_path is None else {"next": next_path}
        async with http.get(f"{self.base}/signin/oidc", params=params, allow_redirects=False) as response:
            assert response.status == 303, await response.text()
            location = response.headers["Location"]
        assert location.startswith(f"{self.standin.base}/authorize?")
        return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}

    async def consent(self, http: aiohttp.ClientSession, authorization: dict[str, str]) -> str:
        """What the provider sends the browser back to: the callback URL with a code and the state."""
        async with http.get(
            f"{self.standin.base}/authorize", params=authorization, allow_redirects=False
        ) as response:
            assert response.status == 302
            return response.headers["Location"]

    async def callback(self, http: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
        response = await http.get(url, allow_redirects=False)
        await response.read()
        response.release()
        return response

    async def sign_in(
        self, http: aiohttp.ClientSession, next_path: str | None = None
    ) -> aiohttp.ClientResponse:
        return await self.callback(http, await self.consent(http, await self.start(http, next_path)))


def refused_with(response: aiohttp.ClientResponse, code: str) -> None:
    """A refusal: back on the sign-in page with ``oidc_error=code``, no session, the flow cookie gone."""
    assert response.status == 303
    location = urlsplit(response.headers["Location"])
    assert location.path == "/signin" and parse_qs(location.query)["oidc_error"] == [code]
    set_cookies = cookies_set(response)
    assert SESSION_COOKIE not in set_cookies
    assert set_cookies[FLOW_COOKIE].value == "" and set_cookies[FLOW_COOKIE]["max-age"] == "0"


@contextlib.asynccontextmanager
async def http_frontend(daemon: Daemon, clock: Clock) -> AsyncIterator[str]:
    """The daemon's HTTP app on a free loopback port, as the daemon builds it, with ``clock``."""
    settings = dataclasses.replace(daemon.config.http, listen=ListenAddress("127.0.0.1", 0))
    frontend = HttpFrontend(
        daemon, settings, shutdown_timeout_s=2.0, audit=daemon.audit, auth=daemon.config.auth, clock=clock
    )
    host, port = await frontend.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        await frontend.stop()


@contextlib.asynccontextmanager
async def standin_env(tmp_path: Path, standin: StandIn | None = None) -> AsyncIterator[Env]:
    standin = standin if standin is not None else StandIn()
    async with serving(standin.app()) as base:
        standin.base = base
        clock = Clock()
        toml = daemon_toml(tmp_path, standin.issuer)
        async with running_daemon(toml, online=("vm1",)) as daemon, http_frontend(daemon, clock) as url:
            yield Env(daemon, url, clock, tmp_path / "audit.jsonl", standin)


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with standin_env(tmp_path) as started:
        yield started


# -- the flow over HTTP -----------------------------------------------------------------------------------
async def test_the_authorization_request_carries_s256_of_the_verifier_the_token_request_sends(
    env: Env,
) -> None:
    async with env.client() as http:
        async with http.get(f"{env.base}/api/v1/signin") as response:  # open: the form asks before sign-in
            assert response.status == 200
            assert await response.json() == {"oidc": {"provider": "127.0.0.1", "start": "/signin/oidc"}}
        async with http.get(
            f"{env.base}/signin/oidc", params={"next": "/console/vm1"}, allow_redirects=False
        ) as response:
            assert response.status == 303
            assert response.headers["Cache-Control"] == "no-store"
            flow_cookie = cookies_set(response)[FLOW_COOKIE]
            authorization = {
                k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()
            }
        # The flow cookie: sent back on the provider's cross-site redirect (Lax), to the flow's routes only.
        assert flow_cookie["samesite"] == "Lax" and flow_cookie["httponly"] and not flow_cookie["secure"]
        assert flow_cookie["path"] == "/signin/oidc" and flow_cookie["max-age"] == str(int(FLOW_LIFETIME_S))
        assert authorization["tenant"] == "ops"  # the endpoint's own query survives
        assert authorization["response_type"] == "code" and authorization["client_id"] == CLIENT_ID
        assert authorization["redirect_uri"] == f"{env.base}/signin/oidc/callback"
        assert "openid" in authorization["scope"].split()
        assert authorization["code_challenge_method"] == "S256"
        state, nonce, challenge = (
            authorization["state"],
            authorization["nonce"],
            authorization["code_challenge"],
        )
        assert len(state) >= 43 and len(nonce) >= 43 and state != nonce
        # Nothing of the flow's secrets is in the cookie: it is an id of its own.
        assert flow_cookie.value not in (state, nonce) and len(flow_cookie.value) >= 43

        callback_url = await env.consent(http, authorization)
        response = await env.callback(http, callback_url)
        assert response.status == 200 and response.content_type == "text/html"
        assert REFRESH_TARGET.search(await response.text()) is not None

    [request] = env.standin.token_requests
    verifier = request.form["code_verifier"]
    assert 43 <= len(verifier) <= 128 and re.fullmatch(r"[A-Za-z0-9._~-]+", verifier)
    assert b64url(hashlib.sha256(verifier.encode()).digest()) == challenge
    assert request.form["grant_type"] == "authorization_code"
    assert request.form["redirect_uri"] == authorization["redirect_uri"]
    assert parse_qs(urlsplit(callback_url).query)["code"] == [request.form["code"]]
    # client_secret_basic (the default when discovery names no methods), and the secret nowhere else.
    assert request.authorization == "Basic " + base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    assert "client_secret" not in request.form


async def test_a_signed_in_browser_has_a_web_session_with_the_groups_grants(env: Env) -> None:
    async with env.client() as http:
        response = await env.sign_in(http, "/console/vm1?from=0")
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        match = REFRESH_TARGET.search(await response.text())
        assert match is not None and html.unescape(match.group(1)) == "/console/vm1?from=0"
        set_cookies = cookies_set(response)
        session = set_cookies[SESSION_COOKIE]
        # The same cookie as the password form's; the flow's is cleared.
        assert session["samesite"] == "Strict" and session["httponly"] and session["path"] == "/"
        assert set_cookies[FLOW_COOKIE]["max-age"] == "0"
        async with http.get(f"{env.base}/api/v1/session") as account:
            body = await account.json()
        assert account.status == 200 and body["user"] == "olga" and body["method"] == "session"
        async with http.get(f"{env.base}/api/v1/ports") as listing:
            assert [port["name"] for port in (await listing.json())["ports"]] == ["vm1"]  # by group only
        # The cookie session changes things with its CSRF token, as any page session does.
        headers = {"X-CSRF-Token": body["csrf"]}
        async with http.post(
            f"{env.base}/api/v1/ports/vm1/ticket", json={"mode": "rw"}, headers=headers
        ) as r:
            assert r.status == 200, await r.text()
    event = await audited(env.audit, "login_ok", method="oidc")
    assert event["user"] == "olga" and event["result"] == "ok" and event["subject"] == "subject-of-olga"
    assert event["transport"] == "http" and event["source"].startswith("127.0.0.1:")
    assert len(event["web_session"]) == 16
    text = env.audit.read_text()
    assert SECRET not in text and session.value not in text
    for request in env.standin.token_requests:
        assert request.form["code"] not in text and request.form["code_verifier"] not in text


async def test_a_state_mismatch_is_refused_and_ends_the_flow(env: Env) -> None:
    async with env.client() as http:
        callback_url = await env.consent(http, await env.start(http))
        parts = urlsplit(callback_url)
        code = parse_qs(parts.query)["code"][0]
        forged = f"{parts.scheme}://{parts.netloc}{parts.path}?code={code}&state={'A' * 43}"
        refused_with(await env.callback(http, forged), "state")
        # The flow went with the first answer: the right state now finds nothing.
        refused_with(await env.callback(http, callback_url), "expired")
        without_state = f"{parts.scheme}://{parts.netloc}{parts.path}?code={code}"
        await env.start(http)
        refused_with(await env.callback(http, without_state), "state")
    assert env.standin.token_requests == []  # no code was ever exchanged
    await audited(env.audit, "login_failed", method="oidc", reason="state mismatch", result="failed")


async def test_a_replayed_callback_is_refused(env: Env) -> None:
    async with env.client() as http:
        callback_url = await env.consent(http, await env.start(http))
        assert (await env.callback(http, callback_url)).status == 200
        refused_with(await env.callback(http, callback_url), "expired")
    # Even with the flow cookie it was started with (kept by an attacker who saw the whole exchange).
    async with env.client() as http:
        async with http.get(f"{env.base}/signin/oidc", allow_redirects=False) as response:
            flow_id = cookies_set(response)[FLOW_COOKIE].value
            authorization = {
                k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()
            }
        callback_url = await env.consent(http, authorization)
        assert (await env.callback(http, callback_url)).status == 200
    async with env.client() as replay:
        replayed = await replay.get(
            callback_url, headers={"Cookie": f"{FLOW_COOKIE}={flow_id}"}, allow_redirects=False
        )
        replayed.release()
        refused_with(replayed, "expired")
    assert len(env.standin.token_requests) == 2  # one per flow: the replays never reached the provider
    await audited(
        env.audit,
        "login_failed",
        method="oidc",
        reason="no sign-in in progress for this browser (already finished, or no cookie)",
    )


async def test_an_expired_flow_is_refused(env: Env) -> None:
    async with env.client() as http:
        callback_url = await env.consent(http, await env.start(http))
        env.clock.now += FLOW_LIFETIME_S - 1
        assert (await env.callback(http, callback_url)).status == 200  # just in time
        callback_url = await env.consent(http, await env.start(http, "/console/vm1"))
        env.clock.now += FLOW_LIFETIME_S
        refused_with(await env.callback(http, callback_url), "expired")
    assert len(env.standin.token_requests) == 1
    await audited(env.audit, "login_failed", method="oidc", reason="sign-in flow expired")


async def test_a_denied_consent_ends_on_the_sign_in_page_with_the_page_to_return_to(env: Env) -> None:
    async with env.client() as http:
        authorization = await env.start(http, "/console/vm1")
        denied = (
            f"{env.base}/signin/oidc/callback?error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E"
            f"&state={authorization['state']}"
        )
        response = await env.callback(http, denied)
        refused_with(response, "denied")
        assert parse_qs(urlsplit(response.headers["Location"]).query)["next"] == ["/console/vm1"]
    await audited(env.audit, "login_failed", method="oidc", reason="provider answered access_denied")
    assert "<b>" not in env.audit.read_text()  # the provider's description is never repeated


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"nonce": "a-nonce-of-another-sign-in"}, "ID token refused: wrong nonce"),
        ({"aud": API_AUDIENCE}, "ID token refused: wrong audience"),  # an API token is no ID token for us
        ({"exp": int(time.time()) - 3600}, "ID token refused: expired"),
        ({"preferred_username": None}, "ID token refused: no user claim"),
    ],
)
async def test_an_id_token_that_does_not_verify_is_refused(
    tmp_path: Path, overrides: dict[str, Any], reason: str
) -> None:
    async with standin_env(tmp_path, StandIn(id_token_overrides=overrides)) as env, env.client() as http:
        refused_with(await env.sign_in(http), "failed")
        await audited(env.audit, "login_failed", method="oidc", reason=reason)
        assert audit_events(env.audit, "login_ok") == []


async def test_a_code_the_token_endpoint_refuses_is_reported_without_the_secret(env: Env) -> None:
    env.standin.token_error = (400, {"error": "invalid_grant", "error_description": "code already used"})
    async with env.client() as http:
        refused_with(await env.sign_in(http), "failed")
    await audited(
        env.audit, "login_failed", method="oidc", reason="token endpoint answered HTTP 400 (invalid_grant)"
    )


async def test_client_secret_post_when_that_is_all_the_provider_takes(tmp_path: Path) -> None:
    async with (
        standin_env(tmp_path, StandIn(auth_methods=["client_secret_post"])) as env,
        env.client() as http,
    ):
        assert (await env.sign_in(http)).status == 200
        [request] = env.standin.token_requests
        assert request.authorization is None
        assert request.form["client_id"] == CLIENT_ID and request.form["client_secret"] == SECRET


@pytest.mark.parametrize(
    "next_path",
    [
        "https://evil.example/",
        "//evil.example/path",
        "/\\evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/signin?next=//evil.example",
        "/signin/oidc",
        "",
    ],
)
async def test_the_page_to_return_to_is_only_ever_a_path_on_this_server(env: Env, next_path: str) -> None:
    async with env.client() as http:
        callback_url = await env.consent(http, await env.start(http, next_path))
        # A next= added to the callback's URL is not read either: the flow keeps its own.
        response = await env.callback(http, callback_url + "&next=https%3A%2F%2Fevil.example%2F")
        assert response.status == 200
        match = REFRESH_TARGET.search(await response.text())
        assert match is not None and html.unescape(match.group(1)) == "/"


async def test_safe_next_keeps_paths_on_this_server_and_nothing_else() -> None:
    assert safe_next("/console/vm1") == "/console/vm1"
    assert safe_next("/console/vm1?from=0&mode=ro") == "/console/vm1?from=0&mode=ro"
    assert safe_next("/console/vm1#top") == "/console/vm1"
    assert safe_next("/console/a%2Fb") == "/console/a%2Fb"
    for bad in (None, "", "console", "//x", "/\\x", "\\\\x", "/x\ny", "/é", "http://127.0.0.1/", "/signin"):
        assert safe_next(bad) == "/", bad
    assert safe_next("/" + "a" * 3000) == "/"


async def test_without_a_client_id_the_page_offers_no_provider(tmp_path: Path) -> None:
    toml = daemon_toml(tmp_path, "http://127.0.0.1:9", client=False)
    async with (
        running_daemon(toml) as daemon,
        http_frontend(daemon, Clock()) as base,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{base}/api/v1/signin") as response:
            assert await response.json() == {"oidc": None}
        async with http.get(f"{base}/signin/oidc", allow_redirects=False) as response:
            assert response.status == 409 and (await response.json())["code"] == "not_supported"


async def test_an_unreachable_provider_ends_on_the_sign_in_page(tmp_path: Path) -> None:
    async with serving(web.Application()) as gone:  # answers 404 to discovery: no usable provider
        toml = daemon_toml(tmp_path, gone)
        async with (
            running_daemon(toml) as daemon,
            http_frontend(daemon, Clock()) as base,
            aiohttp.ClientSession() as http,
            http.get(
                f"{base}/signin/oidc", params={"next": "/console/vm1"}, allow_redirects=False
            ) as response,
        ):
            refused_with(response, "unavailable")
        await audited(tmp_path / "audit.jsonl", "login_failed", method="oidc", reason="provider unreachable")


@pytest.mark.parametrize(("mode", "problem"), [(0o604, "accessible by other users"), (None, "cannot read")])
async def test_an_unusable_client_secret_file_stops_the_start_naming_it(
    tmp_path: Path, mode: int | None, problem: str
) -> None:
    toml = daemon_toml(tmp_path, "http://127.0.0.1:9", http='[http]\nlisten = "127.0.0.1:0"')
    secret = tmp_path / "oidc-secret"
    if mode is None:
        secret.unlink()
    else:
        secret.chmod(mode)
    with pytest.raises(StartupError, match=re.escape(str(secret)) + ".*" + problem):
        async with running_daemon(toml):
            pass


# -- JwtVerifier's nonce, against the real provider ------------------------------------------------------
@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with running_provider() as started:
        yield started


async def provider_id_token(
    http: aiohttp.ClientSession, provider: Provider, claims: dict[str, Any], nonce: str | None
) -> str:
    """An ID token from oidc-provider-mock for ``CLIENT_ID``, asked for with ``nonce`` (or without one)."""
    subject = f"user-{secrets.token_hex(6)}"
    async with http.put(f"{provider.issuer}/users/{quote(subject, safe='')}", json=claims) as response:
        assert response.status == 204
    redirect_uri = "http://127.0.0.1:9/callback"  # read, never followed
    query = {
        "client_id": CLIENT_ID,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": "openid profile",
        "state": "s",
        **({"nonce": nonce} if nonce is not None else {}),
    }
    authorize = f"{provider.issuer}/oauth2/authorize"
    async with http.post(authorize, params=query, data={"sub": subject}, allow_redirects=False) as response:
        assert response.status == 302, await response.text()
        code = parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]
    exchange = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }
    async with http.post(f"{provider.issuer}/oauth2/token", data=exchange) as response:
        assert response.status == 200, await response.text()
        token: str = (await response.json())["id_token"]
    return token


async def test_verify_checks_the_nonce_of_a_real_providers_id_token(provider: Provider) -> None:
    settings = OidcSettings(issuer=provider.issuer, audience=CLIENT_ID)
    async with aiohttp.ClientSession() as http, JwtVerifier(settings, aiohttp.ClientSession) as verifier:
        nonce = secrets.token_urlsafe(32)
        with_nonce = await provider_id_token(http, provider, {"preferred_username": "olga"}, nonce)
        without = await provider_id_token(http, provider, {"preferred_username": "olga"}, None)
        assert (await verifier.verify(with_nonce, nonce=nonce)).user == "olga"
        assert (await verifier.verify(with_nonce)).user == "olga"  # a bearer check asks for none
        assert (await verifier.verify(without)).user == "olga"
        for token, expected in ((with_nonce, nonce[:-1] + "x"), (with_nonce, ""), (without, nonce)):
            with pytest.raises(InvalidToken) as refused:
                await verifier.verify(token, nonce=expected)
            assert refused.value.reason is RefusalReason.WRONG_NONCE
        endpoints = await verifier.endpoints()
        assert endpoints is not None
        assert endpoints.authorization_endpoint == f"{provider.issuer}/oauth2/authorize"
        assert endpoints.token_endpoint == f"{provider.issuer}/oauth2/token"
        assert endpoints.token_auth_methods == ("client_secret_basic",)


# -- in Chromium, against the real provider ---------------------------------------------------------------
try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None  # type: ignore[assignment]

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
SCREEN_HAS = """(needle) => {
  const rows = document.querySelector('.xterm-rows');
  return rows !== null && rows.textContent.replace(/\\u00a0/g, ' ').includes(needle);
}"""


@dataclass
class BrowserEnv:
    daemon: Daemon
    base: str  # http://localhost:PORT: another site than the provider's 127.0.0.1
    guest: GuestPty
    audit: Path
    provider: Provider


@pytest_asyncio.fixture
async def browser_env(tmp_path: Path, provider: Provider) -> AsyncIterator[BrowserEnv]:
    if async_playwright is None or not os.access(CHROMIUM, os.X_OK):
        pytest.skip("needs playwright and /usr/bin/chromium")
    missing = missing_vendor_files()
    assert not missing, f"serialmuxd/web/vendor lacks {missing}: run `pip install -e .` (needs npm)"
    guest = GuestPty()
    ports = f"""
[[ports]]
name = "vm1"
group = "web"
device = "tty:{guest.path}"
[[ports]]
name = "db1"
device = "exec:/bin/cat"
"""
    toml = daemon_toml(tmp_path, provider.issuer, http='[http]\nlisten = "127.0.0.1:0"', ports=ports)
    async with running_daemon(toml, online=("vm1",), cleanup=guest.close) as daemon:
        assert daemon.http_address is not None
        yield BrowserEnv(
            daemon, f"http://localhost:{daemon.http_address[1]}", guest, tmp_path / "audit.jsonl", provider
        )


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    assert async_playwright is not None
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def _wait_text(page: Page, element_id: str, needle: str) -> None:
    await page.wait_for_function(
        "([id, needle]) => (document.getElementById(id)?.textContent || '').includes(needle)",
        arg=[element_id, needle],
        timeout=TIMEOUT_MS,
    )


async def _axe_violations(page: Page) -> list[dict[str, Any]]:
    """WCAG 2.1 A/AA violations axe-core (from node_modules) finds on the page."""
    assert AXE.is_file(), "node_modules/axe-core is missing: run `npm ci`"
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.add_script_tag(path=str(AXE))
    result = await page.evaluate(
        "(tags) => axe.run(document, { runOnly: { type: 'tag', values: tags } })",
        ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"],
    )
    return [{"id": v["id"], "nodes": [n["target"] for n in v["nodes"]]} for v in result["violations"]]


async def _provider_user(env: BrowserEnv, claims: dict[str, Any]) -> str:
    subject = f"user-{secrets.token_hex(6)}"
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{env.provider.issuer}/users/{quote(subject, safe='')}", json=claims) as response,
    ):
        assert response.status == 204
    return subject


async def test_sign_in_with_the_provider_type_on_a_console_and_sign_out_in_chromium(
    browser_env: BrowserEnv, browser: Browser
) -> None:
    env = browser_env
    subject = await _provider_user(env, {"preferred_username": "olga", "groups": [OPERATOR_GROUP, "dev"]})
    problems: list[str] = []
    context = await browser.new_context(viewport={"width": 1100, "height": 640})
    page = await context.new_page()
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    await page.goto(f"{env.base}/console/vm1")
    await page.wait_for_url(f"{env.base}/signin?next=%2Fconsole%2Fvm1", timeout=TIMEOUT_MS)
    await page.get_by_role("link", name="Sign in with 127.0.0.1").click()
    # The provider's own page (another site), then straight back to the console asked for, signed in.
    await page.get_by_placeholder("sub").fill(subject)
    await page.get_by_role("button", name="Authorize").click()
    await page.wait_for_url(f"{env.base}/console/vm1", timeout=TIMEOUT_MS)
    await _wait_text(page, "whoami", "Signed in as olga")
    await _wait_text(page, "st-conn", "you are typing")  # operator through the groups claim
    cookies = {c["name"]: c for c in await context.cookies()}
    assert FLOW_COOKIE not in cookies  # used up
    session = cookies[SESSION_COOKIE]
    assert session["httpOnly"] and session["sameSite"] == "Strict"

    await page.locator("#terminal").click()
    await page.keyboard.type("typed-after-oidc")
    await env.guest.expect(b"typed-after-oidc")
    await env.guest.send(b"\r\nguest answers olga\r\n")
    await page.wait_for_function(SCREEN_HAS, arg="guest answers olga", timeout=TIMEOUT_MS)
    event = await audited(env.audit, "login_ok", method="oidc", user="olga")
    assert event["result"] == "ok"

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{env.base}/signin", timeout=TIMEOUT_MS)
    assert SESSION_COOKIE not in {c["name"] for c in await context.cookies()}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{env.base}/api/v1/ports", headers={"Cookie": f"{SESSION_COOKIE}={session['value']}"}) as r,
    ):
        assert r.status == 401
    assert problems == []
    await context.close()


async def test_denying_consent_at_the_provider_ends_on_the_sign_in_page_in_chromium(
    browser_env: BrowserEnv, browser: Browser
) -> None:
    env = browser_env
    # bypass_csp: our CSP allows only our own scripts, and axe-core is injected from the test.
    context = await browser.new_context(bypass_csp=True)
    page = await context.new_page()
    await page.goto(f"{env.base}/signin?next=%2Fconsole%2Fvm1")
    offer = page.get_by_role("link", name="Sign in with 127.0.0.1")
    await offer.wait_for(timeout=TIMEOUT_MS)
    assert await _axe_violations(page) == []  # the sign-in page with the provider's link
    await offer.click()
    await page.get_by_role("button", name="Deny").click()
    await page.wait_for_url(
        re.compile(r".*/signin\?oidc_error=denied&next=%2Fconsole%2Fvm1$"), timeout=TIMEOUT_MS
    )
    await _wait_text(page, "error", "Your identity provider did not sign you in")
    assert await page.get_attribute("#error", "role") == "alert"
    assert await page.locator("#btn-oidc").is_visible()  # ready to try again
    assert await _axe_violations(page) == []  # ... and with the error shown
    await audited(env.audit, "login_failed", method="oidc", reason="provider answered access_denied")
    assert SESSION_COOKIE not in {c["name"] for c in await context.cookies()}
    await context.close()


async def test_a_configured_redirect_uri_is_what_the_provider_is_told(tmp_path: Path) -> None:
    """Behind a TLS-terminating proxy the daemon cannot see the URL browsers use: [auth.oidc] redirect_uri."""
    standin = StandIn()
    async with serving(standin.app()) as base:
        standin.base = base
        public = "https://consoles.example/signin/oidc/callback"
        toml = daemon_toml(tmp_path, standin.issuer).replace(
            "[auth.oidc]\n", f'[auth.oidc]\nredirect_uri = "{public}"\n', 1
        )
        assert public in toml
        async with running_daemon(toml, online=("vm1",)) as daemon, http_frontend(daemon, Clock()) as url:
            env = Env(daemon, url, Clock(), tmp_path / "audit.jsonl", standin)
            async with env.client() as http:
                assert (await env.start(http))["redirect_uri"] == public
