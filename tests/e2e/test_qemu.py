"""End to end against a real QEMU guest (Debian kernel + busybox, COM1 on a unix socket, QMP): the daemon
owns COM1 and the QMP socket; people log in over TCP, send an NMI/reset through the API or the escape key,
and the console follows the VM when QEMU dies and comes back."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from serialmuxd.config import parse_config
from serialmuxd.daemon import Daemon
from serialmuxd.guest import (
    BANNER,
    LOGIN_PROMPT,
    NMI_CONTINUE,
    NMI_PANIC,
    NMI_PATTERN,
    PASSWORD_PROMPT,
    GuestVM,
)
from serialmuxd.hub import PortState

from .guest_support import BOOT_TIMEOUT_S
from .support import TcpClient, eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
SHELL_PROMPT = re.compile(rb"@sertest:~[#$] ")


def _config(vm: GuestVM) -> str:
    return f"""
[daemon]
log_level = "warning"

[http]
listen = "127.0.0.1:0"

[[ports]]
name = "vm1"
device = "unix:{vm.serial_socket}"
telnet = "127.0.0.1:0"
telnet_readonly = "127.0.0.1:0"
raw = true
replay_bytes = 0
scrollback_bytes = 1048576
reconnect_initial_s = 0.05
reconnect_max_s = 0.2

[ports.hypervisor]
type = "qmp"
socket = "{vm.qmp_socket}"
timeout_s = 10.0
"""


class Rig:
    def __init__(self, vm: GuestVM, daemon: Daemon, http: aiohttp.ClientSession) -> None:
        self.vm = vm
        self.daemon = daemon
        self.http = http
        assert daemon.http_address is not None
        host, port = daemon.http_address
        self.base = f"http://{host}:{port}/api/v1/ports/vm1"

    async def post(self, action: str) -> tuple[int, Any]:
        async with self.http.post(f"{self.base}/{action}") as resp:
            return resp.status, await resp.json()

    async def attach(self, kind: str = "raw") -> TcpClient:
        return await TcpClient.connect("127.0.0.1", self.daemon.listener("vm1", kind).tcp_port)


async def _rig(vm: GuestVM, **start: Any) -> AsyncIterator[Rig]:
    # Paused until the daemon holds COM1: a socket chardev drops output while nobody is connected.
    await vm.start(paused=True, **start)
    daemon = Daemon(parse_config(_config(vm), "<test>"))
    await daemon.start()
    try:
        await eventually(lambda: daemon.hubs["vm1"].state is PortState.ONLINE, "COM1 connected", 20)
        async with aiohttp.ClientSession() as http:
            rig = Rig(vm, daemon, http)
            status, body = await rig.post("start")  # the API's start resumes the paused VM
            assert status == 200 and body == {"ok": True, "action": "start"}, body
            yield rig
    finally:
        await daemon.stop()


@pytest_asyncio.fixture
async def rig(guest_vm: GuestVM) -> AsyncIterator[Rig]:
    async for value in _rig(guest_vm):
        yield value


async def login(client: TcpClient, start: int = 0) -> None:
    prompt = await client.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S, start)
    await client.send(b"root\r")
    password = await client.expect(PASSWORD_PROMPT, 20, prompt.end())
    await client.send(b"root\r")
    await client.expect(SHELL_PROMPT, 20, password.end())


async def test_boot_login_nmi_and_reset_with_session_attached(rig: Rig) -> None:
    client = await rig.attach()
    try:
        await login(client)
        hub = rig.daemon.hubs["vm1"]
        # Boot output went into the scrollback although nobody was attached during the boot.
        async with rig.http.get(f"{rig.base}/scrollback?format=text") as resp:
            assert BANNER.decode() in await resp.text()
        mark = len(client.buffer)
        await client.send(b"echo serial-$((6*7))\r")
        await client.expect(b"serial-42", 20, mark)

        async with rig.http.get(f"{rig.base}/state") as resp:
            assert (await resp.json())["state"] == "running"
        mark = len(client.buffer)
        # The API does not type into a writer's session, but an NMI is not typing: it is allowed.
        status, body = await rig.post("nmi")
        assert status == 200 and body == {"ok": True, "action": "nmi"}
        await client.expect(re.compile(NMI_PATTERN), 20, mark)
        await client.expect(NMI_CONTINUE, 20, mark)
        await client.expect(re.compile(rb"vm1: NMI sent by http 127\.0\.0\.1:\d+"), 5, mark)

        mark = len(client.buffer)
        status, _ = await rig.post("reset")
        assert status == 200
        await client.expect(b"hard reset by http", 10, mark)
        await client.expect(BANNER, BOOT_TIMEOUT_S, mark)
        await client.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S, mark)
        assert not client.eof and hub.state is PortState.ONLINE
        await login(client, mark)
    finally:
        await client.close()


async def test_escape_nmi_with_confirmation_panics_guest(guest_vm: GuestVM) -> None:
    async for rig in _rig(guest_vm, nmi_panic=True):
        client = await rig.attach()
        try:
            await login(client)  # a shell, to answer the marker command below
            mark = len(client.buffer)
            await client.send(b"\x05cn")  # Ctrl-E c n
            await client.expect(b"send an NMI to vm1? press y to confirm", 5, mark)
            await client.send(b"q")  # anything but y cancels (and is not typed into the guest)
            cancelled = await client.expect(b"nmi cancelled", 5, mark)
            # A later signal through the same console: the guest answers a command typed after the cancel.
            # An NMI sent on "q" would be in the guest's output before this answer (with nmi_panic the guest
            # would panic and never answer); only then can its absence be asserted.
            await client.send(b"echo cancel-marker-$((6*7))\r")
            await client.expect(b"cancel-marker-42", 20, cancelled.end())
            assert re.search(NMI_PATTERN, client.buffer[mark:]) is None
            assert b"NMI sent by" not in client.buffer[mark:]
            await client.send(b"\x05cny")  # the answer may arrive in the same segment
            await client.expect(re.compile(rb"vm1: NMI sent by raw 127\.0\.0\.1:\d+"), 10, mark)
            await client.expect(NMI_PANIC, 20, mark)
        finally:
            await client.close()


async def test_qemu_killed_port_offline_vm_stopped_then_back(rig: Rig) -> None:
    client = await rig.attach()
    hub = rig.daemon.hubs["vm1"]
    try:
        await client.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S)
        mark = len(client.buffer)
        await rig.vm.kill()
        await client.expect(b"console vm1 offline", 10, mark)
        await client.expect(b"vm1 is stopped; start it and try again", 15, mark)
        # A newcomer is told the same, at once.
        late = await rig.attach("raw-readonly")
        await late.expect(b"vm1 is stopped; start it and try again", 5)
        await late.close()
        status, body = await rig.post("nmi")
        assert status == 503 and body["code"] == "hypervisor_unavailable"
        assert "qmp" not in body["message"] or "sock" not in body["message"]  # no host paths to clients

        mark = len(client.buffer)
        await rig.vm.start()  # same run directory, same sockets, not paused
        await client.expect(b"console vm1 online", 20, mark)
        await client.expect(b"vm1 is running", 20, mark)
        await client.expect(BANNER, BOOT_TIMEOUT_S, mark)
        await eventually(lambda: hub.state is PortState.ONLINE, "online again")
        assert not client.eof
        listing = json.loads(json.dumps(await (await rig.http.get(rig.base)).json()))
        assert listing["hypervisor"]["state"] == "running"
    finally:
        await client.close()
