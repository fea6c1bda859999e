"""Reconnect backoff as pure policy: how long to wait before attempt number ``n``.

Theory of operation
-------------------
A device link (``devices/base.py``) that lost its device, or never reached it, retries forever; this module
only decides the waits.  The delay before retry number ``attempt`` (0 for the first retry after a failure)
is ``initial_s * 2**attempt`` capped at ``max_s``, then shortened by up to ``jitter`` of itself::

    base(attempt)  = min(initial_s * 2**attempt, max_s)
    delay(attempt) = base(attempt) * (1 - jitter * r)      with r = random() in [0, 1)

so every delay lies in ``((1 - jitter) * base, base]``.  Jitter only ever shortens: ``max_s`` stays a promise
to the operator ("a device that comes back is noticed within reconnect_max_s"), and ``jitter = 0`` gives the
exact doubling sequence.  Why jitter at all, when every port has its own device: one terminal server
carries many ports (``tcp:ts1:7001`` … ``tcp:ts1:7048``); when it reboots, every link failed at the same
moment and would otherwise knock on it in lockstep for as long as it is away.

``Backoff`` is the counter a link keeps: ``next_delay_s()`` returns the delay for the current attempt and
counts it; ``reset()`` after a connection that proved stable makes the next loss start at ``initial_s``
again (a new incident deserves a quick retry, not the delay the last one had grown to).

The random source is passed in (``random.random`` in the daemon, a fixed sequence in tests) and no clock is
read: waiting is the caller's business.  Nothing here imports asyncio, time or os.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

RandomSource = Callable[[], float]
"""Returns a float in [0, 1), like ``random.random``.  Values outside are clamped."""

# 2.0 ** 1024 overflows a float; long before that any sane initial/max ratio has reached the cap.
_MAX_EXPONENT = 1023


def no_jitter() -> float:
    """A random source that always returns 0: the delays are exactly the doubling sequence."""
    return 0.0


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Delays from ``initial_s`` doubling up to ``max_s``, each shortened by up to ``jitter`` (0 ≤ j < 1)."""

    initial_s: float
    max_s: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        # Messages name the config keys: this is where a bad [ports] reconnect_* setting is caught.
        if not self.initial_s > 0:
            raise ValueError(f"reconnect_initial_s must be > 0, got {self.initial_s!r}")
        if not self.max_s >= self.initial_s:
            raise ValueError(
                f"reconnect_max_s ({self.max_s!r}) must be >= reconnect_initial_s ({self.initial_s!r})"
            )
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")

    def base_delay_s(self, attempt: int) -> float:
        """The delay before retry ``attempt`` without jitter: ``min(initial_s * 2**attempt, max_s)``."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt!r}")
        if attempt > _MAX_EXPONENT:
            return self.max_s
        return min(self.initial_s * 2.0**attempt, self.max_s)

    def delay_s(self, attempt: int, random: RandomSource) -> float:
        """The delay before retry ``attempt``, in ``((1 - jitter) * base, base]``."""
        base = self.base_delay_s(attempt)
        if not self.jitter:
            return base  # do not even call the source: jitter-free callers may pass anything
        draw = min(max(random(), 0.0), 1.0)
        return base * (1.0 - self.jitter * draw)


class Backoff:
    """The attempt counter over a ``BackoffPolicy``: one per link."""

    __slots__ = ("_random", "attempt", "policy")

    def __init__(self, policy: BackoffPolicy, random: RandomSource = no_jitter) -> None:
        self.policy = policy
        self._random = random
        self.attempt = 0  # retries since the last reset

    def next_delay_s(self) -> float:
        """The delay to wait now; the following one will be (about) twice as long, up to ``max_s``."""
        delay = self.policy.delay_s(self.attempt, self._random)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """The device proved to be back: the next loss starts again at ``initial_s``."""
        self.attempt = 0
