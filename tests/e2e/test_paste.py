"""A 256 KiB paste reaches the guest whole, at the configured ``input_rate_bytes_per_s``.

The model service cuts a paste at 2048 characters; serialmuxd paces it instead (``hub/device_input.py``: a
token bucket with a burst of min(rate / 10, 4096) bytes, the writer's reading paused while the queue is
full).  Through the real front ends (raw TCP and the WebSocket, whose client sends the paste in frames under
``http.ws_max_message_bytes``) into a real PTY: every byte arrives, in order, and never faster than the rate
allows at any moment the guest side saw data.  The timestamps are the test's own observations of the PTY
master, so the check is a bound on the daemon's pacing (never ahead of rate x elapsed + burst), not a
speed measurement.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from .support import GuestPty, TcpClient, running_daemon
from .test_http import WsClient, base_url

pytestmark = pytest.mark.asyncio

PASTE_BYTES = 256 * 1024
RATE = 128 * 1024  # bytes per second: the paste takes about two seconds
BURST = min(RATE // 10, 4096)
FRAME = 32 * 1024  # under ws_max_message_bytes (64 KiB), as the console page and serialmux send a paste


def _paste() -> bytes:
    # Printable text in lines, as a paste is; no byte the escape key or telnet would treat specially.
    rng = random.Random(256)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;=+-_/"
    lines = bytearray()
    while len(lines) < PASTE_BYTES:
        lines += bytes(rng.choice(alphabet) for _ in range(79)) + b"\n"
    return bytes(lines[:PASTE_BYTES])


def _config(guest: GuestPty) -> str:
    return f"""
[daemon]
log_level = "warning"

[http]
listen = "127.0.0.1:0"

[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
raw = true
replay_bytes = 0
input_rate_bytes_per_s = {RATE}
"""


class _Arrivals:
    """(loop time, bytes so far) each time the guest's side of the PTY received data."""

    def __init__(self, guest: GuestPty) -> None:
        self.samples: list[tuple[float, int]] = []
        loop = asyncio.get_running_loop()
        feed = guest.feed

        def recording(data: bytes) -> None:
            feed(data)
            self.samples.append((loop.time(), len(guest.buffer)))

        guest.feed = recording  # type: ignore[method-assign]

    def assert_paced(self, started: float) -> None:
        # Never ahead of the bucket: at every observation at most burst + rate x elapsed bytes are through
        # (one read of slack: a sample is taken when the read returns, a little after the bytes were sent).
        for at, total in self.samples:
            allowed = BURST + RATE * (at - started) + 4096
            assert total <= allowed, f"{total} bytes after {at - started:.3f} s: faster than {RATE} B/s"
        last_at, last_total = self.samples[-1]
        assert last_total == PASTE_BYTES
        assert last_at - started >= (PASTE_BYTES - BURST - 4096) / RATE


async def test_a_256_kib_paste_over_raw_tcp_arrives_whole_at_the_configured_rate() -> None:
    guest = GuestPty()
    paste = _paste()
    async with running_daemon(_config(guest), online=("vm1",), cleanup=guest.close) as daemon:
        hub = daemon.hubs["vm1"]
        writer = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw").tcp_port)
        await writer.expect(b"you have write access")
        arrivals = _Arrivals(guest)
        started = asyncio.get_running_loop().time()
        await writer.send(paste)  # one write: the daemon pauses our reading while its queue is full
        await guest.wait_bytes(PASTE_BYTES, timeout_s=60)
        assert bytes(guest.buffer) == paste
        arrivals.assert_paced(started)
        assert hub.input.bytes_to_device == PASTE_BYTES
        assert not writer.eof  # the same session, not cut off
        await writer.close()


async def test_a_256_kib_paste_over_the_websocket_arrives_whole_at_the_configured_rate() -> None:
    guest = GuestPty()
    paste = _paste()
    async with (
        running_daemon(_config(guest), online=("vm1",), cleanup=guest.close) as daemon,
        aiohttp.ClientSession() as http,
    ):
        ws = WsClient(await http.ws_connect(f"{base_url(daemon)}/api/v1/ports/vm1/ws?mode=rw"))
        await ws.wait_kind("write_granted")
        arrivals = _Arrivals(guest)
        started = asyncio.get_running_loop().time()
        for at in range(0, PASTE_BYTES, FRAME):
            await ws.ws.send_bytes(paste[at : at + FRAME])
        await guest.wait_bytes(PASTE_BYTES, timeout_s=60)
        assert bytes(guest.buffer) == paste
        arrivals.assert_paced(started)
        assert not ws.closed.is_set()
        await ws.ws.close()
