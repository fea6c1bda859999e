"""The page's sign-in session, CSRF and console tickets through a real daemon and a real HTTP client.

The daemon runs its consoles as usual; the HTTP front end is started by the test with the daemon's own
audit trail and ``[auth]`` lifetimes, and with a clock the test moves (so that a ticket's 60 s and a
session's idle and absolute lifetimes pass without waiting).  Every request goes over a real socket through
the app's middlewares; WebSocket upgrades are real handshakes.  Covered: the cookie's flags, ``GET``/
``DELETE /api/v1/session``, CSRF on state-changing requests (cookie only), idle and absolute expiry,
throttled sign-in, single-use tickets (replayed, expired, for another console or mode, on another path),
cross-origin upgrades, the Basic challenge only for non-browser clients and the redirect of a navigation
to ``/signin`` — and the HTTP side's audit events (origin and host refusals, protocol closes, heartbeat
cuts, scrollback downloads) with no session id, CSRF token, ticket or password in the trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from serialmuxd.auth.passwords import hash_password
from serialmuxd.auth.tokens import new_token, token_digest
from serialmuxd.config import ListenAddress
from serialmuxd.daemon import Daemon
from serialmuxd.frontends.http import HttpFrontend

from .support import eventually, running_daemon
from .test_ws_strict import RawWs, close_payload, frame, handshake

pytestmark = pytest.mark.asyncio

PASSWORD = "canary-Pa55-signin-41c9"  # must never appear in the audit trail or the log
VIEWER_PASSWORD = "viewer-pa55-77d0"
COOKIE = "serialmuxd_session"
BROWSER = {"X-Requested-With": "serialmuxd"}


@dataclass
class Clock:
    """Monotonic seconds under the test's control."""

    now: float = 10_000.0

    def __call__(self) -> float:
        return self.now


def users_toml(tmp_path: Path, admin_token: str) -> Path:
    path = tmp_path / "users.toml"
    path.write_text(
        f"""
[[users]]
name = "alice"
password_hash = "{hash_password(PASSWORD)}"
grants = [{{ role = "operator", ports = ["vm1"] }}, {{ role = "viewer", ports = ["vm2"] }}]

[[users]]
name = "vera"
password_hash = "{hash_password(VIEWER_PASSWORD)}"
grants = [{{ role = "viewer", ports = ["vm*"] }}]

[[tokens]]
name = "root-bot"
sha256 = "{token_digest(admin_token)}"
grants = [{{ role = "admin", ports = ["*"] }}]
"""
    )
    path.chmod(0o600)
    return path


def auth_toml(tmp_path: Path, admin_token: str, *, ports: str, http: str = "") -> str:
    return f"""
[daemon]
log_level = "info"
state_dir = "{tmp_path / "state"}"
[auth]
users_file = "{users_toml(tmp_path, admin_token)}"
session_idle_s = 60
session_max_s = 300
[audit]
file = "{tmp_path / "audit.jsonl"}"
[http]
{http}
{ports}
"""


@contextlib.asynccontextmanager
async def http_frontend(daemon: Daemon, clock: Clock) -> AsyncIterator[str]:
    """The daemon's HTTP app on a free loopback port, with its audit trail, its [auth] and ``clock``."""
    settings = dataclasses.replace(daemon.config.http, listen=ListenAddress("127.0.0.1", 0))
    frontend = HttpFrontend(
        daemon,
        settings,
        shutdown_timeout_s=2.0,
        audit=daemon.audit,
        auth=daemon.config.auth,
        clock=clock,
    )
    host, port = await frontend.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        await frontend.stop()


def audit_events(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if event is None or r["event"] == event]


async def audited(path: Path, event: str, **fields: Any) -> dict[str, Any]:
    """The first ``event`` with these field values, once it is in the file (some are written by a handler
    that finishes after the client has seen the connection end)."""
    found: list[dict[str, Any]] = []

    def present() -> bool:
        found[:] = [r for r in audit_events(path, event) if all(r.get(k) == v for k, v in fields.items())]
        return bool(found)

    await eventually(present, f"audit {event} {fields}")
    return found[0]


