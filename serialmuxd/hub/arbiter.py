"""Writer arbitration: the writer lease applied to live sessions, with everything each side is told.

``core.lease.WriterLease`` decides (a pure transition table); this module carries the decisions out: it
sets the sessions' roles, detaches an evicted writer, tells both sides what happened in the same words on
every transport, audits each change, and owns the one timer of takeover policy ``ask`` (the deadline after
which silence hands over).  The hub calls it only after its access policy allowed the request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..core.lease import LeaseDecision, LeaseInput, Outcome, WriterLease
from ..core.policy import TakeoverPolicy
from ..obs.audit import AuditFn
from .clock import Scheduler, Timer, loop_scheduler
from .notices import Notice, NoticeKind, clock_text
from .session import EndReason, Role, Session


class WriterArbiter:
    __slots__ = (
        "_audit",
        "_clock",
        "_close_session",
        "_on_writer_changed",
        "_schedule",
        "_sessions",
        "_timer",
        "_wall",
        "lease",
        "port",
        "takeovers",
    )

    def __init__(
        self,
        port: str,
        policy: TakeoverPolicy,
        ask_timeout_s: float,
        *,
        sessions: Mapping[int, Session],
        close_session: Callable[[Session, str, EndReason], None],
        on_writer_changed: Callable[[], None],
        audit: AuditFn,
        clock: Callable[[], float],
        wall: Callable[[], float],
        schedule: Scheduler = loop_scheduler,
    ) -> None:
        self.port = port
        self.lease = WriterLease(policy, ask_timeout_s)
        self._sessions = sessions
        self._close_session = close_session
        self._on_writer_changed = on_writer_changed
        self._audit = audit
        self._clock = clock
        self._wall = wall
        self._schedule = schedule
        self._timer: Timer | None = None
        self.takeovers = 0

    @property
    def writer(self) -> Session | None:
        holder = self.lease.holder
        return None if holder is None else self._sessions.get(holder.session_id)

    def holds(self, session: Session) -> bool:
        return self.lease.holds(session.id)

    def close(self) -> None:
        self._cancel_timer()

    # -- requests -----------------------------------------------------------------------------------
    def request(self, session: Session, kind: LeaseInput) -> None:
        decision = self.lease.request(kind, session.id, str(session.identity), self._clock(), self._wall())
        outcome = decision.outcome
        if outcome is Outcome.ALREADY_HELD:
            session.notify(Notice(NoticeKind.INFO, "you already have write access"))
        elif outcome is Outcome.REFUSED:
            assert decision.holder is not None
            self._audit("takeover_refused", port=self.port, session=session.id, holder=decision.holder.who)
            session.notify(
                Notice(
                    NoticeKind.REFUSED,
                    f"console {self.port} is in use by {decision.holder.who} since "
                    f"{clock_text(decision.holder.since)}; you are attached read-only "
                    "(takeover policy: refuse)",
                    {"holder": decision.holder.who},
                )
            )
        elif outcome is Outcome.BUSY:
            session.notify(
                Notice(NoticeKind.REFUSED, "another takeover request is waiting for the writer's answer")
            )
        elif outcome is Outcome.ASKING:
            self._ask(session, decision)
        else:
            if kind is LeaseInput.FORCE and decision.pending is not None:
                self._cancel_timer()  # the forced takeover settled the waiting request: tell its asker
                asker = self._sessions.get(decision.pending.asker.session_id)
                if asker is not None and asker is not session:
                    asker.notify(
                        Notice(
                            NoticeKind.REFUSED,
                            f"{session.identity} took write access to {self.port} at once; "
                            "your request is cancelled",
                            {"holder": str(session.identity)},
                        )
                    )
            self._granted(session, decision, forced=kind is LeaseInput.FORCE)

    def answer(self, session: Session, accept: bool) -> None:
        decision = self.lease.answer(session.id, accept, self._wall())
        if decision is None:
            session.notify(Notice(NoticeKind.INFO, "nobody is asking for write access"))
            return
        self._settled(decision, "answered yes" if accept else "answered no")

    def release(self, session: Session, how: str = "left") -> bool:
        """``session`` stops writing or waiting (``how``: "left", "chose read-only").  True if it held the
        lease."""
        decision = self.lease.release(session.id, self._wall())
        if decision is None:
            return False
        session.role = Role.VIEWER
        if decision.outcome is Outcome.CANCELLED:
            self._cancel_timer()
            holder = self.writer
            if holder is not None:
                holder.notify(
                    Notice(
                        NoticeKind.INFO,
                        f"{session.identity} no longer asks for write access",
                        {"ask": "cancelled"},
                    )
                )
            return False
        self._audit("write_released", port=self.port, session=session.id)
        if decision.outcome is Outcome.HANDED_OVER:
            self._settled(decision, how)
        else:
            self._on_writer_changed()
        return True

    # -- internals ------------------------------------------------------------------------------------
    def _granted(self, session: Session, decision: LeaseDecision, *, forced: bool = False) -> None:
        session.role = Role.WRITER
        self._on_writer_changed()  # nothing typed by a previous writer may follow the handover
        displaced = decision.displaced
        if displaced is None:
            self._audit(
                "write_granted", port=self.port, session=session.id, **session.identity.audit_fields()
            )
            session.notify(Notice(NoticeKind.WRITE_GRANTED, "you have write access"))
            return
        self.takeovers += 1
        evicting = decision.outcome is Outcome.GRANTED_EVICTING
        self._audit(
            "takeover",
            port=self.port,
            session=session.id,
            **session.identity.audit_fields(),
            displaced=displaced.who,
            action="evict" if evicting else "demote",
            forced=forced,
        )
        old = self._sessions.get(displaced.session_id)
        if old is not None:
            self._displace(old, session, evict=evicting)
        self._tell_new_writer(session, displaced.who, displaced.since)

    def _displace(self, old: Session, new: Session, *, evict: bool) -> None:
        old.role = Role.VIEWER
        when = clock_text(self._wall())
        detail = {"by": str(new.identity), "at": when}
        if evict:
            old.notify(
                Notice(
                    NoticeKind.EVICTED,
                    f"write access to {self.port} was taken over by {new.identity} at {when}; "
                    "you are detached. The guest session was not logged out.",
                    detail,
                )
            )
            self._close_session(old, f"taken over by {new.identity}", EndReason.EVICTED)
        else:
            old.notify(
                Notice(
                    NoticeKind.DEMOTED,
                    f"write access to {self.port} was taken over by {new.identity} at {when}; "
                    "you are now read-only. The guest session was not logged out.",
                    detail,
                )
            )

    def _tell_new_writer(self, session: Session, previous: str, since: float) -> None:
        session.notify(
            Notice(
                NoticeKind.TOOK_OVER,
                f"you took over write access from {previous} (writing since {clock_text(since)}); "
                "the guest may still be logged in as their user",
                {"displaced": previous},
            )
        )

    def _ask(self, session: Session, decision: LeaseDecision) -> None:
        assert decision.pending is not None and decision.holder is not None
        timeout_s = self.lease.ask_timeout_s
        self._audit("takeover_asked", port=self.port, session=session.id, holder=decision.holder.who)
        session.notify(
            Notice(
                NoticeKind.WAITING,
                f"{decision.holder.who} is writing; asked them to hand over "
                f"(you get write access in {timeout_s:g} s unless they refuse)",
                {"holder": decision.holder.who, "timeout_s": timeout_s},
            )
        )
        holder = self.writer
        if holder is not None:
            holder.notify(
                Notice(
                    NoticeKind.ASKED,
                    f"{session.identity} asks for write access to {self.port}; if you hand over you stay "
                    f"attached read-only, and silence hands over in {timeout_s:g} s",
                    {"by": str(session.identity), "timeout_s": timeout_s},
                )
            )
        self._cancel_timer()
        self._timer = self._schedule(timeout_s, self._deadline)

    def _deadline(self) -> None:
        self._timer = None
        pending = self.lease.pending
        if pending is None:
            return
        # The timer is the deadline: event loops may run a timer a clock tick early, and a request whose
        # timer fired must not wait for ever because the clock read a microsecond short.
        decision = self.lease.expire(max(self._clock(), pending.deadline), self._wall())
        if decision is not None:
            self._settled(decision, "did not answer")

    def _settled(self, decision: LeaseDecision, how: str) -> None:
        """A waiting request was decided: by the holder's answer, its silence, or its leaving."""
        self._cancel_timer()
        pending = decision.pending
        assert pending is not None
        asker = self._sessions.get(pending.asker.session_id)
        if decision.outcome is Outcome.KEPT:
            holder = decision.holder
            who = holder.who if holder is not None else "the writer"
            self._audit("takeover_refused", port=self.port, session=pending.asker.session_id, holder=who)
            if asker is not None:
                asker.notify(
                    Notice(
                        NoticeKind.REFUSED,
                        f"{who} keeps write access to {self.port}; you stay read-only",
                        {"holder": who},
                    )
                )
            current = self.writer
            if current is not None:
                current.notify(Notice(NoticeKind.INFO, "you keep write access", {"ask": "kept"}))
            return
        if asker is None:  # cannot happen: a leaving asker cancels its request
            return
        asker.role = Role.WRITER
        self._on_writer_changed()
        displaced = decision.displaced
        if displaced is not None and displaced.session_id in self._sessions:
            self.takeovers += 1
        self._audit(
            "takeover",
            port=self.port,
            session=asker.id,
            **asker.identity.audit_fields(),
            displaced=displaced.who if displaced else None,
            action="ask",
            answer=how,
        )
        old = self._sessions.get(displaced.session_id) if displaced is not None else None
        if old is not None and old is not asker:
            old.role = Role.VIEWER
            old.notify(
                Notice(
                    NoticeKind.DEMOTED,
                    f"write access to {self.port} handed over to {asker.identity} (you {how}); "
                    "you are now read-only. The guest session was not logged out.",
                    {"by": str(asker.identity), "answer": how},
                )
            )
        if displaced is not None and old is not None:
            self._tell_new_writer(asker, displaced.who, displaced.since)
        else:
            asker.notify(Notice(NoticeKind.WRITE_GRANTED, "you have write access (the writer left)"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
