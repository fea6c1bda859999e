"""Tests of the scrollback ring: unit cases plus hypothesis against a plain-bytes model.

The model of a ring is ``bytes`` holding everything ever appended, with ``base`` = the ring's start offset:
the byte at absolute offset ``o`` is ``model[o - base]``.
"""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from serialmuxd.core.ring import ReadResult, RingBuffer

# -- unit cases ----------------------------------------------------------------------------------------------


def test_empty_ring() -> None:
    ring = RingBuffer(8)
    assert (ring.capacity, ring.start, ring.end, len(ring)) == (8, 0, 0, 0)
    assert ring.read(0) == ReadResult(b"", 0, 0)
    assert ring.tail(5) == ReadResult(b"", 0, 0)
    assert ring.tail_lines(3, 100) == ReadResult(b"", 0, 0)
    assert ring.replay_window(100) == ReadResult(b"", 0, 0)


def test_append_and_read_without_wrap() -> None:
    ring = RingBuffer(8)
    ring.append(b"abc")
    ring.append(b"")
    ring.append(b"de")
    assert (ring.start, ring.end, len(ring)) == (0, 5, 5)
    assert ring.read(0) == ReadResult(b"abcde", 0, 0)
    assert ring.read(3) == ReadResult(b"de", 3, 0)
    assert ring.read(5) == ReadResult(b"", 5, 0)


def test_exact_capacity_keeps_everything() -> None:
    ring = RingBuffer(4)
    ring.append(b"abcd")
    assert (ring.start, ring.end, len(ring)) == (0, 4, 4)
    assert ring.read(0) == ReadResult(b"abcd", 0, 0)
    ring.append(b"e")
    assert (ring.start, ring.end) == (1, 5)
    assert ring.read(0) == ReadResult(b"bcde", 1, 1)


def test_wraparound_keeps_newest_bytes_in_order() -> None:
    ring = RingBuffer(5)
    ring.append(b"abc")
    ring.append(b"defg")  # straddles the physical end of the buffer
    assert (ring.start, ring.end) == (2, 7)
    assert ring.read(2) == ReadResult(b"cdefg", 2, 0)
    assert ring.read(4) == ReadResult(b"efg", 4, 0)
    ring.append(b"hi")
    assert ring.read(0) == ReadResult(b"efghi", 4, 4)


def test_oversize_chunk_keeps_its_tail() -> None:
    ring = RingBuffer(4)
    ring.append(b"xy")
    ring.append(b"0123456789")
    assert (ring.start, ring.end, len(ring)) == (8, 12, 4)
    assert ring.read(0) == ReadResult(b"6789", 8, 8)
    assert ring.read(9) == ReadResult(b"789", 9, 0)


def test_limit_caps_data_but_not_missed() -> None:
    ring = RingBuffer(4)
    ring.append(b"abcdefgh")
    assert ring.read(5, limit=2) == ReadResult(b"fg", 5, 0)
    assert ring.read(0, limit=1) == ReadResult(b"e", 4, 4)
    assert ring.read(0, limit=0) == ReadResult(b"", 4, 4)
    assert ring.read(6, limit=100) == ReadResult(b"gh", 6, 0)


def test_offset_beyond_end_and_bad_arguments_raise() -> None:
    ring = RingBuffer(4)
    ring.append(b"ab")
    with pytest.raises(ValueError, match="beyond the end"):
        ring.read(3)
    with pytest.raises(ValueError):
        ring.read(-1)
    with pytest.raises(ValueError):
        ring.read(0, limit=-1)
    with pytest.raises(ValueError):
        ring.tail(-1)
    with pytest.raises(ValueError):
        ring.tail_lines(-1, 10)
    with pytest.raises(ValueError):
        RingBuffer(0)
    with pytest.raises(ValueError):
        RingBuffer(4, start_offset=-1)


def test_start_offset_continues_a_stream() -> None:
    ring = RingBuffer(4, start_offset=1000)
    assert (ring.start, ring.end) == (1000, 1000)
    ring.append(b"abcdef")
    assert (ring.start, ring.end) == (1002, 1006)
    assert ring.read(1003) == ReadResult(b"def", 1003, 0)
    # Offsets from before this ring's life are reported as missed, like overwritten ones.
    assert ring.read(0) == ReadResult(b"cdef", 1002, 1002)


def test_offsets_stay_within_64_bits() -> None:
    ring = RingBuffer(4, start_offset=(1 << 64) - 3)
    ring.append(b"abc")
    assert ring.end == 1 << 64
    with pytest.raises(OverflowError):
        ring.append(b"d")
    assert ring.read(ring.start) == ReadResult(b"abc", (1 << 64) - 3, 0)


def test_accepts_bytearray_and_memoryview() -> None:
    ring = RingBuffer(6)
    ring.append(bytearray(b"ab"))
    ring.append(memoryview(b"xcdx")[1:3])
    assert ring.read(0).data == b"abcd"


