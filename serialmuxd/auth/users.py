"""The users file (``[auth] users_file``): local users, API tokens and their grants.

::

    [[users]]
    name = "alice"                                   # the user name in audit lines and messages
    password_hash = "$argon2id$v=19$m=..."           # from `serialmuxd hash-password`; optional
    cert_names = ["alice@example.com"]               # TLS client certificate CN/SAN values that mean alice
    ssh_keys = ["ssh-ed25519 AAAAC3Nz... alice@laptop"] # authorized_keys lines (serialmuxd.auth.ssh_keys)
    ssh_principals = ["alice"]                       # user-certificate principals that mean alice (default)
    grants = [{ role = "operator", ports = ["vm*"] }]

    [[tokens]]
    name = "ci-bot"                                  # the user name of whoever presents this token
    sha256 = "9f86d081884c7d65..."                   # from `serialmuxd new-token ci-bot`
    grants = [{ role = "viewer", ports = ["*"] }]

It is checked like the main configuration (``serialmuxd.configcheck``: every problem at once, as ``FILE:
key.path: reason``) and refused when other users can read or write it: it holds password hashes and token
digests, which are offline-guessable.  A user without ``password_hash`` can still sign in with a
certificate (``cert_names``, or a certificate whose CN is the user's name) or through OIDC.

User and token names share one namespace: a token is a user of its own, so its grants are never mixed with
a person's by accident.

SSH (``[ssh]``): the user name a client sends selects the console, so the key says who it is.  Each
``ssh_keys`` entry belongs to exactly one user (the same key under two users is a problem, reported at
both); top-level ``ssh_ca_keys = ["ssh-ed25519 AAAA… ca"]`` lists the CAs whose user certificates are
trusted, and a certificate's principal names its user (``ssh_principals``, default the user's name; each
principal means one user).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import check_grant_roles, check_grants
from ..configcheck import (
    Invalid,
    Key,
    Problems,
    array_of,
    as_table,
    check_table,
    key_path,
    require,
    show,
    string,
    text,
)
from ..core.grants import BUILTIN_ROLES, Grant
from ..errors import ConfigError
from .passwords import hash_problem
from .ssh_keys import SshPublicKey, parse_public_key_line
from .tokens import digest_problem

# A user name: what a person types at a login prompt and what audit lines show.  No spaces, no separators a
# log or a URL would choke on; e-mail-like names (alice@example.com) are allowed.
USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
MAX_USERS_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: str | None
    cert_names: tuple[str, ...]
    grants: tuple[Grant, ...]
    ssh_keys: tuple[SshPublicKey, ...] = ()
    ssh_principals: tuple[str, ...] = ()  # empty: the user's own name


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    sha256: str
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class UserDirectory:
    users: tuple[User, ...]
    tokens: tuple[TokenEntry, ...]
    ssh_ca_keys: tuple[SshPublicKey, ...] = ()

    def grants(self) -> dict[str, tuple[Grant, ...]]:
        """Grants by user name (users and tokens alike)."""
        found = {user.name: user.grants for user in self.users}
        found.update((token.name, token.grants) for token in self.tokens)
        return found

    def password_hashes(self) -> dict[str, str]:
        return {user.name: user.password_hash for user in self.users if user.password_hash is not None}

    def token_digests(self) -> dict[str, str]:
        """``{sha256 hex: token name}``."""
        return {token.sha256: token.name for token in self.tokens}

    def ssh_keys(self) -> dict[bytes, str]:
        """``{SSH public key blob: user}`` (each key belongs to one user: checked when the file is read)."""
        return {key.blob: user.name for user in self.users for key in user.ssh_keys}

    def ssh_principals(self) -> dict[str, str]:
        """``{user-certificate principal: user}``: each user's ``ssh_principals``, else the user's name."""
        names: dict[str, str] = {}
        for user in self.users:
            for principal in user.ssh_principals or (user.name,):
                names.setdefault(principal, user.name)
        return names

    def certificate_names(self) -> dict[str, str]:
        """``{name a certificate may carry: user}``: each user's ``cert_names``, else the user's own name."""
        names: dict[str, str] = {}
        for user in self.users:
            for cert_name in user.cert_names or (user.name,):
                names.setdefault(cert_name, user.name)
        return names


def _user_name(value: object) -> str:
    name = string(value)
    if not USER_NAME_RE.fullmatch(name):
        raise Invalid(
            "must be 1-128 characters from A-Z a-z 0-9 . _ @ + - starting with a letter or digit, "
            f"got {show(name)}"
        )
    return name


def _password_hash(value: object) -> str:
    result = text(value)
    problem = hash_problem(result)
    if problem is not None:
        raise Invalid(problem)
    return result


def _ssh_key(value: object) -> SshPublicKey:
    try:
        return parse_public_key_line(text(value))
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _ssh_ca_key(value: object) -> SshPublicKey:
    try:
        return parse_public_key_line(text(value), ca=True)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


_ssh_keys = array_of(_ssh_key, "authorized_keys lines")
_ssh_ca_keys = array_of(_ssh_ca_key, "authorized_keys lines of certificate authorities")


def _digest(value: object) -> str:
    result = string(value)
    problem = digest_problem(result)
    if problem is not None:
        raise Invalid(problem)
    return result


class _User:
    name = Key("name", _user_name)
    password_hash = Key("password_hash", _password_hash)
    cert_names = Key("cert_names", array_of(text, "certificate names"))
    ssh_keys = Key("ssh_keys", _ssh_keys)
    ssh_principals = Key("ssh_principals", array_of(text, "certificate principals"))
    grants = Key("grants", check_grants)


class _Token:
    name = Key("name", _user_name)
    sha256 = Key("sha256", _digest)
    grants = Key("grants", check_grants)


_USER_KEYS = (
    _User.name,
    _User.password_hash,
    _User.cert_names,
    _User.ssh_keys,
    _User.ssh_principals,
    _User.grants,
)
_TOP_KEYS = ("users", "tokens", "ssh_ca_keys")
_TOKEN_KEYS = (_Token.name, _Token.sha256, _Token.grants)


def load_users(path: Path, roles: Iterable[str] = ()) -> UserDirectory:
    """Read and check the users file; ``roles`` are the custom role names of ``[auth.roles]``.

    Raises ``ConfigError`` naming the file, with every problem (the same format as the main configuration).
    """
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(source, [("(file)", exc.strerror or str(exc))]) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(source, [("(file)", "not a regular file")])
        if mode & 0o077:
            # It holds password hashes and token digests: anyone who can read it can guess offline.
            raise ConfigError(
                source,
                [
                    (
                        "(file)",
                        f"is accessible by other users (mode {stat.S_IMODE(mode):04o}); it holds password "
                        f"hashes and token digests: chmod 600 {source} (owned by the daemon's user)",
                    )
                ],
            )
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(MAX_USERS_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_USERS_FILE_BYTES:
        raise ConfigError(source, [("(file)", f"more than {MAX_USERS_FILE_BYTES} bytes")])
    try:
        document = tomllib.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(source, [("(file)", "not UTF-8 text; TOML files must be UTF-8")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("(toml)", str(exc))]) from None
    except (RecursionError, ValueError) as exc:
        raise ConfigError(source, [("(toml)", f"cannot be read: {type(exc).__name__}")]) from None
    problems = Problems()
    directory = parse_users(document, {*BUILTIN_ROLES, *roles}, problems)
    if problems.items:
        raise ConfigError(source, problems.items)
    return directory


def parse_users(document: Mapping[str, object], roles: set[str], problems: Problems) -> UserDirectory:
    for top in document:
        if top not in _TOP_KEYS:
            problems.add(
                key_path("", top), "unknown key; the users file holds [[users]], [[tokens]] and ssh_ca_keys"
            )
    ssh_ca_keys: tuple[SshPublicKey, ...] = ()
    if "ssh_ca_keys" in document:
        try:
            ssh_ca_keys = _ssh_ca_keys(document["ssh_ca_keys"])
        except Invalid as exc:
            for at, reason in exc.found:
                problems.add(f"ssh_ca_keys{at}", reason)
    names: dict[str, str] = {}
    key_owners: dict[bytes, str] = {}  # SSH key blob -> where it was first listed
    principals: dict[str, str] = {}
    users = []
    for index, table in _tables(document.get("users", []), "users", problems):
        at = f"users[{index}]"
        own = check_table(table, at, _USER_KEYS, problems)
        require(own, (_User.name,), problems)
        grants = own.get(_User.grants) or ()
        check_grant_roles(grants, key_path(at, "grants"), roles, problems)
        name = own.get(_User.name)
        if name is not None:
            _claim(name, at, names, problems)  # also for an entry with another problem: report both
        ssh_keys = own.get(_User.ssh_keys) or ()
        for index_key, key in enumerate(ssh_keys):
            where = f"{at}.ssh_keys[{index_key}]"
            first = key_owners.setdefault(key.blob, where)
            if first != where:
                problems.add(
                    where, f"key {key.fingerprint} is already listed at {first}: each key belongs to one user"
                )
        for principal in own.get(_User.ssh_principals) or ((name,) if name is not None else ()):
            first = principals.setdefault(principal, at)
            if first != at:
                problems.add(
                    f"{at}.ssh_principals",
                    f"principal {show(principal)} already means the user of {first}: one user per principal",
                )
        if name is None or not own.ok:
            continue
        users.append(
            User(
                name,
                own.get(_User.password_hash),
                own.get(_User.cert_names) or (),
                tuple(grants),
                ssh_keys=ssh_keys,
                ssh_principals=own.get(_User.ssh_principals) or (),
            )
        )
    tokens = []
    digests: dict[str, str] = {}
    for index, table in _tables(document.get("tokens", []), "tokens", problems):
        at = f"tokens[{index}]"
        own = check_table(table, at, _TOKEN_KEYS, problems)
        require(own, (_Token.name, _Token.sha256), problems)
        grants = own.get(_Token.grants) or ()
        check_grant_roles(grants, key_path(at, "grants"), roles, problems)
        token_name, digest = own.get(_Token.name), own.get(_Token.sha256)
        if token_name is not None:
            _claim(token_name, at, names, problems)
        if token_name is None or digest is None or not own.ok:
            continue
        first = digests.setdefault(digest, at)
        if first != at:
            problems.add(f"{at}.sha256", f"the same token as {first}: every token must be different")
        tokens.append(TokenEntry(token_name, digest, tuple(grants)))
    return UserDirectory(tuple(users), tuple(tokens), ssh_ca_keys)


def _tables(raw: object, key: str, problems: Problems) -> list[tuple[int, Mapping[str, object]]]:
    if not isinstance(raw, list):
        problems.add(key, f"must be an array of tables: write [[{key}]] (two brackets)")
        return []
    found = []
    for index, item in enumerate(raw):
        table = as_table(item, f"{key}[{index}]", problems)
        if table is not None:
            found.append((index, table))
    return found


def _claim(name: str, at: str, names: dict[str, str], problems: Problems) -> None:
    first = names.setdefault(name, at)
    if first != at:
        problems.add(f"{at}.name", f"duplicate name {show(name)}, already used by {first}")
