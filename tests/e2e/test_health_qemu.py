"""A real QEMU guest (Debian kernel + busybox) crashed with ``echo c > /proc/sysrq-trigger`` raises exactly
one panic event: one metric increment, one in-band notice, one audit line, one webhook delivery to a real
HTTP server started here — though the kernel prints "Kernel panic - not syncing" twice (the panic and its
closing "---[ end Kernel panic ..." line)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from serialmuxd.config import parse_config
from serialmuxd.daemon import Daemon
from serialmuxd.guest import GuestVM
from serialmuxd.hub import PortState

from .support import TcpClient, eventually
from .test_health import receiving
from .test_qemu import SHELL_PROMPT, login

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


def _config(vm: GuestVM, webhook_url: str, audit: Path) -> str:
    return f"""
[daemon]
log_level = "warning"

[audit]
file = "{audit}"

[alerts]
webhook_url = "{webhook_url}"

[http]
listen = "127.0.0.1:0"

[[ports]]
name = "vm1"
device = "unix:{vm.serial_socket}"
telnet = "127.0.0.1:0"
raw = true
replay_bytes = 0
reconnect_initial_s = 0.05
reconnect_max_s = 0.2

[ports.hypervisor]
type = "qmp"
socket = "{vm.qmp_socket}"
timeout_s = 10.0
"""


async def test_sysrq_crash_raises_exactly_one_panic_event(guest_vm: GuestVM, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    await guest_vm.start(paused=True)
    async with receiving() as receiver:
        daemon = Daemon(parse_config(_config(guest_vm, receiver.url, audit), "<test>"))
        await daemon.start()
        try:
            hub = daemon.hubs["vm1"]
            await eventually(lambda: hub.state is PortState.ONLINE, "COM1 connected", 20)
            client = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw").tcp_port)
            assert hub.vm.adapter is not None
            await hub.vm.adapter.start()  # resume the paused VM now that the daemon holds COM1
            await login(client)
            mark = len(client.buffer)
            await client.send(b"echo c > /proc/sysrq-trigger\r")
            await client.expect(b"end Kernel panic - not syncing", 60, mark)
            await eventually(lambda: len(receiver.bodies) >= 1, "webhook delivery", 20)
            await client.expect(b"guest health: panic", 10, mark)
            await asyncio.sleep(1.0)  # whatever else the dying kernel prints has arrived
            panics = [body for body in receiver.bodies if body["kind"] == "panic"]
            assert len(panics) == 1, receiver.bodies
            assert panics[0]["console"] == "vm1"
            assert "Kernel panic - not syncing: sysrq triggered crash" in panics[0]["line"]
            assert hub.health_counts.get("panic") == 1
            assert client.buffer.count(b"guest health: panic") == 1
            assert SHELL_PROMPT.search(client.buffer)  # we were logged in before the crash
            # The offset names the line's first byte in the stream.
            start = panics[0]["offset"]
            text = hub.ring.read(start, 200).data
            assert b"Kernel panic - not syncing" in text.split(b"\n", 1)[0]
            await client.close()
        finally:
            await daemon.stop()
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["kind"] for e in events if e["event"] == "guest_health" and e["kind"] == "panic"] == ["panic"]
