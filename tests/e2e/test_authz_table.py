"""Every HTTP route, every WebSocket control message and every escape command, for every kind of caller:
allowed, or the documented refusal (401 without credentials, 404 for a console one may not view, 403 for a
verb one lacks).  The route table is read from the running app, so a new endpoint fails this test until it
is classified below."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from serialmuxd.auth.tokens import new_token, token_digest
from serialmuxd.core.access import Verb
from serialmuxd.daemon import Daemon
from serialmuxd.frontends.http import build_app

from .support import TcpClient, running_daemon

pytestmark = pytest.mark.asyncio

OPEN = "open"  # no credentials needed
SIGNED_IN = "signed in"  # any authenticated caller
HOST_VIEW = "view on *"  # the policy's view on the host scope "*" (every console and the host)
# (method, route) -> what it needs on the console in the URL (vm1 in the requests below)
ROUTES: dict[tuple[str, str], str | Verb] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/api/v1/openapi.json"): OPEN,
    ("GET", "/api/v1/ports"): SIGNED_IN,
    ("GET", "/api/v1/console"): SIGNED_IN,
    ("POST", "/api/v1/console"): Verb.ADMIN,  # host-wide: needs a grant on "*"
    ("GET", "/api/v1/ports/{name}"): Verb.VIEW,
    ("GET", "/api/v1/ports/{name}/scrollback"): Verb.VIEW,
    ("GET", "/api/v1/ports/{name}/recording"): Verb.VIEW,
    ("GET", "/api/v1/ports/{name}/state"): Verb.VIEW,
    ("GET", "/api/v1/ports/{name}/ws"): Verb.VIEW,
    ("POST", "/api/v1/ports/{name}/break"): Verb.BREAK,
    ("POST", "/api/v1/ports/{name}/sysrq"): Verb.BREAK,
    ("POST", "/api/v1/ports/{name}/keys"): Verb.BREAK,
    ("POST", "/api/v1/ports/{name}/nmi"): Verb.NMI,
    ("POST", "/api/v1/ports/{name}/reset"): Verb.RESET,
    ("POST", "/api/v1/ports/{name}/restart"): Verb.RESET,
    ("POST", "/api/v1/ports/{name}/start"): Verb.RESET,
    ("POST", "/api/v1/ports/{name}/enable"): Verb.ADMIN,
    ("POST", "/api/v1/ports/{name}/disable"): Verb.ADMIN,
    ("GET", "/"): SIGNED_IN,
    ("GET", "/console/{name}"): Verb.VIEW,
    ("GET", "/signin"): OPEN,
    ("POST", "/api/v1/session"): OPEN,  # the sign-in itself (a POST without a body is 400)
    ("GET", "/api/v1/session"): SIGNED_IN,
    ("DELETE", "/api/v1/session"): SIGNED_IN,  # 400 for bearer callers: no cookie session to end
    ("POST", "/api/v1/ports/{name}/ticket"): Verb.VIEW,
    # The OIDC sign-in (oidc_signin.py): how one gets credentials; 409 here, where no client_id is set.
    ("GET", "/api/v1/signin"): OPEN,
    ("GET", "/signin/oidc"): OPEN,
    ("GET", "/signin/oidc/callback"): OPEN,
    ("GET", "/metrics"): HOST_VIEW,
}
BODIES = {
    "/api/v1/console": {"enabled": True},
    "/api/v1/ports/{name}/sysrq": {"key": "s"},
    "/api/v1/ports/{name}/keys": {"keys": ["F1"]},
    "/api/v1/ports/{name}/disable": {"reason": "table test"},
}
# Who calls, and what each may do on vm1 (a console of group "web"); None = no credentials.
CALLERS: dict[str, set[Verb] | None] = {
    "anonymous": None,
    "viewer": {Verb.VIEW},
    "operator": {Verb.VIEW, Verb.WRITE, Verb.TAKE_OVER, Verb.BREAK, Verb.NMI, Verb.RESET},
    "admin": set(Verb),
    "other-console": set(),  # operator on vm2 only
    "by-group": {Verb.VIEW, Verb.WRITE, Verb.TAKE_OVER, Verb.BREAK, Verb.NMI, Verb.RESET},
}
GRANTS = {
    "viewer": '[{ role = "viewer", ports = ["vm1"] }]',
    "operator": '[{ role = "operator", ports = ["vm*"] }, { role = "viewer", ports = ["vm2"] }]',
    "admin": '[{ role = "admin", ports = ["*"] }]',
    "other-console": '[{ role = "operator", ports = ["vm2"] }]',
    "by-group": '[{ role = "operator", ports = ["group:web"] }]',
}


@dataclass
class Env:
    daemon: Daemon
    base: str
    tokens: dict[str, str]


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    tokens = {name: new_token() for name in GRANTS}
    users = tmp_path / "users.toml"
    users.write_text(
        "".join(
            f'[[tokens]]\nname = "{name}"\nsha256 = "{token_digest(tokens[name])}"\ngrants = {GRANTS[name]}\n'
            for name in GRANTS
        )
    )
    users.chmod(0o600)
    config = f"""