@dataclass
class Env:
    daemon: Daemon
    base: str
    clock: Clock
    audit: Path
    admin_token: str

    @property
    def ws_base(self) -> str:
        return self.base.replace("http://", "ws://", 1)

    def client(self) -> aiohttp.ClientSession:
        # unsafe=True: aiohttp's jar otherwise ignores cookies from IP addresses such as 127.0.0.1.
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def sign_in(
        self, http: aiohttp.ClientSession, user: str = "alice", password: str = PASSWORD
    ) -> str:
        async with http.post(f"{self.base}/api/v1/session", json={"user": user, "password": password}) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        assert body["user"] == user
        csrf: str = body["csrf"]
        return csrf

    def cookie(self, http: aiohttp.ClientSession) -> str:
        for morsel in http.cookie_jar:
            if morsel.key == COOKIE:
                return morsel.value
        raise AssertionError("no session cookie in the jar")


PORTS = """
[[ports]]
name = "vm1"
device = "exec:/bin/cat"
[[ports]]
name = "vm2"
device = "exec:/bin/cat"
"""


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    token = new_token()
    toml = auth_toml(tmp_path, token, ports=PORTS, http="ws_heartbeat_s = 0.5\nws_max_message_bytes = 1024")
    clock = Clock()
    async with running_daemon(toml, online=("vm1", "vm2")) as daemon, http_frontend(daemon, clock) as base:
        yield Env(daemon, base, clock, tmp_path / "audit.jsonl", token)


async def _hello(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    async with asyncio.timeout(10):
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                event: dict[str, Any] = json.loads(msg.data)
                if event.get("type") == "hello":
                    return event
    raise AssertionError("no hello")


async def _ticket(env: Env, http: aiohttp.ClientSession, port: str, mode: str, **headers: str) -> str:
    async with http.post(f"{env.base}/api/v1/ports/{port}/ticket", json={"mode": mode}, headers=headers) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert body["expires_in"] == 60 and body["mode"] == mode
    value: str = body["ticket"]
    return value


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(user, password)}


# -- sign-in, the cookie, sign-out -----------------------------------------------------------------------
async def test_sign_in_sets_a_strict_http_only_cookie_and_says_who_is_signed_in(env: Env) -> None:
    async with env.client() as http:
        async with http.post(
            f"{env.base}/api/v1/session", json={"user": "alice", "password": "wrong"}, headers=BROWSER
        ) as r:
            assert r.status == 401 and (await r.json())["code"] == "unauthorized"
            assert "Set-Cookie" not in r.headers
            assert "Basic" not in r.headers["WWW-Authenticate"]  # the page asked: no browser dialog
        async with http.post(f"{env.base}/api/v1/session", json={"user": "alice", "password": PASSWORD}) as r:
            assert r.status == 200
            body = await r.json()
            cookie = r.headers["Set-Cookie"]
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert attributes[0].startswith(f"{COOKIE}=")
        assert {"httponly", "path=/", "samesite=strict"} <= set(attributes)
        assert "secure" not in attributes  # plain HTTP here; the TLS case is test_page_signin's
        assert not any(a.startswith(("max-age", "expires", "domain")) for a in attributes)
        session_id = env.cookie(http)
        assert len(session_id) == 43 and body == {"user": "alice", "csrf": body["csrf"]}

        async with http.get(f"{env.base}/api/v1/session") as r:
            me = await r.json()
        assert me["user"] == "alice" and me["method"] == "session" and me["csrf"] == body["csrf"]
        assert me["auth"] is True and me["idle_timeout_s"] == 60 and 0 < me["expires_in"] <= 300
        async with http.get(f"{env.base}/api/v1/ports") as r:
            assert r.status == 200
            assert [p["name"] for p in (await r.json())["ports"]] == ["vm1", "vm2"]
        async with http.post(
            f"{env.base}/api/v1/session", json={"user": "alice"}
        ) as r:  # a malformed body is 400, not a failed sign-in
            assert r.status == 400

    raw = env.audit.read_text()
    assert session_id not in raw and body["csrf"] not in raw and PASSWORD not in raw
    ok = [e for e in audit_events(env.audit, "login_ok") if e.get("user") == "alice"]
    assert ok and ok[0]["method"] == "password"


