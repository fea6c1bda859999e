"""Guest-health alerts through the real path: a PTY guest prints a panic and an oops (split across writes,
escape sequences inside its keyword); the daemon raises exactly one event per line, tells an attached telnet
session and a WebSocket, writes the audit line, and POSTs the webhook to a real aiohttp server started here.
A slow (30 s) or dead webhook receiver does not delay console output: a marker the guest prints right after
the panic reaches a telnet client promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from .support import GuestPty, TcpClient, eventually, running_daemon
from .test_http import WsClient, base_url

pytestmark = pytest.mark.asyncio

PANIC = b"[   42.000001] Kernel panic - not syncing: sysrq triggered crash"
END = b"[   42.000900] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---"
OOPS_WRITES = [b"\x1b[1;31m[   41.5] Oo", b"p", b"\x1b[0m", b"s: 0002 [#1] PREEMPT SMP NOPTI\r", b"\n"]
OOPS_LINE = "[   41.5] Oops: 0002 [#1] PREEMPT SMP NOPTI"


class Receiver:
    """A webhook receiver: records each POST's JSON; ``delay`` holds the answer (a slow receiver)."""

    def __init__(self, hold: bool = False) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.hold = hold
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.arrived.set()
        if self.hold:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 30.0)  # "sleeps 30 s" unless the test ends first
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def receiving(hold: bool = False) -> AsyncIterator[Receiver]:
    receiver = Receiver(hold)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/hook"
    try:
        yield receiver
    finally:
        receiver.release.set()
        await runner.cleanup()


def _config(guest: GuestPty, webhook_url: str, audit: Path | None = None, timeout_s: float = 5.0) -> str:
    audit_table = f'[audit]\nfile = "{audit}"\n' if audit is not None else ""
    return f"""
[daemon]
log_level = "warning"

{audit_table}
[alerts]
webhook_url = "{webhook_url}"
webhook_timeout_s = {timeout_s}

[http]
listen = "127.0.0.1:0"

[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
"""


async def _telnet(daemon: Any) -> TcpClient:
    bound = daemon.listener("vm1", "telnet")
    client = await TcpClient.connect(bound.host, bound.tcp_port)
    await client.expect(b"vm1")  # the attach banner: the session is attached
    return client


async def test_panic_and_split_oops_raise_one_event_each(tmp_path: Path) -> None:
    guest = GuestPty()
    audit = tmp_path / "audit.jsonl"
    async with (
        receiving() as receiver,
        running_daemon(_config(guest, receiver.url, audit), online=["vm1"], cleanup=guest.close) as daemon,
    ):
        hub = daemon.hubs["vm1"]
        telnet = await _telnet(daemon)
        async with aiohttp.ClientSession() as http:
            ws = WsClient(await http.ws_connect(f"{base_url(daemon)}/api/v1/ports/vm1/ws?mode=ro"))
            await ws.wait_kind("attached")
            start = hub.ring.end
            guest.write(b"booting...\r\n")
            written = start + len(b"booting...\r\n")
            for part in OOPS_WRITES:
                guest.write(part)
                written += len(part)
                # Each piece is in the ring before the next is written: separate reads on the daemon's side.
                await eventually(lambda end=written: hub.ring.end == end, "guest bytes")  # type: ignore[misc]
            oops_offset = start + len(b"booting...\r\n")
            panic_offset = oops_offset + len(b"".join(OOPS_WRITES))
            guest.write(PANIC + b"\r\n" + END + b"\r\nafter\r\n")
            await telnet.expect(b"after")
            await eventually(lambda: len(receiver.bodies) >= 2, "two webhook deliveries")
            notice = await ws.wait_kind("guest_health")
            await ws.wait_for(
                lambda: sum(e.get("kind") == "guest_health" for e in ws.events) >= 2, "two notices"
            )
            await telnet.expect(b"guest health: panic")
            await asyncio.sleep(0.3)  # nothing more arrives (the end-of-panic line is not a second one)

            assert hub.health_counts == {"oops": 1, "panic": 1}
            assert [(b["kind"], b["line"], b["offset"], b["console"]) for b in receiver.bodies] == [
                ("oops", OOPS_LINE, oops_offset, "vm1"),
                ("panic", PANIC.decode(), panic_offset, "vm1"),
            ]
            assert all(b["time"].endswith("Z") for b in receiver.bodies)
            health = [e for e in ws.events if e.get("kind") == "guest_health"]
            assert [(e["health_kind"], e["line"], e["offset"]) for e in health] == [
                ("oops", OOPS_LINE, oops_offset),
                ("panic", PANIC.decode(), panic_offset),
            ]
            assert notice["health_kind"] == "oops"
            assert telnet.buffer.count(b"guest health: panic") == 1
            assert telnet.buffer.count(b"guest health: oops") == 1
            await telnet.close()
        lines = [json.loads(line) for line in audit.read_text().splitlines()]
        events = [line for line in lines if line["event"] == "guest_health"]
        assert [(e["kind"], e["line"], e["offset"], e["port"]) for e in events] == [
            ("oops", OOPS_LINE, oops_offset, "vm1"),
            ("panic", PANIC.decode(), panic_offset, "vm1"),
        ]


def _dead_url() -> str:
    """A loopback port with nothing listening: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


@pytest.mark.parametrize("receiver_kind", ["slow", "dead"])
async def test_a_slow_or_dead_receiver_does_not_delay_the_console(receiver_kind: str) -> None:
    guest = GuestPty()
    async with contextlib.AsyncExitStack() as stack:
        if receiver_kind == "slow":
            receiver = await stack.enter_async_context(receiving(hold=True))
            url = receiver.url
        else:
            receiver, url = None, _dead_url()
        daemon = await stack.enter_async_context(
            running_daemon(_config(guest, url, timeout_s=60.0), online=["vm1"], cleanup=guest.close)
        )
        telnet = await _telnet(daemon)
        hub = daemon.hubs["vm1"]
        for round_ in range(3):  # a second and third panic queue behind the stuck first delivery
            began = time.monotonic()
            guest.write(PANIC + b"\r\n" + f"marker-{round_}\r\n".encode())
            await telnet.expect(f"marker-{round_}".encode(), timeout_s=5.0)
            assert time.monotonic() - began < 2.0, "console output waited for the webhook"
        if receiver is not None:
            await asyncio.wait_for(receiver.arrived.wait(), 5.0)
            assert len(receiver.bodies) == 1  # the first is still being answered; the others wait
        assert hub.health_counts == {"panic": 3}
        sender = daemon._webhook
        assert sender is not None and sender.delivered == 0
        await telnet.close()
        stop_began = time.monotonic()
    assert time.monotonic() - stop_began < 10.0  # stopping does not wait for the receiver either
