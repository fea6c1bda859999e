"""Boot retention against the real QEMU guest: the guest boots, is reset three times through the HTTP API,
restarted gracefully once (it shuts down, then QEMU's RESET event starts the capture) and finally crashed
with ``echo c > /proc/sysrq-trigger``.  With a small NAME.log that has long wrapped, each boot's first lines
are still on disk in its own NAME.boot-SEQ.log, and the panic is in NAME.log."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from serialmuxd.config import parse_config
from serialmuxd.daemon import Daemon
from serialmuxd.guest import BANNER, LOGIN_PROMPT, GuestVM
from serialmuxd.hub import PortState

from .guest_support import BOOT_TIMEOUT_S
from .support import TcpClient, eventually
from .test_qemu import Rig, login

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

ROTATE_BYTES = 8192
BOOT_BYTES = 2048


def _config(vm: GuestVM, logs: Path) -> str:
    return f"""
[daemon]
log_level = "warning"

[http]
listen = "127.0.0.1:0"

[logs]
dir = "{logs}"
rotate_bytes = {ROTATE_BYTES}
keep = 1
boot_bytes = {BOOT_BYTES}
keep_boots = 5

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


async def test_each_boot_and_the_last_panic_survive_a_wrapped_log(guest_vm: GuestVM, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    # Paused: COM1 drops output while nobody is connected, so resume once we are.  -no-shutdown: a graceful
    # restart is a powerdown the adapter answers with system_reset + cont.
    await guest_vm.start(paused=True, no_shutdown=True)
    daemon = Daemon(parse_config(_config(guest_vm, logs), "<test>"))
    await daemon.start()
    try:
        hub = daemon.hubs["vm1"]
        log = hub.console_log
        assert log is not None
        await eventually(lambda: hub.state is PortState.ONLINE, "COM1 connected", 20)
        async with aiohttp.ClientSession() as http:
            rig = Rig(guest_vm, daemon, http)
            client = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw").tcp_port)
            status, _ = await rig.post("start")
            assert status == 200
            await client.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S)
            boots = [bytes(client.buffer)]
            mark = 0
            for _ in range(3):
                mark = len(client.buffer)
                status, _ = await rig.post("reset")
                assert status == 200
                await client.expect(BANNER, BOOT_TIMEOUT_S, mark)
                await client.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S, mark)
                boots.append(bytes(client.buffer[mark:]))
            # A graceful restart: the guest shuts down first, and the capture starts at QEMU's RESET.
            mark = len(client.buffer)
            status, _ = await rig.post("restart")
            assert status == 200
            await client.expect(b"reboot: Power down", BOOT_TIMEOUT_S, mark)
            boot_mark = len(client.buffer)
            await client.expect(BANNER, BOOT_TIMEOUT_S, mark)
            await client.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S, mark)
            boots.append(bytes(client.buffer[boot_mark:]))
            await login(client, mark)  # at the last boot's prompt
            mark = len(client.buffer)
            await client.send(b"echo c > /proc/sysrq-trigger\r")
            await client.expect(b"end Kernel panic - not syncing", 60, mark)
            await client.close()
        # Everything the guest printed has been written (the writer runs every 0.2 s).
        await eventually(lambda: log.bytes_logged == hub.output.bytes_from_device, "all logged", 10)
    finally:
        await daemon.stop()

    assert log.bytes_lost == 0 and log.boot_captures == 5
    recent = (logs / "vm1.log.1").read_bytes() + (logs / "vm1.log").read_bytes()
    assert b"Kernel panic - not syncing: sysrq triggered crash" in recent
    # NAME.log has wrapped well past the first boots: what the guest printed overall is many times the
    # two files kept, and the first boot's opening is no longer in them.
    assert hub.output.bytes_from_device > 5 * len(recent)
    first_line = boots[0].lstrip(b"\r\n").split(b"\n", 1)[0]
    assert len(first_line) > 10 and first_line not in recent, first_line

    # QEMU's RESET event comes before the API's reset returns: either names the trigger (one capture each).
    reset = rb"(reset through the hypervisor|machine reset reported by the hypervisor)"
    reasons = [rb"port started", reset, reset, reset, rb"machine reset reported by the hypervisor"]
    for seq, (boot, reason) in enumerate(zip(boots, reasons, strict=True), start=1):
        text = (logs / f"vm1.boot-{seq}.log").read_bytes()
        header, body = text.split(b"\n", 1)
        assert re.match(rb"\[serialmuxd\] boot capture %d of vm1: %s at " % (seq, reason), header), header
        captured = body.rpartition(b"[serialmuxd] end of boot capture")[0][:BOOT_BYTES]  # (+ its newline)
        assert len(captured) == BOOT_BYTES, (seq, len(captured))
        # Each capture is its boot's first bytes, from the kernel's first line on, as a client saw them.
        assert captured.startswith(b"[    0.000000] Linux version "), (seq, captured[:200])
        assert captured in boot, seq
