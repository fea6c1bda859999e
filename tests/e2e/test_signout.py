"""A sign-in ends what it opened: a real daemon with [auth], [http] and an audit file, a real aiohttp client.

* Sign-out: the WebSocket opened with the page session's cookie and the one opened with a ticket issued to
  it (how the page and the ``serialmux`` client connect) are told why (``closing``) and closed (4005); an
  unused ticket of that session is refused; another session of the same user keeps its WebSocket;
  ``session_ended`` records what was closed.
* Expiry: a session that reaches its idle or absolute lifetime closes its WebSocket when it expires,
  without any request presenting the cookie.
* A script hammering the WebSocket with a bad Origin is refused every time, but audited like malformed
  requests are logged: a burst per interval one by one, then one record with the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from serialmuxd.auth.passwords import hash_password
from serialmuxd.daemon import Daemon
from serialmuxd.obs.logging import BURST_BAD_REQUEST

from .support import GuestPty, eventually, running_daemon

pytestmark = pytest.mark.asyncio

PASSWORD = "signout-Pa55-e2e-90ab"
COOKIE = "serialmuxd_session"


def config(tmp_path: Path, guest: GuestPty, *, idle_s: float = 600, max_s: float = 3600) -> str:
    users = tmp_path / "users.toml"
    users.write_text(
        f"""
[[users]]
name = "alice"
password_hash = "{hash_password(PASSWORD)}"
grants = [{{ role = "operator", ports = ["vm1"] }}]
"""
    )
    users.chmod(0o600)
    return f"""
[daemon]
state_dir = "{tmp_path / "state"}"
[auth]
users_file = "{users}"
session_idle_s = {idle_s}
session_max_s = {max_s}
[audit]
file = "{tmp_path / "audit.jsonl"}"
[http]
listen = "127.0.0.1:0"
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
replay_bytes = 0
"""


def audit_lines(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [line for line in lines if line["event"] == event]


@contextlib.asynccontextmanager
async def daemon_for(tmp_path: Path, **lifetimes: float) -> AsyncIterator[tuple[Daemon, GuestPty, str]]:
    guest = GuestPty()
    async with running_daemon(config(tmp_path, guest, **lifetimes), ["vm1"], guest.close) as daemon:
        assert daemon.http_address is not None
        yield daemon, guest, "http://{}:{}".format(*daemon.http_address)


async def sign_in(http: aiohttp.ClientSession, base: str) -> tuple[str, str]:
    """(cookie value, CSRF token) of a new page session of alice's."""
    async with http.post(f"{base}/api/v1/session", json={"user": "alice", "password": PASSWORD}) as resp:
        assert resp.status == 200, await resp.text()
        return resp.cookies[COOKIE].value, (await resp.json())["csrf"]


async def ticket(http: aiohttp.ClientSession, base: str, cookie: str, csrf: str) -> str:
    async with http.post(
        f"{base}/api/v1/ports/vm1/ticket",
        json={"mode": "ro"},
        headers={"Cookie": f"{COOKIE}={cookie}", "X-CSRF-Token": csrf},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["ticket"])


async def until_closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[dict[str, Any]], bytes]:
    """Every JSON event until the close, and the guest bytes seen."""
    events: list[dict[str, Any]] = []
    data = b""
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT:
            events.append(json.loads(msg.data))
        elif msg.type is aiohttp.WSMsgType.BINARY:
            data += msg.data
    return events, data


async def read_until(ws: aiohttp.ClientWebSocketResponse, needle: bytes) -> None:
    data = b""
    while needle not in data:
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT), msg
        if msg.type is aiohttp.WSMsgType.BINARY:
            data += msg.data


