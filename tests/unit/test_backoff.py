"""The reconnect backoff policy, driven directly: attempt counts and a scripted random source in, delays
out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serialmuxd.core.backoff import Backoff, BackoffPolicy, no_jitter


def scripted(*values: float) -> Iterator[float]:
    yield from values


def jittered(*values: float) -> Backoff:
    draws = scripted(*values)
    return Backoff(BackoffPolicy(0.1, 1.0, jitter=0.5), lambda: next(draws))


def test_first_delay_is_initial() -> None:
    assert Backoff(BackoffPolicy(0.25, 4.0)).next_delay_s() == 0.25


def test_delays_double_then_stay_at_the_cap() -> None:
    backoff = Backoff(BackoffPolicy(0.1, 1.0))
    assert [backoff.next_delay_s() for _ in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert backoff.attempt == 7


def test_cap_equal_to_initial_never_grows() -> None:
    backoff = Backoff(BackoffPolicy(2.0, 2.0))
    assert {backoff.next_delay_s() for _ in range(5)} == {2.0}


def test_reset_after_success_starts_over() -> None:
    backoff = Backoff(BackoffPolicy(0.1, 1.0))
    for _ in range(10):
        backoff.next_delay_s()
    backoff.reset()
    assert backoff.attempt == 0
    assert [backoff.next_delay_s() for _ in range(2)] == pytest.approx([0.1, 0.2])


def test_jitter_only_shortens_and_uses_the_source() -> None:
    # r = 0 → the full base delay; r → 1 → just above (1 - jitter) * base.
    backoff = jittered(0.0, 0.5, 0.999999, 0.0)
    assert backoff.next_delay_s() == pytest.approx(0.1)
    assert backoff.next_delay_s() == pytest.approx(0.2 * 0.75)
    assert backoff.next_delay_s() == pytest.approx(0.4 * 0.5, rel=1e-5)
    assert backoff.next_delay_s() == pytest.approx(0.8)


def test_out_of_range_draws_are_clamped() -> None:
    backoff = jittered(-3.0, 7.0)
    assert backoff.next_delay_s() == pytest.approx(0.1)
    assert backoff.next_delay_s() == pytest.approx(0.2 * 0.5)


def test_without_jitter_the_source_is_not_called() -> None:
    def refuse() -> float:
        raise AssertionError("called")

    assert Backoff(BackoffPolicy(0.1, 1.0), refuse).next_delay_s() == 0.1
    assert no_jitter() == 0.0


def test_huge_attempt_counts_stay_at_the_cap() -> None:
    policy = BackoffPolicy(1e-9, 5.0)
    assert policy.base_delay_s(10_000) == 5.0
    assert policy.base_delay_s(1023) == 5.0


@pytest.mark.parametrize(
    ("initial_s", "max_s", "jitter"),
    [(0, 1, 0), (-1, 1, 0), (2, 1, 0), (0.1, 1, -0.1), (0.1, 1, 1.0), (float("nan"), 1, 0)],
)
def test_bad_bounds_are_rejected(initial_s: float, max_s: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(initial_s, max_s, jitter)


def test_negative_attempt_is_rejected() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(0.1, 1.0).base_delay_s(-1)


@given(
    initial_s=st.floats(min_value=1e-3, max_value=10.0),
    ratio=st.floats(min_value=1.0, max_value=1e4),
    jitter=st.floats(min_value=0.0, max_value=0.99),
    attempt=st.integers(min_value=0, max_value=2000),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_every_delay_is_within_the_jitter_bounds(
    initial_s: float, ratio: float, jitter: float, attempt: int, draw: float
) -> None:
    policy = BackoffPolicy(initial_s, initial_s * ratio, jitter)
    base = policy.base_delay_s(attempt)
    assert initial_s <= base <= policy.max_s
    assert base == min(initial_s * 2.0 ** min(attempt, 1023), policy.max_s)
    delay = policy.delay_s(attempt, lambda: draw)
    assert (1 - jitter) * base <= delay <= base
    assert delay > 0


@given(jitter=st.floats(min_value=0.0, max_value=0.99), attempts=st.integers(min_value=1, max_value=64))
def test_base_delays_never_shrink(jitter: float, attempts: int) -> None:
    policy = BackoffPolicy(0.05, 5.0, jitter)
    bases = [policy.base_delay_s(n) for n in range(attempts)]
    assert bases == sorted(bases)
