"""Login throttling and the unauthenticated-connection gate, driven with a scripted clock.

The expectations are written down here independently of the code: the delay sequence as a literal list,
the long-run rate of a parallel attacker as arithmetic, the gate against a plain counting model.
"""

from __future__ import annotations

import heapq
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from serialmuxd.core.throttle import (
    SOURCE_POLICY,
    USER_POLICY,
    ConnectionGate,
    DelayPolicy,
    LoginThrottle,
)

# The hold before attempt k+1 for someone who has failed k times and retries at once (sources, defaults):
# three free failures, then 1 s doubling to a 30 s cap.
SOURCE_HOLDS = [0, 0, 0, 0, 1, 2, 4, 8, 16, 30, 30, 30, 30]
# The same for a user name attacked from fresh addresses: five free, then 1, 2, 4 and a 5 s cap.
USER_HOLDS = [0, 0, 0, 0, 0, 0, 1, 2, 4, 5, 5, 5]

SOURCES = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::/64"])
USERS = st.sampled_from(["root", "alice", "bob", "nosuchuser"])
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["failed", "failed", "failed", "succeeded"]),
        SOURCES,
        USERS,
        st.floats(min_value=0, max_value=120, allow_nan=False),
    ),
    max_size=60,
)


def replay(throttle: LoginThrottle, events: list[tuple[str, str, str, float]], start: float = 0.0) -> float:
    now = start
    for what, source, user, step_s in events:
        now += step_s
        getattr(throttle, what)(source, user, now)
    return now


def test_a_sequential_guesser_from_one_address_waits_the_doubling_delays() -> None:
    throttle, now, holds = LoginThrottle(), 1000.0, []
    for attempt in range(len(SOURCE_HOLDS)):
        hold = throttle.delay_s("198.51.100.7", f"user{attempt}", now)  # a new name each time: source only
        holds.append(hold)
        now += hold
        throttle.failed("198.51.100.7", f"user{attempt}", now)
    assert holds == SOURCE_HOLDS


def test_failures_against_one_user_from_many_addresses_slow_that_user_moderately() -> None:
    throttle, now, holds = LoginThrottle(), 1000.0, []
    for attempt in range(len(USER_HOLDS)):
        source = f"203.0.113.{attempt}"  # every attempt from a fresh address: user delay only
        hold = throttle.delay_s(source, "root", now)
        holds.append(hold)
        now += hold
        throttle.failed(source, "root", now)
    assert holds == USER_HOLDS
    assert max(holds) == USER_POLICY.max_wait_s < SOURCE_POLICY.max_delay_s


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.integers(1, 40), st.data())
def test_a_slow_typist_does_not_wait_for_delays_that_have_passed(
    start: float, failures: int, data: st.DataObject
) -> None:
    """The delay runs from the failure: a retry that comes later than it waits only the rest (or nothing)."""
    throttle, now = LoginThrottle(), start
    expected_until = now
    for n in range(1, failures + 1):
        throttle.failed("a", f"u{n}", now)
        owed = SOURCE_HOLDS[min(n, len(SOURCE_HOLDS) - 1)]
        expected_until = max(expected_until, now) + owed
        later = data.draw(st.floats(min_value=0, max_value=owed + 1, allow_nan=False))
        # abs: times near 1e5 s carry float steps of ~1e-11 s, far below anything a login can notice.
        assert throttle.delay_s("a", "fresh", now + later) == pytest.approx(
            max(0.0, expected_until - now - later), abs=1e-6
        )
        now = max(now + later, expected_until)


@given(st.integers(min_value=0, max_value=SOURCE_POLICY.free_failures), st.data())
def test_the_free_failures_cost_nothing(failures: int, data: st.DataObject) -> None:
    throttle, now = LoginThrottle(), 0.0
    for _ in range(failures):
        now += data.draw(st.floats(min_value=0, max_value=100, allow_nan=False))
        throttle.failed("a", "alice", now)
        assert throttle.delay_s("a", "alice", now) == 0


