"""Fixtures and helpers for tests against the real QEMU guest (``serialmuxd.guest``).

* ``guest_image`` (session): builds the guest once per machine into the cache (``SERIALMUXD_GUEST_CACHE``
  or ``~/.cache/serialmuxd/guest``); ~20 ms when it is up to date.  Tests that use it are skipped, with the
  reason, only when ``qemu-system-x86_64`` is not installed; a failing build is a test error.
* ``guest_vm`` (function): a ``GuestVM`` in its own short run directory, *not yet started* (each test picks
  ``paused``/``nmi_panic``/...); stopped by pid and its directory removed afterwards, whatever happened.
* ``SerialConsole``: COM1 over the unix socket with ``expect``; ``StateWatcher``: waits for an adapter's
  state-change reports.  Both wait for bytes or events with deadlines, never with sleeps.

The fixtures are made available to every e2e test module by ``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from serialmuxd.adapters import HypervisorAdapter, StateReport, VmState
from serialmuxd.guest import (
    LOGIN_PROMPT,
    PASSWORD_PROMPT,
    GuestImage,
    GuestVM,
    ensure_guest,
    qemu_binary,
)

from .support import Expecter

QEMU_SKIP_REASON = "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
BOOT_TIMEOUT_S = 60.0  # TCG on a busy 2-core machine: typically 2.5-5 s to the login prompt

requires_qemu = pytest.mark.skipif(qemu_binary() is None, reason=QEMU_SKIP_REASON)


@pytest.fixture(scope="session")
def guest_image() -> Iterator[GuestImage]:
    if qemu_binary() is None:
        pytest.skip(QEMU_SKIP_REASON)
    # A sync fixture runs outside any event loop, so asyncio.run is safe and keeps the image loop-free.
    yield asyncio.run(ensure_guest())


@pytest_asyncio.fixture
async def guest_vm(guest_image: GuestImage) -> AsyncIterator[GuestVM]:
    vm = GuestVM(guest_image)
    try:
        yield vm
    finally:
        await vm.close()


class SerialConsole(Expecter):
    """The guest's COM1 through QEMU's unix socket: everything read is kept in ``buffer``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self._reader = reader
        self._writer = writer
        self._task = asyncio.get_running_loop().create_task(self._pump())

    @classmethod
    async def connect(cls, path: Path) -> SerialConsole:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def _pump(self) -> None:
        try:
            while data := await self._reader.read(65536):
                self.feed(data)
        except OSError:
            pass
        finally:
            self.feed_eof()

    def mark(self) -> int:
        """The current end of the buffer: pass it as ``start`` to expect only what comes later."""
        return len(self.buffer)

    def send(self, data: bytes) -> None:
        self._writer.write(data)

    async def login(
        self, user: str = "root", password: str = "root", within_s: float = BOOT_TIMEOUT_S
    ) -> None:
        """Log in at the login prompt that is (or will be) on the console, and wait for the shell prompt.

        busybox ``login`` flushes pending input *before* it prints ``Password:`` and turns echo off just
        after, so answering at once is safe; at worst the password is echoed once.
        """
        start = (await self.expect(LOGIN_PROMPT, within_s)).end()
        self.send(user.encode() + b"\n")
        start = (await self.expect(PASSWORD_PROMPT, 20, start)).end()
        self.send(password.encode() + b"\n")
        await self.expect(re.compile(rb"@sertest:~[#$] "), 20, start)

    async def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class StateWatcher:
    """Records an adapter's state-change reports; ``wait_for`` returns the first matching one."""

    def __init__(self, adapter: HypervisorAdapter) -> None:
        self.reports: list[StateReport] = []
        self._changed = asyncio.Event()
        self._unsubscribe = adapter.on_state_change(self._seen)

    def _seen(self, report: StateReport) -> None:
        self.reports.append(report)
        self._changed.set()

    async def wait_for(self, state: VmState, within_s: float = 10.0, start: int = 0) -> StateReport:
        """The first report of ``state`` at index ``start`` or later (``len(reports)`` = only new ones)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while True:
            for report in self.reports[start:]:
                if report.state is state:
                    return report
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {state} report within {within_s} s; got {self.reports}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def close(self) -> None:
        self._unsubscribe()
