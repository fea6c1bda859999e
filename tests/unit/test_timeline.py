"""The timeline of guest output: unit cases, then hypothesis against properties that need no second copy of
the coalescing rule.

What any correct timeline must give, whatever it keeps: with ``c_i`` the running maximum of the chunk
times up to chunk ``i`` (the clamped wall clock), a byte of chunk ``i`` at or above ``floor`` has a time in
``[c_i - coalesce_s, c_i]``; times never decrease along the stream; at most ``max_samples`` samples.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serialmuxd.core.timeline import Timeline, max_samples_for


def test_empty_timeline_knows_no_time() -> None:
    timeline = Timeline(100)
    assert (timeline.floor, timeline.end, len(timeline)) == (100, 100, 0)
    assert timeline.time_at(100) is None
    assert timeline.segments(100, 200) == []


def test_a_byte_gets_its_own_chunks_time() -> None:
    timeline = Timeline(coalesce_s=0.005)
    timeline.record(0, 5, 10.0)
    timeline.record(5, 3, 11.5)
    timeline.record(8, 2, 20.0)
    assert [timeline.time_at(o) for o in range(10)] == [10.0] * 5 + [11.5] * 3 + [20.0] * 2
    assert timeline.time_at(10) is None  # not printed yet
    assert timeline.segments(0, 10) == [(0, 10.0), (5, 11.5), (8, 20.0)]
    assert timeline.segments(3, 9) == [(3, 10.0), (5, 11.5), (8, 20.0)]
    assert timeline.segments(6, 7) == [(6, 11.5)]
    assert timeline.segments(7, 7) == []


def test_chunks_closer_than_the_coalescing_interval_share_a_sample() -> None:
    timeline = Timeline(coalesce_s=0.005)
    timeline.record(0, 1, 1.000)
    timeline.record(1, 1, 1.004)  # same sample
    timeline.record(2, 1, 1.0049)  # still within 5 ms of the sample, not of the previous chunk
    timeline.record(3, 1, 1.006)  # new sample
    assert len(timeline) == 2
    assert [timeline.time_at(o) for o in range(4)] == [1.0, 1.0, 1.0, 1.006]


def test_a_steady_trickle_cannot_stretch_one_sample() -> None:
    timeline = Timeline(coalesce_s=0.005, max_samples=100_000)
    for i in range(10_000):  # one byte every millisecond for ten seconds
        timeline.record(i, 1, i / 1000)
    assert 1_600 <= len(timeline) <= 2_000  # about one sample per 5 ms, not one per chunk
    for offset in range(0, 10_000, 7):
        got = timeline.time_at(offset)
        assert got is not None
        assert offset / 1000 - 0.005 - 1e-9 <= got <= offset / 1000


def test_the_oldest_samples_go_with_a_floor() -> None:
    timeline = Timeline(1000, max_samples=8, coalesce_s=0)
    for i in range(100):
        timeline.record(1000 + 10 * i, 10, float(i))
        assert len(timeline) <= 8
    assert timeline.floor > 1000
    assert timeline.time_at(1000) is None
    assert timeline.time_at(timeline.floor - 1) is None
    first = (timeline.floor - 1000) // 10
    assert timeline.time_at(timeline.floor) == float(first)
    assert timeline.time_at(1999) == 99.0
    # Bytes older than the floor are given the oldest known time.
    assert timeline.segments(1000, 1000 + 10 * (first + 1)) == [(1000, float(first))]


def test_samples_of_bytes_the_ring_dropped_are_forgotten() -> None:
    timeline = Timeline(0, max_samples=1000, coalesce_s=0)
    for i in range(100):
        timeline.record(10 * i, 10, float(i))
    timeline.forget_before(5)  # nothing is wholly below 5
    assert (len(timeline), timeline.floor) == (100, 0)
    timeline.forget_before(95)  # samples 0..8 end at or before 90; too few to move the arrays yet
    assert len(timeline) == 100
    timeline.forget_before(505)  # sample 50 (bytes 500..509) still covers offset 505
    assert (len(timeline), timeline.floor) == (50, 500)
    assert timeline.time_at(505) == 50.0 and timeline.time_at(499) is None
    assert timeline.segments(505, 520) == [(505, 50.0), (510, 51.0)]
    timeline.forget_before(10_000)  # past the end: the newest sample stays
    assert (len(timeline), timeline.floor, timeline.time_at(995)) == (1, 990, 99.0)


def test_the_cap_follows_the_ring_size() -> None:
    assert max_samples_for(4096) == 64
    assert max_samples_for(64 * 1024) == 512
    assert max_samples_for(1 << 20) == 8192
    assert max_samples_for(1 << 30) == 8192


def test_a_wall_clock_stepped_back_does_not_reorder() -> None:
    timeline = Timeline(coalesce_s=0)
    timeline.record(0, 1, 50.0)
    timeline.record(1, 1, 40.0)  # NTP stepped the clock back
    timeline.record(2, 1, 50.5)
    assert [timeline.time_at(o) for o in range(3)] == [50.0, 50.0, 50.5]


def test_chunks_come_in_stream_order() -> None:
    timeline = Timeline()
    timeline.record(0, 4, 1.0)
    with pytest.raises(ValueError):
        timeline.record(2, 4, 2.0)
    timeline.record(4, 0, 3.0)  # empty chunks are ignored
    assert timeline.end == 4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Timeline(max_samples=2)
    with pytest.raises(ValueError):
        Timeline(coalesce_s=-1)
    with pytest.raises(ValueError):
        Timeline(-1)


# -- properties ----------------------------------------------------------------------------------------------

chunks = st.lists(
    st.tuples(st.integers(1, 50), st.floats(-0.01, 2.0, allow_nan=False)),  # (length, time step)
    min_size=1,
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(
    chunks=chunks,
    start=st.integers(0, 2**40),
    max_samples=st.integers(4, 40),
    coalesce_s=st.sampled_from([0.0, 0.005, 0.1, 1.0]),
)
def test_times_bounds_and_order(
    chunks: list[tuple[int, float]], start: int, max_samples: int, coalesce_s: float
) -> None:
    timeline = Timeline(start, max_samples=max_samples, coalesce_s=coalesce_s)
    offset, now, clamped = start, 1.7e9, 0.0
    expected: list[tuple[int, int, float]] = []  # (offset, length, clamped time) per chunk
    for length, step in chunks:
        now += step
        clamped = max(clamped, now) if expected else now
        timeline.record(offset, length, now)
        expected.append((offset, length, clamped))
        offset += length
        assert len(timeline) <= max_samples
    assert timeline.end == offset
    assert start <= timeline.floor <= offset
    previous = None
    for chunk_offset, length, chunk_time in expected:
        for o in range(chunk_offset, chunk_offset + length):
            got = timeline.time_at(o)
            if o < timeline.floor:
                assert got is None
                continue
            assert got is not None
            assert chunk_time - coalesce_s - 1e-6 <= got <= chunk_time
            assert previous is None or got >= previous
            previous = got
    assert timeline.time_at(offset) is None
    # Forgetting what a ring dropped never changes the time of a byte it still holds.
    keep = start + (offset - start) // 2
    before = [timeline.time_at(o) for o in range(keep, offset)]
    timeline.forget_before(keep)
    assert [timeline.time_at(o) for o in range(keep, offset)] == before
    assert timeline.floor <= max(keep, start) or before[0] is None


@settings(max_examples=300, deadline=None)
@given(
    chunks=chunks,
    max_samples=st.integers(4, 40),
    cut=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_segments_cover_a_range_in_order(
    chunks: list[tuple[int, float]], max_samples: int, cut: tuple[float, float]
) -> None:
    timeline = Timeline(max_samples=max_samples, coalesce_s=0.005)
    offset, now = 0, 0.0
    for length, step in chunks:
        now += step
        timeline.record(offset, length, now)
        offset += length
    low, high = sorted(int(c * offset) for c in cut)
    segments = timeline.segments(low, high)
    if low == high:
        assert segments == []
        return
    assert segments[0][0] == low
    assert all(a[0] < b[0] for a, b in itertools.pairwise(segments))
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(segments))
    assert all(low <= o < high for o, _ in segments)
    # Every byte at or above the floor is in the segment whose time is its own.
    bounds = [o for o, _ in segments[1:]] + [high]
    for (seg_start, seg_time), seg_end in zip(segments, bounds, strict=True):
        for o in range(max(seg_start, timeline.floor), seg_end):
            assert timeline.time_at(o) == seg_time
