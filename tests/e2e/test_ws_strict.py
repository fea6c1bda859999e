"""WebSocket strictness through a real daemon with a PTY guest, over raw sockets where a real client would
never send what is tested: handshakes RFC 6455 refuses, an unmasked client frame (§5.1), close codes that
must never be on the wire (§7.4, Autobahn 7.9.x), and the message size limit at exactly its value."""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from serialmuxd.daemon import Daemon

from .support import GuestPty, TcpClient, running_daemon

pytestmark = pytest.mark.asyncio

LIMIT = 4096  # http.ws_max_message_bytes below
WS_PATH = "/api/v1/ports/vm1/ws?mode=rw"


def _toml(guest: GuestPty, state_dir: Path) -> str:
    return f"""
[daemon]
log_level = "warning"
state_dir = "{state_dir}"

[http]
listen = "127.0.0.1:0"
ws_max_message_bytes = {LIMIT}

[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
raw = true
replay_bytes = 0
"""


class Env:
    def __init__(self, daemon: Daemon, guest: GuestPty, http: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.guest = guest
        self.http = http
        assert daemon.http_address is not None
        self.port = daemon.http_address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    async def sessions(self) -> int:
        async with self.http.get(self.base + "/api/v1/ports/vm1") as resp:
            count: int = (await resp.json())["sessions"]
            return count


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    guest = GuestPty()
    async with (
        running_daemon(_toml(guest, tmp_path / "state"), online=("vm1",), cleanup=guest.close) as daemon,
        aiohttp.ClientSession() as http,
    ):
        yield Env(daemon, guest, http)


# -- a raw WebSocket client ------------------------------------------------------------------------------
def frame(payload: bytes, opcode: int = 2, *, masked: bool = True, fin: bool = True) -> bytes:
    """A client frame laid out as RFC 6455 §5.2 says (masked unless told otherwise)."""
    head = bytes(((0x80 if fin else 0) | opcode,))
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes((mask_bit | n,))
    elif n < 65536:
        head += bytes((mask_bit | 126,)) + struct.pack("!H", n)
    else:
        head += bytes((mask_bit | 127,)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int | None) -> bytes:
    return b"" if code is None else struct.pack("!H", code)


def handshake(port: int, *, version: str | None = "13", extra: Sequence[str] = ()) -> bytes:
    lines = [
        f"GET {WS_PATH} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(),
    ]
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


class RawWs:
    """A WebSocket client on a raw socket: sends exactly the bytes it is given, parses the server's frames."""

    def __init__(
        self, client: TcpClient, status: int, headers: dict[str, str], body: bytes, pos: int
    ) -> None:
        self.client = client
        self.status = status
        self.headers = headers
        self.body = body
        self._pos = pos  # where the server's next frame starts in client.buffer

    @classmethod
    async def open(cls, port: int, request: bytes) -> RawWs:
        client = await TcpClient.connect("127.0.0.1", port)
        await client.send(request)
        end = (await client.expect(b"\r\n\r\n")).end()
        head = bytes(client.buffer[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {}
        for line in head[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if status != 101:
            length = int(headers.get("content-length", "0"))
            await client.wait_bytes(end + length)
            body = bytes(client.buffer[end : end + length])
        return cls(client, status, headers, body, end)

    def json(self) -> Any:
        return json.loads(self.body)

    async def read_frame(self) -> tuple[int, bytes]:
        """The server's next frame: (opcode, payload)."""
        buf = self.client.buffer
        await self.client.wait_bytes(self._pos + 2)
        opcode, second = buf[self._pos] & 0x0F, buf[self._pos + 1]
        assert not second & 0x80, "server frames are never masked"
        length, start = second & 0x7F, self._pos + 2
        if length == 126:
            await self.client.wait_bytes(start + 2)
            length, start = struct.unpack("!H", buf[start : start + 2])[0], start + 2
        elif length == 127:
            await self.client.wait_bytes(start + 8)
            length, start = struct.unpack("!Q", buf[start : start + 8])[0], start + 8
        await self.client.wait_bytes(start + length)
        self._pos = start + length
        return opcode, bytes(buf[start : start + length])

    async def wait_event(self, kind: str) -> dict[str, Any]:
        while True:
            opcode, payload = await self.read_frame()
            if opcode == 1:
                event: dict[str, Any] = json.loads(payload)
                if event.get("kind", event["type"]) == kind:
                    return event

    async def close_code(self) -> int:
        """Skip to the server's close frame and return its code."""
        while True:
            opcode, payload = await self.read_frame()
            if opcode == 8:
                assert len(payload) >= 2
                code: int = struct.unpack("!H", payload[:2])[0]
                return code

    async def send(self, data: bytes) -> None:
        await self.client.send(data)


async def _attached(env: Env) -> RawWs:
    ws = await RawWs.open(env.port, handshake(env.port))
    assert ws.status == 101, ws.body
    await ws.wait_event("hello")
    return ws


# -- handshake ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["8", "7", None])
async def test_a_version_other_than_13_is_426_naming_13(env: Env, version: str | None) -> None:
    ws = await RawWs.open(env.port, handshake(env.port, version=version))
    try:
        assert ws.status == 426
        assert ws.headers["sec-websocket-version"] == "13"
        assert ws.headers["content-type"].startswith("application/json")
        assert ws.headers["x-frame-options"] == "DENY" and "content-security-policy" in ws.headers
        body = ws.json()
        assert body["code"] == "upgrade_required" and "13" in body["message"]
        assert await env.sessions() == 0
    finally:
        await ws.client.close()


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["Upgrade: websocket"], "more than one Upgrade header"),
        (["Upgrade: h2c"], "more than one Upgrade header"),
        (
            ["Sec-WebSocket-Key: " + base64.b64encode(b"k" * 16).decode()],
            "more than one Sec-WebSocket-Key header",
        ),
        (["Sec-WebSocket-Version: 13"], "more than one Sec-WebSocket-Version header"),
    ],
)
async def test_duplicated_handshake_headers_are_400(env: Env, extra: list[str], reason: str) -> None:
    ws = await RawWs.open(env.port, handshake(env.port, extra=extra))
    try:
        assert ws.status == 400
        assert ws.json() == {"code": "bad_request", "message": reason}
        assert ws.headers["x-content-type-options"] == "nosniff"
        assert await env.sessions() == 0
    finally:
        await ws.client.close()


async def test_a_correct_handshake_still_attaches(env: Env) -> None:
    ws = await _attached(env)
    try:
        assert ws.headers["upgrade"].lower() == "websocket"
        assert await env.sessions() == 1
        await ws.send(frame(b"typed"))
        await env.guest.expect(b"typed")
    finally:
        await ws.client.close()


# -- masking -------------------------------------------------------------------------------------------------
async def test_an_unmasked_frame_closes_with_1002_and_its_bytes_never_reach_the_guest(env: Env) -> None:
    ws = await _attached(env)
    try:
        # A masked frame, then an unmasked one and another masked one, all in one write.
        await ws.send(frame(b"GOOD-1") + frame(b"EVIL-2", masked=False) + frame(b"EVIL-3"))
        assert await ws.close_code() == 1002
        await ws.client.wait_eof()
        await env.guest.expect(b"GOOD-1")
    finally:
        await ws.client.close()
    # A well-behaved client after it: its bytes arrive, so the unmasked ones (sent earlier, on the same
    # path to the device) would have arrived before them if they had been passed on.
    async with env.http.ws_connect(env.base + WS_PATH) as good:
        await good.send_bytes(b"MARK")
        await env.guest.expect(b"MARK")
    assert b"EVIL" not in env.guest.buffer


async def test_an_unmasked_ping_closes_with_1002(env: Env) -> None:
    ws = await _attached(env)
    try:
        await ws.send(frame(b"are you there", opcode=9, masked=False))
        assert await ws.close_code() == 1002
        await ws.client.wait_eof()
    finally:
        await ws.client.close()


# -- close codes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        (None, 1000),
        (1000, 1000),
        (1001, 1000),
        (3000, 1000),
        (4999, 1000),
        (1006, 1002),  # Autobahn 7.9.5
        (1005, 1002),
        (1015, 1002),
        (5000, 1002),
        (999, 1002),
        (1004, 1002),
    ],
)
async def test_close_frames_are_answered_1000_or_1002_for_codes_never_sent(
    env: Env, sent: int | None, answer: int
) -> None:
    ws = await _attached(env)
    try:
        await ws.send(frame(close_payload(sent), opcode=8))
        assert await ws.close_code() == answer
        await ws.client.wait_eof()
    finally:
        await ws.client.close()


