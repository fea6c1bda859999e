"""What a sign-in opened ends with it: the console WebSockets of each signed-in page session, and the timer
that ends sessions when their lifetime runs out.

A WebSocket is opened under a page session in one of two ways: the upgrade carries the session's cookie, or
a ticket issued to a request that carried it (``Ticket.web_session_key``).  ``opened`` files it under that
session; when the session ends (``WebSessions.on_end``: sign-out, sign-out everywhere, idle or absolute
lifetime, eviction, a reload that removed the user or changed the password it was signed in with), its
WebSockets are told why in a ``closing`` event and closed (4005), its outstanding tickets are refused from
then on, and ``session_ended`` is audited with what was closed.  Without this an open console would outlive
the sign-out that should have ended it.

Sessions expire lazily in the store (the next lookup finds them past their lifetime), so ``expire`` wakes
at the earliest deadline (``WebSessions.next_deadline``; at least every ``SWEEP_MAX_S``, at most every
``SWEEP_MIN_S``) and prunes: an expired session's WebSockets close when it expires, not when someone next
presents its cookie.

``end_where`` is for a reload: every page session, and every WebSocket, whose credential (the identity as
it was proven: by password, token, certificate; for a ticket, that of the request it was issued to) the
reload withdrew.  Each WebSocket's credential is kept here, beside the hub's identity (which only says
``session`` or ``ticket``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from ...auth.tickets import TicketBook
from ...auth.websessions import WebSession, WebSessions
from ...core.access import Identity
from ...hub import EndReason
from ...obs.audit import AuditFn
from .sessions import TICKET_KEY, WEB_SESSION_KEY

if TYPE_CHECKING:
    from .ws import WsConnection

SWEEP_MAX_S = 30.0  # the longest the expiry timer sleeps (a session created meanwhile has a later deadline)
# And the shortest: a deadline that float rounding puts a hair early never spins it, and with the table full
# (10,000 sessions: next_deadline and prune take about 1 ms each) expiry costs at most a few ms a second.
# A session's WebSockets close at most this long after it expired.
SWEEP_MIN_S = 0.25

log = structlog.get_logger("serialmuxd.http")

Reason = Callable[[Identity], str | None]


class SignIns:
    """The WebSockets of each signed-in session, closed when it ends; see the module docstring."""

    def __init__(
        self, store: WebSessions, tickets: TicketBook, audit: AuditFn, clock: Callable[[], float]
    ) -> None:
        self._store = store
        self._tickets = tickets
        self._audit = audit
        self._clock = clock
        self._by_session: dict[str, set[WsConnection]] = {}  # web session key -> its WebSockets
        self._sessions: dict[WsConnection, str] = {}  # WebSocket -> its web session key
        self._credentials: dict[WsConnection, Identity] = {}  # every open WebSocket -> how it was proven
        self.closed_total = 0  # WebSockets closed because their sign-in ended, since start
        store.on_end = self._ended

    # -- the WebSocket handler ----------------------------------------------------------------------
    def opened(self, conn: WsConnection, request: web.Request, who: Identity) -> None:
        session = request.get(WEB_SESSION_KEY)
        ticket = request.get(TICKET_KEY)
        key = session.key if session is not None else ticket.web_session_key if ticket else None
        credential = session.identity if session is not None else ticket.identity if ticket else who
        self._credentials[conn] = credential
        if key is None:
            return
        if not self._store.alive(key):  # signed out while the upgrade was being answered
            conn.close_session("your sign-in ended", EndReason.DENIED)
            self.closed_total += 1
            return
        self._sessions[conn] = key
        self._by_session.setdefault(key, set()).add(conn)

    def closed(self, conn: WsConnection) -> None:
        self._credentials.pop(conn, None)
        key = self._sessions.pop(conn, None)
        if key is not None:
            sockets = self._by_session.get(key)
            if sockets is not None:
                sockets.discard(conn)
                if not sockets:
                    del self._by_session[key]

    def of_session(self, key: str) -> int:
        return len(self._by_session.get(key, ()))

    # -- ends ---------------------------------------------------------------------------------------
    def _ended(self, session: WebSession, why: str) -> None:
        tickets = self._tickets.revoke_session(session.key)
        sockets = self._by_session.pop(session.key, set())
        for conn in sockets:
            self._sessions.pop(conn, None)
            conn.close_session(f"your sign-in ended: {why}", EndReason.DENIED)
        self.closed_total += len(sockets)
        who = session.identity
        self._audit(
            "session_ended",
            user=who.user,
            source=who.address,
            transport=who.transport,
            method="session",
            signed_in_by=who.method,
            web_session=session.label,
            websockets=len(sockets),
            grants=tickets,  # outstanding tickets, refused from now on (no field may be called ticket*)
            result="ended",
            reason=why,
        )

    def end_where(
        self, sessions_why: Reason, sockets_why: Reason, tickets_why: Reason | None = None
    ) -> tuple[int, int]:
        """End the page sessions whose sign-in ``sessions_why`` gives a reason for, close the other
        WebSockets whose credential ``sockets_why`` gives one for, and refuse the outstanding tickets
        whose requester's credential ``tickets_why`` (default: ``sockets_why``) gives one for; returns how
        many sessions ended and how many WebSockets closed (a session's own WebSockets included)."""
        start = self.closed_total
        sessions = len(self._store.revoke_where(sessions_why))  # _ended closes their WebSockets
        # Tickets issued to a request authenticated by the withdrawn credential itself (Basic, a token).
        tickets = tickets_why or sockets_why
        self._tickets.revoke_where(lambda ticket: tickets(ticket.identity) is not None)
        for conn, credential in list(self._credentials.items()):
            if conn in self._sessions or conn.close_code is not None:
                continue  # a session's WebSocket follows its session (which was kept)
            reason = sockets_why(credential)
            if reason is not None:
                conn.close_session(reason, EndReason.DENIED)
                self.closed_total += 1
        return sessions, self.closed_total - start

    # -- the expiry timer ---------------------------------------------------------------------------
    async def expire(self) -> None:
        """Runs for the app's lifetime: prune the store at each session's deadline."""
        store = self._store
        cap = min(SWEEP_MAX_S, store.idle_s, store.max_s)
        while True:
            deadline = store.next_deadline()
            delay = cap if deadline is None else min(cap, max(deadline - self._clock(), SWEEP_MIN_S))
            await asyncio.sleep(delay)
            try:
                store.prune(self._clock())
            except Exception:  # a bug in closing what a session opened must not stop expiry for good
                log.exception("session_expiry_failed")


SIGNINS_KEY: web.AppKey[SignIns] = web.AppKey("sign_ins", SignIns)
_EXPIRY_KEY: web.AppKey[asyncio.Task[None]] = web.AppKey("sign_in_expiry", asyncio.Task)


def install(app: web.Application, store: WebSessions, tickets: TicketBook, audit: AuditFn) -> SignIns:
    from .sessions import CLOCK_KEY

    sign_ins = SignIns(store, tickets, audit, app[CLOCK_KEY])
    app[SIGNINS_KEY] = sign_ins

    async def start(app: web.Application) -> None:
        app[_EXPIRY_KEY] = asyncio.get_running_loop().create_task(sign_ins.expire())

    async def stop(app: web.Application) -> None:
        task = app.get(_EXPIRY_KEY)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return sign_ins
