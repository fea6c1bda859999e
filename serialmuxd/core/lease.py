"""The writer lease: at most one session of a port may type into the guest.

Theory of operation
-------------------
The lease is FREE, HELD by one session, or ASKING: held, while the holder is being asked to hand over to
one waiting session (takeover policy ``ask``).  Sessions ask for it in two ways:

* ``ATTACH`` — an interactive attach (a client connecting to the port's interactive listener);
* ``TAKE_OVER`` — an explicit request (escape command, WebSocket message, API call);
* ``FORCE`` — take it at once whatever the policy (``ssh CONSOLE.force``): the holder is treated as if it
  had said yes (``evict`` evicts it, ``demote`` and ``ask`` leave it attached read-only) or, under
  ``refuse``, evicted; a request waiting for an answer is cancelled.  Access control asks for the same
  ``Verb.TAKE_OVER`` as any takeover.

Both follow the port's takeover policy; they are kept apart because access control grants them separately
(``Verb.WRITE`` and ``Verb.TAKE_OVER``) and audit names them.  A request from a session that does not hold
the lease is decided by one table, ``_REQUEST``; the other inputs are:

* ``answer(holder, accept)`` — the holder's reply while ASKING: yes hands over, no keeps the lease;
* ``expire(now)`` — the deadline of an ASKING request passed without an answer: silence hands over;
* ``release(session)`` — a session leaves or becomes read-only.  The holder leaving frees the lease, or
  hands it to the waiting session while ASKING; the waiting session leaving cancels its request.

Takeover policies (``core.policy.TakeoverPolicy``):

* ``evict``  — the newcomer writes; the old writer is detached (the guest session stays logged in).
* ``demote`` — the newcomer writes; the old writer stays attached read-only.
* ``refuse`` — the newcomer is refused the lease (it may watch) until the writer leaves.
* ``ask``    — the writer is asked; a yes or silence until ``ask_timeout_s`` hands over (the old writer
  stays attached read-only), a no refuses.  One request waits at a time; others are told the lease is busy.

The clock is passed in (``now``), so the module stays pure: the hub owns the timer that calls ``expire``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .policy import TakeoverPolicy


class LeaseState(enum.Enum):
    FREE = "free"
    HELD = "held"
    ASKING = "asking"


class LeaseInput(enum.Enum):
    ATTACH = "attach"
    TAKE_OVER = "take_over"
    FORCE = "force"


class Outcome(enum.Enum):
    GRANTED = "granted"  # the asker now holds the lease; nobody was displaced
    GRANTED_EVICTING = "granted_evicting"  # asker holds it; the old holder must be detached
    GRANTED_DEMOTING = "granted_demoting"  # asker holds it; the old holder stays as a viewer
    REFUSED = "refused"  # the old holder keeps it
    ALREADY_HELD = "already_held"  # the asker already held it; nothing changed
    ASKING = "asking"  # the holder is being asked; ``pending`` says who waits and until when
    BUSY = "busy"  # another request is already waiting for the holder's answer
    HANDED_OVER = "handed_over"  # the holder said yes or stayed silent: the waiting session holds it now
    KEPT = "kept"  # the holder said no: the waiting session is refused
    CANCELLED = "cancelled"  # the waiting session left before an answer
    RELEASED = "released"  # the holder left or stopped writing; nobody was waiting, the lease is free


# (state, policy) -> outcome for a request from a session that neither holds nor waits for the lease.
_REQUEST: dict[tuple[LeaseState, TakeoverPolicy], Outcome] = {
    (LeaseState.FREE, TakeoverPolicy.EVICT): Outcome.GRANTED,
    (LeaseState.FREE, TakeoverPolicy.DEMOTE): Outcome.GRANTED,
    (LeaseState.FREE, TakeoverPolicy.REFUSE): Outcome.GRANTED,
    (LeaseState.FREE, TakeoverPolicy.ASK): Outcome.GRANTED,
    (LeaseState.HELD, TakeoverPolicy.EVICT): Outcome.GRANTED_EVICTING,
    (LeaseState.HELD, TakeoverPolicy.DEMOTE): Outcome.GRANTED_DEMOTING,
    (LeaseState.HELD, TakeoverPolicy.REFUSE): Outcome.REFUSED,
    (LeaseState.HELD, TakeoverPolicy.ASK): Outcome.ASKING,
    # Only the ask policy ever reaches ASKING; the other rows keep the table total.
    (LeaseState.ASKING, TakeoverPolicy.EVICT): Outcome.BUSY,
    (LeaseState.ASKING, TakeoverPolicy.DEMOTE): Outcome.BUSY,
    (LeaseState.ASKING, TakeoverPolicy.REFUSE): Outcome.BUSY,
    (LeaseState.ASKING, TakeoverPolicy.ASK): Outcome.BUSY,
}
_TAKES_LEASE = frozenset({Outcome.GRANTED, Outcome.GRANTED_EVICTING, Outcome.GRANTED_DEMOTING})


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds (or waits for) the lease, for messages such as "taken over by alice at 12:00:01"."""

    session_id: int
    who: str  # e.g. "telnet 127.0.0.1:51234" or a user name once auth exists
    since: float  # wall-clock seconds (time.time()) when the lease was taken or the request made