# -- message size ------------------------------------------------------------------------------------------
async def _closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the server closes; its close code."""
    while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
        pass
    return ws.close_code


async def _still_open(ws: aiohttp.ClientWebSocketResponse) -> None:
    """A ping answered with a pong: the server read everything before it and kept the session."""
    await ws.send_str(json.dumps({"type": "ping"}))
    while True:
        msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
        if msg.type is aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "pong":
            return


async def test_a_message_of_exactly_the_limit_is_accepted_and_one_byte_more_closes_1009(env: Env) -> None:
    async with env.http.ws_connect(env.base + WS_PATH) as ws:
        await ws.send_bytes(b"a" * LIMIT)
        await _still_open(ws)
        await env.guest.wait_bytes(LIMIT)
        assert bytes(env.guest.buffer) == b"a" * LIMIT
        await ws.send_bytes(b"b" * (LIMIT + 1))
        assert await _closed_with(ws) == 1009
    async with env.http.ws_connect(env.base + WS_PATH) as ws:
        await ws.send_str("x" * (LIMIT + 1))
        assert await _closed_with(ws) == 1009
    async with env.http.ws_connect(env.base + WS_PATH) as ws:
        await _still_open(ws)  # the daemon serves on; nothing of the refused messages reached the guest
    assert bytes(env.guest.buffer) == b"a" * LIMIT


@pytest.mark.parametrize(("size", "closed"), [(LIMIT, None), (LIMIT + 1, 1009)])
async def test_a_fragmented_message_is_limited_as_a_whole(env: Env, size: int, closed: int | None) -> None:
    ws = await _attached(env)
    try:
        half = size // 2
        await ws.send(frame(b"f" * half, fin=False) + frame(b"f" * (size - half), opcode=0))
        if closed is None:
            await env.guest.wait_bytes(size)
            assert bytes(env.guest.buffer) == b"f" * size
        else:
            assert await ws.close_code() == closed
            await ws.client.wait_eof()
            assert b"f" not in env.guest.buffer
    finally:
        await ws.client.close()
