"""PortHub: one console port — its device link, scrollback ring, writer lease and sessions.

Data flow (DESIGN.md §1)::

    device ──► PortHub.device_data_received ──► RingBuffer.append
                                            └──► each live Session's sink.send_output (never awaits)
    sink ──► Session.input ──► lease check ──► (pacing) ──► DeviceLink.write

Invariants kept here:

* The fan-out never waits for a client.  A sink whose transport buffer is full calls
  ``Session.pause_output``; from then on the hub only remembers the session's cursor (an absolute ring
  offset).  When the sink drains it calls ``Session.resume_output`` and the hub replays from the cursor —
  telling the client exactly how many bytes were overwritten meanwhile (``slow_reader = "resync"``) or
  closing it with that count and the offset it reached (``"close"``).  The device and the other sessions
  never slow down.
* Exactly one writer: input is accepted only from the session that holds the ``WriterLease`` at the moment
  the bytes arrive; bytes of an evicted or demoted writer are discarded, never queued.
* Device back-pressure reaches only the writer: when the link's input buffer is full the writer's sink is
  asked to stop reading (``pause_input``), so a paste is paced at the device's drain rate.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .adapters import Action, AdapterError, AdapterErrorKind, HypervisorAdapter, StateReport, VmState
from .config import PortConfig
from .core.policy import SlowReaderPolicy
from .core.access import AccessPolicy, AllowAll, Identity, Verb
from .core.lease import LeaseInput, Outcome, WriterLease
from .core.pacing import TokenBucket
from .core.ring import ReadResult, RingBuffer
from .devices.base import DeviceLink, DeviceListener, LinkState

# Chunk size used when a session catches up from the ring; the sink pauses us again if it fills up.
_CATCH_UP_CHUNK_BYTES = 64 * 1024
# A read-only session that types is reminded at most this often.
_READ_ONLY_REMINDER_S = 5.0
# Scrollback replayed by the escape command when the port replays nothing on attach.
_MIN_MANUAL_REPLAY_BYTES = 4096


class InputRefused(Exception):
    """An API call may not put bytes on the line now; ``code`` is the HTTP API's error code."""

    def __init__(self, code: str, message: str, writer: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.writer = writer


class PortState(enum.StrEnum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"
    DISABLED = "disabled"


class Role(enum.StrEnum):
    WRITER = "writer"
    VIEWER = "viewer"


class AttachMode(enum.StrEnum):
    INTERACTIVE = "interactive"  # asks for the writer lease (takeover policy applies)
    VIEWER = "viewer"  # watches only


class EndReason(enum.StrEnum):
    """Why the daemon ended a session; WebSocket maps each to a documented close code."""

    EVICTED = "evicted"  # another session took over (policy evict)
    DISABLED = "disabled"  # the port or the whole console was disabled
    FELL_BEHIND = "fell_behind"  # slow_reader = "close"
    DENIED = "denied"  # access check refused
    SHUTDOWN = "shutdown"  # the daemon is stopping
    PROTOCOL = "protocol"  # the client broke its protocol (set by front ends)


class NoticeKind(enum.StrEnum):
    """Every in-band message a session can receive; WebSocket sends ``kind`` as a JSON event name."""

    ATTACHED = "attached"
    WRITE_GRANTED = "write_granted"
    TOOK_OVER = "took_over"  # you displaced someone
    EVICTED = "evicted"  # someone displaced you; you are being detached
    DEMOTED = "demoted"  # someone displaced you; you stay as a viewer
    REFUSED = "refused"  # write access refused; you watch
    READ_ONLY = "read_only"  # you are a viewer and typed, or chose read-only
    INPUT_DISCARDED = "input_discarded"  # device offline / input not accepted
    OFFLINE = "offline"
    ONLINE = "online"
    MISSED = "missed"  # you fell behind; n bytes were skipped
    REPLAY_START = "replay_start"
    REPLAY_END = "replay_end"
    INFO = "info"  # answers to who/help and similar
    VM_STATE = "vm_state"  # the machine behind the port changed state (hypervisor adapter)
    VM_ACTION = "vm_action"  # someone sent an NMI / reset / restart


@dataclass(frozen=True, slots=True)
class Notice:
    kind: NoticeKind
    text: str  # one line for people, without line ends
    fields: dict[str, Any] = field(default_factory=dict)  # machine-readable details (JSON-safe)


class SessionSink(Protocol):
    """The transport side of a session (telnet, raw TCP, WebSocket).  All calls are synchronous."""

    def session_started(self, session: Session) -> None:
        """The hub created the session; called before any output, so that the sink can already call
        ``pause_output`` while the replay (or a ``from_offset`` catch-up) is being sent."""

    def send_output(self, data: bytes) -> None:
        """Guest bytes (live or replay).  Must not block; call ``Session.pause_output`` when full."""

    def send_notice(self, notice: Notice) -> None:
        """An in-band message for the client."""

    def close_session(self, reason: str, kind: EndReason) -> None:
        """The hub ended the session (after sending any notice); close the transport."""

    def pause_input(self) -> None:
        """Stop reading client input (the device is not keeping up)."""

    def resume_input(self) -> None: ...


def _clock_text(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(stamp))


class AuditFn(Protocol):
    def __call__(self, event: str, /, **fields: Any) -> None: ...


def _no_audit(event: str, /, **fields: Any) -> None:
    return None


class Session:
    """One attached client of one port.  Created by ``PortHub.attach``; transport-independent."""

    __slots__ = (
        "_discarded_untold",
        "_last_discard_notice",
        "_last_read_only_notice",
        "attached_at",
        "closed",
        "cursor",
        "hub",
        "id",
        "identity",
        "lagging",
        "missed_bytes",
        "role",
        "sink",
    )

    def __init__(self, hub: PortHub, session_id: int, identity: Identity, sink: SessionSink) -> None:
        self.hub = hub
        self.id = session_id
        self.identity = identity
        self.sink = sink
        self.role = Role.VIEWER
        self.cursor = hub.ring.end  # absolute offset of the next guest byte this session should get
        self.lagging = False
        self.closed = False
        self.missed_bytes = 0
        self.attached_at = time.time()
        self._last_read_only_notice = -_READ_ONLY_REMINDER_S
        # Input discarded while the device was away: told at most every few seconds (a client typing into
        # an offline console must not get a notice per keystroke), and the rest when it comes back.
        self._discarded_untold = 0
        self._last_discard_notice = -_READ_ONLY_REMINDER_S

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.hub.name} {self.role} {self.identity}>"

    # -- from the sink --------------------------------------------------------------------------
    def input(self, data: bytes) -> None:
        """Client typed ``data``."""
        self.hub._input_from(self, data)

    def pause_output(self) -> None:
        """The sink's buffer is full: stop sending live data; the cursor remembers where we were."""
        self.lagging = True

    def resume_output(self) -> None:
        """The sink drained: catch up from the ring (or close, per ``slow_reader``)."""
        if self.lagging and not self.closed:
            self.lagging = False
            self.hub._catch_up(self)

    def send_break(self) -> bool:
        """True if a BREAK went out (the session is told either way)."""
        return self.hub._send_break(self)

    def window_size_changed(self, cols: int, rows: int) -> None:
        if self.role is Role.WRITER:
            self.hub.link_set_window_size(cols, rows)

    def take_over(self) -> None:
        self.hub._request_write(self, LeaseInput.TAKE_OVER)

    def become_viewer(self) -> None:
        self.hub._become_viewer(self)

    def replay(self) -> None:
        self.hub._replay(self, max(self.hub.config.replay_bytes, _MIN_MANUAL_REPLAY_BYTES), manual=True)

    def who(self) -> None:
        self.sink.send_notice(self.hub.who_notice())

    def detach(self) -> None:
        """The client left (or the transport closed).  Idempotent."""
        self.hub._detach(self)


class PortHub(DeviceListener):
    """State and policy of one port.  See the module docstring for the invariants."""

    def __init__(
        self,
        config: PortConfig,
        link_factory: Callable[[PortHub], DeviceLink] | None,
        *,
        access: AccessPolicy | None = None,
        audit: AuditFn = _no_audit,
        clock: Callable[[], float] = time.monotonic,
        start_offset: int = 0,
    ) -> None:
        self.config = config
        self.name = config.name
        # Offsets continue from the previous run (see state.py), so they are never reused.
        self.ring = RingBuffer(config.scrollback_bytes, start_offset)
        self.lease = WriterLease(config.takeover)
        self.access: AccessPolicy = access or AllowAll()
        self._audit = audit
        self._clock = clock
        self._link_factory = link_factory
        self.link: DeviceLink | None = None
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self.state = PortState.CONNECTING if config.enabled else PortState.DISABLED
        self.state_reason = "" if config.enabled else "disabled in the configuration"
        self.state_since = time.time()
        self._device_paused = False
        self._input_paused_session: Session | None = None
        # The machine behind the port (set by the daemon when [ports.hypervisor] is configured).
        self.adapter: HypervisorAdapter | None = None
        # Paced input (input_rate_bps > 0): bytes waiting for tokens, and the timer that sends them.
        self._pending_input = bytearray()
        self._bucket: TokenBucket | None = None
        self._pacing_timer: asyncio.TimerHandle | None = None
        # Counters for the API/metrics issues.
        self.bytes_from_device = 0
        self.bytes_to_device = 0
        self.bytes_missed = 0
        self.takeovers = 0
        self.device_reconnects = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self.state is PortState.DISABLED or self._link_factory is None or self.link is not None:
            return
        self.link = self._link_factory(self)
        self.link.start()

    async def close(self, reason: str = "serialmuxd is shutting down") -> None:
        for session in list(self.sessions.values()):
            self._close_session(session, reason, EndReason.SHUTDOWN)
        if self._pacing_timer is not None:
            self._pacing_timer.cancel()
            self._pacing_timer = None
        if self.link is not None:
            await self.link.close()

    async def set_enabled(self, enabled: bool, reason: str) -> None:
        """Enable or disable the port at run time.  Disabling closes every session with ``reason`` and
        releases the device (so another tool may use it); enabling reopens it."""
        if enabled == (self.state is not PortState.DISABLED):
            return
        if not enabled:
            self._set_state(PortState.DISABLED, reason)
            self._audit("port_disabled", port=self.name, reason=reason)
            for session in list(self.sessions.values()):
                self._close_session(
                    session, f"console {self.name} was disabled: {reason}", EndReason.DISABLED
                )
            self._reset_input_queue()
            self._device_paused = False  # the closed link will not report a resume
            if self.link is not None:
                link, self.link = self.link, None
                await link.close()
            return
        self._set_state(PortState.CONNECTING, "")
        self._audit("port_enabled", port=self.name)
        self.start()

    # -- device side (DeviceListener) ------------------------------------------------------------
    def device_data_received(self, data: bytes) -> None:
        self.ring.append(data)
        self.bytes_from_device += len(data)
        end = self.ring.end
        # A tuple copy: a sink may close its session while we iterate (slow_reader = "close").
        for session in tuple(self.sessions.values()):
            if session.lagging or session.closed:  # closed: cut by a sink earlier in this loop
                continue
            # Cursor first: the sink may call pause_output from inside send_output, and what it was
            # handed already counts as delivered.
            if session.cursor == end - len(data):
                session.cursor = end
                session.sink.send_output(data)
            else:  # behind for another reason (e.g. mid catch-up): use the ring
                self._catch_up(session)

    def device_online(self, description: str) -> None:
        if self.state is not PortState.CONNECTING:
            self.device_reconnects += 1
        self._set_state(PortState.ONLINE, description)
        self._audit("device_online", port=self.name, device=description)
        for session in tuple(self.sessions.values()):
            self._tell_discarded(session)  # whatever was not told yet while the device was away
        self._broadcast(Notice(NoticeKind.ONLINE, f"console {self.name} online ({description})"))

    def device_offline(self, reason: str) -> None:
        self._set_state(PortState.OFFLINE, reason)
        self._reset_input_queue()  # the link discarded its own buffer too, and resumed the writer
        self._audit("device_offline", port=self.name, reason=reason)
        self._broadcast(
            Notice(
                NoticeKind.OFFLINE,
                f"console {self.name} offline: {reason}; reconnecting, stay attached",
                {"reason": reason},
            )
        )

    def _reset_input_queue(self) -> None:
        """Drop paced input that has not reached the device, and let the writer read again."""
        self._pending_input.clear()
        if self._pacing_timer is not None:
            self._pacing_timer.cancel()
            self._pacing_timer = None
        self._sync_writer_input()

    def device_write_paused(self) -> None:
        self._device_paused = True
        self._sync_writer_input()

    def device_write_resumed(self) -> None:
        self._device_paused = False
        self._sync_writer_input()
        self._flush_pending_input()

    def link_set_window_size(self, cols: int, rows: int) -> None:
        if self.link is not None:
            self.link.set_window_size(cols, rows)

    # -- sessions ---------------------------------------------------------------------------------
    def attach(
        self, sink: SessionSink, identity: Identity, mode: AttachMode, *, from_offset: int | None = None
    ) -> Session | None:
        """Attach a client.  Returns None (after closing the sink with a reason) if it may not attach.

        ``from_offset`` resumes a client that was attached before (WebSocket ``?from=``): instead of the
        replay window it gets everything since that offset that is still in the ring, and is told how
        many bytes were overwritten in between.  It must not be beyond ``ring.end`` (checked by callers).
        """
        if not self.access.allows(identity, Verb.VIEW, self.name):
            sink.close_session(f"access to console {self.name} denied", EndReason.DENIED)
            return None
        if self.state is PortState.DISABLED:
            sink.close_session(f"console {self.name} is disabled: {self.state_reason}", EndReason.DISABLED)
            return None
        session = Session(self, next(self._ids), identity, sink)
        self.sessions[session.id] = session
        sink.session_started(session)
        self._audit("attach", port=self.name, session=session.id, peer=str(identity), mode=str(mode))
        sink.send_notice(
            Notice(
                NoticeKind.ATTACHED,
                f"attached to console {self.name} ({self.state}"
                + (f": {self.state_reason}" if self.state is PortState.OFFLINE else "")
                + ")",
                {"port": self.name, "state": str(self.state), "session": session.id},
            )
        )
        vm_notice = self._vm_state_notice()
        if vm_notice is not None:
            sink.send_notice(vm_notice)
        if from_offset is None:
            self._replay(session, self.config.replay_bytes, manual=False)
        else:
            session.cursor = min(from_offset, self.ring.end)
            if session.cursor < self.ring.start:
                # A resume is told what it missed whatever slow_reader says: that policy is about keeping up
                # while attached, not about what happened while the client was away.
                self._report_missed(session, self.ring.start - session.cursor, self.ring.start)
                session.cursor = self.ring.start
            self._catch_up(session)
        if mode is AttachMode.INTERACTIVE:
            self._request_write(session, LeaseInput.ATTACH)
        else:
            holder = self.lease.holder
            sink.send_notice(
                Notice(
                    NoticeKind.READ_ONLY,
                    "read-only: your input is not sent to the guest"
                    + (f"; {holder.who} is writing" if holder else ""),
                )
            )
        return session

    # -- the machine behind the port --------------------------------------------------------------------
    def vm_state_changed(self, report: StateReport) -> None:
        """Adapter callback: tell everyone attached (the console itself comes back on its own when the
        device reconnects, so sessions simply stay)."""
        self._audit("vm_state", port=self.name, state=str(report.state), reason=report.reason)
        notice = self._vm_state_notice() or Notice(
            NoticeKind.VM_STATE, f"{self.name} is {report.state}", {"state": str(report.state)}
        )
        self._broadcast(notice)

    def _vm_state_notice(self) -> Notice | None:
        if self.adapter is None:
            return None
        report = self.adapter.current
        fields = {"state": str(report.state), "reason": report.reason}
        if report.state in (VmState.STOPPED, VmState.SHUTDOWN):
            return Notice(
                NoticeKind.VM_STATE, f"{self.name} is {report.state}; start it and try again", fields
            )
        if report.state is VmState.CRASHED:
            return Notice(
                NoticeKind.VM_STATE, f"{self.name} has crashed ({report.reason}); reset or restart it", fields
            )
        if report.state is VmState.PAUSED:
            return Notice(NoticeKind.VM_STATE, f"{self.name} is paused by the hypervisor", fields)
        if report.state is VmState.RUNNING:
            return Notice(NoticeKind.VM_STATE, f"{self.name} is running", fields)
        return None

    async def vm_action(self, action: Action, identity: Identity) -> None:
        """Run a hypervisor action for ``identity``; audited, and announced to every session on success.
        Raises ``AdapterError`` (also when no adapter offers the action)."""
        verb = Verb.NMI if action is Action.NMI else Verb.POWER
        if not self.access.allows(identity, verb, self.name):
            raise AdapterError(self.name, f"{action} not allowed for {identity}", AdapterErrorKind.REFUSED)
        adapter = self.adapter
        if adapter is None or action not in adapter.actions:
            raise AdapterError(
                self.name, f"{action} is not available for this console", AdapterErrorKind.UNSUPPORTED
            )
        try:
            await getattr(adapter, str(action))()
        except AdapterError as exc:
            self._audit(
                "vm_action",
                port=self.name,
                action=str(action),
                peer=str(identity),
                result="failed",
                error=str(exc),
            )
            raise
        self._audit("vm_action", port=self.name, action=str(action), peer=str(identity), result="ok")
        what = {
            Action.NMI: "NMI sent",
            Action.RESET: "hard reset",
            Action.RESTART: "restart requested",
            Action.START: "start requested",
        }[action]
        self._broadcast(
            Notice(
                NoticeKind.VM_ACTION,
                f"{self.name}: {what} by {identity}",
                {"action": str(action), "by": str(identity)},
            )
        )

    def who_notice(self) -> Notice:
        holder = self.lease.holder
        viewers = [s for s in self.sessions.values() if s.role is Role.VIEWER]
        writer = f"{holder.who} since {_clock_text(holder.since)}" if holder else "nobody"
        text = f"{self.name}: writer: {writer}; viewers: {len(viewers)}"
        if viewers:
            text += " (" + ", ".join(str(s.identity) for s in viewers[:10])
            text += ", …)" if len(viewers) > 10 else ")"
        return Notice(
            NoticeKind.INFO,
            text,
            {"writer": holder.who if holder else None, "viewers": [str(s.identity) for s in viewers]},
        )

    # -- internals --------------------------------------------------------------------------------
    def _set_state(self, state: PortState, reason: str) -> None:
        self.state = state
        self.state_reason = reason
        self.state_since = time.time()

    def _broadcast(self, notice: Notice) -> None:
        for session in list(self.sessions.values()):
            session.sink.send_notice(notice)

    def _replay(self, session: Session, max_bytes: int, *, manual: bool) -> None:
        if session.lagging or session.cursor != self.ring.end:
            # Jumping the cursor to the end would skip bytes it has not had, without telling it.
            session.sink.send_notice(
                Notice(NoticeKind.INFO, "replay not available while output is catching up")
            )
            return
        if max_bytes <= 0 or len(self.ring) == 0:
            if manual:
                session.sink.send_notice(Notice(NoticeKind.INFO, "scrollback is empty"))
            return
        if self.config.replay_lines > 0 and not manual:
            window = self.ring.tail_lines(self.config.replay_lines, max_bytes)
        else:
            window = self.ring.replay_window(max_bytes)
        if not window.data:
            return
        session.sink.send_notice(
            Notice(
                NoticeKind.REPLAY_START,
                f"replaying {len(window.data)} bytes of scrollback",
                {"offset": window.offset, "bytes": len(window.data)},
            )
        )
        session.sink.send_output(window.data)
        session.sink.send_notice(
            Notice(NoticeKind.REPLAY_END, "end of replay; live from here", {"offset": self.ring.end})
        )
        # Replay counts as delivery up to window's end, which is the ring's end.
        session.cursor = self.ring.end

    def _catch_up(self, session: Session) -> None:
        """Send a session what it has not received yet, from its cursor, until done or it pauses again."""
        while not session.lagging and not session.closed and session.cursor < self.ring.end:
            result: ReadResult = self.ring.read(session.cursor, _CATCH_UP_CHUNK_BYTES)
            if result.missed:
                self.bytes_missed += result.missed
                session.missed_bytes += result.missed
                self._audit(
                    "reader_missed",
                    port=self.name,
                    session=session.id,
                    missed=result.missed,
                    policy=str(self.config.slow_reader),
                )
                if self.config.slow_reader is SlowReaderPolicy.CLOSE:
                    self._close_session(
                        session,
                        f"fell behind: {result.missed} bytes were overwritten before they could be sent; "
                        f"last offset received {session.cursor}",
                        EndReason.FELL_BEHIND,
                    )
                    return
                self._report_missed(session, result.missed, result.offset, counted=True)
            session.cursor = result.offset + len(result.data)
            session.sink.send_output(result.data)

    def _report_missed(self, session: Session, missed: int, offset: int, *, counted: bool = False) -> None:
        if not counted:
            self.bytes_missed += missed
            session.missed_bytes += missed
        session.sink.send_notice(
            Notice(
                NoticeKind.MISSED,
                f"your connection fell behind: {missed} bytes of console output skipped",
                {"missed": missed, "offset": offset},
            )
        )

    def _request_write(self, session: Session, kind: LeaseInput) -> None:
        if session.closed:  # a detached session's late command must not take the lease
            return
        verb = Verb.WRITE if kind is LeaseInput.ATTACH else Verb.TAKE_OVER
        if not self.access.allows(session.identity, verb, self.name):
            session.sink.send_notice(Notice(NoticeKind.REFUSED, "write access denied; you are read-only"))
            return
        holder_before = self.lease.holder
        if (
            holder_before is not None
            and holder_before.session_id != session.id
            and not self.access.allows(session.identity, Verb.TAKE_OVER, self.name)
        ):
            session.sink.send_notice(
                Notice(NoticeKind.REFUSED, f"{holder_before.who} is writing; you may not take over")
            )
            return
        decision = self.lease.request(kind, session.id, str(session.identity), time.time())
        if decision.outcome is Outcome.ALREADY_HELD:
            session.sink.send_notice(Notice(NoticeKind.INFO, "you already have write access"))
            return
        if decision.outcome is Outcome.REFUSED:
            assert decision.holder is not None
            self._audit("takeover_refused", port=self.name, session=session.id, holder=decision.holder.who)
            session.sink.send_notice(
                Notice(
                    NoticeKind.REFUSED,
                    f"console {self.name} is in use by {decision.holder.who} since "
                    f"{_clock_text(decision.holder.since)}; you are attached read-only "
                    "(takeover policy: refuse)",
                    {"holder": decision.holder.who},
                )
            )
            return
        session.role = Role.WRITER
        self._pending_input.clear()  # nothing typed by a previous writer may follow the handover
        displaced = decision.displaced
        if displaced is None:
            self._audit("write_granted", port=self.name, session=session.id, peer=str(session.identity))
            session.sink.send_notice(Notice(NoticeKind.WRITE_GRANTED, "you have write access"))
        else:
            self.takeovers += 1
            old = self.sessions.get(displaced.session_id)
            evicting = decision.outcome is Outcome.GRANTED_EVICTING
            self._audit(
                "takeover",
                port=self.name,
                session=session.id,
                peer=str(session.identity),
                displaced=displaced.who,
                action="evict" if evicting else "demote",
            )
            when = _clock_text(time.time())
            if old is not None:
                old.role = Role.VIEWER
                detail = {"by": str(session.identity), "at": when}
                if evicting:
                    old.sink.send_notice(
                        Notice(
                            NoticeKind.EVICTED,
                            f"write access to {self.name} was taken over by {session.identity} at {when}; "
                            "you are detached. The guest session was not logged out.",
                            detail,
                        )
                    )
                    self._close_session(old, f"taken over by {session.identity}", EndReason.EVICTED)
                else:
                    old.sink.send_notice(
                        Notice(
                            NoticeKind.DEMOTED,
                            f"write access to {self.name} was taken over by {session.identity} at {when}; "
                            "you are now read-only. The guest session was not logged out.",
                            detail,
                        )
                    )
            session.sink.send_notice(
                Notice(
                    NoticeKind.TOOK_OVER,
                    f"you took over write access from {displaced.who} (writing since "
                    f"{_clock_text(displaced.since)}); the guest may still be logged in as their user",
                    {"displaced": displaced.who},
                )
            )
        self._sync_writer_input()

    def _become_viewer(self, session: Session) -> None:
        if session.closed:
            return
        if self.lease.release(session.id):
            self._audit("write_released", port=self.name, session=session.id)
            self._reset_input_queue()
        session.role = Role.VIEWER
        session.sink.send_notice(Notice(NoticeKind.READ_ONLY, "you are now read-only"))

    def _detach(self, session: Session) -> None:
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.id, None)
        if self._input_paused_session is session:
            self._input_paused_session = None
            session.sink.resume_input()  # e.g. a WebSocket loop parked on back-pressure must see its close
        if self.lease.release(session.id):
            self._reset_input_queue()
        self._audit(
            "detach",
            port=self.name,
            session=session.id,
            peer=str(session.identity),
            missed=session.missed_bytes,
        )

    def _close_session(self, session: Session, reason: str, kind: EndReason) -> None:
        if session.closed:
            return
        self._detach(session)
        session.sink.close_session(reason, kind)

    def _input_from(self, session: Session, data: bytes) -> None:
        if session.closed or not data:
            return
        if not self.lease.holds(session.id):
            now = self._clock()
            if now - session._last_read_only_notice >= _READ_ONLY_REMINDER_S:
                session._last_read_only_notice = now
                session.sink.send_notice(
                    Notice(NoticeKind.READ_ONLY, "read-only: input not sent (escape + c f takes over)")
                )
            return
        if self.link is None or self.link.state is not LinkState.ONLINE:
            session._discarded_untold += len(data)
            now = self._clock()
            if now - session._last_discard_notice >= _READ_ONLY_REMINDER_S:
                session._last_discard_notice = now
                self._tell_discarded(session)
            return
        if self.config.input_rate_bps > 0:
            self._pending_input += data
            self._flush_pending_input()
            self._sync_writer_input()  # over device_buffer_bytes queued: stop reading from the writer
            return
        self._write_device(session, data)

    def _tell_discarded(self, session: Session) -> None:
        count, session._discarded_untold = session._discarded_untold, 0
        if count:
            session.sink.send_notice(
                Notice(
                    NoticeKind.INPUT_DISCARDED,
                    f"console {self.name} is offline; {count} bytes of input discarded",
                    {"discarded": count},
                )
            )

    def _write_device(self, session: Session | None, data: bytes) -> None:
        assert self.link is not None
        if self.link.write(data):
            self.bytes_to_device += len(data)
        elif session is not None:
            session.sink.send_notice(
                Notice(NoticeKind.INPUT_DISCARDED, f"device not accepting input; {len(data)} bytes discarded")
            )

    def _flush_pending_input(self) -> None:
        """Send paced input as tokens allow; schedule the rest.  Over the buffer limit, pause the writer."""
        if not self._pending_input or self.link is None or self._device_paused:
            return
        if self._pacing_timer is not None:
            return  # a flush is already scheduled
        now = self._clock()
        if self._bucket is None:
            rate = self.config.input_rate_bps
            self._bucket = TokenBucket(rate, max(1, min(rate // 10, 4096)), now)
        n = self._bucket.take(len(self._pending_input), now)
        if n:
            chunk = bytes(self._pending_input[:n])
            del self._pending_input[:n]
            self._write_device(None, chunk)
        if self._pending_input:
            delay = max(0.001, self._bucket.seconds_until(len(self._pending_input), self._clock()))
            self._pacing_timer = asyncio.get_running_loop().call_later(delay, self._pacing_tick)
        self._sync_writer_input()

    def _pacing_tick(self) -> None:
        self._pacing_timer = None
        self._flush_pending_input()

    def _sync_writer_input(self) -> None:
        """Pause the writer's reading iff the device (or the pacing queue) is full; resume anyone else."""
        holder = self.lease.holder
        writer = self.sessions.get(holder.session_id) if holder else None
        full = self._device_paused or len(self._pending_input) >= self.config.device_buffer_bytes
        want = writer if full else None
        current = self._input_paused_session
        if current is want:
            return
        if current is not None and not current.closed:
            current.sink.resume_input()
        self._input_paused_session = want
        if want is not None:
            want.sink.pause_input()

    def _send_break(self, session: Session) -> bool:
        if session.closed:
            return False
        if not self.lease.holds(session.id) or not self.access.allows(
            session.identity, Verb.BREAK, self.name
        ):
            session.sink.send_notice(Notice(NoticeKind.READ_ONLY, "only the writer may send BREAK"))
            return False
        if self.link is None or not self.link.send_break():
            session.sink.send_notice(
                Notice(NoticeKind.INFO, f"BREAK not sent: not supported by {self.device_text} or offline")
            )
            return False
        self._audit("break", port=self.name, session=session.id, peer=str(session.identity))
        session.sink.send_notice(Notice(NoticeKind.INFO, "BREAK sent"))
        return True

    @property
    def device_text(self) -> str:
        """The device for people: an exec command shows only its program, never its arguments (secrets)."""
        spec = self.config.device
        if spec.argv:
            return f"exec:{os.path.basename(spec.argv[0])}"
        return spec.raw

    def _refuse_api_line_use(self, identity: Identity, verb: Verb, what: str) -> None:
        """API calls without a session may use the line only while nobody holds the writer lease (the
        one-writer rule) and the device is online.  Raises ``InputRefused``."""
        holder = self.lease.holder
        if holder is not None:
            raise InputRefused(
                "console_in_use",
                f"{self.name} has a writer ({holder.who}); {what} from its session, or take over first",
                holder.who,
            )
        if not self.access.allows(identity, verb, self.name):
            raise InputRefused("forbidden", f"{what}: not allowed")
        if self.state is PortState.DISABLED:
            raise InputRefused("console_disabled", f"console {self.name} is disabled: {self.state_reason}")
        if self.link is None or self.link.state is not LinkState.ONLINE:
            raise InputRefused("console_offline", f"console {self.name} is {self.state}: {self.state_reason}")
        if len(self._pending_input) >= self.config.device_buffer_bytes:
            # No client to pause here: refuse instead of queueing without bound.
            raise InputRefused("input_queue_full", f"{self.name}: input queue full, try again shortly")

    def api_input(self, identity: Identity, data: bytes, what: str) -> None:
        """Bytes from an API call (HTTP /keys, /sysrq), paced like typed input; audited by size only (input
        may be a secret)."""
        self._refuse_api_line_use(identity, Verb.WRITE, what)
        self._audit("api_input", port=self.name, peer=str(identity), what=what, bytes=len(data))
        if self.config.input_rate_bps > 0:
            self._pending_input += data
            self._flush_pending_input()
        else:
            self._write_device(None, data)

    def api_break(self, identity: Identity) -> None:
        """A serial BREAK from an API call; same rules as ``api_input``."""
        self._refuse_api_line_use(identity, Verb.BREAK, "send BREAK")
        assert self.link is not None
        if not self.link.send_break():
            raise InputRefused("not_supported", f"{self.device_text} cannot send a serial BREAK")
        self._audit("break", port=self.name, peer=str(identity))
