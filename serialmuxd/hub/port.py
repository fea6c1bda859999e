"""PortHub: one console port — its device link, scrollback ring, writer arbitration and sessions.

Data flow (DESIGN.md §1)::

    device ──► PortHub.device_data_received ──► OutputFanout ──► RingBuffer.append
                                                              └──► each live Session's sink.send_output
    sink ──► Session.input ──► PortHub.session_input ──► access policy ──► writer lease ──► DeviceInput

The hub composes small parts, each with one job: ``AccessPolicy`` (may this identity, in this attach mode,
do this verb here?), ``WriterArbiter`` (who writes, takeovers and what each side is told), ``OutputFanout``
(guest output to sessions: live, catch-up, replay, resume), ``DeviceInput`` (pacing and back-pressure to the
writer), ``VmControl`` (the machine behind the port).  What stays here is attaching and detaching, routing
each request to the part that carries it out after the policy said yes, and the port's state.

Invariants kept here:

* The fan-out never waits for a client.  A sink whose transport buffer is full calls
  ``Session.pause_output``; from then on the hub only remembers the session's cursor (an absolute ring
  offset).  When the sink drains it calls ``Session.resume_output`` and the hub replays from the cursor —
  telling the client exactly how many bytes were overwritten meanwhile (``slow_reader = "resync"``) or
  closing it with that count and the offset it reached (``"close"``).  The device and the other sessions
  never slow down.
* Exactly one writer: input is accepted only from the session that holds the writer lease at the moment
  the bytes arrive; bytes of an evicted or demoted writer are discarded, never queued.
* Every verb is decided by ``self.access`` with the session's attach mode, whatever transport it came from.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

from ..adapters import Action, AdapterError, HypervisorAdapter
from ..config import PortConfig
from ..core.access import AccessPolicy, AttachMode, Identity, Verb
from ..core.keys import key_bytes
from ..core.lease import LeaseInput
from ..core.ring import RingBuffer
from ..core.timeline import Timeline, max_samples_for
from ..devices.base import DeviceLink, DeviceListener
from ..obs.audit import AuditFn
from ..obs.consolelog import History, PortLog, restart_marker
from ..obs.consolelog_policy import replay_pieces, starts_with_restart_line
from .api import SYSRQ_KEY_DELAY_S, LineRequests
from .arbiter import WriterArbiter
from .clock import Scheduler, loop_scheduler
from .device_input import DeviceInput
from .fanout import OutputFanout
from .health import GuestHealth
from .notices import Hint, Notice, NoticeKind, clock_text
from .session import EndReason, Role, Session, SessionSink
from .status import (
    PortState,
    PortStatus,
    RecordingSlice,
    ScrollbackSlice,
    ScrollbackStatus,
    WriterStatus,
)
from .vm import ACTION_VERBS, VmControl
from .writer_watch import WriterWatch

# Scrollback replayed by the escape command when the port replays nothing on attach.
_MIN_MANUAL_REPLAY_BYTES = 4096
_ACTION_WORDS = {
    Action.NMI: "send an NMI",
    Action.RESET: "hard-reset the machine",
    Action.RESTART: "restart the machine",
    Action.START: "start the machine",
}


def _no_audit(event: str, /, **fields: Any) -> None:
    return None


class PortHub(DeviceListener, LineRequests):
    """State and policy of one port.  See the module docstring for the invariants."""

    def __init__(
        self,
        config: PortConfig,
        link_factory: Callable[[PortHub], DeviceLink] | None,
        *,
        access: AccessPolicy | None = None,
        adapter: HypervisorAdapter | None = None,
        audit: AuditFn = _no_audit,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        schedule: Scheduler = loop_scheduler,
        start_offset: int = 0,
        previous_end: int | None = None,
        console_log: PortLog | None = None,
        history: History | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        # Offsets continue from the previous run (see state.py), so they are never reused.
        self.ring = RingBuffer(config.scrollback_bytes, start_offset)
        # The persisted console log (obs/consolelog.py), and what a previous run of it left: served before
        # the ring, which then starts with a restart-gap line (so the fan-out's run starts after it).
        self.console_log = console_log
        self._history = history
        if history is not None:
            marker = restart_marker(history, start_offset, previous_end, wall())
            self.ring.append(marker)
            if console_log is not None:
                console_log.observe(marker, start_offset)
        self.access = access if access is not None else AccessPolicy()
        self._audit = audit
        self._clock = clock
        self._wall = wall
        self._link_factory = link_factory
        self.link: DeviceLink | None = None
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self.state = PortState.CONNECTING if config.enabled else PortState.DISABLED
        self.state_reason = "" if config.enabled else "disabled in the configuration"
        self.state_since = wall()
        self.arbiter = WriterArbiter(
            self.name,
            config.takeover,
            config.ask_timeout_s,
            sessions=self.sessions,
            close_session=self._close_session,
            on_writer_changed=self._writer_changed,
            audit=audit,
            clock=clock,
            wall=wall,
            schedule=schedule,
        )
        self.input = DeviceInput(
            config.input_rate_bytes_per_s,
            config.device_buffer_bytes,
            link=lambda: self.link,
            writer=lambda: self.arbiter.writer,
            clock=clock,
            schedule=schedule,
        )
        self.watch = WriterWatch(
            config.writer_idle_timeout_s,
            config.logout_sequence.encode(),
            clock=clock,
            schedule=schedule,
            idle_out=self._writer_idled,
            send=self._send_logout,
        )
        self.vm = VmControl(self.name, adapter, audit=audit, broadcast=self._broadcast)
        self.output = OutputFanout(
            self.name,
            self.ring,
            self.sessions,
            slow_reader=config.slow_reader,
            replay_lines=config.replay_lines,
            previous_end=previous_end,
            audit=audit,
            close_session=self._close_session,
        )
        self.device_reconnects = 0
        # Guest-health matching (hub/health.py) sees every chunk; the daemon adds [alerts] via configure().
        self.health = GuestHealth(config, audit=audit, broadcast=self._broadcast, wall=wall)
        self.health_counts = self.health.counts  # kind -> events, for metrics
        self.output.observers.append(self.health.observe)
        # When each chunk arrived (wall clock), for the recording export; the writer's last window size.
        self.timeline = self._seed_timeline(history, start_offset, config.scrollback_bytes)
        self.output.observers.append(self._record_time)
        self.window_size: tuple[int, int] | None = None
        if console_log is not None:
            self.output.observers.append(console_log.observe)
            self.vm.on_action = self._boot_action
            if adapter is not None:
                adapter.on_reset(lambda: console_log.trigger("machine reset reported by the hypervisor"))

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self.state is PortState.DISABLED or self._link_factory is None or self.link is not None:
            return
        self.link = self._link_factory(self)
        if self.console_log is not None:
            self.console_log.trigger("port started")
        self.link.start()

    async def close(self, reason: str = "serialmuxd is shutting down") -> None:
        for session in list(self.sessions.values()):
            self._close_session(session, reason, EndReason.SHUTDOWN)
        self.input.close()
        self.arbiter.close()
        self.watch.close()
        if self.link is not None:
            await self.link.close()
        self.health.close()  # after the link: no more guest output to match
        if self.console_log is not None:
            await self.console_log.close()  # everything queued is written, the files are closed

    def continue_at(self, offset: int) -> None:
        """Re-base a hub that was built but never started: its stream starts at ``offset``, the exact end of
        the previous run.  A reload that rebuilds a port builds the new hub while the old device is still
        producing, and only knows where the old stream ended once the old link is closed; everything that
        carries the start offset is set again here (ring, the fan-out's run, timeline, console log) so that
        no offset is handed out twice and none is skipped (reload/runner.py)."""
        if self.link is not None or len(self.ring) or self._history is not None:
            raise RuntimeError(f"port {self.name}: only a hub that has no stream yet can be re-based")
        before = self.ring.end
        self.ring = RingBuffer(self.config.scrollback_bytes, offset)
        self.output.ring = self.ring
        self.output.run_start = offset
        self.output.previous_end = offset  # the previous run ended exactly here: a resume is told nothing
        self.timeline = Timeline(offset, max_samples=max_samples_for(self.config.scrollback_bytes))
        if self.console_log is not None:
            self.console_log.continue_at(offset)
        for session in self.sessions.values():  # attached early (a new listener), waiting at the old start
            if session.cursor == before:
                session.cursor = offset

    def reconfigure(self, config: PortConfig) -> None:
        """A reload changed only settings that apply in place (``reload.plan.LIVE_PORT_FIELDS``): sessions,
        the device link and the ring stay.  What is read when a session attaches (notices, escape, the
        client buffer) applies to sessions that attach from now on.  New ``health_patterns`` need the
        daemon's [alerts] patterns too: the reloader calls ``health.configure`` for them."""
        self.config = config
        self.arbiter.lease.policy = config.takeover
        self.arbiter.lease.ask_timeout_s = config.ask_timeout_s
        self.input.set_rate(config.input_rate_bytes_per_s)
        self.watch.reconfigure(config.writer_idle_timeout_s, config.logout_sequence.encode())
        self.output.slow_reader = config.slow_reader
        self.output.replay_lines = config.replay_lines
        self.health.config = config
        self.health.enabled = config.health

    def revoke_unauthorized(self, reason: str) -> None:
        """The grants changed (reload): close sessions whose identity may no longer view this console;
        a writer who may no longer write keeps watching."""
        for session in list(self.sessions.values()):
            if not self.access.decide(session.identity, Verb.VIEW, self.name, session.mode):
                ended = f"{reason}: access to console {self.name} ended"
                self._close_session(session, ended, EndReason.DENIED)
            elif self.arbiter.holds(session) and not self.access.decide(
                session.identity, Verb.WRITE, self.name, session.mode
            ):
                self.arbiter.release(session, "lost write access")
                session.notify(Notice(NoticeKind.READ_ONLY, f"{reason}: you are now read-only"))

    def end_sessions(self, why: Callable[[Session], str | None]) -> int:
        """Close each session ``why`` gives a reason for (a reload withdrew the credential it was opened
        with), telling it that reason; returns how many were closed."""
        ended = 0
        for session in list(self.sessions.values()):
            reason = why(session)
            if reason is not None:
                self._close_session(session, reason, EndReason.DENIED)
                ended += 1
        return ended

    def disable_at_start(self, reason: str) -> None:
        """Mark the port disabled before ``start`` (persisted switch): its device is never opened."""
        self._set_state(PortState.DISABLED, reason)

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
            self.input.link_closed()
            if self.link is not None:
                link, self.link = self.link, None
                await link.close()
            return
        self._set_state(PortState.CONNECTING, "")
        self._audit("port_enabled", port=self.name)
        self.start()

    @property
    def bytes_missed(self) -> int:
        return self.output.bytes_missed

    @property
    def sink_errors(self) -> int:
        return self.output.sink_errors

    # -- what front ends read -----------------------------------------------------------------------
    @property
    def stream_end(self) -> int:
        """The offset the next guest byte will get."""
        return self.ring.end

    def status(self) -> PortStatus:
        holder = self.arbiter.lease.holder
        ring = self.ring
        return PortStatus(
            name=self.name,
            group=self.config.group,
            state=self.state,
            state_reason=self.state_reason,
            state_since=self.state_since,
            device=self.device_text,
            writer=None if holder is None else WriterStatus(holder.who, holder.since),
            viewers=sum(1 for s in self.sessions.values() if s.role is Role.VIEWER),
            sessions=len(self.sessions),
            # The oldest offset the scrollback API serves: after a restart, the persisted history's.
            scrollback=ScrollbackStatus(self.scrollback_bounds()[0], ring.end, ring.capacity),
            bytes_from_device=self.output.bytes_from_device,
            bytes_to_device=self.input.bytes_to_device,
            bytes_missed=self.output.bytes_missed,
            takeovers=self.arbiter.takeovers,
            device_reconnects=self.device_reconnects,
            key_profile=self.config.key_profile,
            hypervisor=self.vm.status(),
        )

    def scrollback(self, identity: Identity, start: int | None, limit: int) -> ScrollbackSlice:
        """Read the ring from ``start`` (default: the oldest byte).  The caller checks ``start`` against
        the bounds in the result's ``start``/``end`` (see ``scrollback_bounds``).  After a restart the
        persisted history comes first: a read that starts in it ends with it (``offset + len`` is where to
        go on), and one that starts after it gets the ring, which begins with the restart-gap line."""
        self._require(identity, Verb.VIEW)
        ring = self.ring
        history = self._history_now()
        begin = self.scrollback_bounds()[0] if start is None else start
        if history is not None and history.start <= begin < history.end:
            offset, data = history.read(begin, limit)  # in a hole between two runs: the next run's start
            return ScrollbackSlice(data, offset, history.start, ring.end)
        result = ring.read(begin, limit)
        return ScrollbackSlice(result.data, result.offset, ring.start, ring.end)

    def scrollback_bounds(self) -> tuple[int, int]:
        history = self._history_now()
        return (self.ring.start if history is None else history.start), self.ring.end

    def _history_now(self) -> History | None:
        """The persisted history while the ring has room for it; once the ring is full it is let go."""
        if self._history is not None and len(self.ring) >= self.ring.capacity:
            self._history = None
        return self._history

    def recording(self, identity: Identity, start: int | None, end: int | None) -> RecordingSlice:
        """``scrollback`` from ``start`` to ``end`` (defaults: the scrollback's bounds) with each chunk's
        time; after a restart the history's chunks have the times the log's index kept."""
        begin, stop = self.scrollback_bounds()
        begin = begin if start is None else start
        stop = stop if end is None else end
        data = self.scrollback(identity, begin, max(0, stop - begin))  # decides access
        segments = self.timeline.segments(data.offset, data.offset + len(data.data))
        return RecordingSlice(data, tuple(segments), self.timeline.floor, self.window_size)

    def _seed_timeline(self, history: History | None, start_offset: int, ring_bytes: int) -> Timeline:
        """The timeline, with the persisted history's times first (bounded like any: max_samples)."""
        if history is None:
            return Timeline(self.ring.end, max_samples=max_samples_for(ring_bytes))
        times = history.times
        # Times are known from the first timed record on (an older version's index has none): the
        # recording's X-Recording-Timed-From says so, and the bytes before it play at once.
        first = times[0][0] if times else start_offset
        timeline = Timeline(first, max_samples=max_samples_for(ring_bytes))
        for i, (offset, at) in enumerate(times):
            upto = times[i + 1][0] if i + 1 < len(times) else history.end
            timeline.record(offset, upto - offset, at)  # a hole's offsets take the time before it
        timeline.record(start_offset, self.ring.end - start_offset, self._wall())  # the restart-gap line
        return timeline

    def _record_time(self, data: bytes, offset: int) -> None:
        self.timeline.record(offset, len(data), self._wall())
        history = self._history  # its times stay while it is served (_history_now lets it go)
        self.timeline.forget_before(self.ring.start if history is None else history.start)

    # -- device side (DeviceListener) ------------------------------------------------------------
    def device_data_received(self, data: bytes) -> None:
        self.output.data_received(data, self._clock())

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
        self.input.reset()  # the link discarded its own buffer too, and resumed the writer
        self._audit("device_offline", port=self.name, reason=reason)
        self._broadcast(
            Notice(
                NoticeKind.OFFLINE,
                f"console {self.name} offline: {reason}; reconnecting, stay attached",
                {"reason": reason},
            )
        )

    def device_write_paused(self) -> None:
        self.input.device_paused()

    def device_write_resumed(self) -> None:
        self.input.device_resumed()

    # -- attaching ----------------------------------------------------------------------------------
    def attach(
        self,
        sink: SessionSink,
        identity: Identity,
        mode: AttachMode,
        *,
        from_offset: int | None = None,
        force: bool = False,
    ) -> Session | None:
        """Attach a client.  Returns None (after closing the sink with a reason) if it may not attach.

        ``from_offset`` resumes a client that was attached before (WebSocket ``?from=``): instead of the
        replay window it gets everything since that offset that is still in the ring, and is told how
        many bytes were overwritten in between, or that the daemon restarted since.  It must not be beyond
        ``stream_end`` (checked by callers).  ``force`` (interactive only): take the writer lease at once,
        whatever the takeover policy (``core.lease`` ``FORCE``; needs ``Verb.TAKE_OVER`` like any takeover).
        """
        decision = self.access.decide(identity, Verb.VIEW, self.name, mode)
        if not decision:
            self._audit("attach_denied", port=self.name, **identity.audit_fields(), reason=decision.reason)
            sink.close_session(f"access to console {self.name} denied", EndReason.DENIED)
            return None
        if self.state is PortState.DISABLED:
            sink.close_session(f"console {self.name} is disabled: {self.state_reason}", EndReason.DISABLED)
            return None
        limit = self._session_limit(identity)
        if limit is not None:
            self._audit("attach_refused", port=self.name, **identity.audit_fields(), reason=limit)
            sink.close_session(limit, EndReason.LIMIT)
            return None
        session = Session(self, self.name, next(self._ids), identity, mode, sink, self.ring.end)
        self.sessions[session.id] = session
        sink.session_started(session)
        self._audit("attach", port=self.name, session=session.id, **identity.audit_fields(), mode=str(mode))
        session.notify(
            Notice(
                NoticeKind.ATTACHED,
                f"attached to console {self.name} ({self.state}"
                + (f": {self.state_reason}" if self.state is PortState.OFFLINE else "")
                + ")",
                {"port": self.name, "state": str(self.state), "session": session.id},
            )
        )
        vm_notice = self.vm.state_notice()
        if vm_notice is not None:
            session.notify(vm_notice)
        if from_offset is None:
            self._replay(session)
        else:
            self._resume(session, min(from_offset, self.ring.end))
        if session.closed:
            return None
        if mode is AttachMode.INTERACTIVE:
            self._request_write(session, LeaseInput.FORCE if force else LeaseInput.ATTACH)
        else:
            holder = self.arbiter.lease.holder
            session.notify(
                Notice(
                    NoticeKind.READ_ONLY,
                    "read-only: your input is not sent to the guest"
                    + (f"; {holder.who} is writing" if holder else ""),
                )
            )
        return session

    def _replay(self, session: Session) -> None:
        """The attach replay; after a restart, while the new run is shorter than the replay (``replay_bytes``,
        or ``replay_lines`` lines), it starts in the persisted history, counted back across the restart:
        each hole between the runs is told where it is (as a resume would), and is not a line."""
        ring, want, lines = self.ring, self.config.replay_bytes, self.config.replay_lines
        history = self._history_now()
        if history is None or want <= 0 or session.cursor != ring.end:
            self.output.replay(session, want, manual=False)
            return
        run_start = self.output.run_start
        fresh = ring.read(run_start).data  # this run's output, after the restart-gap line
        runs = [(run.offset, run.data) for run in history.runs]
        window = replay_pieces([*runs, (run_start, fresh)], want, lines)  # walks back only as far as needed
        if not window or window[0][0] >= run_start:  # this run alone fills the replay
            self.output.replay(session, want, manual=False)
            return
        total = sum(len(data) for _, data in window)
        session.notify(
            Notice(
                NoticeKind.REPLAY_START,
                f"replaying {total} bytes of scrollback, from before serialmuxd restarted on",
                {"offset": window[0][0], "bytes": total},
            )
        )
        cursor = window[0][0]
        for offset, data in window:
            if offset > cursor:
                self._tell_hole(session, cursor, offset, data if offset < run_start else None)
            session.sink.send_output(data)
            if session.closed:
                return
            cursor = offset + len(data)
        if cursor < run_start:  # the history's end, then the restart: this run has printed nothing yet
            self._tell_hole(session, cursor, run_start, None)
        session.notify(Notice(NoticeKind.REPLAY_END, "end of replay; live from here", {"offset": ring.end}))
        session.cursor = ring.end

    def _tell_hole(self, session: Session, begin: int, end: int, after: bytes | None) -> None:
        """Tell ``session`` that the stream it is shown jumps from ``begin`` to ``end``: the last restart
        (``after`` None: the fan-out knows how much it lost), an earlier one (the bytes ``after`` the hole
        start with that run's restart-gap line, which says what is known), or a gap in the log."""
        if after is None:
            previous_end = self.output.previous_end
            lost = None if previous_end is None else max(0, previous_end - begin)
            gap = f"{lost} bytes not logged" if lost is not None else "what came after it is not known"
            text = f"serialmuxd restarted: the logged output above ends at offset {begin} ({gap})"
            fields = {"from": begin, "to": end, "exact": lost is not None, "lost": lost}
        elif starts_with_restart_line(after):
            text = f"serialmuxd restarted: the logged output above ends at offset {begin}"
            fields = {"from": begin, "to": end, "exact": False, "lost": None}
        else:
            session.missed_bytes += end - begin
            session.notify(
                Notice(
                    NoticeKind.MISSED,
                    f"{end - begin} bytes of console output from offset {begin} on are not in the log "
                    "(a log gap)",
                    {"missed": end - begin, "offset": end},
                )
            )
            return
        session.notify(
            Notice(NoticeKind.RESTART_GAP, f"{text}; the stream continues at offset {end}", fields)
        )

    def _boot_action(self, action: Action) -> None:
        """A reset or start through the adapter is a boot.  A graceful restart is one only later, when the
        guest has shut down: where the adapter reports resets, that report starts the capture instead."""
        adapter, console_log = self.vm.adapter, self.console_log
        if console_log is None or (
            action is Action.RESTART and adapter is not None and adapter.reports_resets
        ):
            return
        console_log.trigger(f"{action} through the hypervisor")

    def _resume(self, session: Session, offset: int) -> None:
        """``output.resume``, with the persisted history of previous runs first when ``offset`` is in it
        (each hole between them told; the fan-out then tells the last restart's gap)."""
        history = self._history_now()
        if history is not None and offset < history.end:
            if offset < history.start:
                missed = history.start - offset
                session.missed_bytes += missed
                session.notify(
                    Notice(
                        NoticeKind.MISSED,
                        f"{missed} bytes of console output from before serialmuxd restarted were not kept",
                        {"missed": missed, "offset": history.start},
                    )
                )
                offset = history.start
            for run in history.since(offset):
                if run.offset > offset:
                    self._tell_hole(session, offset, run.offset, run.data)
                session.sink.send_output(run.data)
                if session.closed:
                    return
                offset = run.end
        self.output.resume(session, offset)

    def _session_limit(self, identity: Identity) -> str | None:
        if len(self.sessions) >= self.config.max_sessions:
            return f"console {self.name} has its maximum of {self.config.max_sessions} sessions"
        host = identity.host
        same = sum(1 for s in self.sessions.values() if s.identity.host == host)
        if same >= self.config.max_sessions_per_address:
            return (
                f"console {self.name} has its maximum of {self.config.max_sessions_per_address} "
                f"sessions from {host}"
            )
        return None

    # -- the SessionHost protocol: requests from sessions -----------------------------------------------
    def session_input(self, session: Session, data: bytes) -> None:
        if session.closed or not data:
            return
        if not self.arbiter.holds(session):
            if session.read_only_reminder.ready(self._clock()):
                hint = None if session.read_only else Hint.TAKE_OVER  # a read-only attach cannot take over
                session.notify(Notice(NoticeKind.READ_ONLY, "read-only: input not sent", hint=hint))
            return
        decision = self.access.decide(session.identity, Verb.WRITE, self.name, session.mode)
        if not decision:  # grants can change while a session holds the lease (reload, revocation)
            if session.read_only_reminder.ready(self._clock()):
                session.notify(Notice(NoticeKind.REFUSED, decision.reason))
            return
        self.watch.typed()
        self._put_on_line(session, data)

    def session_key(self, session: Session, name: str) -> None:
        data = key_bytes(self.config.key_profile, name)  # KeyError for names the profile lacks
        self.session_input(session, data)

    def session_break(self, session: Session) -> bool:
        if session.closed or not self._session_may(session, Verb.BREAK):
            return False
        if not self.arbiter.holds(session):
            session.notify(Notice(NoticeKind.READ_ONLY, "only the writer may send BREAK"))
            return False
        if self.link is None or not self.link.send_break():
            session.notify(
                Notice(NoticeKind.INFO, f"BREAK not sent: not supported by {self.device_text} or offline")
            )
            return False
        self._audit("break", port=self.name, session=session.id, **session.identity.audit_fields())
        session.notify(Notice(NoticeKind.INFO, "BREAK sent"))
        return True

    async def session_sysrq(self, session: Session, key: str) -> None:
        if self.session_break(session):  # without a BREAK the key would just be typed into the shell
            await asyncio.sleep(SYSRQ_KEY_DELAY_S)
            self.session_input(session, key.encode())

    def session_window_size(self, session: Session, cols: int, rows: int) -> None:
        # Only the writer's terminal decides the guest's size; a read-only session's resize is ignored
        # quietly (browsers send one on every layout change).
        if self.arbiter.holds(session):
            self.window_size = (cols, rows)
            if self.link is not None:
                self.link.set_window_size(cols, rows)

    def session_take_over(self, session: Session) -> None:
        self._request_write(session, LeaseInput.TAKE_OVER)

    def session_answer_takeover(self, session: Session, accept: bool) -> None:
        if not session.closed:
            self.arbiter.answer(session, accept)

    def session_being_asked(self, session: Session) -> bool:
        return self.arbiter.lease.pending is not None and self.arbiter.holds(session)

    def session_read_only(self, session: Session) -> None:
        if session.closed:
            return
        self.arbiter.release(session, "chose read-only")
        session.notify(Notice(NoticeKind.READ_ONLY, "you are now read-only"))

    def session_replay(self, session: Session) -> None:
        self.output.replay(session, max(self.config.replay_bytes, _MIN_MANUAL_REPLAY_BYTES), manual=True)

    def session_who(self, session: Session) -> None:
        session.notify(self.who_notice())

    def session_check_action(self, session: Session, action: Action) -> str | None:
        """Why ``session`` may not run ``action`` now, or None.  A refusal is audited: asking for an NMI
        one may not send is an access attempt even when a confirmation prompt would have come next."""
        refusal = self._action_refusal(session, action)
        if refusal is not None:
            self._denied(session.identity, ACTION_VERBS[action], refusal, session)
        return refusal

    def _action_refusal(self, session: Session, action: Action) -> str | None:
        if not self.vm.offers(action):
            return f"{action}: no hypervisor action configured for console {self.name}"
        decision = self.access.decide(session.identity, ACTION_VERBS[action], self.name, session.mode)
        if not decision:
            return decision.reason
        if not self.arbiter.holds(session):
            return f"{action}: only the session with write access may {_ACTION_WORDS.get(action, action)}"
        return None

    async def session_action(self, session: Session, action: Action) -> None:
        refusal = self.session_check_action(session, action)  # audits a refusal
        if refusal is not None:
            session.notify(Notice(NoticeKind.REFUSED, refusal))
            return
        try:
            await self.vm.run(action, session.identity)
        except AdapterError as exc:
            # The detail names sockets and hosts: it goes to the operator's log, the client gets the kind.
            session.notify(
                Notice(
                    NoticeKind.INFO,
                    f"{action} failed: {exc.kind} (details in the serialmuxd log)",
                    {"action": str(action), "error": str(exc.kind)},
                )
            )

    def session_catch_up(self, session: Session) -> None:
        self.output.catch_up(session)

    def session_detach(self, session: Session) -> None:
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.id, None)
        self.input.session_left(session)
        self.arbiter.release(session)
        self._audit(
            "detach",
            port=self.name,
            session=session.id,
            **session.identity.audit_fields(),
            missed=session.missed_bytes,
        )

    def who_notice(self) -> Notice:
        holder = self.arbiter.lease.holder
        viewers = [s for s in self.sessions.values() if s.role is Role.VIEWER]
        writer = f"{holder.who} since {clock_text(holder.since)}" if holder else "nobody"
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
    def _session_may(self, session: Session, verb: Verb) -> bool:
        decision = self.access.decide(session.identity, verb, self.name, session.mode)
        if not decision:
            self._denied(session.identity, verb, decision.reason, session)
            session.notify(Notice(NoticeKind.REFUSED, decision.reason))
        return decision.allowed

    def _request_write(self, session: Session, kind: LeaseInput) -> None:
        if session.closed:  # a detached session's late command must not take the lease
            return
        decision = self.access.decide(session.identity, Verb.WRITE, self.name, session.mode)
        if not decision:
            if kind is not LeaseInput.ATTACH:  # asked for; an attach that merely watches is no denial
                self._denied(session.identity, Verb.WRITE, decision.reason, session)
            session.notify(Notice(NoticeKind.REFUSED, decision.reason))
            return
        holder = self.arbiter.lease.holder
        if holder is not None and holder.session_id != session.id:
            decision = self.access.decide(session.identity, Verb.TAKE_OVER, self.name, session.mode)
            if not decision:
                self._denied(session.identity, Verb.TAKE_OVER, decision.reason, session)
                session.notify(Notice(NoticeKind.REFUSED, f"{holder.who} is writing; {decision.reason}"))
                return
        self.arbiter.request(session, kind)

    def _writer_changed(self) -> None:
        self.input.reset()  # queued input belongs to the writer who typed it
        for session in self.sessions.values():
            if session.role is Role.WRITER and not self.arbiter.holds(session):
                session.role = Role.VIEWER
        self.watch.writer_changed(self.arbiter.writer)  # logout sequence for the one who left, idle timer

    def _send_logout(self, sequence: bytes) -> None:
        if self.input.online:
            self.input.write(sequence)
            self._audit("logout_sent", port=self.name, bytes=len(sequence))

    def _writer_idled(self, session: Session) -> None:
        idle = f"{self.config.writer_idle_timeout_s:g} s"
        self._audit("writer_idle", port=self.name, session=session.id, **session.identity.audit_fields())
        if self.config.writer_idle_action == "detach":
            self._close_session(session, f"no input for {idle}", EndReason.DETACHED)
            return
        self.arbiter.release(session, "went idle")
        session.notify(
            Notice(NoticeKind.READ_ONLY, f"no input for {idle}: you are now read-only", hint=Hint.TAKE_OVER)
        )

    def _put_on_line(self, session: Session, data: bytes) -> None:
        if not self.input.online:
            session.discarded_untold += len(data)
            if session.discard_reminder.ready(self._clock()):
                self._tell_discarded(session)
            return
        if not self.input.write(data):
            session.notify(
                Notice(NoticeKind.INPUT_DISCARDED, f"device not accepting input; {len(data)} bytes discarded")
            )

    def _tell_discarded(self, session: Session) -> None:
        count, session.discarded_untold = session.discarded_untold, 0
        if count:
            session.notify(
                Notice(
                    NoticeKind.INPUT_DISCARDED,
                    f"console {self.name} is offline; {count} bytes of input discarded",
                    {"discarded": count},
                )
            )

    def _set_state(self, state: PortState, reason: str) -> None:
        self.state = state
        self.state_reason = reason
        self.state_since = self._wall()

    def _broadcast(self, notice: Notice) -> None:
        for session in list(self.sessions.values()):
            session.notify(notice)

    def _close_session(self, session: Session, reason: str, kind: EndReason) -> None:
        if session.closed:
            return
        self.session_detach(session)
        session.sink.close_session(reason, kind)
