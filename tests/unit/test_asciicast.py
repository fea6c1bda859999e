"""The asciicast v2 document the recording endpoint sends: header, event times, and UTF-8 text that is
never split across events (no sockets: the encoder is a plain function)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from serialmuxd.frontends.http.recording import asciicast, asciicast_events
from serialmuxd.hub.status import RecordingSlice, ScrollbackSlice


def _recording(
    data: bytes, segments: list[tuple[int, float]], offset: int = 0, window: tuple[int, int] | None = None
) -> RecordingSlice:
    return RecordingSlice(
        ScrollbackSlice(data, offset, offset, offset + len(data)), tuple(segments), offset, window
    )


def test_header_and_events_with_original_timing() -> None:
    rec = _recording(b"one\r\ntwo\r\n", [(100, 1_700_000_000.25), (105, 1_700_000_001.75)], 100, (132, 43))
    lines = asciicast(rec, "vm1 100-110", 0.0).decode().splitlines()
    assert json.loads(lines[0]) == {
        "version": 2,
        "width": 132,
        "height": 43,
        "timestamp": 1_700_000_000,
        "title": "vm1 100-110",
    }
    assert [json.loads(line) for line in lines[1:]] == [[0.0, "o", "one\r\n"], [1.5, "o", "two\r\n"]]


def test_default_size_and_an_empty_recording() -> None:
    lines = asciicast(_recording(b"", []), "vm1 0-0", 1234.9).decode().splitlines()
    header = json.loads(lines[0])
    assert (header["width"], header["height"], header["timestamp"]) == (80, 24, 1234)
    assert lines[1:] == []


def test_a_character_split_across_chunks_comes_out_whole() -> None:
    euro = "€".encode()  # three bytes
    data = b"a" + euro[:1] + euro[1:2] + euro[2:] + b"b"
    events = asciicast_events(data, [(0, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)], 0)
    # The head alone (offset 2's chunk) is no event; the character appears with its last byte.
    assert events == [(1.0, "a"), (3.0, "€"), (4.0, "b")]


def test_invalid_bytes_are_replaced_and_a_cut_character_ends_the_last_event() -> None:
    events = asciicast_events(b"\xffok\xe2\x82", [(10, 5.0)], 10)
    assert events == [(5.0, "\ufffdok\ufffd")]


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(min_size=1, max_size=80),
    cuts=st.lists(st.integers(1, 400), max_size=20),
)
def test_any_chunking_decodes_to_the_whole_text(text: str, cuts: list[int]) -> None:
    data = text.encode()
    bounds = sorted({c for c in cuts if c < len(data)})
    segments = [(0, 0.0)] + [(b, float(i + 1)) for i, b in enumerate(bounds)]
    events = asciicast_events(data, segments, 0)
    assert "".join(t for _, t in events) == text
    assert all(t for _, t in events)
    assert [a for a, _ in events] == sorted(a for a, _ in events)
