"""The QMP adapter's faults and state tracking against a scripted fake QMP server on a unix socket (no QEMU
needed; see test_guest.py for the real one).  The sans-I/O protocol alone is tested in
tests/unit/test_qmp_proto.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from serialmuxd.adapters import AdapterError, AdapterErrorKind, QmpAdapter, VmState

from .guest_support import StateWatcher

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian test"}, '
    b'"capabilities": ["oob"]}}\r\n'
)

# ----------------------------------------------------------------------------------------------------
# A scripted fake QMP server

HANG = "hang"  # never answer
EOF_MID_REPLY = "eof-mid-reply"  # write half a reply, then close the connection


class FakeQmpServer:
    """Speaks QMP on a unix socket the way a script says: greeting or not, canned replies, hangs, EOFs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.greet = True
        self.status = "running"
        self.responses: dict[
            str, object
        ] = {}  # command -> return value | ("error", class, desc) | HANG | ...
        self.on_command: Callable[[str], None] | None = None
        self.received: list[str] = []
        self.hung: list[int] = []  # ids of the commands left unanswered
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._received_changed = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._client, str(self.path))

    async def stop(self) -> None:
        """Close the listening socket and every connection (QEMU exiting); the socket file goes too."""
        if self._server is not None:
            self._server.close()
        for writer in self.writers:
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        if self.greet:
            writer.write(GREETING)
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                message = json.loads(line)
                name, command_id = message["execute"], message.get("id")
                self.received.append(name)
                self._received_changed.set()
                if name == "qmp_capabilities":
                    response = self.responses.get(name, {})
                elif name == "query-status":
                    response = self.responses.get(
                        name, {"status": self.status, "running": self.status == "running"}
                    )
                else:
                    response = self.responses.get(name, {})
                if response == HANG:
                    self.hung.append(command_id)
                    continue
                if response == EOF_MID_REPLY:
                    writer.write(b'{"return": {}, "i')
                    await writer.drain()
                    writer.close()
                    return
                if isinstance(response, tuple):
                    _, error_class, desc = response
                    reply: dict[str, object] = {"error": {"class": error_class, "desc": desc}}
                else:
                    reply = {"return": response}
                writer.write(json.dumps({**reply, "id": command_id}).encode() + b"\r\n")
                if self.on_command is not None:
                    self.on_command(name)

    def send_event(self, name: str, data: dict[str, object] | None = None) -> None:
        message: dict[str, object] = {"event": name, "timestamp": {"seconds": 1, "microseconds": 2}}
        if data is not None:
            message["data"] = data
        for writer in self.writers:
            if not writer.is_closing():
                writer.write(json.dumps(message).encode() + b"\r\n")

    def send_raw(self, data: bytes) -> None:
        for writer in self.writers:
            if not writer.is_closing():
                writer.write(data)

    async def wait_received(self, name: str, count: int = 1, within_s: float = 5.0) -> None:
        async with asyncio.timeout(within_s):
            while self.received.count(name) < count:
                self._received_changed.clear()
                await self._received_changed.wait()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory: unix socket paths are limited to 107 bytes, pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="smxq-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture
async def server(short_dir: Path) -> AsyncIterator[FakeQmpServer]:
    fake = FakeQmpServer(short_dir / "qmp.sock")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


TIMEOUT_S = 0.5
# Upper bounds only show that a call is bounded at all, not how precisely: generous enough that a loaded
# 2-core machine always meets them (the error texts say which deadline fired).
BOUND_S = TIMEOUT_S + 5.0
LONG_TIMEOUT_S = 60.0  # for "fails fast": a call that waited for its timeout could not finish under BOUND_S


@pytest_asyncio.fixture
async def adapter(short_dir: Path) -> AsyncIterator[QmpAdapter]:
    qmp = QmpAdapter(str(short_dir / "qmp.sock"), timeout_s=TIMEOUT_S, reconnect_max_s=0.2)
    try:
        yield qmp
    finally:
        await qmp.close()


def elapsed_since(start: float) -> float:
    return asyncio.get_running_loop().time() - start


@pytest_asyncio.fixture
async def patient_adapter(short_dir: Path) -> AsyncIterator[QmpAdapter]:
    """Like ``adapter`` with a timeout far beyond ``BOUND_S``."""
    qmp = QmpAdapter(str(short_dir / "qmp.sock"), timeout_s=LONG_TIMEOUT_S, reconnect_max_s=0.2)
    try:
        yield qmp
    finally:
        await qmp.close()


@pytest.mark.asyncio
async def test_socket_missing_is_stopped_and_actions_fail_fast(patient_adapter: QmpAdapter) -> None:
    adapter = patient_adapter
    start = asyncio.get_running_loop().time()
    with pytest.raises(AdapterError) as caught:
        await adapter.nmi()
    assert elapsed_since(start) < BOUND_S < LONG_TIMEOUT_S, "did not wait for the timeout"
    assert caught.value.kind is AdapterErrorKind.UNAVAILABLE
    assert str(caught.value) == (
        f"qmp {adapter.socket_path}: cannot send inject-nmi: no QMP socket at {adapter.socket_path} "
        "(QEMU is not running)"
    )
    report = await adapter.state_report()
    assert report.state is VmState.STOPPED
    assert "no QMP socket" in report.reason


