"""Input for the device: pacing, back-pressure to the writer, and discards while the device is away.

Theory of operation
-------------------
Bytes for the guest come from the writer's session or from an API call (named keys, SysRq).  With
``input_rate_bytes_per_s = 0`` they are written to the link at once and the link's own buffer paces
them: when it crosses ``device_buffer_bytes`` the link reports ``paused`` and the writer's sink stops
reading (a paste goes at the device's drain rate, nothing is cut).  With a rate set, they queue here and a
token bucket lets them out, one timer at a time; a queue over ``device_buffer_bytes`` pauses the writer's
reading the same way.

Exactly one session may be paused at a time: the writer.  ``sync`` is the single place that decides it,
called after everything that can change the answer (a new writer, the device pausing or resuming, the queue
growing or draining), so a writer is never left paused and a former writer never stays paused.  Queued input
belongs to the writer that typed it: it is dropped on a handover, when the device goes away, and when the
writer leaves.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.pacing import TokenBucket
from ..devices.base import DeviceLink, LinkState
from .clock import Scheduler, Timer, loop_scheduler
from .session import Session


class DeviceInput:
    __slots__ = (
        "_bucket",
        "_clock",
        "_device_paused",
        "_link",
        "_paused_session",
        "_pending",
        "_schedule",
        "_timer",
        "_writer",
        "bytes_to_device",
        "device_buffer_bytes",
        "rate_bps",
    )

    def __init__(
        self,
        rate_bps: int,
        device_buffer_bytes: int,
        *,
        link: Callable[[], DeviceLink | None],
        writer: Callable[[], Session | None],
        clock: Callable[[], float],
        schedule: Scheduler = loop_scheduler,
    ) -> None:
        self.rate_bps = rate_bps
        self.device_buffer_bytes = device_buffer_bytes
        self._link = link
        self._writer = writer
        self._clock = clock
        self._pending = bytearray()
        self._bucket: TokenBucket | None = None
        self._schedule = schedule
        self._timer: Timer | None = None
        self._device_paused = False
        self._paused_session: Session | None = None
        self.bytes_to_device = 0

    @property
    def online(self) -> bool:
        link = self._link()
        return link is not None and link.state is LinkState.ONLINE

    @property
    def queued_bytes(self) -> int:
        """Paced input waiting for tokens."""
        return len(self._pending)

    @property
    def queue_full(self) -> bool:
        return len(self._pending) >= self.device_buffer_bytes

    def write(self, data: bytes) -> bool:
        """Send (or queue) ``data``; False if the device did not take it (the caller tells the client)."""
        if self.rate_bps > 0:
            self._pending += data
            self._flush()
            self.sync()  # over device_buffer_bytes queued: stop reading from the writer
            return True
        link = self._link()
        if link is None or not link.write(data):
            return False
        self.bytes_to_device += len(data)
        return True

    def set_rate(self, rate_bps: int) -> None:
        """A new ``input_rate_bytes_per_s`` (reload).  Input queued under the old rate is kept: paced at the
        new one, or sent at once when pacing is now off."""
        if rate_bps == self.rate_bps:
            return
        self.rate_bps = rate_bps
        self._bucket = None  # rebuilt at the new rate by the next flush
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if rate_bps > 0:
            self._flush()
            return
        pending, self._pending = bytes(self._pending), bytearray()
        link = self._link()
        if pending and link is not None and link.write(pending):
            self.bytes_to_device += len(pending)
        self.sync()

    def reset(self) -> None:
        """Drop input that has not reached the device, and let the writer read again."""
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.sync()

    def device_paused(self) -> None:
        self._device_paused = True
        self.sync()

    def device_resumed(self) -> None:
        self._device_paused = False
        self.sync()
        self._flush()

    def link_closed(self) -> None:
        """The link was closed by us (disable): it will not report a resume."""
        self._device_paused = False
        self.reset()

    def session_left(self, session: Session) -> None:
        """``session`` detached: a sink parked on back-pressure (a WebSocket receive loop) must see it."""
        if self._paused_session is session:
            self._paused_session = None
            session.sink.resume_input()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def sync(self) -> None:
        """Pause the writer's reading iff the device (or the pacing queue) is full; resume anyone else."""
        full = self._device_paused or self.queue_full
        want = self._writer() if full else None
        current = self._paused_session
        if current is want:
            return
        if current is not None and not current.closed:
            current.sink.resume_input()
        self._paused_session = want
        if want is not None:
            want.sink.pause_input()

    def _flush(self) -> None:
        """Send paced input as tokens allow; schedule the rest."""
        link = self._link()
        if not self._pending or link is None or self._device_paused or self._timer is not None:
            return
        now = self._clock()
        if self._bucket is None:
            self._bucket = TokenBucket(self.rate_bps, max(1, min(self.rate_bps // 10, 4096)), now)
        n = self._bucket.take(len(self._pending), now)
        if n:
            chunk = bytes(self._pending[:n])
            del self._pending[:n]
            if link.write(chunk):
                self.bytes_to_device += len(chunk)
        if self._pending:
            delay = max(0.001, self._bucket.seconds_until(len(self._pending), self._clock()))
            self._timer = self._schedule(delay, self._tick)
        self.sync()

    def _tick(self) -> None:
        self._timer = None
        self._flush()
