"""Pure policy of what ends with a sign-in or a credential: ``WebSessions.on_end`` for every way a session
ends, ``TicketBook.revoke_session``, and ``reload.revoke.withdrawn`` (which sessions a reload ends)."""

from __future__ import annotations

from serialmuxd.auth.tickets import TicketBook, TicketRefusal
from serialmuxd.auth.users import TokenEntry, User, UserDirectory
from serialmuxd.auth.websessions import WebSession, WebSessions
from serialmuxd.core.access import Identity
from serialmuxd.reload.revoke import Change, withdrawn


def who(user: str, method: str = "password", transport: str = "telnet") -> Identity:
    return Identity(transport, "127.0.0.1:5000", user, method=method)


def test_every_way_a_session_ends_calls_on_end_once_with_why() -> None:
    store = WebSessions(idle_s=10, max_s=100, max_per_user=2)
    ended: list[tuple[str, str]] = []

    def on_end(session: WebSession, why: str) -> None:
        ended.append((session.user, why))

    store.on_end = on_end
    a1, _ = store.create(who("a"), 0)
    store.create(who("a"), 1)
    store.create(who("a"), 2)  # evicts the oldest of a's
    assert ended == [("a", "too many signed-in sessions: the oldest was ended")]
    b, _ = store.create(who("b"), 3)
    assert store.revoke(b) is not None and ended[-1] == ("b", "signed out")
    assert store.revoke(b) is None and len(ended) == 2  # once only
    assert store.lookup(a1, 3).session is None  # evicted: unknown, nothing more to end
    c, _ = store.create(who("c"), 5)
    assert store.next_deadline() == 11.0  # a's second session, last used at 1
    pruned = store.prune(11.5)
    assert [s.user for s, _ in pruned] == ["a"] and ended[-1] == ("a", "idle lifetime reached")
    assert store.lookup(c, 14).session is not None
    assert store.lookup(c, 105).expired is not None and ended[-1] == ("c", "absolute lifetime reached")
    store.create(who("d"), 106)
    store.create(who("e", method="oidc"), 106)
    gone = store.revoke_where(lambda i: "removed" if i.method == "password" else None)
    assert [s.user for s in gone] == ["d"] and ended[-1] == ("d", "removed") and len(store) == 1


def test_tickets_of_an_ended_session_are_refused_as_such() -> None:
    book = TicketBook()
    value, _ = book.issue(who("a"), "vm1", "ro", 0, web_session="label", web_session_key="k1")
    other, _ = book.issue(who("a"), "vm1", "ro", 0, web_session_key="k2")
    assert book.revoke_session("k1") == 1
    outcome = book.redeem(value, "vm1", "ro", 1)
    assert outcome.refusal is TicketRefusal.SESSION_ENDED and outcome.ticket is not None
    assert book.redeem(value, "vm1", "ro", 1).refusal is TicketRefusal.REPLAYED
    assert book.redeem(other, "vm1", "ro", 1).ok
    third, _ = book.issue(who("b", "token"), "vm1", "ro", 2)
    assert book.revoke_where(lambda ticket: ticket.identity.user == "b") == 1
    assert book.redeem(third, "vm1", "ro", 3).refusal is TicketRefusal.SESSION_ENDED


def test_what_a_reload_withdraws() -> None:
    def directory(users: dict[str, str | None], tokens: dict[str, str]) -> UserDirectory:
        return UserDirectory(
            tuple(User(name, hashed, (), ()) for name, hashed in users.items()),
            tuple(TokenEntry(name, digest, ()) for name, digest in tokens.items()),
        )

    old = directory({"alice": "h1", "bob": "h2", "carol": "h3", "dan": None}, {"ci": "d1", "cd": "d2"})
    new = directory({"alice": "h1", "carol": "h3-new", "dan": None}, {"cd": "d2-new"})
    gone = withdrawn(old, new)
    assert gone.changes() == [
        ("bob", Change.USER_REMOVED),
        ("carol", Change.PASSWORD_CHANGED),
        ("cd", Change.TOKEN_REPLACED),
        ("ci", Change.TOKEN_REMOVED),
    ]
    assert gone.reason(who("bob", "publickey", "ssh")) == (
        "user bob was removed from the users file (configuration reload)"
    )
    assert gone.reason(who("carol")) == "the password of user carol was changed (configuration reload)"
    assert gone.reason(who("carol", "certificate")) is None  # her certificate did not change
    assert (
        gone.reason(who("ci", "token", "ws"))
        == "token ci was removed from the users file (configuration reload)"
    )
    assert gone.reason(who("cd", "token")) == "token cd was replaced (configuration reload)"
    assert gone.reason(who("alice")) is None
    assert gone.reason(who("bob", "oidc")) is None  # the provider's, not the users file's
    assert gone.reason(who("bob", "session", "ws")) is None  # a page session's WebSocket follows its session
    assert not withdrawn(old, old)
