"""The users file (``[auth] users_file``): local users, API tokens and their grants.

::

    [[users]]
    name = "alice"                                   # the user name in audit lines and messages
    password_hash = "$argon2id$v=19$m=..."           # from `serialmuxd hash-password`; optional
    cert_names = ["alice@example.com"]               # TLS client certificate CN/SAN values that mean alice
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


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    sha256: str
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class UserDirectory:
    users: tuple[User, ...]
    tokens: tuple[TokenEntry, ...]

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
    grants = Key("grants", check_grants)


class _Token:
    name = Key("name", _user_name)
    sha256 = Key("sha256", _digest)
    grants = Key("grants", check_grants)


_USER_KEYS = (_User.name, _User.password_hash, _User.cert_names, _User.grants)
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
        if top not in ("users", "tokens"):
            problems.add(key_path("", top), "unknown key; the users file holds [[users]] and [[tokens]]")
    names: dict[str, str] = {}
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
        if name is None or not own.ok:
            continue
        users.append(User(name, own.get(_User.password_hash), own.get(_User.cert_names) or (), tuple(grants)))
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
    return UserDirectory(tuple(users), tuple(tokens))


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
