"""HTTP API and WebSocket through real sockets: the daemon in-process, aiohttp's real client, real PTYs as
guests, and a telnet-side client for the cross-transport takeover."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from serialmuxd.config import parse_config
from serialmuxd.daemon import Daemon
from serialmuxd.hub import PortState

from .support import GuestPty, PtyChild, TcpClient, eventually, running_daemon

pytestmark = pytest.mark.asyncio


def _toml(guest: GuestPty, extra: str = "", state_dir: Path | None = None) -> str:
    daemon = f'state_dir = "{state_dir}"\n' if state_dir else ""
    return f"""
[daemon]
log_level = "warning"
{daemon}
[http]
listen = "127.0.0.1:0"
ws_max_message_bytes = 4096
max_body_bytes = 2048

[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
raw = true
replay_bytes = 0
{extra}
"""


def base_url(daemon: Daemon) -> str:
    assert daemon.http_address is not None
    host, port = daemon.http_address
    return f"http://{host}:{port}"


class Env:
    def __init__(self, daemon: Daemon, guest: GuestPty, http: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.guest = guest
        self.http = http
        self.base = base_url(daemon)

    def url(self, path: str) -> str:
        return self.base + path

    async def get_json(self, path: str, status: int = 200) -> Any:
        async with self.http.get(self.url(path)) as resp:
            assert resp.status == status, await resp.text()
            assert resp.content_type == "application/json"
            return await resp.json()

    async def post_json(self, path: str, body: Any = None, status: int = 200) -> Any:
        async with self.http.post(self.url(path), json=body) as resp:
            assert resp.status == status, await resp.text()
            return await resp.json()


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    guest = GuestPty()
    async with (
        running_daemon(
            _toml(guest, state_dir=tmp_path / "state"), online=("vm1",), cleanup=guest.close
        ) as daemon,
        aiohttp.ClientSession() as http,
    ):
        yield Env(daemon, guest, http)


class WsClient:
    """A WebSocket console client: collects console bytes and JSON events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.data = bytearray()
        self.events: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.data += msg.data
            elif msg.type is aiohttp.WSMsgType.TEXT:
                self.events.append(json.loads(msg.data))
            self._changed.set()
        self.closed.set()
        self._changed.set()

    async def wait_for(self, predicate: Any, what: str, timeout_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"timeout waiting for {what}; events={self.events[-5:]} data={self.data[-200:]!r}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def kinds(self) -> list[str]:
        return [e.get("kind", e["type"]) for e in self.events]

    async def wait_kind(self, kind: str) -> dict[str, Any]:
        await self.wait_for(lambda: kind in self.kinds(), f"event {kind}")
        return next(e for e in self.events if e.get("kind", e["type"]) == kind)

    async def wait_closed(self) -> int | None:
        await asyncio.wait_for(self.closed.wait(), 10)
        return self.ws.close_code


async def ws_connect(env: Env, query: str = "mode=rw") -> WsClient:
    ws = await env.http.ws_connect(env.url(f"/api/v1/ports/vm1/ws?{query}"))
    return WsClient(ws)


async def test_ports_api_shape_and_unknown_names(env: Env) -> None:
    listing = await env.get_json("/api/v1/ports")
    assert [p["name"] for p in listing["ports"]] == ["vm1"]
    port = await env.get_json("/api/v1/ports/vm1")
    assert port["state"] == "online" and port["writer"] is None and port["viewers"] == 0
    assert port["scrollback"]["end"] >= port["scrollback"]["start"]
    for bad in ("nope", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a%00b"):
        body = await env.get_json(f"/api/v1/ports/{bad}", status=404)
        assert body["code"] in ("unknown_port", "not_found")
    health = await env.get_json("/healthz")
    assert health["status"] == "ok" and health["states"] == {"online": 1}


async def test_security_headers_and_json_errors(env: Env) -> None:
    async with env.http.get(env.url("/api/v1/ports")) as resp:
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY"
    async with env.http.delete(env.url("/api/v1/ports/vm1")) as resp:
        assert resp.status == 405 and (await resp.json())["code"] == "method_not_allowed"
    async with env.http.get(env.url("/no/such/thing")) as resp:
        assert resp.status == 404 and (await resp.json())["code"] == "not_found"


async def test_scrollback_offsets_text_form_and_range_errors(env: Env) -> None:
    hub = env.daemon.hubs["vm1"]
    start = hub.ring.end
    sample = b"hello\x1b[31m red\r\n\x07bell\xff"
    await env.guest.send(sample)
    await eventually(lambda: hub.ring.end == start + len(sample), "guest bytes in the ring")
    async with env.http.get(env.url(f"/api/v1/ports/vm1/scrollback?from={start}&limit=5")) as resp:
        assert resp.status == 200
        assert await resp.read() == b"hello"
        assert int(resp.headers["X-Scrollback-Offset"]) == start
        assert int(resp.headers["X-Scrollback-Next"]) == start + 5
    async with env.http.get(env.url(f"/api/v1/ports/vm1/scrollback?from={start}&format=text")) as resp:
        text = await resp.text()
        assert text == "hello\\x1b[31m red\n\\x07bell\\xff"
    for query, code in (
        ("from=-1", 400),
        ("from=abc", 400),
        ("limit=0", 400),
        ("limit=99999999999", 400),
        (f"from={hub.ring.end + 1}", 400),
        ("format=html", 400),
    ):
        async with env.http.get(env.url(f"/api/v1/ports/vm1/scrollback?{query}")) as resp:
            assert resp.status == code, query


async def test_scrollback_416_names_oldest_offset(tmp_path: Path) -> None:
    guest = GuestPty()
    async with running_daemon(_toml(guest, "scrollback_bytes = 4096"), cleanup=guest.close) as daemon:
        hub = daemon.hubs["vm1"]
        await eventually(lambda: hub.state is PortState.ONLINE, "online")
        await guest.send(b"x" * 10000)
        await eventually(lambda: hub.ring.end == 10000, "ring filled")
        url = base_url(daemon) + "/api/v1/ports/vm1/scrollback?from=0"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 416
            body = await resp.json()
            assert body["code"] == "offset_unavailable" and body["start"] == 10000 - 4096
            assert str(10000 - 4096) in body["message"]


async def test_ws_attach_type_and_viewer_refused(env: Env) -> None:
    writer = await ws_connect(env)
    viewer = await ws_connect(env, "mode=ro")
    hello = await writer.wait_kind("hello")
    assert hello["port"] == "vm1"
    await writer.wait_kind("write_granted")
    await viewer.wait_kind("read_only")
    await viewer.ws.send_bytes(b"VIEWER\r")
    await writer.ws.send_bytes(b"WRITER\r")
    await env.guest.expect(b"WRITER\r")
    await env.guest.send(b"echo from guest\r\n")
    await writer.wait_for(lambda: b"echo from guest" in writer.data, "guest output (writer)")
    await viewer.wait_for(lambda: b"echo from guest" in viewer.data, "guest output (viewer)")
    assert b"VIEWER" not in env.guest.buffer
    await writer.ws.close()
    await viewer.ws.close()


async def test_ws_takes_over_from_telnet_and_telnet_takes_back(env: Env) -> None:
    port = env.daemon.listener("vm1", "raw").tcp_port
    tcp = await TcpClient.connect("127.0.0.1", port)
    await tcp.expect(b"you have write access")
    ws = await ws_connect(env)
    took = await ws.wait_kind("took_over")
    assert re.match(r"raw 127\.0\.0\.1:\d+", took["displaced"])
    await tcp.expect(re.compile(rb"taken over by ws 127\.0\.0\.1:\d+"))
    await tcp.expect(b"not logged out")
    await tcp.wait_eof()
    # ...and back: a new telnet-side writer evicts the WebSocket, which gets close code 4000.
    tcp2 = await TcpClient.connect("127.0.0.1", port)
    evicted = await ws.wait_kind("evicted")
    assert "raw 127.0.0.1" in evicted["by"]
    assert await ws.wait_closed() == 4000
    await tcp2.expect(b"you took over write access from ws 127.0.0.1")
    await tcp.close()
    await tcp2.close()


async def test_ws_reconnect_with_from_loses_nothing(env: Env) -> None:
    hub = env.daemon.hubs["vm1"]
    first = await ws_connect(env, "mode=ro")
    hello = await first.wait_kind("hello")
    offset = hello["offset"]
    await first.wait_kind("read_only")
    await env.guest.send(b"part one|")
    await first.wait_for(lambda: b"part one|" in first.data, "part one")
    offset += len(first.data)
    await first.ws.close()
    await eventually(lambda: not hub.sessions, "first session gone")
    await env.guest.send(b"written while away|")
    await eventually(lambda: hub.ring.end == offset + len(b"written while away|"), "bytes in ring")
    second = await ws_connect(env, f"mode=ro&from={offset}")
    await second.wait_for(lambda: b"written while away|" in second.data, "resumed bytes")
    await env.guest.send(b"live")
    await second.wait_for(lambda: second.data.endswith(b"live"), "live bytes")
    assert bytes(second.data) == b"written while away|live"
    assert "missed" not in second.kinds()
    await second.ws.close()


async def test_ws_resume_from_overwritten_offset_reports_missed(tmp_path: Path) -> None:
    guest = GuestPty()
    async with running_daemon(_toml(guest, "scrollback_bytes = 4096"), cleanup=guest.close) as daemon:
        hub = daemon.hubs["vm1"]
        await eventually(lambda: hub.state is PortState.ONLINE, "online")
        await guest.send(bytes(range(256)) * 40)  # 10240 bytes
        await eventually(lambda: hub.ring.end == 10240, "ring filled")
        url = base_url(daemon) + "/api/v1/ports/vm1/ws?mode=ro&from=100"
        async with aiohttp.ClientSession() as http:
            client = WsClient(await http.ws_connect(url))
            missed = await client.wait_kind("missed")
            assert missed["missed"] == 10240 - 4096 - 100 and missed["offset"] == 10240 - 4096
            await client.wait_for(lambda: len(client.data) == 4096, "rest of ring")
            assert bytes(client.data) == (bytes(range(256)) * 40)[-4096:]
            await client.ws.close()


async def test_ws_bad_input_closes_only_that_session(env: Env) -> None:
    good = await ws_connect(env, "mode=ro")
    await good.wait_kind("read_only")
    big = await ws_connect(env)
    await big.wait_kind("write_granted")
    await big.ws.send_bytes(b"x" * 10000)  # over ws_max_message_bytes = 4096
    assert await big.wait_closed() == 1009
    bad_json = await ws_connect(env)
    await bad_json.wait_kind("write_granted")
    await bad_json.ws.send_str("{not json")
    assert await bad_json.wait_closed() == 4002
    unknown = await ws_connect(env)
    await unknown.ws.send_str(json.dumps({"type": "format_disk"}))
    assert await unknown.wait_closed() == 4002
    assert b"x" not in env.guest.buffer
    await env.guest.send(b"still here")
    await good.wait_for(lambda: b"still here" in good.data, "other session unaffected")
    await good.ws.close()


async def test_ws_rejects_bad_query_before_upgrade(env: Env) -> None:
    for query, status in (("mode=admin", 400), ("from=-5", 400), ("from=999999999999999", 400)):
        async with env.http.get(env.url(f"/api/v1/ports/vm1/ws?{query}")) as resp:
            assert resp.status == status, query
    async with env.http.get(env.url("/api/v1/ports/ghost/ws")) as resp:
        assert resp.status == 404


async def test_ws_control_messages_resize_and_keys(env: Env) -> None:
    ws = await ws_connect(env)
    await ws.wait_kind("write_granted")
    await ws.ws.send_str(json.dumps({"type": "key", "key": "F8"}))
    await env.guest.expect(b"\x1b[19~")  # xterm profile
    await ws.ws.send_str(json.dumps({"type": "resize", "cols": 132, "rows": 43}))
    await ws.ws.send_str(json.dumps({"type": "who"}))
    info = await ws.wait_kind("info")
    assert info["writer"].startswith("ws 127.0.0.1")
    await ws.ws.close()


async def test_post_keys_profile_content_type_and_size_limits(env: Env, tmp_path: Path) -> None:
    body = await env.post_json("/api/v1/ports/vm1/keys", {"keys": ["F8", "Enter"]})
    assert body["bytes"] == len(b"\x1b[19~\r")
    await env.guest.expect(b"\x1b[19~\r")
    bad = await env.post_json("/api/v1/ports/vm1/keys", {"keys": ["F99"]}, status=400)
    assert bad["code"] == "bad_request" and "F99" in bad["message"]
    async with env.http.post(
        env.url("/api/v1/ports/vm1/keys"), data="keys=F8", headers={"Content-Type": "text/plain"}
    ) as resp:
        assert resp.status == 415 and (await resp.json())["code"] == "unsupported_media_type"
    async with env.http.post(
        env.url("/api/v1/ports/vm1/keys"),
        data=b"{" + b" " * 5000 + b"}",
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413 and (await resp.json())["code"] == "payload_too_large"
    async with env.http.post(
        env.url("/api/v1/ports/vm1/keys"),
        data=b"[" * 100 + b"]" * 100,
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400
    # While someone holds the writer lease, the API does not type into their session.
    ws = await ws_connect(env)
    await ws.wait_kind("write_granted")
    busy = await env.post_json("/api/v1/ports/vm1/keys", {"keys": ["F1"]}, status=409)
    assert busy["code"] == "console_in_use" and busy["writer"].startswith("ws ")
    await ws.ws.close()


async def test_vt100_plus_profile_sends_windows_f8(tmp_path: Path) -> None:
    guest = GuestPty()
    async with running_daemon(
        _toml(guest, 'key_profile = "vt100+"'), online=("vm1",), cleanup=guest.close
    ) as daemon:
        url = base_url(daemon) + "/api/v1/ports/vm1/keys"
        async with aiohttp.ClientSession() as http, http.post(url, json={"keys": ["F8"]}) as resp:
            assert resp.status == 200
        await guest.expect(b"\x1b8")


async def test_disable_closes_sessions_persists_and_enable_restores(tmp_path: Path) -> None:
    guest = GuestPty()
    state_dir = tmp_path / "state"
    async with running_daemon(_toml(guest, state_dir=state_dir), online=("vm1",)) as daemon:
        base = base_url(daemon)
        async with aiohttp.ClientSession() as http:
            ws = WsClient(await http.ws_connect(base + "/api/v1/ports/vm1/ws?mode=ro"))
            await ws.wait_kind("read_only")
            tcp = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw").tcp_port)
            await tcp.expect(b"attached")
            async with http.post(base + "/api/v1/ports/vm1/disable", json={"reason": "maintenance"}) as resp:
                assert resp.status == 200 and (await resp.json())["state"] == "disabled"
            assert await ws.wait_closed() == 4001
            await tcp.expect(b"disabled: maintenance")
            await tcp.wait_eof()
            await tcp.close()
            async with http.get(base + "/api/v1/ports/vm1/ws") as resp:
                assert resp.status == 503 and (await resp.json())["code"] == "console_disabled"
    # The switch survives a restart.
    async with running_daemon(_toml(guest, state_dir=state_dir), cleanup=guest.close) as daemon:
        hub = daemon.hubs["vm1"]
        assert hub.state is PortState.DISABLED and "maintenance" in hub.state_reason
        base = base_url(daemon)
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/api/v1/ports/vm1/enable") as resp:
                assert resp.status == 200
            await eventually(lambda: hub.state is PortState.ONLINE, "re-enabled port online")
            async with http.post(
                base + "/api/v1/console", json={"enabled": False, "reason": "audit"}
            ) as resp:
                assert (await resp.json()) == {"enabled": False, "reason": "audit"}
            assert hub.state is PortState.DISABLED
            async with http.get(base + "/api/v1/console") as resp:
                assert (await resp.json())["enabled"] is False
            async with http.post(base + "/api/v1/console", json={"enabled": "yes"}) as resp:
                assert resp.status == 400
            async with http.post(base + "/api/v1/console", json={"enabled": True}) as resp:
                assert resp.status == 200
            await eventually(lambda: hub.state is PortState.ONLINE, "globally re-enabled")


async def test_offsets_continue_across_restarts(tmp_path: Path) -> None:
    guest = GuestPty()
    state_dir = tmp_path / "state"
    async with running_daemon(_toml(guest, state_dir=state_dir), online=("vm1",)) as daemon:
        await guest.send(b"first run")
        await eventually(lambda: daemon.hubs["vm1"].ring.end == 9, "bytes")
    async with running_daemon(_toml(guest, state_dir=state_dir), cleanup=guest.close) as daemon:
        assert daemon.hubs["vm1"].ring.end == 9  # continues exactly after a clean stop


async def test_openapi_lists_exactly_the_served_routes(env: Env) -> None:
    doc = await env.get_json("/api/v1/openapi.json")
    from aiohttp import web

    from serialmuxd.frontends.http import build_app

    app = build_app(env.daemon, env.daemon.config.http)
    served = set()
    for resource in app.router.resources():
        info = resource.get_info()
        path = info.get("formatter") or info.get("path")
        if isinstance(resource, web.PlainResource | web.DynamicResource) and str(path).startswith(
            ("/api", "/healthz")
        ):
            served.add(str(path))
    assert served == set(doc["paths"])


async def test_cross_site_requests_and_foreign_hosts_are_refused(env: Env) -> None:
    evil = {"Origin": "http://evil.example"}
    async with env.http.post(env.url("/api/v1/ports/vm1/disable"), headers=evil) as resp:
        assert resp.status == 403 and (await resp.json())["code"] == "forbidden"
    assert env.daemon.hubs["vm1"].state is PortState.ONLINE
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await env.http.ws_connect(env.url("/api/v1/ports/vm1/ws"), headers=evil)
    assert refused.value.status == 403
    assert not env.daemon.hubs["vm1"].sessions
    # DNS rebinding: the right address under a foreign name.
    async with env.http.get(env.url("/api/v1/ports"), headers={"Host": "evil.example"}) as resp:
        assert resp.status == 421
    # The page's own origin, and tools that send no Origin, are served.
    same = {"Origin": env.base}
    async with env.http.post(env.url("/api/v1/ports/vm1/keys"), json={"keys": ["F1"]}, headers=same) as resp:
        assert resp.status == 200
    ws = await env.http.ws_connect(env.url("/api/v1/ports/vm1/ws?mode=ro"), headers=same)
    await ws.close()


async def test_ws_sysrq_without_break_support_types_nothing(env: Env) -> None:
    ws = await ws_connect(env)
    await ws.wait_kind("write_granted")
    await ws.ws.send_str(json.dumps({"type": "sysrq", "key": "b"}))
    info = await ws.wait_kind("info")
    assert "BREAK not sent" in info["text"]
    await ws.ws.send_bytes(b"MARK")
    await env.guest.expect(b"MARK")
    assert bytes(env.guest.buffer) == b"MARK"  # the SysRq key was not typed into the guest
    await ws.ws.close()


async def test_disable_reason_reaches_telnet_clients_escaped(env: Env) -> None:
    tcp = await TcpClient.connect("127.0.0.1", env.daemon.listener("vm1", "raw").tcp_port)
    await tcp.expect(b"attached")
    await env.post_json("/api/v1/ports/vm1/disable", {"reason": "maint\x1b]0;pwn\x07"})
    await tcp.expect(b"maint\\x1b]0;pwn\\x07")
    assert b"\x1b]0;pwn" not in tcp.buffer
    await tcp.wait_eof()
    await tcp.close()


async def test_ws_heartbeat_keeps_live_clients_and_drops_dead_ones(tmp_path: Path) -> None:
    guest = GuestPty()
    text = _toml(guest).replace(
        "ws_max_message_bytes = 4096", "ws_max_message_bytes = 4096\nws_heartbeat_s = 0.2"
    )
    async with running_daemon(text, cleanup=guest.close) as daemon:
        hub = daemon.hubs["vm1"]
        await eventually(lambda: hub.state is PortState.ONLINE, "online")
        url = base_url(daemon) + "/api/v1/ports/vm1/ws?mode=ro"
        async with aiohttp.ClientSession() as http:
            alive = WsClient(await http.ws_connect(url))  # answers pings (aiohttp's autoping)
            dead = WsClient(await http.ws_connect(url, autoping=False))  # a client that stopped answering
            await eventually(lambda: len(hub.sessions) == 2, "both attached")
            await asyncio.wait_for(dead.closed.wait(), 5)
            await eventually(lambda: len(hub.sessions) == 1, "dead client's session gone")
            assert not alive.closed.is_set()
            await guest.send(b"still streaming")
            await alive.wait_for(lambda: b"still streaming" in alive.data, "live client keeps its stream")
            await alive.ws.close()


@pytest.mark.skipif(shutil.which("telnet") is None, reason="Debian telnet client not installed (./dev setup)")
async def test_real_telnet_client_and_websocket_take_over_from_each_other() -> None:
    daemon = Daemon(
        parse_config(
            '[daemon]\nlog_level = "warning"\n[http]\nlisten = "127.0.0.1:0"\n'
            '[[ports]]\nname = "vm1"\ndevice = "exec:/bin/sh -i"\ntelnet = "127.0.0.1:0"\n',
            "<test>",
        )
    )
    await daemon.start()
    telnet = telnet2 = None
    try:
        hub = daemon.hubs["vm1"]
        await eventually(lambda: hub.state is PortState.ONLINE, "online")
        port = daemon.listener("vm1", "telnet").tcp_port
        telnet = PtyChild(["telnet", "127.0.0.1", str(port)])
        await telnet.expect(b"you have write access")
        async with aiohttp.ClientSession() as http:
            ws = WsClient(await http.ws_connect(base_url(daemon) + "/api/v1/ports/vm1/ws"))
            await ws.wait_kind("took_over")
            await telnet.expect(re.compile(rb"taken over by ws 127\.0\.0\.1:\d+"))
            await telnet.expect(b"Connection closed by foreign host")
            await ws.ws.send_bytes(b"echo ws-$((3*3))\r")
            await ws.wait_for(lambda: b"ws-9" in ws.data, "shell answer over the WebSocket")
            telnet2 = PtyChild(["telnet", "127.0.0.1", str(port)])
            evicted = await ws.wait_kind("evicted")
            assert evicted["by"].startswith("telnet 127.0.0.1:")
            assert await ws.wait_closed() == 4000
            await telnet2.expect(re.compile(rb"you took over write access from ws 127\.0\.0\.1:\d+"))
    finally:
        for child in (telnet, telnet2):
            if child is not None:
                child.close()
        await daemon.stop()


async def test_allowed_hosts_admit_a_proxy_origin_and_malformed_hosts_get_400(tmp_path: Path) -> None:
    guest = GuestPty()
    text = _toml(guest).replace(
        "max_body_bytes = 2048", 'max_body_bytes = 2048\nallowed_hosts = ["console.example"]'
    )
    async with running_daemon(text, online=("vm1",), cleanup=guest.close) as daemon:
        url = base_url(daemon) + "/api/v1/ports/vm1/keys"
        async with aiohttp.ClientSession() as http:
            # A TLS-terminating proxy: the page is https://console.example, the request reaching us is http.
            proxied = {"Origin": "https://console.example", "Host": "console.example"}
            async with http.post(url, json={"keys": ["F1"]}, headers=proxied) as resp:
                assert resp.status == 200, await resp.text()
            async with http.post(
                url, json={"keys": ["F1"]}, headers={"Origin": "https://evil.example"}
            ) as resp:
                assert resp.status == 403
            async with http.post(url, json={"keys": ["F1"]}, headers={"Host": "localhost:abc"}) as resp:
                assert resp.status == 400 and (await resp.json())["code"] == "bad_request"


async def test_ws_client_that_stops_reading_is_closed_not_crashed(env: Env) -> None:
    """Unsent events beyond the shared output budget close that one session (code 4003) instead of piling
    up — or recursing."""
    from serialmuxd.frontends.http import WsConnection

    hub = env.daemon.hubs["vm1"]
    ws = await ws_connect(env, "mode=ro")
    await ws.wait_kind("read_only")
    (session,) = hub.sessions.values()
    conn = session.sink
    assert isinstance(conn, WsConnection)
    limit = hub.config.client_buffer_bytes
    sent = 0
    while conn.close_code is None and sent < 10 * limit:  # synchronously: the writer task sends none
        conn.send_event({"type": "pong"})
        sent += 1
    # Closed once what was queued reached the limit plus four times the limit while paused.
    assert conn.close_code == 4003 and session.closed
    assert sent * len('{"type": "pong"}') <= 5 * limit + 100
    assert await ws.wait_closed() == 4003
