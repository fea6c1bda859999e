"""The daemon as a real process: a SIGKILL and restart is reported to a resuming client as a restart gap
(never as billions of missed bytes), and session caps keep a daemon under a lowered descriptor limit
serving when connections pile up.  READY comes over a real ``$NOTIFY_SOCKET``; nothing sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .support import GuestPty, TcpClient, eventually
from .test_cli import free_port
from .test_http import WsClient

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


class DaemonProcess:
    def __init__(self, proc: asyncio.subprocess.Process, log: list[dict[str, Any]]) -> None:
        self.proc = proc
        self.log = log

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.log if line.get("event") == name]


@contextlib.asynccontextmanager
async def daemon_process(config: Path, nofile: int | None = None) -> AsyncIterator[DaemonProcess]:
    """``serialmuxd run`` in a child; returns once it sent READY=1.  Killed at the end if still running."""
    notify_path = config.parent / f"notify-{os.getpid()}-{id(config)}.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "serialmuxd",
        "run",
        "--config",
        str(config),
        env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=limit,
    )
    log: list[dict[str, Any]] = []

    async def read_log() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            with contextlib.suppress(ValueError):
                log.append(json.loads(line))

    reader = asyncio.get_running_loop().create_task(read_log())
    try:
        loop = asyncio.get_running_loop()
        while True:
            message = (await asyncio.wait_for(loop.sock_recv(notify, 4096), 20)).decode()
            if "READY=1" in message:
                break
        yield DaemonProcess(proc, log)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await reader
        notify.close()
        notify_path.unlink(missing_ok=True)


def _config(tmp_path: Path, guest: GuestPty, http_port: int, extra: str = "") -> Path:
    path = tmp_path / "serialmuxd.toml"
    path.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
log_format = "json"

[http]
listen = "127.0.0.1:{http_port}"

[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet_readonly = "127.0.0.1:0"
raw = true
replay_bytes = 0
{extra}
"""
    )
    return path


async def _ws(http: aiohttp.ClientSession, port: int, query: str) -> WsClient:
    client = WsClient(await http.ws_connect(f"http://127.0.0.1:{port}/api/v1/ports/vm1/ws?{query}"))
    await client.wait_kind("hello")
    return client


async def _received_all(client: WsClient, payload: bytes) -> int:
    await client.wait_for(lambda: client.data.endswith(payload), "the payload")
    hello = next(e for e in client.events if e["type"] == "hello")
    offset: int = hello["offset"] + len(client.data)
    return offset


async def test_sigkill_restart_is_a_restart_gap_and_a_clean_restart_is_exact(tmp_path: Path) -> None:
    guest = GuestPty()
    http_port = free_port()
    config = _config(tmp_path, guest, http_port)
    payload = bytes(i % 251 for i in range(100_000))
    try:
        async with aiohttp.ClientSession() as http:
            async with daemon_process(config) as first:
                ws = await _ws(http, http_port, "mode=ro")
                await guest.send(payload)
                reached = await _received_all(ws, payload)
                await ws.ws.close()
                first.proc.send_signal(signal.SIGKILL)
                assert await first.proc.wait() == -signal.SIGKILL

            async with daemon_process(config) as second:
                ws = await _ws(http, http_port, f"mode=ro&from={reached}")
                gap = await ws.wait_kind("restart_gap")
                assert gap["from"] == reached and gap["to"] > reached
                assert gap["exact"] is False and gap["lost"] is None
                assert "restarted" in gap["text"]
                await guest.send(b"after the crash")
                await ws.wait_for(lambda: ws.data.endswith(b"after the crash"), "new output")
                # The reserved offset gap is not reported as bytes the client missed.
                assert "missed" not in ws.kinds()
                run_start = gap["to"]
                await ws.ws.close()
                second.proc.send_signal(signal.SIGTERM)
                assert await second.proc.wait() == 0

            # A clean stop knows its exact end: a client that had only "after" is told exactly what is gone.
            async with daemon_process(config):
                ws = await _ws(http, http_port, f"mode=ro&from={run_start + 5}")
                gap = await ws.wait_kind("restart_gap")
                assert gap["exact"] is True and gap["lost"] == len(b" the crash")
                assert gap["to"] == run_start + len(b"after the crash")
                assert "missed" not in ws.kinds()
                await ws.ws.close()
    finally:
        guest.close()


async def test_session_caps_keep_a_daemon_with_few_descriptors_serving(tmp_path: Path) -> None:
    """Under a real lowered descriptor limit (64), 80 connections to a read-only listener would exhaust
    it (new users would get an immediate EOF and /healthz would stop answering).  With the port's
    cap of 30 sessions the extra clients are told why and closed, and everything else keeps working."""
    guest = GuestPty()
    http_port = free_port()
    config = _config(tmp_path, guest, http_port, "max_sessions = 30\nmax_sessions_per_address = 30")
    clients: list[TcpClient] = []
    try:
        async with daemon_process(config, nofile=64) as daemon, aiohttp.ClientSession() as http:
            (limits,) = daemon.events("file_descriptor_limit")
            assert limits["soft"] == 64 and limits["hard"] == 64
            (listening,) = [e for e in daemon.events("listening") if e["kind"] == "raw-readonly"]
            port = int(listening["address"].rsplit(":", 1)[1])
            for _ in range(80):
                client = await TcpClient.connect("127.0.0.1", port)
                clients.append(client)
                await client.expect(b"[serialmuxd] ")  # attached, or told it is one too many
            refused = [c for c in clients if b"maximum of 30 sessions" in c.buffer]
            for client in refused:
                await client.wait_eof()
            attached = [c for c in clients if c not in refused]
            assert len(attached) == 30 and len(refused) == 50
            async with http.get(f"http://127.0.0.1:{http_port}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["ports"] == 1
            await guest.send(b"still served")
            for client in attached:
                await client.expect(b"still served")
            assert len(daemon.events("attach_refused")) == 50
    finally:
        for client in clients:
            await client.close()
        guest.close()


async def test_descriptor_exhaustion_is_logged_and_existing_sessions_keep_working(tmp_path: Path) -> None:
    """With caps above what the descriptor limit allows, the limit itself is hit: the daemon says so in its
    log (on either event loop: uvloop drops excess connections without a word), keeps serving the sessions
    it has, and says when it has recovered."""
    guest = GuestPty()
    http_port = free_port()
    config = _config(tmp_path, guest, http_port, "max_sessions = 500\nmax_sessions_per_address = 500")
    clients: list[TcpClient] = []
    try:
        async with daemon_process(config, nofile=64) as daemon:
            (listening,) = [e for e in daemon.events("listening") if e["kind"] == "raw-readonly"]
            port = int(listening["address"].rsplit(":", 1)[1])
            first = await TcpClient.connect("127.0.0.1", port)
            await first.expect(b"read-only")
            for _ in range(70):
                with contextlib.suppress(OSError):
                    clients.append(await TcpClient.connect("127.0.0.1", port))
            await eventually(
                lambda: bool(daemon.events("file_descriptors_low")), "the low-descriptor line", 20
            )
            (low,) = daemon.events("file_descriptors_low")
            assert low["soft_limit"] == 64 and low["open"] >= 0.9 * 64
            await guest.send(b"still served")
            await first.expect(b"still served")
            for client in clients:
                await client.close()
            clients.clear()
            await eventually(
                lambda: bool(daemon.events("file_descriptors_recovered")), "the recovered line", 20
            )
            await first.close()
    finally:
        for client in clients:
            await client.close()
        guest.close()
