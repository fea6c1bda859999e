"""A reload that rebuilds a port keeps the stream's offsets strictly increasing, with a device that never
stops printing: the old hub's device keeps producing until the reload closes it (here for at least 2 s,
while a removed port's program that ignores SIGTERM is waited for), and the new hub must start where the
old one really ended, not where it was when the reload began.  A real daemon process, a real program as the
device, a WebSocket viewer that counts exact offsets across the rebuild and resumes with ``?from=``, and the
port's console log, which must go on without a hole."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
import pytest

from .reload_support import daemon_process
from .support import eventually
from .test_cli import free_port
from .test_http import WsClient

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

# A console that prints a numbered line every 2 ms, for ever: the tag says which device printed it.
COUNTER = """\
import itertools, sys, time
for i in itertools.count():
    sys.stdout.write(f"{sys.argv[1]} {i}\\n")
    sys.stdout.flush()
    time.sleep(0.002)
"""
# Removed in the same reload, and closed before the rebuilt port: its program ignores SIGTERM (and the
# hang-up of its terminal), so closing it
# takes the terminate timeout (2 s), during which the chatty device of the rebuilt port keeps printing.
STUBBORN = "exec:/bin/sh -c 'trap \\\"\\\" TERM HUP; while :; do sleep 1; done'"


def _config(tmp: Path, http_port: int, tag: str, *, stubborn: bool) -> str:
    text = f"""
[daemon]
state_dir = "{tmp / "state"}"
log_format = "json"
[http]
listen = "127.0.0.1:{http_port}"
[logs]
dir = "{tmp / "logs"}"
boot_bytes = 0

[[ports]]
name = "busy"
device = "exec:{sys.executable} {tmp / "counter.py"} {tag}"
telnet = "127.0.0.1:0"
raw = true
replay_bytes = 0
scrollback_bytes = 16777216
"""
    if stubborn:
        text += f"""
[[ports]]
name = "stubborn"
device = "{STUBBORN}"
telnet = "127.0.0.1:0"
"""
    return text


async def test_a_rebuilt_port_continues_at_the_old_devices_last_byte(tmp_path: Path) -> None:
    (tmp_path / "counter.py").write_text(COUNTER)
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}/api/v1/ports/busy"
    config = tmp_path / "serialmuxd.toml"
    config.write_text(_config(tmp_path, http_port, "tick", stubborn=True))
    async with daemon_process(config, http_port) as daemon, aiohttp.ClientSession() as http:
        old = WsClient(await http.ws_connect(f"{base}/ws?mode=ro"))
        hello = await old.wait_kind("hello")
        await old.wait_for(lambda: old.data.count(b"\n") >= 20, "the old device printing")

        # The device changes (the port is rebuilt) and the stubborn port goes, in one reload.
        config.write_text(_config(tmp_path, http_port, "tock", stubborn=False))
        signal_sent = len(old.data)
        await daemon.reload()
        await old.wait_kind("closing")
        assert await old.wait_closed() == 1001
        assert "missed" not in old.kinds(), old.events  # every byte of the old run reached the viewer
        assert b"tock" not in old.data
        cursor = hello["offset"] + len(old.data)  # the offset of the next byte this viewer has not had
        assert len(old.data) > signal_sent  # the old device kept printing during the reload

        # The new run starts exactly there: no offset handed out twice, none skipped.
        async with http.get(base) as resp:
            status = await resp.json()
        assert status["scrollback"]["start"] == cursor, (status["scrollback"], cursor)

        # Resuming from the last offset seen works and gives the new device's output from its first byte.
        try:
            ws = await http.ws_connect(f"{base}/ws?mode=ro&from={cursor}")
        except aiohttp.WSServerHandshakeError as exc:
            raise AssertionError(f"resume from {cursor} refused: {exc.status} {exc.message}") from None
        new = WsClient(ws)
        resumed = await new.wait_kind("hello")
        assert resumed["offset"] >= cursor
        await new.wait_for(lambda: new.data.count(b"\n") >= 5, "the new device's first lines")
        assert new.data.startswith(b"tock 0\r\n"), bytes(new.data[:40])
        told = {e["kind"] for e in new.events if e["type"] == "notice"}
        assert told <= {"attached", "read_only"}, new.events  # nothing missed, no restart gap
        async with http.get(f"{base}/scrollback", params={"from": str(cursor), "limit": "7"}) as resp:
            assert resp.status == 200
            assert (await resp.read()).startswith(b"tock 0"), resp.headers
        await new.ws.close()

        # The console log goes on at the same offsets: no hole (a "log gap" marker) where the old run ended.
        log_file = tmp_path / "logs" / "busy.log"
        await eventually(lambda: b"tock 5\r" in log_file.read_bytes(), "the new run in the log")
        text = log_file.read_bytes()
        gaps = daemon.events("console_log_gap")
        assert b"log gap" not in text and not gaps, gaps
        assert text.index(b"tick") < text.index(b"tock 0\r")
