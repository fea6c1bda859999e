"""The recording export through the real path: a guest on a real PTY prints lines with pauses between them,
a telnet client watches, and the asciicast the API returns replays them with the guest's own timing;
Debian's ``asciinema cat`` reads it.

The test paces the guest itself: it writes a line, waits until the bytes reach the telnet client (the
signal that the daemon has them), sleeps, and writes the next; the pauses it really made are measured
with ``time.monotonic`` and compared with the event times in the recording."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import termios
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from serialmuxd.daemon import Daemon
from serialmuxd.frontends.http import recording

from .support import GuestPty, TcpClient, eventually, running_daemon

pytestmark = pytest.mark.asyncio

# The timeline coalesces chunks closer than 5 ms; scheduling on a busy CI machine adds a little more.
TIME_TOLERANCE_S = 0.05
IAC, SB, SE, WILL, NAWS = 255, 250, 240, 251, 31


@dataclass
class Env:
    daemon: Daemon
    guest: GuestPty
    http: aiohttp.ClientSession
    base: str
    clients: list[TcpClient]

    def url(self, path: str) -> str:
        return f"{self.base}/api/v1/ports/vm1/{path}"


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    guest = GuestPty()
    config = f"""
[daemon]
log_level = "warning"
[audit]
file = "{tmp_path / "audit.jsonl"}"
[http]
listen = "127.0.0.1:0"
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
telnet_readonly = "127.0.0.1:0"
scrollback_bytes = 16384
replay_bytes = 0
"""
    async with (
        running_daemon(config, online=("vm1",), cleanup=guest.close) as daemon,
        aiohttp.ClientSession() as http,
    ):
        assert daemon.http_address is not None
        host, port = daemon.http_address
        env = Env(daemon, guest, http, f"http://{host}:{port}", [])
        try:
            yield env
        finally:
            for client in env.clients:
                await client.close()


async def _watcher(env: Env) -> TcpClient:
    client = await TcpClient.connect("127.0.0.1", env.daemon.listener("vm1", "telnet-readonly").tcp_port)
    env.clients.append(client)
    await client.expect(b"read-only")
    return client


async def _recording(env: Env, query: str = "") -> tuple[dict[str, Any], list[list[Any]], bytes]:
    async with env.http.get(env.url(f"recording{query}")) as resp:
        body = await resp.read()
        assert resp.status == 200, body
        assert resp.content_type == "application/x-asciicast"
    header, *events = (json.loads(line) for line in body.decode().splitlines())
    return header, events, body


def _event_with(events: list[list[Any]], text: str) -> list[Any]:
    found = [e for e in events if text in e[2]]
    assert len(found) == 1, (text, events)
    return found[0]


async def test_the_recording_replays_the_guests_timing(env: Env, tmp_path: Path) -> None:
    watcher = await _watcher(env)
    start = env.daemon.hubs["vm1"].stream_end
    pauses_s = [0.35, 0.8, 0.15, 0.5]
    written_at: list[float] = []
    for i, pause in enumerate([*pauses_s, 0.0]):
        line = f"line {i}: ok\r\n".encode()
        written_at.append(time.monotonic())
        env.guest.write(line)
        await watcher.expect(line)  # the daemon has it
        await asyncio.sleep(pause)
    end = env.daemon.hubs["vm1"].stream_end
    header, events, _ = await _recording(env, f"?from={start}&to={end}")
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (80, 24)  # no writer ever sent a size
    assert header["title"] == f"vm1 {start}-{end}"
    assert abs(header["timestamp"] - time.time()) < 60
    assert [e[1] for e in events] == ["o"] * len(events)
    assert "".join(e[2] for e in events) == "".join(f"line {i}: ok\r\n" for i in range(len(written_at)))
    times = [_event_with(events, f"line {i}:")[0] for i in range(len(written_at))]
    assert times[0] == 0.0
    for i in range(1, len(times)):
        made = written_at[i] - written_at[0]
        assert abs(times[i] - made) < TIME_TOLERANCE_S, (i, times, made)


async def test_asciinema_reads_the_download(env: Env, tmp_path: Path) -> None:
    asciinema = shutil.which("asciinema")
    if asciinema is None:
        pytest.fail("asciinema is not installed: ./dev installs the Debian package")
    watcher = await _watcher(env)
    for text in (b"Booting the kernel\r\n", "caf\u00e9 \u2713 ready\r\n".encode()):
        env.guest.write(text)
        await watcher.expect(text)
    async with env.http.get(env.url("recording?download=1")) as resp:
        assert resp.status == 200
        disposition = resp.headers["Content-Disposition"]
        assert re.fullmatch(r'attachment; filename="vm1-\d{8}T\d{6}\.cast"', disposition), disposition
        cast = tmp_path / "vm1.cast"
        cast.write_bytes(await resp.read())
        start, end = int(resp.headers["X-Scrollback-Offset"]), int(resp.headers["X-Scrollback-Next"])
    # Who fetched how much, never what it said.
    audit = tmp_path / "audit.jsonl"
    await eventually(lambda: audit.exists() and "scrollback_download" in audit.read_text(), "the audit")
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    (download,) = [r for r in records if r["event"] == "scrollback_download"]
    assert download["format"] == "asciicast" and download["attachment"] is True
    assert (download["port"], download["offset"], download["bytes"]) == ("vm1", start, end - start)
    assert "Booting" not in audit.read_text()
    # asciinema cat reads keys from /dev/tty: give it a terminal of its own (a PTY as its controlling
    # terminal, as in a shell), and read what it prints from a pipe.
    master, slave = os.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = await asyncio.create_subprocess_exec(
            asciinema,
            "cat",
            str(cast),
            stdin=slave,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": str(tmp_path), "LANG": "C.UTF-8"},
            preexec_fn=controlling_terminal,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0, err
    assert out.decode() == "Booting the kernel\r\ncaf\u00e9 \u2713 ready\r\n"


async def test_a_character_split_across_guest_writes_comes_out_whole(env: Env) -> None:
    watcher = await _watcher(env)
    start = env.daemon.hubs["vm1"].stream_end
    euro = "\u20ac".encode()  # three bytes
    for piece in (b"price: " + euro[:1], euro[1:2], euro[2:] + b"42\r\n"):
        env.guest.write(piece)
        await watcher.expect(piece, start=0)
        await asyncio.sleep(0.05)  # separate chunks with their own times, well past the coalescing
    assert len(env.daemon.hubs["vm1"].timeline.segments(start, start + 14)) == 3
    _, events, _ = await _recording(env, f"?from={start}")
    texts = [e[2] for e in events]
    assert "".join(texts) == "price: \u20ac42\r\n"
    assert "\ufffd" not in "".join(texts)
    assert any("\u20ac" in t for t in texts)


async def test_the_writers_window_size_is_the_recordings(env: Env) -> None:
    writer = await TcpClient.connect("127.0.0.1", env.daemon.listener("vm1").tcp_port)
    env.clients.append(writer)
    await writer.expect(b"write access")
    await writer.send(bytes([IAC, WILL, NAWS, IAC, SB, NAWS, 0, 132, 0, 43, IAC, SE]))
    await eventually(lambda: env.daemon.hubs["vm1"].window_size == (132, 43), "the window size")
    header, _, _ = await _recording(env)
    assert (header["width"], header["height"]) == (132, 43)


async def test_offsets_it_cannot_serve(env: Env) -> None:
    hub = env.daemon.hubs["vm1"]
    watcher = await _watcher(env)
    env.guest.write(b"first\r\n")
    await watcher.expect(b"first\r\n")
    end = hub.stream_end
    for query in (f"?from={end + 1}", f"?to={end + 1}", f"?from={end}&to={end - 1}", "?from=x"):
        async with env.http.get(env.url(f"recording{query}")) as resp:
            assert resp.status == 400, query
            assert (await resp.json())["code"] == "bad_request"
    # An empty range is a valid, empty recording.
    header, events, _ = await _recording(env, f"?from={end}&to={end}")
    assert events == [] and header["title"] == f"vm1 {end}-{end}"
    # Overwrite the ring (16 KiB) with more than it holds: offset 0 is gone.
    await env.guest.send(b"x" * 20_000 + b"\r\nlast\r\n")
    await watcher.expect(b"last\r\n")
    await eventually(lambda: hub.ring.start > 0, "the ring to wrap")
    async with env.http.get(env.url("recording?from=0")) as resp:
        assert resp.status == 416
        body = await resp.json()
        assert body["code"] == "offset_unavailable"
        assert body["start"] == hub.ring.start
    # The default range is what is still there.
    header, events, _ = await _recording(env)
    assert header["title"] == f"vm1 {hub.ring.start}-{hub.ring.end}"
    assert "".join(e[2] for e in events).endswith("last\r\n")


async def test_a_long_range_is_cut_and_says_where_to_go_on(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recording, "MAX_RECORDING_BYTES", 10)
    watcher = await _watcher(env)
    start = env.daemon.hubs["vm1"].stream_end
    env.guest.write(b"0123456789abcdef\r\n")
    await watcher.expect(b"abcdef\r\n")
    async with env.http.get(env.url(f"recording?from={start}")) as resp:
        assert resp.status == 200
        assert int(resp.headers["X-Scrollback-Next"]) == start + 10
        header, *events = (json.loads(line) for line in (await resp.text()).splitlines())
    assert header["title"] == f"vm1 {start}-{start + 10}"
    assert "".join(e[2] for e in events) == "0123456789"
