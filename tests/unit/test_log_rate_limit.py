"""The log rate limiter on a fake clock: at most ``burst`` lines per interval and key, and every suppressed
line counted and handed out exactly once (by the interval-end flush or by the next line of that key)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from serialmuxd.obs.logging import LogRateLimiter


def test_burst_then_counted_then_reported_once_by_the_flush() -> None:
    limiter = LogRateLimiter(interval_s=1.0)
    assert [limiter.admit("k", 0.0, 2).log for _ in range(2)] == [True, True]
    third = limiter.admit("k", 0.1, 2)
    assert not third.log and third.flush_in_s == 0.9  # the first suppression asks for a flush at the end
    assert limiter.admit("k", 0.2, 2).flush_in_s is None  # and only the first
    assert limiter.flush("k", 0.5) == 0  # the interval has not ended
    assert limiter.flush("k", 1.0) == 2
    assert limiter.flush("k", 1.1) == 0
    assert limiter.admit("k", 1.2, 2) == (True, 0, None)  # already reported: nothing unreported


def test_without_a_flush_the_next_line_reports_the_count() -> None:
    limiter = LogRateLimiter(interval_s=1.0)
    limiter.admit("k", 0.0, 1)
    limiter.admit("k", 0.5, 1)
    limiter.admit("k", 0.6, 1)
    assert limiter.admit("k", 5.0, 1) == (True, 2, None)


def test_keys_are_independent() -> None:
    limiter = LogRateLimiter(interval_s=1.0)
    assert limiter.admit("a", 0.0, 1).log
    assert limiter.admit("b", 0.0, 1).log
    assert not limiter.admit("a", 0.1, 1).log


def test_the_key_table_stays_bounded() -> None:
    limiter = LogRateLimiter(interval_s=1.0)
    for i in range(LogRateLimiter.MAX_KEYS * 3):
        limiter.admit(f"k{i}", float(i), 1)
    assert len(limiter._windows) <= LogRateLimiter.MAX_KEYS


@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.7), min_size=1, max_size=300),
    burst=st.integers(min_value=1, max_value=5),
    flush_every=st.integers(min_value=1, max_value=50),
)
def test_every_line_is_logged_or_counted_exactly_once(
    gaps: list[float], burst: int, flush_every: int
) -> None:
    limiter = LogRateLimiter(interval_s=1.0)
    now = 0.0
    reported = 0
    logged_at: list[float] = []
    for i, gap in enumerate(gaps):
        now += gap
        verdict = limiter.admit("k", now, burst)
        reported += verdict.unreported
        if verdict.log:
            logged_at.append(now)
        if i % flush_every == 0:
            reported += limiter.flush("k", now)
    reported += limiter.flush("k", now + 2.0)  # surely past the interval (now + 1.0 can round short)
    assert len(logged_at) + reported == len(gaps)
    # Fixed intervals: at most burst lines per interval, so at most 2 * burst in any span that long.
    for j, start in enumerate(logged_at):
        assert sum(1 for t in logged_at[j:] if t - start < 1.0) <= 2 * burst
