"""``ssh vm1@host nmi`` against the real QEMU guest: the command goes through the hub's policy and the QMP
adapter, and prints what the guest's kernel says about the NMI (the same fixture and skip as test_qemu.py:
skipped, with the reason, only when qemu-system-x86_64 is not installed)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from pathlib import Path

import pytest

from serialmuxd.config import parse_config
from serialmuxd.daemon import Daemon
from serialmuxd.frontends.ssh_hostkey import HOST_KEY_NAME
from serialmuxd.guest import LOGIN_PROMPT, NMI_PATTERN, GuestVM
from serialmuxd.hub import PortState

from .guest_support import BOOT_TIMEOUT_S
from .support import Expecter, eventually
from .test_ssh import keygen, pub

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs openssh-client (./dev installs it)"),
]


class Output(Expecter):
    """A subprocess's stdout as it arrives."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        super().__init__()
        self._task = asyncio.get_running_loop().create_task(self._pump(stream))

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while data := await stream.read(65536):
            self.feed(data)
        self.feed_eof()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def ssh(argv: list[str], *command: str) -> tuple[asyncio.subprocess.Process, Output]:
    proc = await asyncio.create_subprocess_exec(
        *argv, *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    return proc, Output(proc.stdout)


async def test_ssh_nmi_prints_the_kernels_nmi_line(guest_vm: GuestVM, tmp_path: Path) -> None:
    key = keygen(tmp_path / "key_alice")
    users = tmp_path / "users.toml"
    users.write_text(
        f'[[users]]\nname = "alice"\nssh_keys = ["{pub(key)}"]\n'
        'grants = [{ role = "operator", ports = ["vm1"] }]\n'
    )
    users.chmod(0o600)
    await guest_vm.start(paused=True)  # paused until the daemon holds COM1 (a socket chardev drops output)
    config = f"""
[daemon]
log_level = "warning"
state_dir = "{tmp_path / "state"}"
[auth]
users_file = "{users}"
[ssh]
listen = "127.0.0.1:0"
[[ports]]
name = "vm1"
device = "unix:{guest_vm.serial_socket}"
replay_bytes = 0
scrollback_bytes = 1048576
[ports.hypervisor]
type = "qmp"
socket = "{guest_vm.qmp_socket}"
timeout_s = 10.0
"""
    daemon = Daemon(parse_config(config, "<test>"))
    await daemon.start()
    procs: list[tuple[asyncio.subprocess.Process, Output]] = []
    try:
        await eventually(lambda: daemon.hubs["vm1"].state is PortState.ONLINE, "COM1 connected", 20)
        assert daemon.ssh_address is not None
        port = daemon.ssh_address[1]
        host_key = (tmp_path / "state" / f"{HOST_KEY_NAME}.pub").read_text().split()
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        argv = [
            "ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-i", str(key), "-p", str(port),
            "vm1@127.0.0.1",
        ]  # fmt: skip
        # "start" through QMP resumes the paused VM; --follow prints the boot up to the login prompt.
        started = await ssh(argv, "start", "--follow", str(BOOT_TIMEOUT_S))
        procs.append(started)
        await started[1].expect(b"vm1: start done")
        await started[1].expect(LOGIN_PROMPT, BOOT_TIMEOUT_S)
        started[0].terminate()

        nmi = await ssh(argv, "nmi", "--follow", "60")
        procs.append(nmi)
        await nmi[1].expect(b"vm1: nmi done", 20)
        await nmi[1].expect(re.compile(NMI_PATTERN), 30)
        nmi[0].terminate()
        assert await asyncio.wait_for(nmi[0].wait(), 10) is not None
    finally:
        for proc, output in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await output.close()
        await daemon.stop()
