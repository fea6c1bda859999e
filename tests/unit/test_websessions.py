"""Signed-in page sessions and console tickets (pure: the clock is a number passed in).

Sessions: 32 random bytes for the id and the CSRF token, only a SHA-256 of the id stored, an idle lifetime
refreshed by use and an absolute one, revocation of one session and of a user's, bounded per user and in
total with the oldest evicted.  Tickets: single use, 60 s, bound to the console and the mode, stored hashed,
a replay told apart from an unknown value.  A hypothesis model checks the lifetimes against an independent
statement of the rules."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serialmuxd.auth.tickets import TicketBook, TicketRefusal, ticket_key
from serialmuxd.auth.websessions import Expiry, WebSessions, session_key
from serialmuxd.core.access import Identity

ALICE = Identity("http", "127.0.0.1:5000", user="alice", groups=frozenset({"ops"}), method="password")
BOB = Identity("http", "127.0.0.1:5001", user="bob", method="password")


def _decoded_bytes(value: str) -> int:
    return len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))


# -- sessions -----------------------------------------------------------------------------------------------
def test_create_returns_an_id_and_a_csrf_token_of_32_random_bytes_each() -> None:
    store = WebSessions(idle_s=60, max_s=600)
    session_id, csrf = store.create(ALICE, now=0)
    for value in (session_id, csrf):
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", value)
        assert _decoded_bytes(value) == 32
    assert session_id != csrf
    assert len({store.create(ALICE, now=0)[0] for _ in range(50)}) == 50


def test_only_the_sha256_of_the_id_is_stored() -> None:
    store = WebSessions(idle_s=60, max_s=600)
    session_id, _ = store.create(ALICE, now=0)
    session = store.lookup(session_id, now=1).session
    assert session is not None
    assert session.key == hashlib.sha256(session_id.encode()).hexdigest() == session_key(session_id)
    # Nothing reachable from the table holds the id itself (the CSRF token is kept: see the module doc).
    assert session_id not in repr(vars(store)) and session_id not in repr(session)
    assert session.label == session.key[:16]


def test_lookup_finds_the_identity_and_refreshes_the_idle_lifetime() -> None:
    store = WebSessions(idle_s=10, max_s=100)
    session_id, _ = store.create(ALICE, now=0)
    for t in (9, 18, 27, 36):  # each use is within 10 s of the previous one
        found = store.lookup(session_id, now=t).session
        assert found is not None and found.identity == ALICE and found.user == "alice"
    gone = store.lookup(session_id, now=46)
    assert gone.session is None and gone.reason is Expiry.IDLE and gone.expired is not None
    assert gone.expired.user == "alice"
    # The lookup that found it expired removed it: the next one knows nothing.
    again = store.lookup(session_id, now=47)
    assert again.session is None and again.expired is None and len(store) == 0


def test_the_absolute_lifetime_holds_however_busy_the_session_is() -> None:
    store = WebSessions(idle_s=10, max_s=30)
    session_id, _ = store.create(ALICE, now=0)
    for t in range(5, 30, 5):
        assert store.lookup(session_id, now=t).session is not None
    ended = store.lookup(session_id, now=30)
    assert ended.session is None and ended.reason is Expiry.ABSOLUTE


def test_unknown_and_absurd_ids_find_nothing() -> None:
    store = WebSessions(idle_s=10, max_s=30)
    store.create(ALICE, now=0)
    for presented in ("", "x", "A" * 43, "A" * 10_000, "\udcff"):
        assert store.lookup(presented, now=1).session is None
        assert store.revoke(presented) is None


def test_revoke_ends_one_session_and_revoke_user_all_of_a_users() -> None:
    store = WebSessions(idle_s=60, max_s=600)
    first, _ = store.create(ALICE, now=0)
    second, _ = store.create(ALICE, now=1)
    bobs, _ = store.create(BOB, now=2)
    revoked = store.revoke(first)
    assert revoked is not None and revoked.user == "alice"
    assert store.lookup(first, now=3).session is None and store.revoke(first) is None
    assert store.lookup(second, now=3).session is not None
    assert [s.user for s in store.revoke_user("alice")] == ["alice"]
    assert store.lookup(second, now=4).session is None
    assert store.lookup(bobs, now=4).session is not None
    assert store.revoke_user("nobody") == []


def test_sessions_per_user_are_bounded_and_the_oldest_goes() -> None:
    store = WebSessions(idle_s=60, max_s=600, max_per_user=3)
    ids = [store.create(ALICE, now=t)[0] for t in range(5)]
    bobs, _ = store.create(BOB, now=5)
    alive = [i for i, sid in enumerate(ids) if store.lookup(sid, now=6).session is not None]
    assert alive == [2, 3, 4]
    assert store.lookup(bobs, now=6).session is not None  # another user's session is not touched
    assert store.evicted == 2
    assert len(store.sessions_of("alice")) == 3


def test_sessions_in_total_are_bounded_and_the_oldest_goes() -> None:
    store = WebSessions(idle_s=60, max_s=600, max_total=3)
    users = [Identity("http", "127.0.0.1:1", user=f"u{i}") for i in range(5)]
    ids = [store.create(who, now=t)[0] for t, who in enumerate(users)]
    assert len(store) == 3
    assert [store.lookup(sid, now=6).session is not None for sid in ids] == [False, False, True, True, True]


def test_prune_removes_every_expired_session_with_its_reason() -> None:
    store = WebSessions(idle_s=10, max_s=25)
    idle, _ = store.create(ALICE, now=0)
    busy, _ = store.create(BOB, now=0)
    for t in (8, 16):
        store.lookup(busy, now=t)
    ended = store.prune(now=20)
    assert [(s.user, reason) for s, reason in ended] == [("alice", Expiry.IDLE)]
    assert [(s.user, reason) for s, reason in store.prune(now=25)] == [("bob", Expiry.ABSOLUTE)]
    assert len(store) == 0 and store.lookup(idle, now=1).session is None


def test_csrf_is_compared_whole() -> None:
    store = WebSessions(idle_s=60, max_s=600)
    session_id, csrf = store.create(ALICE, now=0)
    session = store.lookup(session_id, now=1).session
    assert session is not None
    assert session.csrf_matches(csrf)
    for wrong in (None, "", csrf[:-1], csrf + "x", csrf.upper(), session_id, "\udcff"):
        assert not session.csrf_matches(wrong)


def test_a_session_needs_a_user_and_sane_limits() -> None:
    store = WebSessions(idle_s=60, max_s=600)
    with pytest.raises(ValueError):
        store.create(Identity("http", "127.0.0.1:1"), now=0)
    with pytest.raises(ValueError):
        WebSessions(idle_s=0, max_s=600)
    with pytest.raises(ValueError):
        WebSessions(idle_s=60, max_s=600, max_per_user=0)


@given(
    idle=st.integers(1, 50),
    longest=st.integers(1, 200),
    gaps=st.lists(st.integers(0, 60), min_size=1, max_size=20),
)
def test_lifetimes_match_a_model(idle: int, longest: int, gaps: list[int]) -> None:
    """The rules stated independently: alive at time t iff t - created < max and t - last use < idle, where
    a use is a lookup that found it alive; once ended it stays ended."""
    store = WebSessions(idle_s=idle, max_s=longest)
    session_id, _ = store.create(ALICE, now=0)
    t, last_use, ended = 0, 0, False
    for gap in gaps:
        t += gap
        expected_alive = not ended and t < longest and t - last_use < idle
        found = store.lookup(session_id, now=t)
        assert (found.session is not None) == expected_alive, (t, last_use)
        if expected_alive:
            last_use = t
        elif not ended:
            ended = True
            assert found.reason is (Expiry.ABSOLUTE if t >= longest else Expiry.IDLE)


# -- tickets ------------------------------------------------------------------------------------------------
def test_a_ticket_is_32_random_bytes_stored_hashed_and_used_once() -> None:
    book = TicketBook()
    value, ticket = book.issue(ALICE, "vm1", "rw", now=0)
    assert _decoded_bytes(value) == 32
    assert ticket.key == ticket_key(value) == hashlib.sha256(value.encode()).hexdigest()
    assert value not in repr(vars(book))
    first = book.redeem(value, "vm1", "rw", now=1)
    assert first.ok and first.ticket is not None and first.ticket.identity == ALICE
    replay = book.redeem(value, "vm1", "rw", now=2)
    assert not replay.ok and replay.refusal is TicketRefusal.REPLAYED
    assert replay.ticket is not None and replay.ticket.identity.user == "alice"  # for the audit line


def test_a_ticket_lives_60_seconds() -> None:
    book = TicketBook()
    assert book.lifetime_s == 60
    fresh, _ = book.issue(ALICE, "vm1", "ro", now=100)
    late, _ = book.issue(ALICE, "vm1", "ro", now=100)
    assert book.redeem(fresh, "vm1", "ro", now=159.9).ok
    expired = book.redeem(late, "vm1", "ro", now=160)
    assert expired.refusal is TicketRefusal.EXPIRED
    assert book.redeem(late, "vm1", "ro", now=161).refusal is TicketRefusal.REPLAYED
    assert book.redeem(fresh, "vm1", "ro", now=219).refusal is TicketRefusal.REPLAYED
    book.issue(BOB, "vm1", "ro", now=221)  # a lifetime after expiry even a used ticket is forgotten
    assert book.redeem(fresh, "vm1", "ro", now=221).refusal is TicketRefusal.UNKNOWN


def test_a_ticket_is_bound_to_the_console_and_the_mode_and_a_mismatch_uses_it_up() -> None:
    book = TicketBook()
    other_console, _ = book.issue(ALICE, "vm1", "rw", now=0)
    other_mode, _ = book.issue(ALICE, "vm1", "ro", now=0)
    not_upgrade, _ = book.issue(ALICE, "vm1", "ro", now=0)
    assert book.redeem(other_console, "vm2", "rw", now=1).refusal is TicketRefusal.OTHER_CONSOLE
    assert book.redeem(other_console, "vm1", "rw", now=1).refusal is TicketRefusal.REPLAYED
    assert book.redeem(other_mode, "vm1", "rw", now=1).refusal is TicketRefusal.OTHER_MODE
    assert book.redeem(other_mode, "vm1", "ro", now=1).refusal is TicketRefusal.REPLAYED
    assert book.redeem(not_upgrade, None, "ro", now=1).refusal is TicketRefusal.NOT_AN_UPGRADE


def test_unknown_values_are_refused() -> None:
    book = TicketBook()
    book.issue(ALICE, "vm1", "rw", now=0)
    for value in ("", "nope", "A" * 43, "A" * 5000):
        outcome = book.redeem(value, "vm1", "rw", now=1)
        assert outcome.refusal is TicketRefusal.UNKNOWN and outcome.ticket is None


def test_tickets_are_bounded_per_user_and_in_total() -> None:
    book = TicketBook(max_per_user=2, max_total=3)
    a1, _ = book.issue(ALICE, "vm1", "rw", now=0)
    a2, _ = book.issue(ALICE, "vm1", "rw", now=1)
    a3, _ = book.issue(ALICE, "vm1", "rw", now=2)
    b1, _ = book.issue(BOB, "vm1", "rw", now=3)
    assert book.redeem(a1, "vm1", "rw", now=4).refusal is TicketRefusal.UNKNOWN  # alice's oldest went
    c1, _ = book.issue(Identity("http", "x:1", user="carol"), "vm1", "rw", now=5)
    assert len(book) == 3  # a2, the oldest of all, made room for carol's
    assert book.redeem(a2, "vm1", "rw", now=6).refusal is TicketRefusal.UNKNOWN
    assert book.redeem(a3, "vm1", "rw", now=6).ok
    assert book.redeem(b1, "vm1", "rw", now=6).ok
    assert book.redeem(c1, "vm1", "rw", now=6).ok


def test_old_tickets_are_forgotten_in_time() -> None:
    book = TicketBook()
    value, _ = book.issue(ALICE, "vm1", "rw", now=0)
    book.issue(ALICE, "vm1", "rw", now=200)  # prunes what expired more than a lifetime ago
    assert len(book) == 1
    assert book.redeem(value, "vm1", "rw", now=200).refusal is TicketRefusal.UNKNOWN


def test_a_ticket_needs_a_known_mode() -> None:
    with pytest.raises(ValueError):
        TicketBook().issue(ALICE, "vm1", "write", now=0)