def test_growth_then_wrap_with_start_offset() -> None:
    ring = RingBuffer(5, start_offset=7)
    for piece in (b"ab", b"cd", b"e", b"fg", b"hijklm", b"n"):
        ring.append(piece)
    assert (ring.start, ring.end) == (7 + 9, 7 + 14)
    assert ring.read(0) == ReadResult(b"jklmn", 16, 16)


def test_memory_is_committed_lazily() -> None:
    tracemalloc.start()
    try:
        ring = RingBuffer(64 << 20)
        ring.append(b"x" * 1000)
        size, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size < 1 << 20  # an idle port must not pay for its whole scrollback up front
    assert ring.read(0).data == b"x" * 1000


def test_tail() -> None:
    ring = RingBuffer(4)
    ring.append(b"abcdef")
    assert ring.tail(2) == ReadResult(b"ef", 4, 0)
    assert ring.tail(10) == ReadResult(b"cdef", 2, 0)
    assert ring.tail(0) == ReadResult(b"", 6, 0)


def test_tail_lines() -> None:
    ring = RingBuffer(64)
    ring.append(b"one\ntwo\nthree\n")
    assert ring.tail_lines(1, 100).data == b"three\n"
    assert ring.tail_lines(2, 100) == ReadResult(b"two\nthree\n", 4, 0)
    assert ring.tail_lines(9, 100).data == b"one\ntwo\nthree\n"
    ring.append(b"fou")  # an unfinished line counts as a line
    assert ring.tail_lines(1, 100).data == b"fou"
    assert ring.tail_lines(2, 100).data == b"three\nfou"
    assert ring.tail_lines(2, 5).data == b"e\nfou"  # max_bytes wins, mid-line
    assert ring.tail_lines(0, 100) == ReadResult(b"", ring.end, 0)


def test_tail_lines_blank_lines_are_lines() -> None:
    ring = RingBuffer(64)
    ring.append(b"a\n\n\n")
    assert ring.tail_lines(1, 100).data == b"\n"
    assert ring.tail_lines(2, 100).data == b"\n\n"
    assert ring.tail_lines(3, 100).data == b"a\n\n\n"


def test_replay_window_starts_at_a_line_start() -> None:
    ring = RingBuffer(64)
    ring.append(b"first line\nsecond\nthird")
    assert ring.replay_window(100).data == b"first line\nsecond\nthird"  # the stream start is a line start
    assert ring.replay_window(9) == ReadResult(b"third", 18, 0)  # "ond\nthird" -> cut after "\n"
    assert ring.replay_window(12) == ReadResult(b"second\nthird", 11, 0)  # begins right after a "\n"
    assert ring.replay_window(13) == ReadResult(b"second\nthird", 11, 0)  # "\nsecond..." -> cut after it
    assert ring.replay_window(4).data == b"hird"  # no newline: one long line, kept whole


def test_replay_window_after_wrap() -> None:
    ring = RingBuffer(8)
    ring.append(b"aaaa\nbbbbbb\ncc")
    assert ring.read(ring.start).data == b"bbbbb\ncc"
    # The oldest retained byte is mid-line and the byte before it is gone: trim to the next line.
    assert ring.replay_window(100) == ReadResult(b"cc", ring.end - 2, 0)


# -- hypothesis: random appends and reads against the model ------------------------------------------------

# Small alphabet with many newlines and 0xFF so that line logic and binary data both get exercised.
chunks = st.binary(max_size=40).map(lambda b: bytes(x if x % 5 else 0x0A for x in b)) | st.binary(max_size=40)


def model_read(model: bytes, base: int, start: int, offset: int, limit: int | None) -> ReadResult:
    begin = max(offset, start)
    stop = base + len(model) if limit is None else min(base + len(model), begin + limit)
    return ReadResult(model[begin - base : stop - base], begin, max(0, start - offset))


