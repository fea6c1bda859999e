"""The console page's signed-in sessions: an opaque, revocable id in a cookie, the state on the server.

Theory of operation
-------------------
A user signs in on the page once (a password today, OIDC later); ``create`` makes a session for the
identity that came out of that and returns two random values of 32 bytes each:

* the **session id**, which the HTTP front end puts in the ``serialmuxd_session`` cookie.  Only its SHA-256
  (the session's ``key``) is kept here, so a memory dump, a debugger or a log line that shows a key never
  yields a usable cookie.  A lookup hashes the presented id and finds the key in a dict: hashing first
  means the dict's comparisons leak nothing an attacker could use (they would need a preimage), so no
  constant-time compare is needed on this path;
* the **CSRF token**, which the page's script sends back in ``X-CSRF-Token`` on every state-changing
  request.  It is useless without the cookie, and the page must be able to read it again after a reload
  (``GET /api/v1/session``), so it is kept as it is and compared in constant time (``csrf_matches``).

A session ends when it is **idle** for ``idle_s`` (every successful lookup is a use and refreshes it), at
its **absolute** lifetime ``max_s`` after sign-in whatever its use, when it is **revoked** (sign-out, or
all sessions of a user), or when it is **evicted**: at most ``max_per_user`` sessions per user and
``max_total`` in all are kept, and creating one more drops the oldest (of that user first), so neither a
script that signs in in a loop nor many users can grow this table without bound.  An expired session is
removed by the lookup that finds it, which tells the caller why (for the ``session_expired`` audit event);
``prune`` removes the rest (the HTTP front end calls it when ``next_deadline`` comes).

Whatever ends a session (each of the above, and ``revoke_where``: a reload that removed its user or changed
the password it was signed in with) calls ``on_end(session, why)``, once per session: the HTTP front end
closes what the session opened (its WebSockets, its outstanding tickets) and audits ``session_ended``.
A session's sign-in is what everything opened under it rests on, so nothing outlives it.

Pure logic: no I/O, the clock is passed in as ``now`` (monotonic seconds), and nothing here is async.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..core.access import Identity

RANDOM_BYTES = 32  # of the session id and of the CSRF token (256 bits: unguessable, never brute-forced)
MAX_SESSIONS_PER_USER = 16
MAX_SESSIONS = 10_000
# token_urlsafe(32) is 43 characters; anything much longer is not one of ours and is not even hashed.
MAX_PRESENTED_CHARS = 128
LABEL_CHARS = 16  # of the key, for audit lines and logs: names a session without being a credential


def session_key(session_id: str) -> str:
    """The stored form of a session id (lowercase hex SHA-256)."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


class Expiry(enum.StrEnum):
    IDLE = "idle"  # unused for idle_s
    ABSOLUTE = "absolute"  # signed in longer than max_s ago


# Why a session ended, as ``on_end`` is told (and the audit trail and the closed WebSockets say).
SIGNED_OUT = "signed out"
SIGNED_OUT_EVERYWHERE = "signed out everywhere"
SIGNED_IN_AGAIN = "signed in again from the same browser"
EVICTED = "too many signed-in sessions: the oldest was ended"
EXPIRED = {Expiry.IDLE: "idle lifetime reached", Expiry.ABSOLUTE: "absolute lifetime reached"}