async def test_sign_out_closes_the_websockets_and_tickets_of_that_session(tmp_path: Path) -> None:
    async with daemon_for(tmp_path) as (_daemon, guest, base), aiohttp.ClientSession() as http:
        cookie, csrf = await sign_in(http, base)
        other_cookie, _ = await sign_in(http, base)  # another browser of alice's
        url = f"{base}/api/v1/ports/vm1/ws?mode=ro"
        by_cookie = await http.ws_connect(url, headers={"Cookie": f"{COOKIE}={cookie}"})
        by_ticket = await http.ws_connect(f"{url}&ticket={await ticket(http, base, cookie, csrf)}")
        unused = await ticket(http, base, cookie, csrf)
        other = await http.ws_connect(url, headers={"Cookie": f"{COOKIE}={other_cookie}"})
        for ws in (by_cookie, by_ticket, other):
            assert (await ws.receive_json())["type"] == "hello"
        await guest.send(b"before-sign-out\r\n")
        for ws in (by_cookie, by_ticket, other):
            await read_until(ws, b"before-sign-out")

        async with http.delete(
            f"{base}/api/v1/session", headers={"Cookie": f"{COOKIE}={cookie}", "X-CSRF-Token": csrf}
        ) as resp:
            assert resp.status == 200
        for ws in (by_cookie, by_ticket):
            events, _ = await until_closed(ws)
            assert events[-1] == {"type": "closing", "reason": "your sign-in ended: signed out", "code": 4005}
            assert ws.close_code == 4005

        # The ticket issued to the ended session opens nothing; the other session's WebSocket goes on.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{url}&ticket={unused}")
        assert refused.value.status == 401
        await guest.send(b"after-sign-out\r\n")
        await read_until(other, b"after-sign-out")
        await other.close()

        (ended,) = audit_lines(tmp_path, "session_ended")
        assert ended["user"] == "alice" and ended["reason"] == "signed out"
        assert ended["websockets"] == 2 and ended["grants"] == 1 and ended["signed_in_by"] == "password"
        assert audit_lines(tmp_path, "logout")[0]["web_session"] == ended["web_session"]
        (refusal,) = audit_lines(tmp_path, "ticket_refused")
        assert refusal["reason"] == "the sign-in it was issued from has ended"
        assert refusal["web_session"] == ended["web_session"]
        detached = [line for line in audit_lines(tmp_path, "detach") if line["transport"] == "ws"]
        assert len(detached) >= 2


@pytest.mark.parametrize(
    ("lifetimes", "reason"),
    [
        ({"idle_s": 1.0}, "idle lifetime reached"),
        ({"idle_s": 1.0, "max_s": 1.0}, "absolute lifetime reached"),
    ],
)
async def test_an_expiring_session_closes_its_websocket_when_it_expires(
    tmp_path: Path, lifetimes: dict[str, float], reason: str
) -> None:
    async with daemon_for(tmp_path, **lifetimes) as (_daemon, _guest, base), aiohttp.ClientSession() as http:
        cookie, _ = await sign_in(http, base)
        ws = await http.ws_connect(
            f"{base}/api/v1/ports/vm1/ws?mode=ro", headers={"Cookie": f"{COOKIE}={cookie}"}
        )
        # Nothing is asked of the daemon from here on: the close comes from the session's expiry itself.
        events, _ = await asyncio.wait_for(until_closed(ws), 15)
        assert events[-1] == {"type": "closing", "reason": f"your sign-in ended: {reason}", "code": 4005}
        await eventually(lambda: bool(audit_lines(tmp_path, "session_ended")), "session_ended audited")
        (ended,) = audit_lines(tmp_path, "session_ended")
        assert ended["reason"] == reason and ended["websockets"] == 1
        async with http.get(f"{base}/api/v1/ports", headers={"Cookie": f"{COOKIE}={cookie}"}) as resp:
            assert resp.status == 401


async def test_origin_refusals_are_audited_at_a_limited_rate_with_the_count(tmp_path: Path) -> None:
    hammered = 60
    async with daemon_for(tmp_path) as (_daemon, _guest, base), aiohttp.ClientSession() as http:
        for _ in range(hammered):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(
                    f"{base}/api/v1/ports/vm1/ws", headers={"Origin": "http://evil.example"}
                )
            assert refused.value.status == 403

        def total() -> int:
            lines = audit_lines(tmp_path, "origin_refused")
            return sum(line.get("suppressed", 1) for line in lines)

        # The count of the last interval is recorded when it ends, without another request.
        await eventually(lambda: total() == hammered, f"{hammered} refusals counted")
        lines = audit_lines(tmp_path, "origin_refused")
        summaries = [line for line in lines if "suppressed" in line]
        assert summaries and len(lines) < hammered // 2
        assert len(lines) - len(summaries) <= BURST_BAD_REQUEST * len(summaries) + BURST_BAD_REQUEST
        last = summaries[-1]
        assert last["origin"] == "http://evil.example" and last["upgrade"] is True
        assert last["source"].startswith("127.0.0.1:") and last["interval_s"] == 1.0
        assert f"{last['suppressed']} more refused within 1 s" in last["reason"]