@settings(max_examples=200)
@given(st.integers(1, 10), st.floats(min_value=600, max_value=6 * 3600, allow_nan=False))
def test_parallel_connections_from_one_address_get_no_more_attempts(
    connections: int, duration_s: float
) -> None:
    """Connections that each hold as told, then fail, all from one address: in the long run one attempt
    per max delay (30 s), however many run at once (up to the per-source connection cap of 10)."""
    throttle = LoginThrottle()
    names = (f"u{i}" for i in itertools.count())  # new names: only the per-source count is at work
    ready = [(0.0, c) for c in range(connections)]
    attempts = 0
    while ready:
        now, connection = heapq.heappop(ready)
        if now > duration_s:
            break
        throttle.failed("a", next(names), now)
        attempts += 1
        heapq.heappush(ready, (now + throttle.delay_s("a", "fresh", now), connection))
    free_burst = SOURCE_POLICY.free_failures + 6  # the free ones, then 1+2+4+8+16 s before the cap
    assert attempts <= free_burst + connections + duration_s / SOURCE_POLICY.max_delay_s


@given(EVENTS, st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_another_address_logs_in_at_once(events: list[tuple[str, str, str, float]], start: float) -> None:
    throttle = LoginThrottle()
    now = replay(throttle, events, start)
    assert throttle.delay_s("192.0.2.99", "carol", now) == 0  # a user nobody attacked
    for user in ("root", "alice", "bob", "nosuchuser"):  # an attacked user: slowed, never locked out
        assert throttle.delay_s("192.0.2.99", user, now) <= USER_POLICY.max_wait_s


@given(EVENTS, st.lists(st.floats(min_value=-50, max_value=50, allow_nan=False), max_size=20))
def test_holds_are_never_negative_nor_beyond_the_caps(
    events: list[tuple[str, str, str, float]], jumps: list[float]
) -> None:
    """Also when the clock jumps backwards (it should not: the daemon passes a monotonic clock)."""
    throttle = LoginThrottle()
    now = replay(throttle, events)
    pairs = itertools.cycle(itertools.product(["10.0.0.1", "10.0.0.2"], ["root", "x"]))
    for jump, (source, user) in zip(jumps, pairs, strict=False):  # pairs never ends
        now += jump
        throttle.failed(source, user, now)
        for probe, at in itertools.product(("10.0.0.1", "10.0.0.2", "10.0.0.3"), (now, now - abs(jump))):
            assert 0 <= throttle.delay_s(probe, user, at) <= SOURCE_POLICY.max_wait_s
            assert 0 <= throttle.delay_s("fresh", user, at) <= USER_POLICY.max_wait_s


def test_a_hold_stays_within_its_cap_when_asked_about_an_earlier_time() -> None:
    throttle = LoginThrottle()
    for _ in range(100):  # parallel failures: the debt reaches its cap
        throttle.failed("a", "root", 1000.0)
    assert throttle.delay_s("a", "fresh", 1000.0) == SOURCE_POLICY.max_wait_s
    assert throttle.delay_s("a", "fresh", 900.0) == SOURCE_POLICY.max_wait_s
    assert throttle.delay_s("b", "root", 900.0) == USER_POLICY.max_wait_s


@given(EVENTS)
def test_a_quiet_period_forgives_everything(events: list[tuple[str, str, str, float]]) -> None:
    """However long the attack ran: after saturation x forgive_after_s of quiet, all is as new."""
    throttle = LoginThrottle()
    now = replay(throttle, events)
    quiet_s = SOURCE_POLICY.saturation() * SOURCE_POLICY.forgive_after_s
    assert quiet_s == 9 * 60
    now += quiet_s
    for source, user in itertools.product(["10.0.0.1", "10.0.0.2"], ["root", "alice"]):
        assert throttle.delay_s(source, user, now) == 0
    for _ in range(SOURCE_POLICY.free_failures):  # and the free failures are free again
        throttle.failed("10.0.0.1", "root", now)
    assert throttle.delay_s("10.0.0.1", "root", now) == 0


def test_forgiveness_is_gradual() -> None:
    throttle = LoginThrottle()
    for _ in range(9):
        throttle.failed("a", "fresh0", 0.0)  # saturated: 9 failures
    # 3 quiet minutes forgive 3: the next failure is the 7th, owing 8 s.
    throttle.failed("a", "fresh1", 180.0)
    assert throttle.delay_s("a", "fresh2", 180.0) == 8


@pytest.mark.parametrize(
    ("quiet_s", "hold_after_one_more_failure"), [(60, 30), (180, 8), (300, 2), (360, 1), (420, 0)]
)
def test_a_day_of_guessing_is_forgiven_as_fast_as_nine_guesses(
    quiet_s: float, hold_after_one_more_failure: float
) -> None:
    """The count saturates where the delay reaches its cap (9 failures); each quiet minute forgives one."""
    throttle, now, n = LoginThrottle(), 0.0, 0
    while now < 24 * 3600:  # a guesser who retries whenever allowed, for a day: 2,880 guesses
        throttle.failed("a", f"u{n}", now)
        n += 1
        now += throttle.delay_s("a", "fresh", now)
    last_failure = now - SOURCE_POLICY.max_delay_s
    throttle.failed("a", "probe", last_failure + quiet_s)
    assert throttle.delay_s("a", "fresh", last_failure + quiet_s) == hold_after_one_more_failure


def test_success_clears_the_user_but_not_the_address() -> None:
    throttle = LoginThrottle()
    for n in range(8):
        throttle.failed("10.0.0.1", "alice", float(n))
    throttle.failed("10.0.0.9", "bob", 0.0)
    assert throttle.delay_s("10.0.0.2", "alice", 8.0) > 0  # alice's count is at work
    throttle.succeeded("10.0.0.1", "alice", 8.0)
    assert throttle.delay_s("10.0.0.2", "alice", 8.0) == 0
    # An address that knows one password must not reset its count between guesses at others.
    assert throttle.delay_s("10.0.0.1", "carol", 8.0) > 0


@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=400),
    st.integers(1, 50),
)
def test_memory_is_bounded(failures: list[tuple[int, int]], max_keys: int) -> None:
    policy = DelayPolicy(3, 1.0, 30.0, 300.0, 60.0, max_keys=max_keys)
    throttle = LoginThrottle(policy, policy)
    for now, (source, user) in enumerate(failures):
        throttle.failed(f"s{source}", f"u{user}", float(now))
        assert throttle.tracked_sources <= max_keys and throttle.tracked_users <= max_keys


