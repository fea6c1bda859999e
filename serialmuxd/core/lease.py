"""The writer lease: at most one session of a port may type into the guest.

Theory of operation
-------------------
The lease is either FREE or HELD by one session.  Sessions ask for it in two ways:

* ``ATTACH`` — an interactive attach (a client connecting to the port's interactive listener).  It takes the
  lease when FREE; when HELD it follows the port's takeover policy.
* ``TAKE_OVER`` — an explicit request (escape command, API call).  Same as ATTACH today; kept apart because
  the access-check hook of the auth issue gives them different permissions.

``RELEASE`` frees the lease if (and only if) the caller holds it.  The transition table below is the whole
policy; ``WriterLease`` only looks decisions up in it, which keeps the rule "exactly one writer" checkable
by reading eight lines.  The clock is passed in (``now``), so the module stays pure.

Takeover policies (``config.TakeoverPolicy``):

* ``evict``  — the newcomer writes; the old writer is detached (the guest session stays logged in).
* ``demote`` — the newcomer writes; the old writer stays attached read-only.
* ``refuse`` — the newcomer is refused the lease (it may watch) until the writer leaves.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .policy import TakeoverPolicy


class LeaseState(enum.Enum):
    FREE = "free"
    HELD = "held"


class LeaseInput(enum.Enum):
    ATTACH = "attach"
    TAKE_OVER = "take_over"


class Outcome(enum.Enum):
    GRANTED = "granted"  # the asker now holds the lease; nobody was displaced
    GRANTED_EVICTING = "granted_evicting"  # asker holds it; the old holder must be detached
    GRANTED_DEMOTING = "granted_demoting"  # asker holds it; the old holder stays as a viewer
    REFUSED = "refused"  # the old holder keeps it
    ALREADY_HELD = "already_held"  # the asker already held it; nothing changed


# (state, policy) -> outcome for a request from a session that does not hold the lease.
_TRANSITIONS: dict[tuple[LeaseState, TakeoverPolicy], Outcome] = {
    (LeaseState.FREE, TakeoverPolicy.EVICT): Outcome.GRANTED,
    (LeaseState.FREE, TakeoverPolicy.DEMOTE): Outcome.GRANTED,
    (LeaseState.FREE, TakeoverPolicy.REFUSE): Outcome.GRANTED,
    (LeaseState.HELD, TakeoverPolicy.EVICT): Outcome.GRANTED_EVICTING,
    (LeaseState.HELD, TakeoverPolicy.DEMOTE): Outcome.GRANTED_DEMOTING,
    (LeaseState.HELD, TakeoverPolicy.REFUSE): Outcome.REFUSED,
}


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds the lease, for messages such as "taken over by alice from 10.0.0.5 at 12:00:01"."""

    session_id: int
    who: str  # e.g. "telnet 127.0.0.1:51234" or a user name once auth exists
    since: float  # wall-clock seconds (time.time()) when the lease was taken


@dataclass(frozen=True, slots=True)
class LeaseDecision:
    outcome: Outcome
    holder: Holder | None  # the holder after the decision
    displaced: Holder | None = None  # the previous holder, when it lost the lease


class WriterLease:
    """One port's writer lease; see the module docstring for the rules."""

    __slots__ = ("_holder", "policy")

    def __init__(self, policy: TakeoverPolicy) -> None:
        self.policy = policy
        self._holder: Holder | None = None

    @property
    def holder(self) -> Holder | None:
        return self._holder

    @property
    def state(self) -> LeaseState:
        return LeaseState.FREE if self._holder is None else LeaseState.HELD

    def request(self, kind: LeaseInput, session_id: int, who: str, now: float) -> LeaseDecision:
        """Ask for the lease; ``kind`` is kept for the access-check hook and audit."""
        if self._holder is not None and self._holder.session_id == session_id:
            return LeaseDecision(Outcome.ALREADY_HELD, self._holder)
        outcome = _TRANSITIONS[(self.state, self.policy)]
        if outcome is Outcome.REFUSED:
            return LeaseDecision(outcome, self._holder)
        displaced = self._holder
        self._holder = Holder(session_id, who, now)
        return LeaseDecision(outcome, self._holder, displaced)

    def release(self, session_id: int) -> bool:
        """Free the lease if ``session_id`` holds it; True if it did."""
        if self._holder is not None and self._holder.session_id == session_id:
            self._holder = None
            return True
        return False

    def holds(self, session_id: int) -> bool:
        return self._holder is not None and self._holder.session_id == session_id