def model_tail_lines(retained: bytes, first: int, nlines: int, max_bytes: int) -> ReadResult:
    """Reference: split the window into lines the obvious way and keep the last ``nlines``."""
    window = retained[max(0, len(retained) - max_bytes) :]
    window_offset = first + len(retained) - len(window)
    if nlines == 0 or not window:
        return ReadResult(b"", first + len(retained), 0)
    lines = [part + b"\n" for part in window.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    if lines[-1] == b"":
        lines.pop()
    kept = b"".join(lines[-nlines:])
    return ReadResult(kept, window_offset + len(window) - len(kept), 0)


@settings(max_examples=300)
@given(
    capacity=st.integers(1, 64),
    start_offset=st.integers(0, 1 << 40),
    steps=st.lists(st.tuples(chunks, st.integers(0, 200), st.none() | st.integers(0, 50)), max_size=30),
)
def test_reads_match_model(
    capacity: int, start_offset: int, steps: list[tuple[bytes, int, int | None]]
) -> None:
    ring = RingBuffer(capacity, start_offset)
    model = b""
    for chunk, back, limit in steps:
        ring.append(chunk)
        model += chunk
        end = start_offset + len(model)
        start = max(start_offset, end - capacity)
        assert (ring.start, ring.end, len(ring)) == (start, end, end - start)
        offset = max(0, end - back)
        got = ring.read(offset, limit)
        assert got == model_read(model, start_offset, start, offset, limit)
        # Accounting: every byte from the requested offset to the cursor is either delivered or missed.
        assert got.offset + len(got.data) - offset == got.missed + len(got.data)
        assert got.end == got.offset + len(got.data)
        with pytest.raises(ValueError):
            ring.read(end + 1)


@settings(max_examples=300)
@given(
    capacity=st.integers(1, 64),
    base=st.integers(0, 1000),
    steps=st.lists(chunks, max_size=20),
    nbytes=st.integers(0, 80),
    nlines=st.integers(0, 12),
)
def test_tails_match_model(capacity: int, base: int, steps: list[bytes], nbytes: int, nlines: int) -> None:
    ring = RingBuffer(capacity, start_offset=base)
    for chunk in steps:
        ring.append(chunk)
    model = b"".join(steps)
    end = base + len(model)
    retained = model[max(0, len(model) - capacity) :]
    first = end - len(retained)  # == ring.start

    window = retained[max(0, len(retained) - nbytes) :]
    window_offset = end - len(window)
    assert ring.tail(nbytes) == ReadResult(window, window_offset, 0)

    assert ring.tail_lines(nlines, nbytes) == model_tail_lines(retained, first, nlines, nbytes)

    # replay_window: keep the window when it provably begins a line (stream start, or a retained b"\n" just
    # before it); otherwise cut after its first b"\n"; with no b"\n" at all, keep it whole.
    begins_line = window_offset == base or (window_offset > first and model[window_offset - base - 1] == 0x0A)
    if begins_line or b"\n" not in window:
        expected = ReadResult(window, window_offset, 0)
    else:
        cut = window.index(b"\n") + 1
        expected = ReadResult(window[cut:], window_offset + cut, 0)
    assert ring.replay_window(nbytes) == expected


class RingMachine(RuleBasedStateMachine):
    """Stateful version: reader cursors follow the stream across wraps and must account for every byte."""

    @initialize(capacity=st.integers(1, 48), start_offset=st.integers(0, 1000))
    def setup(self, capacity: int, start_offset: int) -> None:
        self.ring = RingBuffer(capacity, start_offset)
        self.base = start_offset
        self.model = b""
        # Per reader: where it joined, its cursor, the segments (offset, bytes) it got, and bytes it missed.
        self.joined: list[int] = []
        self.cursors: list[int] = []
        self.segments: list[list[tuple[int, bytes]]] = []
        self.missed: list[int] = []

    @rule(chunk=chunks)
    def append(self, chunk: bytes) -> None:
        self.ring.append(chunk)
        self.model += chunk

    @precondition(lambda self: len(self.cursors) < 4)
    @rule(from_start=st.booleans())
    def add_reader(self, from_start: bool) -> None:
        cursor = self.base if from_start else self.ring.end
        self.joined.append(cursor)
        self.cursors.append(cursor)
        self.segments.append([])
        self.missed.append(0)

    @precondition(lambda self: bool(self.cursors))
    @rule(data=st.data(), limit=st.none() | st.integers(0, 30))
    def reader_reads(self, data: st.DataObject, limit: int | None) -> None:
        i = data.draw(st.integers(0, len(self.cursors) - 1))
        got = self.ring.read(self.cursors[i], limit)
        assert got.offset - got.missed == self.cursors[i]
        assert got.missed == max(0, self.ring.start - self.cursors[i])
        self.segments[i].append((got.offset, got.data))
        self.missed[i] += got.missed
        self.cursors[i] = got.end

    @invariant()
    def accounting(self) -> None:
        if not hasattr(self, "ring"):
            return
        ring = self.ring
        assert self.base <= ring.start <= ring.end == self.base + len(self.model)
        assert ring.end - ring.start == len(ring) <= ring.capacity
        assert ring.start == max(self.base, ring.end - ring.capacity)
        assert ring.read(ring.start).data == self.model[ring.start - self.base :]
        for joined, cursor, segments, missed in zip(
            self.joined, self.cursors, self.segments, self.missed, strict=True
        ):
            # Nothing lost silently: delivered + missed == distance travelled, and every segment is the
            # stream's own bytes at its offset (so no duplication or reordering either).
            assert sum(len(chunk) for _, chunk in segments) + missed == cursor - joined
            for offset, chunk in segments:
                assert chunk == self.model[offset - self.base : offset - self.base + len(chunk)]


TestRingMachine = RingMachine.TestCase
TestRingMachine.settings = settings(max_examples=150, stateful_step_count=40)
