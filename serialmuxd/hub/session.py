"""A session: one attached client of one console, the same object for every transport.

Shaped after asyncssh's ``SSHServerSession``: the front end (telnet, raw TCP, WebSocket) owns the transport
and implements ``SessionSink``; the ``Session`` knows who attached (``identity``), how (``mode``: a
read-only listener or ``mode=ro`` makes a read-only session for its whole life), what it is now (``role``),
where its output stands (``cursor``) and its own reminder throttles.  Everything a client asks for is a
method here, and each one goes to the hub, whose access policy and writer arbitration decide; a front end
never checks a mode or a verb itself.  Refusals come back to the client as notices (or, for the few calls
that return, as a result), in the same words on every transport.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Protocol

from ..core.access import AttachMode, Identity
from .notices import Notice, Throttle

if TYPE_CHECKING:
    from ..adapters import Action


class Role(enum.StrEnum):
    WRITER = "writer"
    VIEWER = "viewer"


class EndReason(enum.StrEnum):
    """Why the daemon ended a session; WebSocket maps each to a documented close code."""

    EVICTED = "evicted"  # another session took over (policy evict)
    DISABLED = "disabled"  # the port or the whole console was disabled
    FELL_BEHIND = "fell_behind"  # slow_reader = "close", or a client that reads nothing at all
    DENIED = "denied"  # access check refused
    LIMIT = "limit"  # too many sessions (per port or per source address)
    SHUTDOWN = "shutdown"  # the daemon is stopping
    PROTOCOL = "protocol"  # the client broke its protocol (set by front ends)
    DETACHED = "detached"  # the client asked to leave


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


class SessionHost(Protocol):
    """What a session asks of its hub (``PortHub`` implements it)."""

    def session_input(self, session: Session, data: bytes) -> None: ...
    def session_key(self, session: Session, name: str) -> None: ...
    def session_break(self, session: Session) -> bool: ...
    async def session_sysrq(self, session: Session, key: str) -> None: ...
    def session_window_size(self, session: Session, cols: int, rows: int) -> None: ...
    def session_take_over(self, session: Session) -> None: ...
    def session_answer_takeover(self, session: Session, accept: bool) -> None: ...
    def session_being_asked(self, session: Session) -> bool: ...
    def session_read_only(self, session: Session) -> None: ...
    def session_replay(self, session: Session) -> None: ...
    def session_who(self, session: Session) -> None: ...
    def session_check_action(self, session: Session, action: Action) -> str | None: ...
    async def session_action(self, session: Session, action: Action) -> None: ...
    def session_catch_up(self, session: Session) -> None: ...
    def session_detach(self, session: Session) -> None: ...


class Session:
    """One attached client of one port.  Created by ``PortHub.attach``; transport-independent."""

    __slots__ = (
        "_host",
        "attached_at",
        "closed",
        "cursor",
        "discard_reminder",
        "discarded_untold",
        "id",
        "identity",
        "lagging",
        "missed_bytes",
        "mode",
        "port",
        "read_only_reminder",
        "role",
        "sink",
    )

    def __init__(
        self,
        host: SessionHost,
        port: str,
        session_id: int,
        identity: Identity,
        mode: AttachMode,
        sink: SessionSink,
        cursor: int,
    ) -> None:
        self._host = host
        self.port = port
        self.id = session_id
        self.identity = identity
        self.mode = mode
        self.sink = sink
        self.role = Role.VIEWER  # WRITER while this session holds the writer lease
        # Delivery bookkeeping, kept by the hub's fan-out: the absolute ring offset of the next guest byte
        # this session should get, and whether its sink asked us to stop sending (it resumes from cursor).
        self.cursor = cursor
        self.lagging = False
        self.closed = False
        self.missed_bytes = 0
        self.attached_at = time.time()
        self.read_only_reminder = Throttle()
        # Input discarded while the device was away: told at most every few seconds (a client typing into
        # an offline console must not get a notice per keystroke), and the rest when it comes back.
        self.discard_reminder = Throttle()
        self.discarded_untold = 0

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.port} {self.mode} {self.role} {self.identity}>"

    @property
    def read_only(self) -> bool:
        return self.mode is AttachMode.READ_ONLY

    def notify(self, notice: Notice) -> None:
        if not self.closed:
            self.sink.send_notice(notice)

    # -- from the sink: output flow ---------------------------------------------------------------
    def pause_output(self) -> None:
        """The sink's buffer is full: stop sending live data; the cursor remembers where we were."""
        self.lagging = True

    def resume_output(self) -> None:
        """The sink drained: catch up from the ring (or close, per ``slow_reader``)."""
        if self.lagging and not self.closed:
            self.lagging = False
            self._host.session_catch_up(self)

    # -- from the sink: what the client asks for (the hub decides) --------------------------------
    def input(self, data: bytes) -> None:
        """Client typed ``data``."""
        self._host.session_input(self, data)

    def send_key(self, name: str) -> None:
        """A named key (``F8``) in the port's key profile; ``KeyError`` if the profile has no such key."""
        self._host.session_key(self, name)

    def send_break(self) -> bool:
        """True if a BREAK went out (the session is told either way)."""
        return self._host.session_break(self)

    async def send_sysrq(self, key: str) -> None:
        """BREAK, then ``key`` once the UART settled: Linux's magic SysRq over a serial console."""
        await self._host.session_sysrq(self, key)

    def window_size_changed(self, cols: int, rows: int) -> None:
        self._host.session_window_size(self, cols, rows)

    def take_over(self) -> None:
        self._host.session_take_over(self)

    def answer_takeover(self, accept: bool) -> None:
        """The writer's answer when asked to hand over (takeover policy ``ask``)."""
        self._host.session_answer_takeover(self, accept)

    def being_asked(self) -> bool:
        """Whether this session holds the lease and someone waits for its answer (policy ``ask``)."""
        return self._host.session_being_asked(self)

    def become_viewer(self) -> None:
        self._host.session_read_only(self)

    def replay(self) -> None:
        self._host.session_replay(self)

    def who(self) -> None:
        self._host.session_who(self)

    def check_action(self, action: Action) -> str | None:
        """Why this session may not run ``action`` now (for a confirmation prompt), or None if it may."""
        return self._host.session_check_action(self, action)

    async def run_action(self, action: Action) -> None:
        """Run a hypervisor action; refusals and failures are told to the session as notices."""
        await self._host.session_action(self, action)

    def detach(self) -> None:
        """The client left (or the transport closed).  Idempotent."""
        self._host.session_detach(self)
