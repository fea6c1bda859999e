"""RFC 6455 checks aiohttp leaves to us (``proto.wshandshake``): the opening handshake, close codes, and the
mask rule for client frames, fed whole, byte by byte and split anywhere."""

from __future__ import annotations

import base64
import itertools
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serialmuxd.proto.wshandshake import (
    ClientFrameChecker,
    HandshakeRefusal,
    check_handshake,
    close_frame,
    close_reply_code,
)

KEY = base64.b64encode(b"0123456789abcdef").decode()
GOOD = [
    ("Host", "127.0.0.1:8480"),
    ("Connection", "keep-alive, Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", KEY),
    ("Origin", "http://127.0.0.1:8480"),
]


def _with(
    *changes: tuple[str, str | None], extra: list[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """GOOD with headers replaced (value None: removed), plus ``extra`` lines appended."""
    replaced = dict(changes)
    kept = [(n, replaced.get(n, v)) for n, v in GOOD]
    return [(n, v) for n, v in kept if v is not None] + (extra or [])


def test_a_browser_handshake_is_accepted() -> None:
    assert check_handshake(GOOD) is None
    # Header names are case-insensitive, Upgrade's value too; Connection may come on two lines.
    lower = [(n.lower(), v) for n, v in _with(("Upgrade", "WebSocket"), ("Connection", "keep-alive"))]
    assert check_handshake([*lower, ("connection", "upgrade")]) is None
    assert check_handshake(_with(("Origin", None))) is None  # tools send no Origin
    assert check_handshake(_with(extra=[("Content-Length", "0")])) is None


@pytest.mark.parametrize("version", ["8", "7", "12", "14", "13, 8", ""])
def test_a_version_other_than_13_asks_for_13(version: str) -> None:
    refusal = check_handshake(_with(("Sec-WebSocket-Version", version)))
    assert isinstance(refusal, HandshakeRefusal) and refusal.upgrade_required
    assert "13" in refusal.reason


def test_a_missing_version_asks_for_13() -> None:
    refusal = check_handshake(_with(("Sec-WebSocket-Version", None)))
    assert refusal is not None and refusal.upgrade_required


@pytest.mark.parametrize(
    ("name", "second"),
    [
        ("Upgrade", "websocket"),
        ("Upgrade", "h2c"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
        ("Host", "evil.example"),
        ("Origin", "http://evil.example"),
    ],
)
def test_a_second_header_that_must_be_single_is_refused(name: str, second: str) -> None:
    refusal = check_handshake(_with(extra=[(name.upper(), second)]))
    assert refusal == HandshakeRefusal(f"more than one {name} header")


@pytest.mark.parametrize(
    "headers",
    [
        _with(("Upgrade", "h2c")),
        _with(("Upgrade", None)),
        _with(("Upgrade", "websocket, h2c")),
        _with(("Connection", "keep-alive")),
        _with(("Connection", None)),
        _with(("Sec-WebSocket-Key", None)),
        _with(("Sec-WebSocket-Key", "not base64 at all, no!!")),
        _with(("Sec-WebSocket-Key", base64.b64encode(b"x" * 18).decode())),  # 24 characters, 18 bytes
        _with(("Sec-WebSocket-Key", base64.b64encode(b"x" * 15).decode())),
        _with(("Sec-WebSocket-Key", KEY[:-2] + "\x00=")),
        _with(extra=[("Content-Length", "5")]),
        _with(extra=[("Transfer-Encoding", "chunked")]),
    ],
)
def test_malformed_handshakes_are_refused_with_400(headers: list[tuple[str, str]]) -> None:
    refusal = check_handshake(headers)
    assert refusal is not None and not refusal.upgrade_required and refusal.reason


def test_http_1_0_is_refused() -> None:
    assert check_handshake(GOOD, (1, 0)) == HandshakeRefusal("a WebSocket handshake needs HTTP/1.1")
    assert check_handshake(GOOD, (2, 0)) is None


def test_peer_values_in_reasons_are_short_and_escaped() -> None:
    refusal = check_handshake(_with(("Upgrade", "\x1b[31m" + "x" * 500)))
    assert refusal is not None and "\x1b" not in refusal.reason and len(refusal.reason) < 120


@pytest.mark.parametrize(
    ("received", "answer"),
    [
        (None, 1000),
        (0, 1000),  # a close frame without a code
        (1000, 1000),
        (1001, 1000),
        (1002, 1000),
        (1003, 1000),
        (1007, 1000),
        (1011, 1000),
        (1014, 1000),
        (3000, 1000),
        (4999, 1000),
        (1004, 1002),
        (1005, 1002),
        (1006, 1002),  # Autobahn 7.9.5: reserved for reporting, never on the wire
        (1015, 1002),
        (1016, 1002),
        (999, 1002),
        (2999, 1002),
        (5000, 1002),
        (65535, 1002),
    ],
)
def test_close_reply_code(received: int | None, answer: int) -> None:
    assert close_reply_code(received) == answer


def test_close_frame() -> None:
    assert close_frame(1002) == b"\x88\x02\x03\xea"
    assert close_frame(1002, b"why") == b"\x88\x05\x03\xeawhy"
    assert len(close_frame(1002, b"x" * 500)) == 2 + 2 + 123


# -- client frames ---------------------------------------------------------------------------------------
def frame(payload: bytes, *, masked: bool = True, opcode: int = 2) -> bytes:
    """A client frame as RFC 6455 §5.2 lays it out."""
    head = bytes((0x80 | opcode,))
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes((mask_bit | n,))
    elif n < 65536:
        head += bytes((mask_bit | 126,)) + struct.pack("!H", n)
    else:
        head += bytes((mask_bit | 127,)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def feed(chunks: list[bytes]) -> tuple[int, ClientFrameChecker]:
    checker = ClientFrameChecker()
    return sum(checker.receive_data(chunk) for chunk in chunks), checker


def test_masked_frames_pass_whole() -> None:
    stream = frame(b"") + frame(b"hello") + frame(b"x" * 200) + frame(b"y" * 70000) + frame(b"p", opcode=9)
    passed, checker = feed([stream])
    assert passed == len(stream) and checker.violation is None


def test_an_unmasked_frame_stops_the_stream_at_its_header() -> None:
    good = frame(b"GOOD")
    stream = good + frame(b"BAD", masked=False) + frame(b"LATER")
    passed, checker = feed([stream])
    assert passed == len(good)
    assert checker.violation is not None and "unmasked" in checker.violation
    assert checker.receive_data(frame(b"more")) == 0  # nothing after the violation, ever


def test_an_unmasked_control_frame_is_a_violation_too() -> None:
    passed, checker = feed([frame(b"", masked=False, opcode=8)])
    assert passed == 0 and checker.violation is not None


_payloads = st.lists(st.binary(max_size=300) | st.just(b"z" * 70000), max_size=6)


@given(
    before=_payloads,
    bad=st.none() | st.binary(max_size=200),
    after=_payloads,
    cuts=st.lists(st.integers(min_value=0, max_value=2**20), max_size=12),
)
def test_split_anywhere_nothing_of_an_unmasked_frame_passes(
    before: list[bytes], bad: bytes | None, after: list[bytes], cuts: list[int]
) -> None:
    clean = b"".join(frame(p) for p in before)
    stream = (
        clean + (frame(bad, masked=False) if bad is not None else b"") + b"".join(frame(p) for p in after)
    )
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    passed, checker = feed(chunks)
    whole, _ = feed([stream])
    if bad is None:
        assert passed == whole == len(stream) and checker.violation is None
    else:
        assert whole == len(clean)
        # Split between the two header bytes, the first one may have gone on; a parser waits for the
        # second, so no byte of the bad frame's payload (at len(clean) + 2 or later) ever passes.
        assert passed == len(clean) + (1 if len(clean) + 1 in points else 0)
        assert checker.violation is not None


def test_byte_by_byte_equals_whole() -> None:
    stream = frame(b"a" * 130) + frame(b"b") + frame(b"bad", masked=False) + frame(b"c")
    passed, _ = feed([stream[i : i + 1] for i in range(len(stream))])
    assert passed == len(frame(b"a" * 130)) + len(frame(b"b")) + 1  # the bad header's first byte
