"""Token bucket for input to a device: paste at line rate instead of truncating (Azure cuts at 2,048)."""

from __future__ import annotations


class TokenBucket:
    """``rate_bps`` bytes per second with a burst of ``burst_bytes``; the clock is passed in as ``now``."""

    __slots__ = ("_level", "_stamp", "burst_bytes", "rate_bps")

    def __init__(self, rate_bps: float, burst_bytes: int, now: float) -> None:
        # Written so that nan fails too (every comparison with nan is false).
        if not (rate_bps > 0 and burst_bytes > 0) or rate_bps == float("inf"):
            raise ValueError("rate_bps and burst_bytes must be positive and finite")
        self.rate_bps = rate_bps
        self.burst_bytes = burst_bytes
        self._level = float(burst_bytes)
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._level = min(float(self.burst_bytes), self._level + (now - self._stamp) * self.rate_bps)
        self._stamp = max(self._stamp, now)

    def take(self, wanted: int, now: float) -> int:
        """Take up to ``wanted`` bytes' worth of tokens; returns how many may be sent now."""
        if wanted < 0:
            raise ValueError("wanted must not be negative")
        self._refill(now)
        granted = min(wanted, int(self._level))
        self._level -= granted
        return granted

    def seconds_until(self, nbytes: int, now: float) -> float:
        """Time until ``nbytes`` (capped at the burst) could be taken."""
        self._refill(now)
        need = min(nbytes, self.burst_bytes) - self._level
        if need <= 0:
            return 0.0
        # Rounded up by a few ulps of the clock: ``now + seconds_until(n)`` can otherwise land a hair short
        # of the instant the tokens exist, and take() floors, so the wake-up would grant n - 1.
        seconds = need / self.rate_bps
        return seconds + max(abs(now), 1.0) * 4 * 2.220446049250313e-16
