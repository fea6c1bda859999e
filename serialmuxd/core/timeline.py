"""When each guest byte was printed: a bounded index of (absolute offset, wall-clock time) samples.

Theory of operation
-------------------
The scrollback ring knows *what* the guest printed at each absolute offset; this index knows *when*, so a
stretch of scrollback can be exported with its original timing (an asciicast recording).  It is fed one
call per guest chunk, ``record(offset, length, at)``, in stream order.

A sample ``(offset, at)`` says: the bytes from ``offset`` up to the next sample's offset (or the stream end)
arrived at ``at``.  ``time_at(o)`` is therefore a step function: the time of the sample with the greatest
offset ``<= o`` -- a byte gets its chunk's own time, never a blend of two chunks.

Memory stays bounded in two ways:

* **Coalescing.**  A chunk that arrives less than ``coalesce_s`` after the newest sample's time adds no
  sample: its bytes are counted as part of that sample.  The error this makes is at most ``coalesce_s`` per
  byte (it is measured against the sample's time, not the previous chunk's, so a steady trickle of tiny
  chunks cannot stretch one sample forever).  A guest printing continuously costs at most
  ``1 / coalesce_s`` samples per second however small its chunks are.
* **A cap.**  At most ``max_samples`` samples are kept, in two flat ``array`` s (16 bytes per sample, no
  per-sample Python object).  Past the cap the oldest quarter is dropped at once (amortised O(1) per
  sample), and ``floor`` moves up to the oldest remaining sample's offset: below it times are unknown.
  ``max_samples_for`` sizes the cap from the scrollback ring: one sample per 128 bytes of ring, 64 to 8192
  (a 1 MiB ring: 8192 samples, 128 KiB at most, allocated only as the guest prints).  A guest whose chunks
  are smaller than that and further apart than ``coalesce_s`` (keystroke echoes) can have more chunks in
  the ring than the cap: the oldest of them then lose their times, and a recording plays them at once at
  its start (the recording endpoint's ``X-Recording-Timed-From`` says from where times are real).
* **Following the ring.**  ``forget_before(ring.start)`` drops samples whose bytes the ring no longer
  holds, so a quiet guest whose ring wrapped keeps only the samples of what is still there.

Invariants (after every public call):

* sample offsets strictly increase, and ``floor <= offsets[0]`` when there are samples;
* sample times never decrease: a wall clock stepped back (NTP) is clamped to the newest time, so a
  recording's event times never go backwards;
* ``end`` is one past the newest recorded byte, and every byte in ``[floor, end)`` has a time once the
  first sample exists.

Pure: no asyncio, clock, os or logging; the caller passes the time in.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right

DEFAULT_MAX_SAMPLES = 8192
DEFAULT_COALESCE_S = 0.005
_RING_BYTES_PER_SAMPLE = 128
_MIN_SAMPLES = 64


def max_samples_for(ring_bytes: int) -> int:
    """The sample cap for a scrollback ring of ``ring_bytes`` (see the module docstring)."""
    return max(_MIN_SAMPLES, min(DEFAULT_MAX_SAMPLES, ring_bytes // _RING_BYTES_PER_SAMPLE))


class Timeline:
    """Wall-clock time of each guest chunk by absolute offset (see the module docstring)."""

    __slots__ = ("_coalesce_s", "_end", "_floor", "_max_samples", "_offsets", "_times")

    def __init__(
        self,
        start_offset: int = 0,
        *,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        coalesce_s: float = DEFAULT_COALESCE_S,
    ) -> None:
        if max_samples < 4:
            raise ValueError(f"max_samples must be at least 4, got {max_samples}")
        if coalesce_s < 0:
            raise ValueError(f"coalesce_s must be >= 0, got {coalesce_s}")
        if start_offset < 0:
            raise ValueError(f"start_offset must be >= 0, got {start_offset}")
        self._max_samples = max_samples
        self._coalesce_s = coalesce_s
        self._offsets = array("Q")
        self._times = array("d")
        self._floor = start_offset
        self._end = start_offset

    @property
    def floor(self) -> int:
        """The oldest offset whose time is known (once there are samples)."""
        return self._floor

    @property
    def end(self) -> int:
        """One past the newest recorded byte."""
        return self._end

    def __len__(self) -> int:
        return len(self._offsets)

    def record(self, offset: int, length: int, at: float) -> None:
        """``length`` guest bytes starting at absolute ``offset`` arrived at wall-clock time ``at``.

        Chunks come in stream order; a chunk that does not start at ``end`` (bytes the index never saw)
        moves ``end`` to it without inventing times for the hole: those bytes get the previous sample's
        time, which is the best that is known."""
        if length <= 0:
            return
        if offset < self._end:
            raise ValueError(f"chunk at {offset} overlaps bytes already recorded (end {self._end})")
        self._end = offset + length
        times = self._times
        if times:
            newest = times[-1]
            at = max(at, newest)  # never backwards
            if at - newest < self._coalesce_s:
                return
        self._offsets.append(offset)
        times.append(at)
        if len(times) > self._max_samples:
            drop = self._max_samples // 4
            del self._offsets[:drop]
            del times[:drop]
            self._floor = self._offsets[0]

    def forget_before(self, offset: int) -> None:
        """Drop the samples whose bytes all lie below ``offset`` (the ring no longer holds them).

        Amortised: samples go only once they are at least an eighth of those kept, so a ring that drops a
        little on every chunk does not move the arrays on every chunk."""
        offsets = self._offsets
        if len(offsets) < 2 or offsets[1] > offset:
            return
        # Sample i's bytes end where sample i + 1 begins; the last one at or below offset still covers it.
        drop = bisect_right(offsets, offset) - 1
        if drop < max(1, len(offsets) // 8):
            return
        del offsets[:drop]
        del self._times[:drop]
        self._floor = offsets[0]

    def time_at(self, offset: int) -> float | None:
        """The time the byte at ``offset`` arrived: its chunk's time; None below ``floor``, at or past
        ``end``, or before anything was recorded."""
        if not self._offsets or offset < self._floor or offset >= self._end:
            return None
        index = bisect_right(self._offsets, offset) - 1
        # Bytes between floor and the first sample (only before anything was dropped: floor is then the
        # stream start and the first sample begins there) take the first sample's time.
        return self._times[max(index, 0)]

    def segments(self, start: int, end: int) -> list[tuple[int, float]]:
        """The chunks of ``[start, end)`` as ``(offset, time)``, in order, the first one at ``start``.

        Bytes older than ``floor`` (their samples were dropped) are given the oldest known time, so they
        appear at once at the start of a recording rather than at a made-up time.  Empty when the range is
        empty or nothing was recorded."""
        offsets = self._offsets
        if start >= end or not offsets:
            return []
        index = max(bisect_right(offsets, start) - 1, 0)
        result = [(start, self._times[index])]
        for i in range(index + 1, len(offsets)):
            offset = offsets[i]
            if offset >= end:
                break
            if offset > start:
                result.append((offset, self._times[i]))
        return result
