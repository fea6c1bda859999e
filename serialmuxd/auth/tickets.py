"""Single-use console tickets: how a WebSocket upgrade is authenticated without credentials in its URL.

Theory of operation
-------------------
A browser cannot put an ``Authorization`` header on a WebSocket upgrade, and a CLI client or a proxy may not
be able to carry the page's cookie.  So an authenticated client first asks for a ticket
(``POST /api/v1/ports/{name}/ticket`` with the mode it wants) and passes it as ``?ticket=`` on the upgrade.
URLs end up in proxy logs and browser history, so a ticket is built to be worthless once seen:

* **single use**: ``redeem`` removes it before anything else is checked, in one synchronous step (the
  event loop runs one redeem at a time), so two upgrades racing with the same ticket cannot both win;
* **short-lived**: ``lifetime_s`` (60 s) after it was issued it is refused;
* **bound** to the user (and groups) it was issued to, the console and the mode (``rw``/``ro``): presented
  for another console or mode it is refused, and used up all the same (a leaked ticket gets no second try);
* **stored hashed**: only the SHA-256 of the value is kept, like sessions and API tokens.

A refused ticket says why (``TicketRefusal``) for the ``ticket_refused`` audit event.  Used and expired
tickets are remembered (by hash) for one more lifetime, so a replay is reported as a replay and a late use
as expired rather than as an unknown value.  A ticket issued from a signed-in page session belongs to it:
``revoke_session`` (the session ended: sign-out, expiry, a reload that removed its user) makes its
outstanding tickets refused as ``SESSION_ENDED``.  At most ``max_per_user`` outstanding tickets per user and
``max_total`` in all are kept; issuing one more drops the oldest.

Pure logic: no I/O, the clock is passed in as ``now`` (monotonic seconds).
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..core.access import Identity

TICKET_LIFETIME_S = 60.0
RANDOM_BYTES = 32
MAX_TICKETS_PER_USER = 32
MAX_TICKETS = 10_000
MAX_PRESENTED_CHARS = 128
LABEL_CHARS = 16
MODES = frozenset({"rw", "ro"})


def ticket_key(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class TicketRefusal(enum.StrEnum):
    UNKNOWN = "unknown ticket"
    REPLAYED = "ticket already used"
    EXPIRED = "ticket expired"
    OTHER_CONSOLE = "ticket is for another console"
    OTHER_MODE = "ticket is for another mode"
    NOT_AN_UPGRADE = "tickets only open console WebSockets"
    SESSION_ENDED = "the sign-in it was issued from has ended"


@dataclass(frozen=True, slots=True)
class Ticket:
    key: str  # SHA-256 of the value
    identity: Identity  # who it was issued to (user, groups, how they had signed in)
    port: str
    mode: str  # "rw" | "ro"
    issued_s: float
    expires_s: float
    web_session: str | None = None  # label of the signed-in page session it was issued from, if any
    web_session_key: str | None = None  # that session's key (its WebSocket belongs to the session too)

    @property
    def label(self) -> str:
        """Names the ticket in audit lines (a prefix of the hash: not usable as a ticket)."""
        return self.key[:LABEL_CHARS]


@dataclass(frozen=True, slots=True)
class Redemption:
    """The ticket presented (when it is one we issued, also when refused: the audit names its user) and
    the refusal, if any."""

    ticket: Ticket | None
    refusal: TicketRefusal | None = None

    @property
    def ok(self) -> bool:
        return self.ticket is not None and self.refusal is None


class TicketBook:
    """Outstanding and recently used tickets; see the module docstring."""

    def __init__(
        self,
        lifetime_s: float = TICKET_LIFETIME_S,
        *,
        max_per_user: int = MAX_TICKETS_PER_USER,
        max_total: int = MAX_TICKETS,
    ) -> None:
        if lifetime_s <= 0 or max_per_user < 1 or max_total < 1:
            raise ValueError("lifetime and limits must be positive")
        self.lifetime_s = lifetime_s
        self.max_per_user = max_per_user
        self.max_total = max_total
        # Both in insertion order, which is expiry order for _outstanding (one lifetime for all).
        self._outstanding: OrderedDict[str, Ticket] = OrderedDict()
        self._spent: OrderedDict[str, Ticket] = OrderedDict()
        self._revoked: OrderedDict[str, Ticket] = OrderedDict()  # outstanding when their session ended

    def __len__(self) -> int:
        return len(self._outstanding)

    def issue(
        self,
        identity: Identity,
        port: str,
        mode: str,
        now: float,
        *,
        web_session: str | None = None,
        web_session_key: str | None = None,
    ) -> tuple[str, Ticket]:
        """A new ticket: ``(value, ticket)``.  The value is returned once and never kept."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}")
        self._prune(now)
        value = secrets.token_urlsafe(RANDOM_BYTES)
        ticket = Ticket(
            ticket_key(value), identity, port, mode, now, now + self.lifetime_s, web_session, web_session_key
        )
        mine = [key for key, t in self._outstanding.items() if t.identity.user == identity.user]
        for key in mine[: max(0, len(mine) - self.max_per_user + 1)]:
            del self._outstanding[key]
        while len(self._outstanding) >= self.max_total:
            self._outstanding.popitem(last=False)
        self._outstanding[ticket.key] = ticket
        return value, ticket

    def redeem(self, value: str, port: str | None, mode: str, now: float) -> Redemption:
        """Use a ticket for an upgrade to ``port`` in ``mode`` (``port`` None: not a console upgrade at all,
        which refuses it and uses it up).  The ticket is gone afterwards, whatever the outcome."""
        if not value or len(value) > MAX_PRESENTED_CHARS:
            return Redemption(None, TicketRefusal.UNKNOWN)
        key = ticket_key(value)
        ticket = self._outstanding.pop(key, None)  # first: consumed before anything can await or fail
        if ticket is None:
            revoked = self._revoked.pop(key, None)
            if revoked is not None:
                self._spent[key] = revoked  # told once; presented again it is a replay
                return Redemption(revoked, TicketRefusal.SESSION_ENDED)
            spent = self._spent.get(key)
            return Redemption(spent, TicketRefusal.REPLAYED if spent is not None else TicketRefusal.UNKNOWN)
        self._spent[key] = ticket
        self._prune(now)
        if now >= ticket.expires_s:
            return Redemption(ticket, TicketRefusal.EXPIRED)
        if port is None:
            return Redemption(ticket, TicketRefusal.NOT_AN_UPGRADE)
        if port != ticket.port:
            return Redemption(ticket, TicketRefusal.OTHER_CONSOLE)
        if mode != ticket.mode:
            return Redemption(ticket, TicketRefusal.OTHER_MODE)
        return Redemption(ticket)

    def revoke_session(self, web_session_key: str) -> int:
        """The signed-in session with this key ended: its outstanding tickets are refused from now on
        (``SESSION_ENDED``).  Returns how many there were."""
        return self.revoke_where(lambda ticket: ticket.web_session_key == web_session_key)

    def revoke_where(self, ended: Callable[[Ticket], bool]) -> int:
        """Refuse from now on (``SESSION_ENDED``) the outstanding tickets ``ended`` is true for (a reload
        withdrew the credential the request that asked for them was authenticated by)."""
        mine = [key for key, t in self._outstanding.items() if ended(t)]
        for key in mine:
            self._revoked[key] = self._outstanding.pop(key)
        while len(self._revoked) > self.max_total:
            self._revoked.popitem(last=False)
        return len(mine)

    def _prune(self, now: float) -> None:
        # Expired and used tickets stay one more lifetime, so that a late use is told "expired" and a replay
        # "already used", not "unknown" (after that they are simply unknown).
        while self._outstanding:
            first = next(iter(self._outstanding.values()))
            if now < first.expires_s + self.lifetime_s:
                break
            self._outstanding.popitem(last=False)
        while self._spent:
            first = next(iter(self._spent.values()))
            if now < first.expires_s + self.lifetime_s and len(self._spent) <= self.max_total:
                break
            self._spent.popitem(last=False)
        while self._revoked:
            first = next(iter(self._revoked.values()))
            if now < first.expires_s + self.lifetime_s:
                break
            self._revoked.popitem(last=False)