@pytest.mark.asyncio
async def test_stale_socket_refusing_connections_is_stopped(short_dir: Path, adapter: QmpAdapter) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(short_dir / "qmp.sock"))  # bound, never listening: what a killed QEMU leaves behind
    stale.close()
    report = await adapter.state_report()
    assert report.state is VmState.STOPPED
    assert "refuses connections" in report.reason


@pytest.mark.asyncio
async def test_no_greeting_times_out_within_bound(server: FakeQmpServer, adapter: QmpAdapter) -> None:
    server.greet = False  # e.g. another client holds QEMU's one QMP connection
    start = asyncio.get_running_loop().time()
    with pytest.raises(AdapterError) as caught:
        await adapter.nmi()
    assert TIMEOUT_S <= elapsed_since(start) < BOUND_S
    assert caught.value.kind is AdapterErrorKind.TIMEOUT
    assert str(caught.value).startswith(f"qmp {adapter.socket_path}: no reply within 0.5 s to inject-nmi")
    report = await adapter.state_report()  # bounded the same way; says why
    assert report.state is VmState.UNKNOWN
    assert "sent no greeting" in report.reason


@pytest.mark.asyncio
async def test_error_reply_becomes_adapter_error_with_qemus_desc(
    server: FakeQmpServer, adapter: QmpAdapter
) -> None:
    server.responses["inject-nmi"] = ("error", "GenericError", "Injecting NMI is not supported here")
    with pytest.raises(AdapterError) as caught:
        await adapter.nmi()
    assert caught.value.kind is AdapterErrorKind.REFUSED
    assert "inject-nmi failed: Injecting NMI is not supported here (GenericError)" in str(caught.value)
    await adapter.reset()  # the connection is still good


@pytest.mark.asyncio
async def test_eof_in_the_middle_of_a_reply(server: FakeQmpServer, adapter: QmpAdapter) -> None:
    watcher = StateWatcher(adapter)
    await adapter.open()
    await watcher.wait_for(VmState.RUNNING, 2)
    server.responses["system_reset"] = EOF_MID_REPLY
    with pytest.raises(AdapterError) as caught:
        await adapter.reset()
    assert caught.value.kind is AdapterErrorKind.UNAVAILABLE
    assert "connection closed before the reply to system_reset" in str(caught.value)
    await server.stop()
    report = await watcher.wait_for(VmState.STOPPED, 2)
    assert "QEMU" in report.reason


@pytest.mark.asyncio
async def test_hang_after_capabilities_times_out_and_connection_survives(
    server: FakeQmpServer, adapter: QmpAdapter
) -> None:
    await adapter.open()
    assert await adapter.state() is VmState.RUNNING
    server.responses["inject-nmi"] = HANG
    start = asyncio.get_running_loop().time()
    with pytest.raises(AdapterError) as caught:
        await adapter.nmi()
    assert TIMEOUT_S <= elapsed_since(start) < BOUND_S
    assert caught.value.kind is AdapterErrorKind.TIMEOUT
    assert str(caught.value) == f"qmp {adapter.socket_path}: no reply within 0.5 s to inject-nmi"
    del server.responses["inject-nmi"]
    await adapter.nmi()
    assert server.received.count("qmp_capabilities") == 1  # same connection


@pytest.mark.asyncio
async def test_hang_in_capabilities_is_bounded(server: FakeQmpServer, adapter: QmpAdapter) -> None:
    server.responses["qmp_capabilities"] = HANG
    start = asyncio.get_running_loop().time()
    with pytest.raises(AdapterError) as caught:
        await adapter.restart()
    assert TIMEOUT_S <= elapsed_since(start) < BOUND_S
    assert caught.value.kind is AdapterErrorKind.TIMEOUT
    assert "system_powerdown" in str(caught.value)
    assert "within 0.5 s" in str(caught.value)