@dataclass(slots=True)
class WebSession:
    """One signed-in session.  ``last_used_s`` is refreshed by every lookup that finds it alive."""

    key: str  # SHA-256 of the session id; the id itself is never stored
    identity: Identity  # as authenticated at sign-in (user, groups, method, the sign-in's address)
    csrf_token: str
    created_s: float
    last_used_s: float

    @property
    def user(self) -> str:
        assert self.identity.user is not None  # create() refuses identities without one
        return self.identity.user

    @property
    def label(self) -> str:
        """A short name for this session in the audit trail (a prefix of the hash: not a credential)."""
        return self.key[:LABEL_CHARS]

    def csrf_matches(self, presented: str | None) -> bool:
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), self.csrf_token.encode())


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a lookup found: a live session, or the one that just ended and why, or nothing."""

    session: WebSession | None
    expired: WebSession | None = None
    reason: Expiry | None = None


_NOTHING = Lookup(None)


class WebSessions:
    """The table of signed-in sessions; see the module docstring."""

    def __init__(
        self,
        idle_s: float,
        max_s: float,
        *,
        max_per_user: int = MAX_SESSIONS_PER_USER,
        max_total: int = MAX_SESSIONS,
    ) -> None:
        if idle_s <= 0 or max_s <= 0 or max_per_user < 1 or max_total < 1:
            raise ValueError("lifetimes and limits must be positive")
        self.idle_s = idle_s
        self.max_s = max_s
        self.max_per_user = max_per_user
        self.max_total = max_total
        self.evicted = 0  # sessions dropped to make room, since start
        # In creation order, oldest first: eviction takes from the front, and since every session has the
        # same absolute lifetime the front is also the first to reach it.
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()
        self._by_user: dict[str, list[str]] = {}  # user -> keys, oldest first
        self.on_end: Callable[[WebSession, str], None] | None = None  # see the module docstring

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, identity: Identity, now: float) -> tuple[str, str]:
        """A new session for an authenticated ``identity``: ``(session_id, csrf_token)``."""
        if identity.user is None:
            raise ValueError("a signed-in session needs a user")
        self.prune(now)
        session_id = secrets.token_urlsafe(RANDOM_BYTES)
        csrf_token = secrets.token_urlsafe(RANDOM_BYTES)
        key = session_key(session_id)
        mine = self._by_user.setdefault(identity.user, [])
        while len(mine) >= self.max_per_user:
            self._end(mine[0], EVICTED)
            self.evicted += 1
        while len(self._sessions) >= self.max_total:
            self._end(next(iter(self._sessions)), EVICTED)
            self.evicted += 1
        self._sessions[key] = WebSession(key, identity, csrf_token, now, now)
        self._by_user.setdefault(identity.user, []).append(key)  # _remove may have dropped the list
        return session_id, csrf_token

    def lookup(self, session_id: str, now: float) -> Lookup:
        """The live session for a presented id (refreshed: this is a use), or why there is none."""
        if not session_id or len(session_id) > MAX_PRESENTED_CHARS:
            return _NOTHING
        key = session_key(session_id)
        found = self._sessions.get(key)
        if found is None:
            return _NOTHING
        reason = self._expiry(found, now)
        if reason is not None:
            self._end(key, EXPIRED[reason])
            return Lookup(None, found, reason)
        found.last_used_s = now
        return Lookup(found)

    def revoke(self, session_id: str, why: str = SIGNED_OUT) -> WebSession | None:
        """End the session with this id (sign-out); returns it, or None if there was none."""
        if not session_id or len(session_id) > MAX_PRESENTED_CHARS:
            return None
        return self._end(session_key(session_id), why)

    def revoke_user(self, user: str, why: str = SIGNED_OUT_EVERYWHERE) -> list[WebSession]:
        """End every session of ``user`` (sign-out everywhere, a user removed or locked)."""
        return [s for key in list(self._by_user.get(user, ())) if (s := self._end(key, why)) is not None]

    def revoke_where(self, why: Callable[[Identity], str | None]) -> list[WebSession]:
        """End every session whose sign-in identity ``why`` gives a reason for (a reload that removed the
        user, or changed the password or token it was signed in with)."""
        ended = []
        for key, found in list(self._sessions.items()):
            reason = why(found.identity)
            if reason is not None:
                self._end(key, reason)
                ended.append(found)
        return ended

    def alive(self, key: str) -> bool:
        """The session with this key (not id) has not ended (it may be past its lifetime: not pruned yet)."""
        return key in self._sessions

    def next_deadline(self) -> float | None:
        """The earliest time (monotonic) at which some session expires, as of its last use."""
        return min(
            (min(s.created_s + self.max_s, s.last_used_s + self.idle_s) for s in self._sessions.values()),
            default=None,
        )

    def prune(self, now: float) -> list[tuple[WebSession, Expiry]]:
        """Remove every expired session; returns them with the reason."""
        ended: list[tuple[WebSession, Expiry]] = []
        for key, found in list(self._sessions.items()):
            reason = self._expiry(found, now)
            if reason is not None:
                self._end(key, EXPIRED[reason])
                ended.append((found, reason))
        return ended

    def sessions_of(self, user: str) -> list[WebSession]:
        return [self._sessions[key] for key in self._by_user.get(user, ())]

    # -- internals -------------------------------------------------------------------------------------
    def _expiry(self, found: WebSession, now: float) -> Expiry | None:
        if now - found.created_s >= self.max_s:
            return Expiry.ABSOLUTE
        if now - found.last_used_s >= self.idle_s:
            return Expiry.IDLE
        return None

    def _end(self, key: str, why: str) -> WebSession | None:
        found = self._remove(key)
        if found is not None and self.on_end is not None:
            self.on_end(found, why)
        return found

    def _remove(self, key: str) -> WebSession | None:
        found = self._sessions.pop(key, None)
        if found is None:
            return None
        keys = self._by_user.get(found.user)
        if keys is not None:
            keys.remove(key)
            if not keys:
                del self._by_user[found.user]
        return found
