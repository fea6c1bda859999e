"""QMP: the sans-I/O protocol fed bytes (whole, byte by byte, in odd chunks), and the adapter's faults and
state tracking against a scripted fake QMP server on a unix socket (no QEMU needed; see test_guest.py for
the real one)."""

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
from serialmuxd.adapters.qmp import (
    QmpClosed,
    QmpErrorReply,
    QmpEvent,
    QmpGreeting,
    QmpPhase,
    QmpProtocol,
    QmpProtocolError,
    QmpProtocolEvent,
    QmpReady,
    QmpReturn,
)

from .guest_support import StateWatcher

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian test"}, '
    b'"capabilities": ["oob"]}}\r\n'
)

# ----------------------------------------------------------------------------------------------------
# Sans-I/O protocol

Chunker = Callable[[bytes], list[bytes]]
CHUNKERS: dict[str, Chunker] = {
    "whole": lambda data: [data],
    "bytewise": lambda data: [data[i : i + 1] for i in range(len(data))],
    "sevens": lambda data: [data[i : i + 7] for i in range(0, len(data), 7)],
}


@pytest.fixture(params=sorted(CHUNKERS))
def chunker(request: pytest.FixtureRequest) -> Chunker:
    chosen: Chunker = CHUNKERS[request.param]
    return chosen


def feed(protocol: QmpProtocol, data: bytes, chunker: Chunker) -> list[QmpProtocolEvent]:
    events: list[QmpProtocolEvent] = []
    for piece in chunker(data):
        protocol.receive_data(piece)
        events += protocol.events_received()
    return events


def ready_protocol() -> QmpProtocol:
    protocol = QmpProtocol()
    protocol.receive_data(GREETING)
    protocol.receive_data(b'{"return": {}, "id": 1}\r\n')
    protocol.events_received()
    protocol.data_to_send()
    return protocol


def sent_messages(protocol: QmpProtocol) -> list[dict[str, object]]:
    return [json.loads(line) for line in protocol.data_to_send().splitlines()]


def test_greeting_queues_capabilities_then_ready(chunker: Chunker) -> None:
    protocol = QmpProtocol()
    phases = [protocol.phase]
    events = feed(protocol, GREETING, chunker)
    assert events == [QmpGreeting("7.2.22", "Debian test", ("oob",))]
    assert sent_messages(protocol) == [{"execute": "qmp_capabilities", "id": 1}]
    phases.append(protocol.phase)
    assert feed(protocol, b'{"return": {}, "id": 1}\r\n', chunker) == [QmpReady()]
    phases.append(protocol.phase)
    assert phases == [QmpPhase.GREETING, QmpPhase.NEGOTIATING, QmpPhase.READY]


def test_commands_before_ready_are_refused() -> None:
    protocol = QmpProtocol()
    with pytest.raises(RuntimeError, match="phase greeting"):
        protocol.send_command("inject-nmi")


def test_replies_are_matched_by_id_with_events_interleaved(chunker: Chunker) -> None:
    protocol = ready_protocol()
    nmi = protocol.send_command("inject-nmi")
    status = protocol.send_command("query-status")
    assert sent_messages(protocol) == [
        {"execute": "inject-nmi", "id": nmi},
        {"execute": "query-status", "id": status},
    ]
    incoming = (
        b'{"timestamp": {"seconds": 1700000000, "microseconds": 500000}, "event": "STOP"}\r\n'
        + f'{{"return": {{}}, "id": {nmi}}}\r\n'.encode()
        + b'{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 0}}\r\n'
        + f'{{"return": {{"status": "running", "running": true}}, "id": {status}}}\r\n'.encode()
    )
    events = feed(protocol, incoming, chunker)
    assert events == [
        QmpEvent("STOP", {}, 1700000000.5),
        QmpReturn(nmi, "inject-nmi", {}),
        QmpEvent("RESUME", {}, 1.0),
        QmpReturn(status, "query-status", {"status": "running", "running": True}),
    ]
    assert protocol.awaiting_reply == {}


def test_error_reply_carries_qemus_words(chunker: Chunker) -> None:
    protocol = ready_protocol()
    command_id = protocol.send_command("no-such-command", {"x": 1})
    assert sent_messages(protocol) == [
        {"execute": "no-such-command", "id": command_id, "arguments": {"x": 1}}
    ]
    reply = {"error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found"}}
    events = feed(protocol, json.dumps({**reply, "id": command_id}).encode() + b"\r\n", chunker)
    assert events == [
        QmpErrorReply(
            command_id, "no-such-command", "CommandNotFound", "The command no-such-command has not been found"
        )
    ]