def test_the_least_recently_failed_is_forgotten_first() -> None:
    policy = DelayPolicy(0, 1.0, 30.0, 300.0, 60.0, max_keys=3)
    throttle = LoginThrottle(policy, policy)
    for source in ("old", "mid", "new"):
        throttle.failed(source, "u", 0.0)
    throttle.failed("old", "u", 0.0)  # failed again: now the most recent
    throttle.failed("newest", "u", 0.0)  # one too many: "mid" goes
    assert throttle.tracked_sources == 3
    assert throttle.delay_s("mid", "v", 0.0) == 0
    assert all(throttle.delay_s(source, "v", 0.0) > 0 for source in ("old", "new", "newest"))


def test_user_name_spraying_does_not_push_out_an_address() -> None:
    throttle = LoginThrottle(user_policy=DelayPolicy(5, 1.0, 5.0, 5.0, 60.0, max_keys=10))
    for n in range(10):
        throttle.failed("10.0.0.1", f"spray{n}", 0.0)
    for n in range(1000):
        throttle.failed("10.0.0.2", f"other{n}", 0.0)
    assert throttle.tracked_users == 10
    assert throttle.delay_s("10.0.0.1", "fresh", 0.0) > 0  # still remembered


@pytest.mark.parametrize(
    "arguments",
    [
        (-1, 1.0, 30.0, 300.0, 60.0, 10),
        (3, 0.0, 30.0, 300.0, 60.0, 10),
        (3, 31.0, 30.0, 300.0, 60.0, 10),
        (3, 1.0, 30.0, 29.0, 60.0, 10),
        (3, 1.0, 30.0, 300.0, 0.0, 10),
        (3, 1.0, 30.0, 300.0, 60.0, 0),
    ],
)
def test_nonsense_policies_are_refused(arguments: tuple[int, float, float, float, float, int]) -> None:
    with pytest.raises(ValueError):
        DelayPolicy(*arguments)