[daemon]
log_level = "warning"
[auth]
users_file = "{users}"
[http]
listen = "127.0.0.1:0"
[[ports]]
name = "vm1"
group = "web"
device = "exec:/bin/cat"
telnet = "127.0.0.1:0"
[[ports]]
name = "vm2"
device = "exec:/bin/cat"
"""
    async with running_daemon(config, online=("vm1", "vm2")) as daemon:
        assert daemon.http_address is not None
        host, port = daemon.http_address
        yield Env(daemon, f"http://{host}:{port}", tokens)


def _headers(env: Env, caller: str) -> dict[str, str]:
    return {} if CALLERS[caller] is None else {"Authorization": f"Bearer {env.tokens[caller]}"}


def _expected(caller: str, route: str, need: str | Verb) -> str:
    verbs = CALLERS[caller]
    if need == OPEN:
        return "allowed"
    if verbs is None:
        return "401"
    if need == SIGNED_IN:
        return "allowed"
    if need == HOST_VIEW:  # only the admin's grant names "*"; a viewer of vm1 or of vm* does not cover it
        return "allowed" if caller == "admin" else "403"
    assert isinstance(need, Verb)
    if "{name}" not in route:  # host-wide: no console to hide
        return "allowed" if need in verbs else "403"
    if need is Verb.ADMIN and caller != "admin":
        # Enable/disable and the host switch: only an admin grant covers them; vm1 is visible to most.
        return "404" if Verb.VIEW not in verbs else "403"
    if Verb.VIEW not in verbs:
        return "404"  # may not even know the console exists
    return "allowed" if need in verbs else "403"


def _outcome(status: int) -> str:
    return str(status) if status in (401, 403, 404) else "allowed"


async def test_every_route_is_classified(env: Env) -> None:
    app = build_app(env.daemon, env.daemon.config.http)
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = str(info.get("formatter") or info.get("path") or info.get("prefix"))
        if route.method == "HEAD" or path.startswith("/static"):
            continue  # HEAD mirrors GET; static files are open by design
        served.add((route.method, path))
    assert served == set(ROUTES), f"classify these routes: {served ^ set(ROUTES)}"


@pytest.mark.parametrize("caller", list(CALLERS))
async def test_every_route_for_every_caller(env: Env, caller: str) -> None:
    results: dict[str, tuple[str, str]] = {}
    async with aiohttp.ClientSession() as http:
        for (method, route), need in ROUTES.items():
            if route.endswith("/ws"):
                continue  # the upgrade is tested below
            path = route.replace("{name}", "vm1")
            body = BODIES.get(route)
            async with http.request(
                method,
                env.base + path,
                headers=_headers(env, caller),
                json=body if method == "POST" else None,
            ) as resp:
                got = _outcome(resp.status)
                if got != "allowed":
                    payload = await resp.json()
                    assert payload["code"] in ("unauthorized", "forbidden", "unknown_port")
                results[f"{method} {route}"] = (got, _expected(caller, route, need))
    wrong = {route: pair for route, pair in results.items() if pair[0] != pair[1]}
    assert not wrong, f"{caller}: (got, expected) {wrong}"


@pytest.mark.parametrize("caller", list(CALLERS))
async def test_websocket_control_messages_for_every_caller(env: Env, caller: str) -> None:
    verbs = CALLERS[caller]
    url = env.base.replace("http://", "ws://") + "/api/v1/ports/vm1/ws?mode=rw"
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, headers=_headers(env, caller))
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == (401 if verbs is None else 404)
            assert verbs is None or Verb.VIEW not in verbs
            return
        assert verbs is not None and Verb.VIEW in verbs
        events: list[dict[str, object]] = []

        async def until(kind: str, text: str = "") -> dict[str, object]:
            while True:
                for event in events:
                    if event.get("kind") == kind and text in str(event.get("text", "")):
                        events.remove(event)
                        return event
                msg = await asyncio.wait_for(ws.receive(), 10)
                assert msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY, msg
                if msg.type is aiohttp.WSMsgType.TEXT:
                    events.append(json.loads(msg.data))

        writes = Verb.WRITE in verbs
        await until("write_granted" if writes else "refused")
        for message, verb, refusal in (
            ({"type": "break"}, Verb.BREAK, "may not send BREAK"),
            ({"type": "take_over"}, Verb.WRITE, "may not type"),
        ):
            await ws.send_json(message)
            if verb in verbs:
                if message["type"] == "break":
                    await until("info", "BREAK")  # allowed: the device answers (a PTY cannot BREAK)
                else:
                    await until("info", "already have write access")
            else:
                await until("refused", refusal)
        await ws.send_bytes(b"typed\r")
        await ws.send_json({"type": "who"})
        await until("info", "writer:")  # a later signal: the typing was handled before it
        if not writes:
            await until("read_only")
        await ws.close()


@pytest.mark.parametrize("caller", ["viewer", "operator"])
async def test_escape_commands_for_every_caller(env: Env, caller: str) -> None:
    """Telnet with a token login: the viewer's escape commands are refused by the hub, the operator's run."""
    client = await TcpClient.connect("127.0.0.1", env.daemon.listener("vm1", "telnet").tcp_port)
    try:
        await client.expect(b"login: ")
        await client.send(b"token\r\n")
        await client.expect(b"Password: ")
        await client.send(env.tokens[caller].encode() + b"\r\n")
        if caller == "viewer":
            await client.expect(b"viewer may not type into this console on vm1")
            for command, refusal in ((b"f", b"may not type"), (b"b", b"may not send BREAK"), (b"n", b"nmi")):
                mark = len(client.buffer)
                await client.send(b"\x05c" + command)
                await client.expect(refusal, start=mark)
        else:
            await client.expect(b"you have write access")
            mark = len(client.buffer)
            await client.send(b"\x05cb")
            await client.expect(b"BREAK", start=mark)
    finally:
        await client.close()
