"""Pre-authentication policy: how long to hold a login attempt, and who may hold a login prompt open.

Theory of operation
-------------------
Two independent pieces of pure policy; the clock is passed in as ``now`` (seconds, monotonic) and nothing
here sleeps, logs or knows about sockets.  The front ends (telnet login, HTTP Basic, the page's form) do
the waiting and the closing.

**LoginThrottle** counts failed logins per *source* (the peer's address, or the network block the caller
maps it to: an IPv6 client owns a whole /64, so the front end should pass the prefix) and, separately, per
*user name* as typed (known or not: the throttle never knows which users exist, so it cannot leak it).
A front end asks ``delay_s(source, user, now)`` before checking a password, holds the attempt that long,
checks, then reports ``failed`` or ``succeeded``.

Each key has a failure count ``n`` and a ``not_before`` time.  A failure at ``now`` does::

    n          = min(forgiven(n) + 1, saturation)
    not_before = min(max(not_before, now) + delay(n), now + max_wait_s)
    delay(n)   = 0                                                   if n <= free_failures
               = min(initial_delay_s * 2 ** (n - free_failures - 1), max_delay_s)   otherwise

and ``delay_s`` is ``max(0, not_before - now)`` for the source and for the user, whichever is longer.  So:

- The first ``free_failures`` failures cost nothing: people mistype.
- After them, the next attempt may start no sooner than ``delay(n)`` after the last failure: 1, 2, 4 … s
  up to the cap.  Measured from the failure, not from the next attempt: someone who takes five seconds to
  retype a password never waits for a one-second delay.
- Parallel attempts do not help: each failure pushes ``not_before`` on from where it already was, so ten
  connections from one address that fail together owe ten delays, one after another.  In the long run a
  source gets one attempt per ``max_delay_s`` however many connections it opens, until ``max_wait_s``
  caps the debt.  A hold longer than the login grace time means: refuse now, do not hold.
- Decay: every ``forgive_after_s`` without a failure forgives one failure.  The count saturates where
  the delay reaches its cap, so an attack that stops stops mattering within ``saturation *
  forgive_after_s`` (9 minutes for sources with the defaults), however long it ran.

Sources and users get different policies, and the difference is the trade-off.  Per source (defaults:
3 free, 1 s doubling to 30 s, debt up to 5 min): an address that guesses is slowed hard, while every other
address still logs in at once.  Per user (defaults: 5 free, 1 s doubling to 5 s, never more than 5 s): a
delay keyed by the *victim's* name is a lock-out anyone can trigger, so it is kept small.  It slows a
guesser spread over many addresses only moderately (the bound on such an attack is argon2's cost and the
bounded verification queue, ``auth/passwords.py``); in exchange an attacker can make a real user wait at
most 5 s, never lock them out.  A success clears that user's count (they proved who they are) but not the
source's: an address that knows one password (an insider's own) must not reset its count between guesses
at others.  Behind a NAT or a jump host many people share one source and share its delay; that is the
cost of per-source throttling everywhere (OpenSSH's ``PerSourcePenalties`` has it too).

Memory is bounded: each table keeps at most ``max_keys`` keys and forgets the least recently failed first.
Sources and users are separate tables, so spraying random user names can only push out user counts,
never an address's.

**ConnectionGate** caps connections that have not authenticated yet (OpenSSH's ``MaxStartups`` and
``PerSourceMaxStartups``): ``try_enter(source)`` when one is accepted, ``leave(source)`` when it
authenticates or closes.  The per-source cap is well below the total (defaults 10 and 100), so a flood of
idle connections from one address fills its own share and a real user from another address still gets a
login prompt.  A flood from more than ``max_total / max_per_source`` addresses can still fill the total;
the login grace time frees those slots, and a real user retries.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DelayPolicy:
    """How one kind of key (source addresses, user names) is slowed down after failed logins."""

    free_failures: int  # failures that cost nothing
    initial_delay_s: float  # delay after the first failure beyond the free ones
    max_delay_s: float  # each further failure doubles the delay, up to this
    max_wait_s: float  # the longest a caller is ever held, whatever the debt of parallel failures
    forgive_after_s: float  # each quiet period this long (no failure) forgives one failure
    max_keys: int  # keys tracked at most; the least recently failed is forgotten first

    def __post_init__(self) -> None:
        if self.free_failures < 0:
            raise ValueError(f"free_failures must be >= 0, got {self.free_failures!r}")
        if not 0 < self.initial_delay_s <= self.max_delay_s <= self.max_wait_s:
            raise ValueError(
                "need 0 < initial_delay_s <= max_delay_s <= max_wait_s, got "
                f"{self.initial_delay_s!r}, {self.max_delay_s!r}, {self.max_wait_s!r}"
            )
        if not self.forgive_after_s > 0:
            raise ValueError(f"forgive_after_s must be > 0, got {self.forgive_after_s!r}")
        if self.max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {self.max_keys!r}")

    def delay_s(self, failures: int) -> float:
        """The delay owed for failure number ``failures`` (0 for the free ones)."""
        beyond = failures - self.free_failures
        if beyond <= 0:
            return 0.0
        doublings = beyond - 1
        # 2.0 ** 1024 overflows; the cap is reached long before any exponent this large matters.
        if doublings >= 1023 or self.initial_delay_s * 2.0**doublings >= self.max_delay_s:
            return self.max_delay_s
        return self.initial_delay_s * 2.0**doublings

    def saturation(self) -> int:
        """The failure count where the delay reaches its cap; counting further would only slow recovery."""
        failures = self.free_failures + 1
        while self.delay_s(failures) < self.max_delay_s:  # at most ~1,100 doublings for any float ratio
            failures += 1
        return failures


SOURCE_POLICY = DelayPolicy(
    free_failures=3,
    initial_delay_s=1.0,
    max_delay_s=30.0,
    max_wait_s=300.0,
    forgive_after_s=60.0,
    max_keys=10_000,
)
USER_POLICY = DelayPolicy(
    free_failures=5,
    initial_delay_s=1.0,
    max_delay_s=5.0,
    max_wait_s=5.0,  # the most an attacker can make a real user wait: a nuisance, not a lock-out
    forgive_after_s=60.0,
    max_keys=10_000,
)


@dataclass(slots=True)
class _Failures:
    count: int
    last_failure_at: float
    not_before: float


class _FailureTable:
    __slots__ = ("_keys", "_saturation", "policy")

    def __init__(self, policy: DelayPolicy) -> None:
        self.policy = policy
        self._saturation = policy.saturation()
        self._keys: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def wait_s(self, key: str, now: float) -> float:
        entry = self._keys.get(key)
        if entry is None:
            return 0.0
        # The upper clamp only matters if the clock went backwards; a hold stays within the promise.
        return min(max(0.0, entry.not_before - now), self.policy.max_wait_s)

    def failed(self, key: str, now: float) -> None:
        policy = self.policy
        entry = self._keys.pop(key, None)  # re-inserted last: the order is least recently failed first
        if entry is None:
            entry = _Failures(count=0, last_failure_at=now, not_before=now)
        quiet_s = max(0.0, now - entry.last_failure_at)
        forgiven = int(quiet_s // policy.forgive_after_s)
        entry.count = min(max(0, entry.count - forgiven) + 1, self._saturation)
        entry.last_failure_at = max(entry.last_failure_at, now)  # a clock that steps back forgives nothing
        owed_from = max(entry.not_before, now)
        entry.not_before = min(owed_from + policy.delay_s(entry.count), now + policy.max_wait_s)
        self._keys[key] = entry
        while len(self._keys) > policy.max_keys:
            self._keys.popitem(last=False)

    def forget(self, key: str) -> None:
        self._keys.pop(key, None)


class LoginThrottle:
    """Failed logins per source address and per user name; see the module docstring."""

    __slots__ = ("_sources", "_users")

    def __init__(
        self, source_policy: DelayPolicy = SOURCE_POLICY, user_policy: DelayPolicy = USER_POLICY
    ) -> None:
        self._sources = _FailureTable(source_policy)
        self._users = _FailureTable(user_policy)

    def delay_s(self, source: str, user: str, now: float) -> float:
        """How long to hold this attempt before checking its password (0: check at once)."""
        return max(self._sources.wait_s(source, now), self._users.wait_s(user, now))

    def failed(self, source: str, user: str, now: float) -> None:
        """A login from ``source`` as ``user`` (known or not) was refused at ``now``."""
        self._sources.failed(source, now)
        self._users.failed(user, now)

    def succeeded(self, source: str, user: str, now: float) -> None:
        """``user`` logged in from ``source``: the user's count is cleared, the source's is left to decay."""
        self._users.forget(user)

    @property
    def tracked_sources(self) -> int:
        return len(self._sources)

    @property
    def tracked_users(self) -> int:
        return len(self._users)


class ConnectionGate:
    """Caps connections that have not authenticated yet, per source and in total."""

    __slots__ = ("_by_source", "_total", "max_per_source", "max_total")

    def __init__(self, max_per_source: int = 10, max_total: int = 100) -> None:
        if not 1 <= max_per_source <= max_total:
            raise ValueError(
                f"need 1 <= max_per_source <= max_total, got {max_per_source!r} and {max_total!r}"
            )
        self.max_per_source = max_per_source
        self.max_total = max_total
        # Only sources with a connection are kept, so the dict never holds more than max_total keys.
        self._by_source: dict[str, int] = {}
        self._total = 0

    def try_enter(self, source: str) -> bool:
        """Admit one unauthenticated connection from ``source``; False: over a cap, close it."""
        held = self._by_source.get(source, 0)
        if held >= self.max_per_source or self._total >= self.max_total:
            return False
        self._by_source[source] = held + 1
        self._total += 1
        return True

    def leave(self, source: str) -> None:
        """A connection admitted by ``try_enter`` authenticated or closed."""
        held = self._by_source.get(source, 0)
        if held == 0:
            # A front-end bug (leave twice, or without enter); refusing it keeps the counts true.
            raise ValueError(f"leave() without a matching try_enter() for {source!r}")
        if held == 1:
            del self._by_source[source]
        else:
            self._by_source[source] = held - 1
        self._total -= 1

    def held(self, source: str) -> int:
        """Unauthenticated connections from ``source`` now."""
        return self._by_source.get(source, 0)

    @property
    def total(self) -> int:
        return self._total