@given(
    st.floats(min_value=1e-6, max_value=1e3, allow_nan=False),
    st.floats(min_value=1, max_value=1e12, allow_nan=False),
)
def test_any_valid_policy_reaches_its_cap(initial_s: float, ratio: float) -> None:
    policy = DelayPolicy(2, initial_s, initial_s * ratio, initial_s * ratio, 1.0, 1)
    assert policy.delay_s(policy.saturation()) == policy.max_delay_s
    assert policy.delay_s(policy.saturation() - 1) < policy.max_delay_s
    assert policy.delay_s(10_000) == policy.max_delay_s


# ---------------------------------------------------------------------------------------------------
# ConnectionGate


def test_a_flood_from_one_address_leaves_room_for_another() -> None:
    gate = ConnectionGate()
    admitted = sum(gate.try_enter("203.0.113.66") for _ in range(10_000))
    assert admitted == 10 == gate.held("203.0.113.66")
    assert gate.try_enter("192.0.2.1")


def test_floods_from_several_addresses_fill_only_their_shares() -> None:
    gate = ConnectionGate(max_per_source=10, max_total=100)
    for attacker in range(9):
        for _ in range(50):
            gate.try_enter(f"attacker{attacker}")
    assert gate.total == 90
    assert all(gate.try_enter("real user") for _ in range(10))
    assert not gate.try_enter("someone else")  # the total is full now
    gate.leave("attacker0")  # a login grace time ran out: a slot frees
    assert gate.try_enter("someone else")


def test_leave_without_enter_is_refused() -> None:
    gate = ConnectionGate(2, 4)
    assert gate.try_enter("a")
    gate.leave("a")
    with pytest.raises(ValueError):
        gate.leave("a")
    with pytest.raises(ValueError):
        gate.leave("b")
    assert gate.total == 0


@pytest.mark.parametrize(("per_source", "total"), [(0, 10), (11, 10), (-1, -1)])
def test_nonsense_caps_are_refused(per_source: int, total: int) -> None:
    with pytest.raises(ValueError):
        ConnectionGate(per_source, total)


class GateAgainstAModel(RuleBasedStateMachine):
    """Random enters and leaves; the gate must agree with plain counting at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = ConnectionGate(max_per_source=3, max_total=7)
        self.model: dict[str, int] = {}

    @rule(source=st.sampled_from("abcde"))
    def enter(self, source: str) -> None:
        expected = self.model.get(source, 0) < 3 and sum(self.model.values()) < 7
        assert self.gate.try_enter(source) == expected
        if expected:
            self.model[source] = self.model.get(source, 0) + 1

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        source = data.draw(st.sampled_from(sorted(s for s, n in self.model.items() if n)))
        self.gate.leave(source)
        self.model[source] -= 1

    @invariant()
    def counts_agree(self) -> None:
        assert self.gate.total == sum(self.model.values()) <= 7
        for source in "abcde":
            assert self.gate.held(source) == self.model.get(source, 0) <= 3

    @invariant()
    def a_new_address_gets_in_unless_the_total_is_full(self) -> None:
        assert self.gate.try_enter("newcomer") == (sum(self.model.values()) < 7)
        if self.gate.held("newcomer"):
            self.gate.leave("newcomer")


TestGateAgainstAModel = GateAgainstAModel.TestCase
