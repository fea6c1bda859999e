"""Tests of the input token bucket (``core/pacing.py``): burst, refill with an explicit clock, the wait it
predicts, a clock that goes backwards, bad arguments, and hypothesis properties.

The model the properties hold the bucket to: over any run of takes, what it grants never exceeds what it
started with (one burst) plus what the elapsed time earned (``rate_bps`` per second); and a taker that always
asks for more than there is, often enough that the bucket never fills, gets all of that but the fraction of
a byte still in the bucket.  Times and rates are multiples of powers of two where a test needs exact sums.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serialmuxd.core.pacing import TokenBucket

# -- burst -------------------------------------------------------------------------------------------------


def test_a_new_bucket_grants_one_burst_at_once_and_no_more() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=0.0)
    assert bucket.take(80, 0.0) == 50
    assert bucket.take(1, 0.0) == 0


def test_takes_below_the_level_are_granted_whole() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=0.0)
    assert bucket.take(20, 0.0) == 20
    assert bucket.take(20, 0.0) == 20
    assert bucket.take(20, 0.0) == 10  # the rest of the burst
    assert bucket.take(0, 0.0) == 0


def test_taking_nothing_leaves_the_level_alone() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=0.0)
    for _ in range(5):
        assert bucket.take(0, 0.0) == 0
    assert bucket.take(50, 0.0) == 50


# -- refill ------------------------------------------------------------------------------------------------


def test_refill_is_rate_times_elapsed() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=0.0)
    assert bucket.take(50, 0.0) == 50
    assert bucket.take(100, 0.25) == 25
    assert bucket.take(100, 0.25) == 0  # the same instant earns nothing twice
    assert bucket.take(100, 0.375) == 12  # 12.5 earned: the half byte stays in the bucket
    assert bucket.take(100, 0.5) == 13  # 0.5 + 12.5


def test_fractions_of_a_byte_accumulate() -> None:
    bucket = TokenBucket(rate_bps=8, burst_bytes=1, now=0.0)
    assert bucket.take(1, 0.0) == 1
    assert bucket.take(1, 0.0625) == 0  # half a byte earned: not yet
    assert bucket.take(1, 0.125) == 1  # the two halves make one


def test_refill_stops_at_the_burst() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=0.0)
    assert bucket.take(50, 0.0) == 50
    assert bucket.take(10**9, 1000.0) == 50  # a long idle time is worth one burst, not rate * 1000 s
    assert bucket.take(10**9, 1000.0) == 0


def test_a_full_bucket_does_not_bank_idle_time() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=0.0)
    assert bucket.take(0, 10.0) == 0  # full all along: the 10 s are lost, as they should be
    assert bucket.take(50, 10.0) == 50
    assert bucket.take(100, 10.25) == 25


def test_attributes_are_the_configuration() -> None:
    bucket = TokenBucket(rate_bps=300, burst_bytes=30, now=5.0)
    assert (bucket.rate_bps, bucket.burst_bytes) == (300, 30)


# -- seconds_until -----------------------------------------------------------------------------------------


def test_seconds_until_is_zero_when_the_tokens_are_there() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=0.0)
    assert bucket.seconds_until(50, 0.0) == 0.0
    assert bucket.seconds_until(0, 0.0) == 0.0
    assert bucket.take(20, 0.0) == 20
    assert bucket.seconds_until(30, 0.0) == 0.0


def test_seconds_until_is_the_missing_tokens_over_the_rate() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=0.0)
    assert bucket.take(50, 0.0) == 50
    assert bucket.seconds_until(25, 0.0) == pytest.approx(0.25)
    assert bucket.seconds_until(25, 0.125) == pytest.approx(0.125)  # half of it has been earned since
    assert bucket.seconds_until(1, 0.25) == 0.0


def test_seconds_until_caps_the_request_at_the_burst() -> None:
    # More than a burst can never be taken at once; the wait is for a full bucket, not forever.
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=0.0)
    assert bucket.take(50, 0.0) == 50
    assert bucket.seconds_until(10**6, 0.0) == pytest.approx(0.5)
    assert bucket.take(10**6, 0.5) == 50


def test_seconds_until_takes_nothing() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=0.0)
    for _ in range(3):
        assert bucket.seconds_until(50, 0.0) == 0.0
    assert bucket.take(50, 0.0) == 50


def test_waiting_the_predicted_time_is_enough() -> None:
    bucket = TokenBucket(rate_bps=64, burst_bytes=32, now=0.0)
    assert bucket.take(32, 0.0) == 32
    wait_s = bucket.seconds_until(16, 0.0)
    assert wait_s == pytest.approx(0.25, abs=1e-12)  # rounded up by a few ulps, never down
    assert bucket.take(16, wait_s) == 16


def test_waiting_the_predicted_time_is_enough_at_a_large_clock_value() -> None:
    bucket = TokenBucket(rate_bps=114, burst_bytes=1, now=128.0)
    assert bucket.take(1, 128.0) == 1
    wake_at = 128.0 + bucket.seconds_until(1, 128.0)
    assert bucket.take(1, wake_at) == 1


# -- the clock going backwards -----------------------------------------------------------------------------


def test_a_clock_going_backwards_earns_nothing() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=10.0)
    assert bucket.take(50, 10.0) == 50
    assert bucket.take(50, 5.0) == 0  # five seconds "back": no refill, and no debt either
    assert bucket.seconds_until(10, 5.0) == pytest.approx(0.1)  # never negative, never the 5 s gap
    # Coming back to 10.0 must not count 5.0..10.0 as elapsed: that time was already accounted for.
    assert bucket.take(50, 10.0) == 0
    assert bucket.take(50, 10.25) == 25


def test_a_bucket_created_at_a_later_time_waits_for_it() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=100.0)
    assert bucket.take(50, 0.0) == 50  # the burst is there whatever the clock says
    assert bucket.take(50, 99.0) == 0
    assert bucket.take(50, 100.25) == 25


# -- invalid arguments -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate_bps", "burst_bytes"),
    [(0, 10), (-1, 10), (-0.5, 10), (10, 0), (10, -1), (0, 0)],
)
def test_non_positive_rate_or_burst_is_refused(rate_bps: float, burst_bytes: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        TokenBucket(rate_bps, burst_bytes, 0.0)


def test_nan_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(math.nan, 10, 0.0)


def test_a_negative_take_cannot_raise_the_level_above_the_burst() -> None:
    bucket = TokenBucket(rate_bps=100, burst_bytes=50, now=0.0)
    with pytest.raises(ValueError):
        bucket.take(-5, 0.0)
    assert bucket.take(10**6, 0.0) == 50


# -- hypothesis --------------------------------------------------------------------------------------------

rates = st.floats(min_value=0.5, max_value=1e6, allow_nan=False, allow_infinity=False)
bursts = st.integers(min_value=1, max_value=1 << 16)
steps = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=5.0), st.integers(min_value=0, max_value=1 << 20)),
    max_size=60,
)


def _slack(value: float) -> float:
    """Room for float rounding in sums of ``dt * rate`` (the bucket and the test round differently)."""
    return 1e-9 * max(1.0, value)


@settings(max_examples=500, deadline=None)
@given(rate_bps=rates, burst_bytes=bursts, start=st.floats(min_value=0.0, max_value=1e6), steps=steps)
def test_property_grants_never_exceed_burst_plus_earned(
    rate_bps: float, burst_bytes: int, start: float, steps: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket(rate_bps, burst_bytes, start)
    now, granted = start, 0
    for dt, wanted in steps:
        now += dt
        got = bucket.take(wanted, now)
        assert 0 <= got <= wanted
        granted += got
        allowed = burst_bytes + rate_bps * (now - start)
        assert granted <= allowed + _slack(allowed)
        assert bucket.seconds_until(wanted, now) >= 0.0


@settings(max_examples=500, deadline=None)
@given(
    rate_bps=rates,
    burst_bytes=bursts,
    times=st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=60),
)
def test_property_a_clock_jumping_around_earns_only_its_forward_progress(
    rate_bps: float, burst_bytes: int, times: list[float]
) -> None:
    """Times in any order (a clock stepped back and forth): only the highest time reached counts."""
    bucket = TokenBucket(rate_bps, burst_bytes, 0.0)
    granted, latest = 0, 0.0
    for now in times:
        granted += bucket.take(1 << 30, now)
        latest = max(latest, now)
        allowed = burst_bytes + rate_bps * latest
        assert granted <= allowed + _slack(allowed)


@settings(max_examples=500, deadline=None)
@given(
    rate_bps=st.integers(min_value=1, max_value=1 << 20),
    burst_bytes=bursts,
    ticks=st.lists(st.integers(min_value=0, max_value=1 << 10), max_size=60),
)
def test_property_a_greedy_taker_gets_everything_earned(
    rate_bps: int, burst_bytes: int, ticks: list[int]
) -> None:
    """Taking everything at every step, with steps short enough that the bucket never fills up: nothing
    earned is lost, only the fraction of a byte still in the bucket is not granted yet.  Steps are
    multiples of 1/1024 s, so that the model's arithmetic is exact."""
    step_s = min(1.0, (burst_bytes - 1) / rate_bps) if burst_bytes > 1 else 0.0
    bucket = TokenBucket(rate_bps, burst_bytes, 0.0)
    granted, elapsed_ticks = bucket.take(burst_bytes, 0.0), 0
    for tick in ticks:
        dt_ticks = min(tick, math.floor(step_s * 1024))
        elapsed_ticks += dt_ticks
        granted += bucket.take(1 << 40, elapsed_ticks / 1024)
        earned = burst_bytes + rate_bps * elapsed_ticks / 1024
        assert earned - 1 < granted <= earned + _slack(earned)