@dataclass(frozen=True, slots=True)
class Pending:
    """A request waiting for the holder's answer (policy ``ask``)."""

    asker: Holder
    deadline: float  # on the clock passed to ``request``/``expire``


@dataclass(frozen=True, slots=True)
class LeaseDecision:
    outcome: Outcome
    holder: Holder | None  # the holder after the decision
    displaced: Holder | None = None  # the previous holder, when it lost the lease
    pending: Pending | None = None  # the waiting request (ASKING), or the one that was settled


class WriterLease:
    """One port's writer lease; see the module docstring for the rules."""

    __slots__ = ("_holder", "_pending", "ask_timeout_s", "policy")

    def __init__(self, policy: TakeoverPolicy, ask_timeout_s: float = 10.0) -> None:
        self.policy = policy
        self.ask_timeout_s = ask_timeout_s
        self._holder: Holder | None = None
        self._pending: Pending | None = None

    @property
    def holder(self) -> Holder | None:
        return self._holder

    @property
    def pending(self) -> Pending | None:
        return self._pending

    @property
    def state(self) -> LeaseState:
        if self._holder is None:
            return LeaseState.FREE
        return LeaseState.HELD if self._pending is None else LeaseState.ASKING

    def holds(self, session_id: int) -> bool:
        return self._holder is not None and self._holder.session_id == session_id

    def request(
        self, kind: LeaseInput, session_id: int, who: str, now: float, wall: float | None = None
    ) -> LeaseDecision:
        """Ask for the lease.  ``now`` is the monotonic clock (deadlines), ``wall`` the time for people."""
        stamp = now if wall is None else wall
        if self.holds(session_id):
            return LeaseDecision(Outcome.ALREADY_HELD, self._holder)
        if kind is LeaseInput.FORCE:
            return self._force(session_id, who, stamp)
        if self._pending is not None and self._pending.asker.session_id == session_id:
            return LeaseDecision(Outcome.BUSY, self._holder, pending=self._pending)
        outcome = _REQUEST[(self.state, self.policy)]
        if outcome is Outcome.ASKING:
            self._pending = Pending(Holder(session_id, who, stamp), now + self.ask_timeout_s)
            return LeaseDecision(outcome, self._holder, pending=self._pending)
        if outcome not in _TAKES_LEASE:
            return LeaseDecision(outcome, self._holder, pending=self._pending)
        displaced = self._holder
        self._holder = Holder(session_id, who, stamp)
        return LeaseDecision(outcome, self._holder, displaced)

    def _force(self, session_id: int, who: str, stamp: float) -> LeaseDecision:
        """``pending`` of the decision is the request this cancelled (None if there was none)."""
        cancelled, self._pending = self._pending, None
        displaced = self._holder
        self._holder = Holder(session_id, who, stamp)
        if displaced is None:
            outcome = Outcome.GRANTED
        elif self.policy in (TakeoverPolicy.DEMOTE, TakeoverPolicy.ASK):
            outcome = Outcome.GRANTED_DEMOTING
        else:
            outcome = Outcome.GRANTED_EVICTING
        return LeaseDecision(outcome, self._holder, displaced, cancelled)

    def answer(self, session_id: int, accept: bool, wall: float) -> LeaseDecision | None:
        """The holder's answer to a waiting request; None if ``session_id`` is not being asked."""
        if self._pending is None or not self.holds(session_id):
            return None
        return self._settle(Outcome.HANDED_OVER if accept else Outcome.KEPT, wall)

    def expire(self, now: float, wall: float) -> LeaseDecision | None:
        """Settle a waiting request whose deadline has passed (silence hands over); None otherwise."""
        if self._pending is None or now < self._pending.deadline:
            return None
        return self._settle(Outcome.HANDED_OVER, wall)

    def release(self, session_id: int, wall: float = 0.0) -> LeaseDecision | None:
        """``session_id`` leaves (or stops writing).  None if it neither held nor waited for the lease.

        The holder leaving: ``HANDED_OVER`` to the waiting session if there is one (``holder`` is it), else
        ``RELEASED`` (the lease is free).  The waiting session leaving: ``CANCELLED``.
        """
        pending = self._pending
        if pending is not None and pending.asker.session_id == session_id:
            self._pending = None
            return LeaseDecision(Outcome.CANCELLED, self._holder, pending=pending)
        if not self.holds(session_id):
            return None
        displaced, self._pending = self._holder, None
        if pending is None:
            self._holder = None
            return LeaseDecision(Outcome.RELEASED, None, displaced)
        self._holder = Holder(pending.asker.session_id, pending.asker.who, wall)
        return LeaseDecision(Outcome.HANDED_OVER, self._holder, displaced, pending)

    def _settle(self, outcome: Outcome, wall: float) -> LeaseDecision:
        pending = self._pending
        assert pending is not None
        self._pending = None
        if outcome is Outcome.KEPT:
            return LeaseDecision(outcome, self._holder, pending=pending)
        displaced = self._holder
        self._holder = Holder(pending.asker.session_id, pending.asker.who, wall)
        return LeaseDecision(outcome, self._holder, displaced, pending)
