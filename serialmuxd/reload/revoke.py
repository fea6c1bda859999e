"""Which credentials a reload of the users file withdrew, and who was signed in with them.

A session lasts as long as the credential that opened it.  Comparing the users file the daemon ran with
to the one a reload read, a credential is withdrawn when

* its **user was removed**: every session signed in as that user with something the users file vouched
  for (a password, a TLS client certificate, an SSH key or user certificate) ends;
* the user's **password changed** (or was removed): the sessions opened with the old password end (a
  password sign-in on the page, a telnet login, HTTP Basic), like most identity providers do on a password
  change.  The user's sessions opened by a key or certificate stay: those credentials did not change;
* a **token was removed or replaced** (another ``sha256`` under the same name): the sessions opened with
  it end.

* an **SSH key was removed** from a user who stays: the sessions opened with that key end (an SSH identity
  carries its key's fingerprint as ``credential``); those of the user's other keys stay.
  Sessions signed in
through the OpenID provider are the provider's business, whatever the users file says.  Grants are not
credentials: a user who keeps signing in but loses a console is handled by ``revoke_unauthorized``.

Pure logic: ``withdrawn(old, new)`` gives a ``Withdrawn``, whose ``reason(identity)`` is the text a
session opened by ``identity`` is closed with (None: it stays).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..auth.users import UserDirectory
from ..core.access import Identity

# The methods whose credential comes from the users file (core.access.Identity.method).
USERS_FILE_METHODS = frozenset({"password", "token", "certificate", "publickey"})


class Change(enum.StrEnum):
    USER_REMOVED = "user_removed"
    PASSWORD_CHANGED = "password_changed"
    TOKEN_REMOVED = "token_removed"
    TOKEN_REPLACED = "token_replaced"
    SSH_KEY_REMOVED = "ssh_key_removed"


_TEXT = {
    Change.USER_REMOVED: "user {} was removed from the users file",
    Change.PASSWORD_CHANGED: "the password of user {} was changed",
    Change.TOKEN_REMOVED: "token {} was removed from the users file",
    Change.TOKEN_REPLACED: "token {} was replaced",
    Change.SSH_KEY_REMOVED: "an SSH key of user {} was removed from the users file",
}


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """The credentials a reload withdrew, by user or token name."""

    users: dict[str, Change] = field(default_factory=dict)
    tokens: dict[str, Change] = field(default_factory=dict)
    ssh_keys: dict[str, str] = field(default_factory=dict)  # fingerprint -> the user (who stays) it was of

    def __bool__(self) -> bool:
        return bool(self.users or self.tokens or self.ssh_keys)

    def changes(self) -> list[tuple[str, Change]]:
        keys = {(user, Change.SSH_KEY_REMOVED) for user in self.ssh_keys.values()}
        return sorted((*self.users.items(), *self.tokens.items(), *keys))

    def change_for(self, who: Identity) -> Change | None:
        """What withdrew the credential ``who`` was proven by, or None."""
        if who.user is None or who.method not in USERS_FILE_METHODS:
            return None
        if who.method == "token":
            return self.tokens.get(who.user)
        if who.method == "publickey" and self.ssh_keys.get(who.credential) == who.user:
            return Change.SSH_KEY_REMOVED
        change = self.users.get(who.user)
        if change is Change.PASSWORD_CHANGED and who.method != "password":
            return None  # signed in by a key or a certificate, which did not change
        return change

    def reason(self, who: Identity) -> str | None:
        change = self.change_for(who)
        if change is None or who.user is None:
            return None
        return describe(change, who.user) + " (configuration reload)"


def describe(change: Change, name: str) -> str:
    return _TEXT[change].format(name)


def withdrawn(old: UserDirectory, new: UserDirectory) -> Withdrawn:
    kept = {user.name for user in new.users}
    old_hashes, new_hashes = old.password_hashes(), new.password_hashes()
    users: dict[str, Change] = {}
    for user in old.users:
        if user.name not in kept:
            users[user.name] = Change.USER_REMOVED
        elif user.name in old_hashes and old_hashes[user.name] != new_hashes.get(user.name):
            users[user.name] = Change.PASSWORD_CHANGED
    old_tokens = {token.name: token.sha256 for token in old.tokens}
    new_tokens = {token.name: token.sha256 for token in new.tokens}
    tokens: dict[str, Change] = {}
    for name, digest in old_tokens.items():
        if name not in new_tokens:
            tokens[name] = Change.TOKEN_REMOVED
        elif new_tokens[name] != digest:
            tokens[name] = Change.TOKEN_REPLACED
    # Per user: a key moved to another user no longer vouches for the one it was of.
    new_keys = {user.name: {key.blob for key in user.ssh_keys} for user in new.users}
    ssh_keys = {
        key.fingerprint: user.name
        for user in old.users
        if user.name in kept
        for key in user.ssh_keys
        if key.blob not in new_keys[user.name]
    }
    return Withdrawn(users, tokens, ssh_keys)
