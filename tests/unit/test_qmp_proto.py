"""QMP's sans-I/O protocol (``proto.qmp``) fed bytes: whole, byte by byte, in odd chunks and split at random.
No sockets; the adapter against a fake QMP server is in ``tests/e2e/test_qmp.py``."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serialmuxd.proto.qmp import (
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
    brief_json,
)

GREETING = (
    b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian test"}, '
    b'"capabilities": ["oob"]}}\r\n'
)

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


# What QEMU sends: the handshake, then events and replies to the two commands the client sent once ready.
HANDSHAKE = GREETING + b'{"return": {}, "id": 1}\r\n'
SESSION = (
    b'{"timestamp": {"seconds": 5, "microseconds": 250000}, "event": "RESET", "data": {"guest": false}}\r\n'
    + b'{"return": {"status": "running", "running": true}, "id": 2}\r\n'
    + b"\r\n"
    + b'{"error": {"class": "GenericError", "desc": "no"}, "id": 3}\r\n'
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def events_of(protocol: QmpProtocol, chunks: list[bytes]) -> list[QmpProtocolEvent]:
    for chunk in chunks:
        protocol.receive_data(chunk)
    return protocol.events_received()


@given(st.lists(st.integers(min_value=0, max_value=len(HANDSHAKE)), max_size=20))
def test_any_split_of_the_handshake_gives_the_same_events(cuts: list[int]) -> None:
    protocol = QmpProtocol()
    events = events_of(protocol, split_at(HANDSHAKE, cuts))
    assert events == [QmpGreeting("7.2.22", "Debian test", ("oob",)), QmpReady()]
    assert protocol.phase is QmpPhase.READY


@given(st.lists(st.integers(min_value=0, max_value=len(SESSION)), max_size=30))
def test_any_split_of_a_session_gives_the_same_events(cuts: list[int]) -> None:
    protocol = ready_protocol()
    assert protocol.send_command("query-status") == 2
    assert protocol.send_command("inject-nmi") == 3
    events = events_of(protocol, [*split_at(SESSION, cuts), b""])
    assert events == [
        QmpEvent("RESET", {"guest": False}, 5.25),
        QmpReturn(2, "query-status", {"status": "running", "running": True}),
        QmpErrorReply(3, "inject-nmi", "GenericError", "no"),
        QmpClosed(0),
    ]
    assert protocol.awaiting_reply == {}


def test_brief_json_cuts_long_values() -> None:
    assert brief_json({"a": 1}) == '{"a": 1}'
    long = brief_json({"pad": "x" * 500})
    assert len(long) == 120 and long.endswith("...")