def test_event_data_is_kept(chunker: Chunker) -> None:
    protocol = ready_protocol()
    line = b'{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}\n'
    assert feed(protocol, line, chunker) == [
        QmpEvent("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    ]


def test_blank_lines_are_ignored_and_eof_closes(chunker: Chunker) -> None:
    protocol = ready_protocol()
    assert feed(protocol, b"\r\n\n  \n", chunker) == []
    protocol.receive_data(b'{"event": "ST')
    protocol.receive_data(b"")
    assert protocol.events_received() == [QmpClosed(unfinished_bytes=len(b'{"event": "ST'))]
    assert protocol.phase is QmpPhase.CLOSED
    protocol.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(QmpProtocolError, match="after the connection closed"):
        protocol.receive_data(b"{}\n")


def test_oversize_line_without_newline_is_an_error() -> None:
    protocol = QmpProtocol(max_line_bytes=100)
    protocol.receive_data(b"x" * 100)  # at the limit: still waiting
    with pytest.raises(QmpProtocolError, match="longer than 100 bytes"):
        protocol.receive_data(b"x")
    assert protocol.phase is QmpPhase.CLOSED


def test_oversize_line_arriving_whole_is_an_error() -> None:
    protocol = QmpProtocol(max_line_bytes=100)
    with pytest.raises(QmpProtocolError):
        protocol.receive_data(b'{"QMP": {}, "pad": "' + b"y" * 200 + b'"}\n')


def test_bytewise_feeding_of_a_large_line_stays_linear() -> None:
    # 200 KiB fed one byte at a time must not rescan the buffer each time (it would take minutes).
    protocol = ready_protocol()
    payload = b'{"event": "X", "data": {"pad": "' + b"z" * 200_000 + b'"}}\n'
    for index in range(len(payload)):
        protocol.receive_data(payload[index : index + 1])
    (event,) = protocol.events_received()
    assert isinstance(event, QmpEvent)
    assert event.name == "X"


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"this is not json\n", "not JSON"),
        (b"\xff\xfe{}\n", "not JSON"),
        (b"[1, 2]\n", "expected a JSON object"),
        (b'{"hello": 1}\n', "neither greeting, reply nor event"),
        (b'{"return": {}}\n', "without a usable id"),
        (b'{"return": {}, "id": "one"}\n', "without a usable id"),
        (b'{"return": {}, "id": 99}\n', "never sent"),
        (b'{"event": 5}\n', "malformed event"),
        (b'{"error": "boom", "id": 2}\n', "malformed error reply"),
        (GREETING, "unexpected greeting in phase ready"),
    ],
)
def test_garbage_is_a_protocol_error(line: bytes, match: str, chunker: Chunker) -> None:
    protocol = ready_protocol()
    protocol.send_command("inject-nmi")  # id 2
    with pytest.raises(QmpProtocolError, match=match):
        feed(protocol, line, chunker)
    assert protocol.phase is QmpPhase.CLOSED


def test_reply_before_greeting_is_an_error() -> None:
    protocol = QmpProtocol()
    with pytest.raises(QmpProtocolError):
        protocol.receive_data(b'{"return": {}, "id": 1}\n')


def test_refused_capabilities_is_an_error() -> None:
    protocol = QmpProtocol()
    protocol.receive_data(GREETING)
    with pytest.raises(QmpProtocolError, match="qmp_capabilities refused"):
        protocol.receive_data(b'{"error": {"class": "GenericError", "desc": "no"}, "id": 1}\n')


def test_events_before_the_bad_line_are_still_delivered() -> None:
    protocol = ready_protocol()
    with pytest.raises(QmpProtocolError):
        protocol.receive_data(b'{"event": "STOP"}\nnonsense\n')
    assert protocol.events_received() == [QmpEvent("STOP", {})]


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
SLACK_S = 0.4  # scheduling margin on a loaded 2-core machine


@pytest_asyncio.fixture
async def adapter(short_dir: Path) -> AsyncIterator[QmpAdapter]:
    qmp = QmpAdapter(str(short_dir / "qmp.sock"), timeout_s=TIMEOUT_S, reconnect_max_s=0.2)
    try:
        yield qmp
    finally:
        await qmp.close()


def elapsed_since(start: float) -> float:
    return asyncio.get_running_loop().time() - start


@pytest.mark.asyncio
async def test_socket_missing_is_stopped_and_actions_fail_fast(adapter: QmpAdapter) -> None:
    start = asyncio.get_running_loop().time()
    with pytest.raises(AdapterError) as caught:
        await adapter.nmi()
    assert elapsed_since(start) < TIMEOUT_S
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
    assert TIMEOUT_S <= elapsed_since(start) < TIMEOUT_S + SLACK_S
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
    assert TIMEOUT_S <= elapsed_since(start) < TIMEOUT_S + SLACK_S
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
    assert elapsed_since(start) < TIMEOUT_S + SLACK_S
    assert caught.value.kind is AdapterErrorKind.TIMEOUT
    assert "system_powerdown" in str(caught.value)


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