async def test_sign_out_ends_the_session_and_the_cookie_no_longer_works(env: Env) -> None:
    async with env.client() as http:
        csrf = await env.sign_in(http)
        session_id = env.cookie(http)
        async with http.delete(f"{env.base}/api/v1/session", headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 200 and (await r.json())["sessions"] == 1
            assert f"{COOKIE}=" in r.headers["Set-Cookie"] and "Max-Age=0" in r.headers["Set-Cookie"]
    logout = await audited(env.audit, "logout", user="alice")
    assert logout["result"] == "ok" and len(logout["web_session"]) == 16 and logout["source"]
    async with (
        aiohttp.ClientSession() as plain,
        plain.get(f"{env.base}/api/v1/ports", headers={"Cookie": f"{COOKIE}={session_id}"}) as r,
    ):
        assert r.status == 401
        assert "Max-Age=0" in r.headers["Set-Cookie"]  # the browser is told to forget the stale cookie


async def test_sign_out_everywhere_ends_every_session_of_the_user(env: Env) -> None:
    async with env.client() as first, env.client() as second:
        await env.sign_in(first)
        csrf = await env.sign_in(second)
        async with second.delete(
            f"{env.base}/api/v1/session?everywhere=1", headers={"X-CSRF-Token": csrf}
        ) as r:
            assert (await r.json())["sessions"] == 2
        async with first.get(f"{env.base}/api/v1/ports") as r:
            assert r.status == 401


async def test_idle_and_absolute_lifetimes_end_a_session(env: Env) -> None:
    async with env.client() as http:
        await env.sign_in(http)
        for _ in range(3):  # every use refreshes the idle lifetime of 60 s
            env.clock.now += 59
            async with http.get(f"{env.base}/api/v1/ports") as r:
                assert r.status == 200
        env.clock.now += 60
        async with http.get(f"{env.base}/api/v1/ports") as r:
            assert r.status == 401 and "ended" in (await r.json())["message"]
        expired = await audited(env.audit, "session_expired", reason="idle lifetime reached")
        assert expired["user"] == "alice" and expired["result"] == "refused"

        await env.sign_in(http)
        for _ in range(5):  # busy, but 300 s after sign-in it ends all the same
            env.clock.now += 59
            async with http.get(f"{env.base}/api/v1/ports") as r:
                assert r.status == 200
        env.clock.now += 10
        async with http.get(f"{env.base}/api/v1/ports") as r:
            assert r.status == 401
        await audited(env.audit, "session_expired", reason="absolute lifetime reached")


async def test_sign_in_is_throttled_like_basic(env: Env) -> None:
    statuses = []
    async with env.client() as http:
        for _ in range(8):
            async with http.post(
                f"{env.base}/api/v1/session", json={"user": "alice", "password": "nope"}
            ) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
                    break
    assert statuses[:3] == [401, 401, 401] and statuses[-1] == 429, statuses


# -- CSRF --------------------------------------------------------------------------------------------------
async def test_a_cookie_authenticated_post_needs_the_csrf_header(env: Env) -> None:
    url = f"{env.base}/api/v1/ports/vm1/keys"
    async with env.client() as http:
        csrf = await env.sign_in(http)
        for headers in (
            {},
            {"X-CSRF-Token": ""},
            {"X-CSRF-Token": csrf[:-1] + ("B" if csrf.endswith("A") else "A")},
        ):
            async with http.post(url, json={"keys": ["F1"]}, headers=headers) as r:
                assert r.status == 403, headers
                body = await r.json()
                assert body["code"] == "forbidden" and body["csrf_required"] is True
        async with http.delete(f"{env.base}/api/v1/session") as r:  # sign-out is state-changing too
            assert r.status == 403
        async with http.post(url, json={"keys": ["F1"]}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 200, await r.text()
    denied = await audited(env.audit, "access_denied", user="alice")
    assert denied["result"] == "refused" and "X-CSRF-Token" in denied["reason"]
    # Basic (and Bearer, certificates) need no CSRF header: a browser never adds them cross-site.
    async with (
        aiohttp.ClientSession() as plain,
        plain.post(url, json={"keys": ["F1"]}, headers=_basic("alice", PASSWORD)) as r,
    ):
        assert r.status == 200


# -- tickets -------------------------------------------------------------------------------------------------
async def test_a_ticket_opens_one_websocket_and_a_replay_is_refused(env: Env) -> None:
    async with env.client() as http:
        csrf = await env.sign_in(http)
        ticket = await _ticket(env, http, "vm1", "ro", **{"X-CSRF-Token": csrf})
    url = f"{env.ws_base}/api/v1/ports/vm1/ws?mode=ro&ticket={ticket}"
    async with aiohttp.ClientSession() as anonymous:  # no cookie, no header: only the ticket
        ws = await anonymous.ws_connect(url)
        assert (await _hello(ws))["mode"] == "ro"
        await ws.send_json({"type": "who"})
        await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as replay:
            await anonymous.ws_connect(url)
        assert replay.value.status == 401
    issued = await audited(env.audit, "ticket_issued", user="alice", port="vm1")
    used = await audited(env.audit, "ticket_used", user="alice", port="vm1", mode="ro")
    refused = await audited(env.audit, "ticket_refused", reason="ticket already used")
    assert issued["grant_id"] == used["grant_id"] == refused["grant_id"]
    assert issued["web_session"] == used["web_session"] == refused["web_session"]
    assert used["transport"] == "ws" and used["method"] == "ticket"
    assert refused["user"] == "alice" and refused["result"] == "refused"
    attach = [e for e in audit_events(env.audit, "attach") if e.get("port") == "vm1"]
    assert attach and attach[-1]["user"] == "alice"  # the hub saw the ticket's user
    assert ticket not in env.audit.read_text()


async def test_an_expired_ticket_is_refused(env: Env) -> None:
    async with aiohttp.ClientSession(headers=_basic("alice", PASSWORD)) as http:
        ticket = await _ticket(env, http, "vm1", "rw")
    env.clock.now += 60
    async with aiohttp.ClientSession() as anonymous:
        with pytest.raises(aiohttp.WSServerHandshakeError) as late:
            await anonymous.ws_connect(f"{env.ws_base}/api/v1/ports/vm1/ws?mode=rw&ticket={ticket}")
        assert late.value.status == 401
    refused = await audited(env.audit, "ticket_refused", reason="ticket expired")
    assert refused["user"] == "alice" and refused["port"] == "vm1"


async def test_a_ticket_for_another_console_or_mode_is_refused_and_used_up(env: Env) -> None:
    async with aiohttp.ClientSession(headers=_basic("alice", PASSWORD)) as http:
        for_ro = await _ticket(env, http, "vm1", "ro")
        for_vm1 = await _ticket(env, http, "vm1", "rw")
        in_url = await _ticket(env, http, "vm1", "rw")
    async with aiohttp.ClientSession() as anonymous:
        for url, reason in (
            (f"/api/v1/ports/vm1/ws?mode=rw&ticket={for_ro}", "ticket is for another mode"),
            (f"/api/v1/ports/vm1/ws?mode=ro&ticket={for_ro}", "ticket already used"),
            (f"/api/v1/ports/vm2/ws?mode=rw&ticket={for_vm1}", "ticket is for another console"),
            (f"/api/v1/ports/vm1/ws?mode=rw&ticket={for_vm1}", "ticket already used"),
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await anonymous.ws_connect(env.ws_base + url)
            assert refused.value.status == 401
            await audited(env.audit, "ticket_refused", reason=reason)
        # Anywhere else a ticket opens nothing, and is used up too (it may have leaked into a log there).
        async with anonymous.get(f"{env.base}/api/v1/ports?ticket={in_url}") as r:
            assert r.status == 401
        await audited(env.audit, "ticket_refused", reason="tickets only open console WebSockets")
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await anonymous.ws_connect(f"{env.ws_base}/api/v1/ports/vm1/ws?mode=rw&ticket={in_url}")


async def test_a_viewer_gets_a_ticket_but_the_hub_refuses_her_typing(env: Env) -> None:
    async with aiohttp.ClientSession(headers=_basic("vera", VIEWER_PASSWORD)) as http:
        # vera views vm*: she gets a ticket for a console she may only watch; the hub decides the rest.
        ticket = await _ticket(env, http, "vm1", "rw")
        async with http.post(f"{env.base}/api/v1/ports/nope/ticket", json={"mode": "rw"}) as r:
            assert r.status == 404
        async with http.post(f"{env.base}/api/v1/ports/vm1/ticket", json={"mode": "write"}) as r:
            assert r.status == 400
    async with aiohttp.ClientSession() as anonymous:
        ws = await anonymous.ws_connect(f"{env.ws_base}/api/v1/ports/vm1/ws?mode=rw&ticket={ticket}")
        async with asyncio.timeout(10):
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("kind") == "refused":
                    assert "vera may not type" in json.loads(msg.data)["text"]
                    break
        await ws.close()


# -- browsers and origins ------------------------------------------------------------------------------
async def test_a_cross_origin_upgrade_is_refused_before_its_ticket_is_spent(env: Env) -> None:
    async with env.client() as http:
        csrf = await env.sign_in(http)
        ticket = await _ticket(env, http, "vm1", "rw", **{"X-CSRF-Token": csrf})
        url = f"{env.ws_base}/api/v1/ports/vm1/ws?mode=rw&ticket={ticket}"
        evil = {"Origin": "http://evil.example"}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers=evil)
        assert refused.value.status == 403
        # With the cookie alone (what a cross-site page could hope for if SameSite were lax): refused too.
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(f"{env.ws_base}/api/v1/ports/vm1/ws", headers=evil)
        # The guard runs first, so the ticket is still good from the page's own origin.
        ws = await http.ws_connect(url, headers={"Origin": env.base})
        await _hello(ws)
        await ws.close()
        # From the page's own origin the cookie alone opens a console too (a ticket is not required).
        ws = await http.ws_connect(f"{env.ws_base}/api/v1/ports/vm1/ws?mode=ro", headers={"Origin": env.base})
        await _hello(ws)
        await ws.close()
    origin = await audited(env.audit, "origin_refused", origin="http://evil.example")
    assert origin["upgrade"] is True and origin["result"] == "refused" and origin["source"]


async def test_only_api_clients_get_the_basic_challenge_and_navigations_go_to_signin(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{env.base}/api/v1/ports") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith('Basic realm="serialmuxd"')
        for browserish in (BROWSER, {"Sec-Fetch-Mode": "cors"}, {"Accept": "text/html,*/*;q=0.8"}):
            async with http.get(f"{env.base}/api/v1/ports", headers=browserish) as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="serialmuxd"'
        navigate = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8", "Sec-Fetch-Mode": "navigate"}
        async with http.get(f"{env.base}/console/vm1?mode=ro", headers=navigate, allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/signin?next=%2Fconsole%2Fvm1%3Fmode%3Dro"
            assert r.headers["X-Frame-Options"] == "DENY"  # the security headers are on redirects too
        async with http.get(f"{env.base}/", headers=navigate, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/signin?next=%2F"
        async with http.get(f"{env.base}/signin", headers=navigate) as r:
            assert r.status == 200 and "<form" in await r.text()
        async with http.get(f"{env.base}/console/vm1", allow_redirects=False) as r:
            assert r.status == 401  # not a navigation: curl and scripts get the JSON answer


# -- the HTTP side's audit events ------------------------------------------------------------------------
async def test_host_refusals_scrollback_downloads_and_protocol_closes_are_audited(env: Env) -> None:
    async with aiohttp.ClientSession(headers=_basic("alice", PASSWORD)) as http:
        async with http.get(f"{env.base}/api/v1/ports", headers={"Host": "evil.example"}) as r:
            assert r.status == 421
        async with http.get(
            f"{env.base}/api/v1/ports/vm1/scrollback", params={"format": "text", "download": "1"}
        ) as r:
            assert r.status == 200
            size = len(await r.read())
        # One byte over ws_max_message_bytes (1024) closes the session with 1009.
        ws = await http.ws_connect(f"{env.ws_base}/api/v1/ports/vm1/ws?mode=ro")
        await _hello(ws)
        await ws.send_bytes(b"x" * 1025)
        async with asyncio.timeout(10):
            while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                pass
        assert ws.close_code == 1009
        # Text that is not UTF-8: aiohttp's reader closes with 1007.
        ws = await http.ws_connect(f"{env.ws_base}/api/v1/ports/vm1/ws?mode=ro")
        await _hello(ws)
        await ws.send_frame(b"\xff\xfe", aiohttp.WSMsgType.TEXT)
        async with asyncio.timeout(10):
            while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                pass
        assert ws.close_code == 1007
    host = await audited(env.audit, "host_refused", host="evil.example")
    assert host["result"] == "refused" and host["source"].startswith("127.0.0.1:")
    download = await audited(env.audit, "scrollback_download", user="alice", port="vm1")
    assert download["bytes"] == size and download["format"] == "text" and download["attachment"] is True
    too_big = await audited(env.audit, "ws_protocol_close", code=1009)
    assert too_big["user"] == "alice" and too_big["port"] == "vm1" and too_big["transport"] == "ws"
    assert isinstance(too_big["session"], int)
    await audited(env.audit, "ws_protocol_close", code=1007)


async def test_a_peer_that_stops_answering_pings_is_cut_and_audited(env: Env) -> None:
    async with aiohttp.ClientSession(headers=_basic("alice", PASSWORD)) as http:
        # autoping=False: this client never answers the server's heartbeat pings (every 0.5 s here).
        ws = await http.ws_connect(f"{env.ws_base}/api/v1/ports/vm1/ws?mode=ro", autoping=False)
        async with asyncio.timeout(10):
            while (await ws.receive()).type not in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                pass
    cut = await audited(env.audit, "heartbeat_cut", user="alice", port="vm1")
    assert cut["code"] == 1006 and cut["result"] == "closed"


async def test_unmasked_frames_and_unsendable_close_codes_are_audited(env: Env) -> None:
    """Raw sockets (test_ws_strict's client): an unmasked frame, and a close frame with 1005, which must
    never be on the wire, both end the connection with 1002 and an audit line naming the user."""
    port = int(env.base.rsplit(":", 1)[1])
    auth = "Authorization: " + _basic("alice", PASSWORD)["Authorization"]
    for bad, why in (
        (frame(b"typed", masked=False), "unmasked frame"),
        # aiohttp's reader refuses 1005 itself; 5000 and up only our close handling does.
        (frame(close_payload(1005), opcode=8), "1005"),
        (frame(close_payload(5000), opcode=8), "close frame with code 5000, which is never sent"),
    ):
        ws = await RawWs.open(port, handshake(port, extra=[auth]))
        try:
            assert ws.status == 101
            await ws.send(bad)
            assert await ws.close_code() == 1002
        finally:
            await ws.client.close()

        def closes(why: str = why) -> list[dict[str, Any]]:
            return [e for e in audit_events(env.audit, "ws_protocol_close") if why in e["reason"]]

        # aiohttp sends its close frame before its reader's error reaches the handler: wait for the line.
        await eventually(lambda: bool(closes()), f"ws_protocol_close for {why}")
        assert len(closes()) == 1, closes()
        line = closes()[0]
        assert line["code"] == 1002 and line["user"] == "alice" and line["port"] == "vm1"
