"""A real ``serialmuxd run`` process for the reload tests: its JSON log, every ``$NOTIFY_SOCKET`` datagram
on a socket the test made, SIGHUP, and the addresses its listeners got (from its ``listening`` lines)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from .support import DEFAULT_TIMEOUT_S, TcpClient

START_TIMEOUT_S = 20.0


class DaemonProcess:
    def __init__(self, proc: asyncio.subprocess.Process, config: Path, http_port: int | None) -> None:
        self.proc = proc
        self.config = config
        self.http_port = http_port
        self.log: list[dict[str, Any]] = []
        self.notices: list[str] = []  # sd_notify datagrams, in order
        self._changed = asyncio.Event()

    # -- what it said -----------------------------------------------------------------------------
    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.log if line.get("event") == name]

    async def wait_for(self, what: str, check: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not check():
            remaining = deadline - loop.time()
            if remaining <= 0 or self.proc.returncode is not None:
                raise AssertionError(f"no {what}; log tail: {self.log[-8:]}; notify: {self.notices[-4:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def address(self, port: str, kind: str = "raw") -> tuple[str, int]:
        """The address of ``port``'s ``kind`` listener as most recently logged (a rebuilt port's is new)."""
        lines = [e for e in self.events("listening") if e.get("port") == port and e["kind"] == kind]
        assert lines, f"{port}/{kind} never listened"
        host, _, tcp = lines[-1]["address"].rpartition(":")
        return host, int(tcp)

    async def connect(self, port: str, kind: str = "raw") -> TcpClient:
        return await TcpClient.connect(*self.address(port, kind))

    # -- what it is asked -------------------------------------------------------------------------
    async def reload(self) -> list[str]:
        """SIGHUP; returns the notify datagrams from RELOADING=1 to the READY=1 that ends the reload."""
        first = len(self.notices)
        self.proc.send_signal(signal.SIGHUP)

        def done() -> bool:
            seen = self.notices[first:]
            starts = [i for i, m in enumerate(seen) if "RELOADING=1" in m]
            return bool(starts) and any("READY=1" in m for m in seen[starts[0] :])

        await self.wait_for("RELOADING=1 then READY=1", done)
        return [m for m in self.notices[first:] if "WATCHDOG=1" not in m]

    async def scrape(self) -> str:
        assert self.http_port is not None
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.http_port}/metrics") as resp,
        ):
            assert resp.status == 200
            return await resp.text()

    # -- plumbing ---------------------------------------------------------------------------------
    def _heard(self) -> None:
        self._changed.set()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a text-format scrape."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{want}}}" if want else name):
            return float(value)
    raise AssertionError(f"no sample {name}{{{want}}} in the scrape")


@contextlib.asynccontextmanager
async def daemon_process(config: Path, http_port: int | None = None) -> AsyncIterator[DaemonProcess]:
    """``serialmuxd run --config CONFIG`` (its log must be JSON); yields once it sent READY=1, and is
    stopped with SIGTERM at the end (killed if that does not work)."""
    notify_path = config.parent / f"notify-{os.getpid()}-{id(config)}.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
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
    )
    daemon = DaemonProcess(proc, config, http_port)
    loop = asyncio.get_running_loop()

    async def read_log() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                daemon.log.append(json.loads(line))
            except ValueError:
                daemon.log.append({"event": "(not json)", "text": line.decode(errors="replace")})
            daemon._heard()
        daemon._heard()

    async def read_notify() -> None:
        while True:
            daemon.notices.append((await loop.sock_recv(notify, 4096)).decode())
            daemon._heard()

    tasks = [loop.create_task(read_log()), loop.create_task(read_notify())]
    try:
        await daemon.wait_for("READY=1", lambda: any("READY=1" in m for m in daemon.notices), START_TIMEOUT_S)
        yield daemon
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
        await proc.wait()
        await tasks[0]
        tasks[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[1]
        notify.close()
        notify_path.unlink(missing_ok=True)