@pytest.mark.asyncio
async def test_events_keep_state_current(server: FakeQmpServer, adapter: QmpAdapter) -> None:
    watcher = StateWatcher(adapter)
    await adapter.open()
    await watcher.wait_for(VmState.RUNNING, 2)

    seen = len(watcher.reports)
    server.status = "paused"
    server.send_event("STOP")
    assert "paused" in (await watcher.wait_for(VmState.PAUSED, 2, seen)).reason

    seen = len(watcher.reports)
    server.status = "running"
    server.send_event("RESUME")
    await watcher.wait_for(VmState.RUNNING, 2, seen)

    seen = len(watcher.reports)
    server.send_event("GUEST_PANICKED", {"action": "pause", "info": {"type": "hyper-v"}})
    assert "panicked" in (await watcher.wait_for(VmState.CRASHED, 2, seen)).reason
    assert await adapter.state() is VmState.CRASHED  # query-status says running: the panic is remembered

    seen = len(watcher.reports)
    server.send_event("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
    await watcher.wait_for(VmState.RUNNING, 2, seen)

    seen = len(watcher.reports)
    server.status = "shutdown"
    server.send_event("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    assert "powered off" in (await watcher.wait_for(VmState.SHUTDOWN, 2, seen)).reason


@pytest.mark.asyncio
async def test_a_burst_of_reset_events_costs_few_queries(server: FakeQmpServer, adapter: QmpAdapter) -> None:
    await adapter.open()
    await server.wait_received("query-status")
    before = server.received.count("query-status")
    for _ in range(100):  # what QEMU sends while a PVH guest resets
        server.send_event("RESET", {"guest": True, "reason": "guest-reset"})
    server.send_event("POWERDOWN")  # a marker: once its refresh is done, all events were handled
    await server.wait_received("query-status", before + 1)
    await adapter.nmi()  # goes after any refresh still queued
    assert server.received.count("query-status") - before <= 3


@pytest.mark.asyncio
async def test_restart_completes_when_qemu_stays_after_poweroff(
    server: FakeQmpServer, adapter: QmpAdapter
) -> None:
    def guest_powers_off(command: str) -> None:
        if command == "system_powerdown":
            server.status = "shutdown"
            server.send_event("POWERDOWN")
            server.send_event("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
            server.send_event("STOP")
        elif command == "cont":
            server.status = "running"
            server.send_event("RESUME")

    server.on_command = guest_powers_off
    watcher = StateWatcher(adapter)
    await adapter.restart()
    await watcher.wait_for(VmState.SHUTDOWN, 2)
    await server.wait_received("cont")
    await watcher.wait_for(VmState.RUNNING, 2)
    order = [name for name in server.received if name in ("system_powerdown", "system_reset", "cont")]
    assert order == ["system_powerdown", "system_reset", "cont"]


@pytest.mark.asyncio
async def test_start_continues_a_paused_vm_and_resets_a_shut_down_one(
    server: FakeQmpServer, adapter: QmpAdapter
) -> None:
    server.status = "prelaunch"
    await adapter.start()
    assert server.received[-1] == "cont"

    server.status = "shutdown"
    await adapter.start()
    assert server.received[-2:] == ["system_reset", "cont"]

    server.status = "running"
    before = len(server.received)
    await adapter.start()
    assert server.received[before:] == ["query-status"]  # nothing to do


@pytest.mark.asyncio
async def test_start_when_qemu_is_not_running_says_so(adapter: QmpAdapter) -> None:
    with pytest.raises(AdapterError) as caught:
        await adapter.start()
    assert caught.value.kind is AdapterErrorKind.UNAVAILABLE
    assert "not launch one" in str(caught.value)


@pytest.mark.asyncio
async def test_reconnects_when_qemu_comes_back(short_dir: Path, adapter: QmpAdapter) -> None:
    watcher = StateWatcher(adapter)
    first = FakeQmpServer(short_dir / "qmp.sock")
    await first.start()
    await adapter.open()
    await watcher.wait_for(VmState.RUNNING, 2)

    seen = len(watcher.reports)
    await first.stop()
    assert "QEMU" in (await watcher.wait_for(VmState.STOPPED, 2, seen)).reason

    seen = len(watcher.reports)
    second = FakeQmpServer(short_dir / "qmp.sock")
    await second.start()
    try:
        await watcher.wait_for(VmState.RUNNING, 2, seen)  # without any call: the supervisor reconnects
        await adapter.nmi()
        assert second.received == ["qmp_capabilities", "query-status", "inject-nmi"]
    finally:
        await second.stop()


@pytest.mark.asyncio
async def test_oversize_message_drops_the_connection_as_unknown(
    server: FakeQmpServer, adapter: QmpAdapter
) -> None:
    watcher = StateWatcher(adapter)
    await adapter.open()
    await watcher.wait_for(VmState.RUNNING, 2)
    server.send_raw(b'{"event": "' + b"x" * (1 << 20) + b'"}\n')
    report = await watcher.wait_for(VmState.UNKNOWN, 5)
    assert "QMP protocol error" in report.reason


@pytest.mark.asyncio
async def test_closed_adapter_refuses_actions(server: FakeQmpServer, adapter: QmpAdapter) -> None:
    await adapter.nmi()
    await adapter.close()
    with pytest.raises(AdapterError, match="closed"):
        await adapter.nmi()


@pytest.mark.asyncio
async def test_late_reply_after_timeout_is_dropped(server: FakeQmpServer, adapter: QmpAdapter) -> None:
    await adapter.open()
    await adapter.state()
    server.responses["inject-nmi"] = HANG
    with pytest.raises(AdapterError):
        await adapter.nmi()
    # QEMU finally answers the abandoned command; nobody waits for it and the next call is unaffected.
    server.send_raw(json.dumps({"return": {}, "id": server.hung[-1]}).encode() + b"\r\n")
    del server.responses["inject-nmi"]
    await adapter.reset()
    assert adapter.connected
