"""Guest output to sessions: the live fan-out, catch-up from the ring, replay, and resuming from an offset.

Theory of operation
-------------------
Every guest byte goes into the ring first and gets an absolute offset.  Each session has a ``cursor``: the
offset of the next byte it should get.  ``data_received`` hands a chunk straight to every session whose
cursor is exactly at the chunk's start and that is not ``lagging``; everyone else is left alone and later
caught up from the ring (``catch_up``) when its sink says it drained.  The fan-out never awaits a client and
never copies a chunk per session.

What a session cannot have is always said, never skipped silently:

* overwritten while it lagged: ``missed`` with the exact count (``slow_reader = "resync"``), or the session
  is closed naming the offset it reached (``"close"``);
* resumed from an offset of an earlier run of the daemon: ``restart_gap``, exact after a clean stop, "not
  kept" after a crash — the offset floor reserved between runs is never counted as missed bytes;
* a replay while catching up is refused (it would jump the cursor over bytes not yet sent).

A sink that raises while being handed output (a bug) loses only its own session: it is logged and closed,
and the ring, the device and every other session carry on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog

from ..core.policy import SlowReaderPolicy
from ..core.ring import RingBuffer
from ..obs.audit import AuditFn
from .notices import Notice, NoticeKind
from .session import EndReason, Session

log = structlog.get_logger("serialmuxd.hub")


# Chunk size used when a session catches up from the ring; the sink pauses us again if it fills up.
_CATCH_UP_CHUNK_BYTES = 64 * 1024


class OutputFanout:
    __slots__ = (
        "_audit",
        "_close_session",
        "_sessions",
        "bytes_from_device",
        "bytes_missed",
        "last_output_at",
        "observers",
        "port",
        "previous_end",
        "replay_lines",
        "ring",
        "run_start",
        "sink_errors",
        "slow_reader",
    )

    def __init__(
        self,
        port: str,
        ring: RingBuffer,
        sessions: Mapping[int, Session],
        *,
        slow_reader: SlowReaderPolicy,
        replay_lines: int,
        previous_end: int | None,
        audit: AuditFn,
        close_session: Callable[[Session, str, EndReason], None],
    ) -> None:
        self.port = port
        self.ring = ring
        self._sessions = sessions
        self.slow_reader = slow_reader
        self.replay_lines = replay_lines
        # Where this run's stream starts (offsets continue from the previous run, see state.py), and the
        # exact end of the previous run when it stopped cleanly; None after a crash (then it ended somewhere
        # before run_start, a floor reserved ahead of it).
        self.run_start = ring.end
        self.previous_end = previous_end
        self._audit = audit
        self._close_session = close_session
        self.bytes_from_device = 0
        self.bytes_missed = 0
        self.sink_errors = 0  # sessions closed because their sink raised
        self.last_output_at: float | None = None  # monotonic time of the guest's last byte (metrics)
        # Consumers of every guest chunk besides the sessions (console log files, guest-health matching):
        # called as observer(data, offset_of_data[0]) after the ring append, before the fan-out.  They must
        # not block; one that raises is logged and removed, so a bug there never stops the console.
        self.observers: list[Callable[[bytes, int], None]] = []

    def data_received(self, data: bytes, now: float | None = None) -> None:
        ring = self.ring
        ring.append(data)
        self.bytes_from_device += len(data)
        self.last_output_at = now
        end = ring.end
        start = end - len(data)
        observers = self.observers
        if observers:
            # Inline (a keystroke echo is one chunk: every call counts); a tuple copy, since one that
            # raises is removed.
            for observer in tuple(observers):
                try:
                    observer(data, start)
                except Exception:
                    self._observer_failed(observer)
        # A tuple copy: a sink may close its session while we iterate (slow_reader = "close").
        for session in tuple(self._sessions.values()):
            if session.lagging or session.closed:  # closed: cut by a sink earlier in this loop
                continue
            # try costs nothing on this path until something raises (zero-cost exceptions in 3.11).
            try:
                # Cursor first: the sink may call pause_output from inside send_output, and what it was
                # handed already counts as delivered.
                if session.cursor == start:
                    session.cursor = end
                    session.sink.send_output(data)
                else:  # behind for another reason (e.g. mid catch-up): use the ring
                    self.catch_up(session)
            except Exception:
                self._sink_failed(session)

    def _observer_failed(self, observer: Callable[[bytes, int], None]) -> None:
        log.exception("output_observer_failed", port=self.port, observer=repr(observer))
        self.observers.remove(observer)

    def catch_up(self, session: Session) -> None:
        """Send a session what it has not received yet, from its cursor, until done or it pauses again."""
        while not session.lagging and not session.closed and session.cursor < self.ring.end:
            result = self.ring.read(session.cursor, _CATCH_UP_CHUNK_BYTES)
            if result.missed:
                self.bytes_missed += result.missed
                session.missed_bytes += result.missed
                self._audit(
                    "reader_missed",
                    port=self.port,
                    session=session.id,
                    missed=result.missed,
                    policy=str(self.slow_reader),
                )
                if self.slow_reader is SlowReaderPolicy.CLOSE:
                    self._close_session(
                        session,
                        f"fell behind: {result.missed} bytes were overwritten before they could be sent; "
                        f"last offset received {session.cursor}",
                        EndReason.FELL_BEHIND,
                    )
                    return
                self._tell_missed(session, result.missed, result.offset)
            session.cursor = result.offset + len(result.data)
            session.sink.send_output(result.data)

    def resume(self, session: Session, offset: int) -> None:
        """Catch a resuming session up from ``offset`` (at most the stream end), telling it exactly what it
        cannot have."""
        session.cursor = offset
        if offset < self.run_start:
            lost = None if self.previous_end is None else max(0, self.previous_end - offset)
            text = f"serialmuxd restarted since offset {offset}; " + (
                f"{lost} bytes of console output from before the restart are not available"
                if lost is not None
                else "console output between that offset and the restart was not kept"
            )
            session.notify(
                Notice(
                    NoticeKind.RESTART_GAP,
                    f"{text}; the stream continues at offset {self.run_start}",
                    {"from": offset, "to": self.run_start, "exact": lost is not None, "lost": lost},
                )
            )
            session.cursor = self.run_start
        if session.cursor < self.ring.start:
            # A resume is told what it missed whatever slow_reader says: that policy is about keeping up
            # while attached, not about what happened while the client was away.
            missed = self.ring.start - session.cursor
            self.bytes_missed += missed
            session.missed_bytes += missed
            self._tell_missed(session, missed, self.ring.start)
            session.cursor = self.ring.start
        self.catch_up(session)

    def replay(self, session: Session, max_bytes: int, *, manual: bool) -> None:
        """The recent scrollback, between replay markers (on attach, or the escape command)."""
        ring = self.ring
        if session.lagging or session.cursor != ring.end:
            # Jumping the cursor to the end would skip bytes it has not had, without telling it.
            session.notify(Notice(NoticeKind.INFO, "replay not available while output is catching up"))
            return
        if max_bytes <= 0 or len(ring) == 0:
            if manual:
                session.notify(Notice(NoticeKind.INFO, "scrollback is empty"))
            return
        if self.replay_lines > 0 and not manual:
            window = ring.tail_lines(self.replay_lines, max_bytes)
        else:
            window = ring.replay_window(max_bytes)
        if not window.data:
            return
        session.notify(
            Notice(
                NoticeKind.REPLAY_START,
                f"replaying {len(window.data)} bytes of scrollback",
                {"offset": window.offset, "bytes": len(window.data)},
            )
        )
        session.sink.send_output(window.data)
        session.notify(Notice(NoticeKind.REPLAY_END, "end of replay; live from here", {"offset": ring.end}))
        # Replay counts as delivery up to window's end, which is the ring's end.
        session.cursor = ring.end

    def _tell_missed(self, session: Session, missed: int, offset: int) -> None:
        session.notify(
            Notice(
                NoticeKind.MISSED,
                f"your connection fell behind: {missed} bytes of console output skipped",
                {"missed": missed, "offset": offset},
            )
        )

    def _sink_failed(self, session: Session) -> None:
        self.sink_errors += 1
        log.exception("session_output_failed", port=self.port, session=session.id, peer=str(session.identity))
        try:
            self._close_session(session, "internal error in serialmuxd (logged)", EndReason.PROTOCOL)
        except Exception:  # the sink is broken beyond closing: the hub forgets the session all the same
            log.exception("session_close_failed", port=self.port, session=session.id)
            session.closed = True
