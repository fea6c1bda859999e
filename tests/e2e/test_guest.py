"""The QMP adapter and the guest helpers against a real QEMU running our test guest (``serialmuxd.guest``).

Each test starts its VM paused, connects to COM1 first and only then lets the vCPUs run: QEMU's socket
chardev (``wait=off``) drops what the guest writes while no client is connected.  The whole file takes
about 30 s under TCG on a 2-core machine.

What the guest does, as verified here:
* ``inject-nmi`` -> ``Uhhuh. NMI received for unknown reason XX on CPU 0.`` + ``Dazed and confused`` within
  milliseconds, guest keeps running; with ``unknown_nmi_panic`` -> ``Kernel panic - not syncing: NMI: Not
  continuing`` and, with a pvpanic device, the QMP event ``GUEST_PANICKED`` (state ``crashed``).  Without
  pvpanic QEMU cannot tell: ``query-status`` still says ``running`` after a panic.
* ``system_reset`` -> the kernel boots again from ``Linux version`` to the login prompt.
* ``system_powerdown`` (``restart``) -> the guest's acpid runs ``poweroff``; with QEMU's ``-no-shutdown`` the
  adapter then resets and continues it, so it boots again; without it QEMU exits and the state says why.
  A guest without an ACPI handler (``sertest.acpid=0``) ignores the button: only ``reset`` helps there.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from serialmuxd.adapters import AdapterError, AdapterErrorKind, QmpAdapter, VmState
from serialmuxd.guest import (
    BANNER,
    KERNEL_START,
    LOGIN_PROMPT,
    NMI_CONTINUE,
    NMI_PANIC,
    NMI_PATTERN,
    POWER_BUTTON,
    POWER_DOWN,
    GuestVM,
)

from .guest_support import BOOT_TIMEOUT_S, SerialConsole, StateWatcher

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def qmp(guest_vm: GuestVM) -> AsyncIterator[QmpAdapter]:
    adapter = QmpAdapter(str(guest_vm.qmp_socket), timeout_s=5.0, reconnect_max_s=0.5)
    try:
        yield adapter
    finally:
        await adapter.close()


async def boot(
    vm: GuestVM,
    qmp: QmpAdapter,
    *,
    nmi_panic: bool = False,
    pvpanic: str | None = None,
    no_shutdown: bool = False,
) -> SerialConsole:
    """Start the VM paused, attach to COM1, then let the adapter start it (QMP ``cont``)."""
    await vm.start(paused=True, nmi_panic=nmi_panic, pvpanic=pvpanic, no_shutdown=no_shutdown)
    console = await SerialConsole.connect(vm.serial_socket)
    assert await qmp.state() is VmState.PAUSED
    await qmp.start()
    return console


async def test_boot_output_state_and_nmi(guest_vm: GuestVM, qmp: QmpAdapter) -> None:
    console = await boot(guest_vm, qmp)
    try:
        await console.expect(KERNEL_START, BOOT_TIMEOUT_S)
        await console.expect(BANNER, BOOT_TIMEOUT_S)
        await console.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S)
        assert await qmp.state() is VmState.RUNNING
        assert qmp.current.reason == "running"

        loop = asyncio.get_running_loop()
        start, sent_at = console.mark(), loop.time()
        await qmp.nmi()
        await console.expect(re.compile(NMI_PATTERN), 10, start)
        await console.expect(NMI_CONTINUE, 10, start)
        print(f"NMI -> console line: {(loop.time() - sent_at) * 1000:.1f} ms (accel {guest_vm.accel})")
        assert await qmp.state() is VmState.RUNNING  # the kernel logs it and carries on
        assert BANNER in guest_vm.console_output()  # the chardev log has it too
    finally:
        await console.close()


async def test_nmi_panics_the_kernel_when_asked_to(guest_vm: GuestVM, qmp: QmpAdapter) -> None:
    watcher = StateWatcher(qmp)
    console = await boot(guest_vm, qmp, nmi_panic=True, pvpanic="none")
    try:
        await console.expect(b"SERTEST-GUEST: nmi: unknown_nmi_panic=1", BOOT_TIMEOUT_S)
        start = console.mark()
        await qmp.nmi()
        await console.expect(re.compile(NMI_PATTERN), 10, start)
        await console.expect(NMI_PANIC, 10, start)
        # pvpanic tells QEMU, QEMU tells us (GUEST_PANICKED); query-status alone would still say "running".
        report = await watcher.wait_for(VmState.CRASHED, 10)
        assert "panicked" in report.reason
        assert await qmp.state() is VmState.CRASHED

        # A hard reset gets a panicked guest back.
        start = console.mark()
        await qmp.reset()
        await console.expect(KERNEL_START, BOOT_TIMEOUT_S, start)
        assert await qmp.state() is VmState.RUNNING
    finally:
        watcher.close()
        await console.close()


async def test_reset_boots_again_to_the_login_prompt(guest_vm: GuestVM, qmp: QmpAdapter) -> None:
    console = await boot(guest_vm, qmp)
    try:
        await console.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        start, sent_at = console.mark(), loop.time()
        await qmp.reset()
        after_kernel = (await console.expect(KERNEL_START, BOOT_TIMEOUT_S, start)).end()
        after_banner = (await console.expect(BANNER, BOOT_TIMEOUT_S, after_kernel)).end()
        await console.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S, after_banner)
        print(f"reset -> login prompt: {loop.time() - sent_at:.2f} s")
        assert await qmp.state() is VmState.RUNNING
        # The same COM1 connection carried the whole reboot: a daemon port stays attached.
        await console.login()
    finally:
        await console.close()


async def test_restart_powers_off_and_boots_again_with_no_shutdown(
    guest_vm: GuestVM, qmp: QmpAdapter
) -> None:
    watcher = StateWatcher(qmp)
    console = await boot(guest_vm, qmp, no_shutdown=True)
    try:
        start = (await console.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S)).end()
        await qmp.restart()
        start = (await console.expect(POWER_BUTTON, 20, start)).end()
        start = (await console.expect(POWER_DOWN, 20, start)).end()
        report = await watcher.wait_for(VmState.SHUTDOWN, 10)
        assert "powered off" in report.reason
        # The adapter now resets and continues the VM itself (QEMU stayed, in status "shutdown").
        start = (await console.expect(KERNEL_START, BOOT_TIMEOUT_S, start)).end()
        await console.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S, start)
        assert await qmp.state() is VmState.RUNNING
        assert guest_vm.is_running()
    finally:
        watcher.close()
        await console.close()


async def test_restart_without_no_shutdown_leaves_qemu_stopped(guest_vm: GuestVM, qmp: QmpAdapter) -> None:
    watcher = StateWatcher(qmp)
    console = await boot(guest_vm, qmp)
    try:
        await console.expect(LOGIN_PROMPT, BOOT_TIMEOUT_S)
        await qmp.restart()
        await console.expect(POWER_DOWN, 20)
        assert await guest_vm.wait_exited(20)
        report = await watcher.wait_for(VmState.STOPPED, 10)
        assert "-no-shutdown" in report.reason
    finally:
        watcher.close()
        await console.close()


async def test_killed_qemu_is_stopped_and_comes_back(guest_vm: GuestVM, qmp: QmpAdapter) -> None:
    watcher = StateWatcher(qmp)
    await qmp.open()
    first = await watcher.wait_for(VmState.STOPPED, 5)  # nothing started yet: no socket
    assert "no QMP socket" in first.reason

    console = await boot(guest_vm, qmp)
    await console.expect(KERNEL_START, BOOT_TIMEOUT_S)
    await watcher.wait_for(VmState.RUNNING, 5)
    await console.close()

    seen = len(watcher.reports)
    await guest_vm.kill()  # like a crash of QEMU: no SHUTDOWN event, stale sockets left behind
    report = await watcher.wait_for(VmState.STOPPED, 5, seen)
    assert "QEMU" in report.reason
    with pytest.raises(AdapterError) as caught:
        await qmp.nmi()
    assert caught.value.kind is AdapterErrorKind.UNAVAILABLE
    assert "QEMU is not running" in str(caught.value)

    # Same run directory, same socket paths: the adapter reconnects by itself.
    seen = len(watcher.reports)
    console = await boot(guest_vm, qmp)
    try:
        await watcher.wait_for(VmState.RUNNING, 10, seen)
        await console.expect(BANNER, BOOT_TIMEOUT_S)
        start = console.mark()
        await qmp.nmi()
        await console.expect(NMI_CONTINUE, 10, start)
    finally:
        watcher.close()
        await console.close()
