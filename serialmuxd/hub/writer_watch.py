"""What happens around the writer's comings and goings: the idle timeout and the logout sequence.

* **Idle timeout** (``writer_idle_timeout_s``): a writer who types nothing for that long is demoted to a
  viewer or detached (``writer_idle_action``), so an abandoned session does not hold the console.  One timer
  per port, and only while there is a writer; typing only records the time (no timer work per keystroke):
  when the timer fires early because of recent typing, it is set again for the rest.
* **Logout sequence** (``logout_sequence``): sent to the guest whenever the writer changes away from
  someone (they left, were evicted or demoted, idled out), so the next person does not inherit a
  logged-in shell — the model service's "enforce a logout upon disconnect".  Off by default: not every
  guest's console is a shell.
"""

from __future__ import annotations

from collections.abc import Callable

from .clock import Scheduler, Timer
from .session import Session


class WriterWatch:
    __slots__ = (
        "_clock",
        "_idle_out",
        "_last_input",
        "_schedule",
        "_send",
        "_timer",
        "_writer",
        "logout_sequence",
        "timeout_s",
    )

    def __init__(
        self,
        timeout_s: float,
        logout_sequence: bytes,
        *,
        clock: Callable[[], float],
        schedule: Scheduler,
        idle_out: Callable[[Session], None],
        send: Callable[[bytes], None],
    ) -> None:
        self.timeout_s = timeout_s
        self.logout_sequence = logout_sequence
        self._clock = clock
        self._schedule = schedule
        self._idle_out = idle_out
        self._send = send
        self._writer: Session | None = None
        self._last_input = 0.0
        self._timer: Timer | None = None

    def writer_changed(self, writer: Session | None) -> None:
        previous = self._writer
        if previous is writer:
            return
        if previous is not None and self.logout_sequence:
            self._send(self.logout_sequence)
        self._writer = writer
        self._last_input = self._clock()
        self._cancel()
        if writer is not None and self.timeout_s > 0:
            self._timer = self._schedule(self.timeout_s, self._check)

    def reconfigure(self, timeout_s: float, logout_sequence: bytes) -> None:
        """New settings (reload): the idle timer restarts from the writer's last input."""
        self.logout_sequence = logout_sequence
        if timeout_s == self.timeout_s:
            return
        self.timeout_s = timeout_s
        self._cancel()
        if self._writer is not None and timeout_s > 0:
            idle_s = self._clock() - self._last_input
            self._timer = self._schedule(max(0.0, timeout_s - idle_s), self._check)

    def typed(self) -> None:
        """The writer sent input (cheap: called for every chunk)."""
        self._last_input = self._clock()

    def close(self) -> None:
        self._cancel()

    def _check(self) -> None:
        self._timer = None
        writer = self._writer
        if writer is None:
            return
        idle_s = self._clock() - self._last_input
        if idle_s >= self.timeout_s:
            self._idle_out(writer)
        else:
            self._timer = self._schedule(self.timeout_s - idle_s, self._check)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
