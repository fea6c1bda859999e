"""``serialmux`` against the real QEMU guest: ``send start`` resumes the paused VM, ``send nmi`` (and the
confirmed ``~n`` of a ``connect`` session) makes the kernel print its NMI line in a parallel ``connect``.
Skipped, with the reason, where QEMU is not installed (the ``guest_vm`` fixture)."""

from __future__ import annotations

import re
from pathlib import Path

import pexpect
import pytest

from serialmuxd.guest import BANNER, LOGIN_PROMPT, NMI_CONTINUE, NMI_PATTERN, GuestVM

from .client_support import SERIALMUX, client_env, daemon, get_json, run_client, spawn, wait_until
from .guest_support import BOOT_TIMEOUT_S

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
SENT_BY = rb"vm1: NMI sent by http 127\.0\.0\.1:\d+"


async def test_send_nmi_shows_the_kernel_nmi_line_in_a_parallel_connect(
    guest_vm: GuestVM, tmp_path: Path
) -> None:
    # Paused until the daemon holds COM1: a socket chardev drops output while nobody is connected.
    await guest_vm.start(paused=True)
    port = f"""
[[ports]]
name = "vm1"
device = "unix:{guest_vm.serial_socket}"
replay_bytes = 0
reconnect_initial_s = 0.05
reconnect_max_s = 0.2

[ports.hypervisor]
type = "qmp"
socket = "{guest_vm.qmp_socket}"
timeout_s = 10.0
"""
    # Everything below runs in other processes (daemon, QEMU, clients): blocking calls are fine here.
    with daemon(tmp_path, port) as (_, url):
        env = client_env(tmp_path, url)
        wait_until(lambda: get_json(f"{url}/api/v1/ports/vm1")["state"] == "online", "COM1 connected")
        viewer = spawn([SERIALMUX, "connect", "vm1", "--read-only"], env)
        viewer.expect_exact("read-only")
        started = run_client(env, "send", "start", "vm1")
        assert started.returncode == 0 and started.stderr == b"start sent to vm1\n", started
        viewer.expect_exact(BANNER, timeout=BOOT_TIMEOUT_S)
        viewer.expect_exact(LOGIN_PROMPT, timeout=BOOT_TIMEOUT_S)
        listed = run_client(env, "ports")
        assert re.search(rb"vm1\s+online\s+-\s+1\s+running", listed.stdout), listed.stdout

        sent = run_client(env, "send", "nmi", "vm1")
        assert sent.returncode == 0 and sent.stderr == b"nmi sent to vm1\n", sent
        # The kernel's lines and the daemon's notice (on the status line) come in either order.
        expected: list[
            re.Pattern[str] | re.Pattern[bytes] | str | bytes | type[pexpect.EOF] | type[pexpect.TIMEOUT]
        ]
        expected = [re.compile(NMI_PATTERN), re.compile(re.escape(NMI_CONTINUE)), re.compile(SENT_BY)]
        seen: set[int] = set()
        while len(seen) < len(expected):
            seen.add(viewer.expect(expected, timeout=20))

        # The escape key's NMI asks first: anything but y cancels, y sends it.
        writer = spawn([SERIALMUX, "connect", "vm1"], env)
        writer.expect_exact("you have write access")
        writer.send("~n")
        writer.expect_exact("send an NMI to vm1? [y/N]")
        writer.send("q")
        writer.expect_exact("nmi cancelled")
        writer.send("~n")
        writer.expect_exact("send an NMI to vm1? [y/N]")
        writer.send("y")
        mine: list[
            re.Pattern[str] | re.Pattern[bytes] | str | bytes | type[pexpect.EOF] | type[pexpect.TIMEOUT]
        ]
        mine = [re.compile(NMI_PATTERN), re.compile(b"nmi sent to vm1")]
        seen.clear()
        while len(seen) < len(mine):
            seen.add(writer.expect(mine, timeout=20))
        viewer.expect(NMI_PATTERN, timeout=20)
        # send reset: the machine boots again, under the same sessions.
        reset = run_client(env, "send", "reset", "vm1")
        assert reset.returncode == 0 and reset.stderr == b"reset sent to vm1\n", reset
        viewer.expect_exact(BANNER, timeout=BOOT_TIMEOUT_S)
        writer.expect_exact(BANNER, timeout=BOOT_TIMEOUT_S)
        writer.send("~.")
        writer.expect(pexpect.EOF)
        writer.close()
        assert writer.exitstatus == 0
        viewer.close()
