"""API tokens: random bearer secrets, stored only as SHA-256 digests and matched in constant time.

Theory of operation
-------------------
``serialmuxd new-token NAME`` calls ``new_token``: ``smx_`` followed by 32 random bytes (``secrets``) in
unpadded URL-safe base64, 47 characters in all.  The prefix lets secret scanners (and people) recognise a
leaked serialmuxd token; URL-safe base64 survives headers, shells and TOML without quoting.  The token is
printed once; the users file keeps only ``sha256 = token_digest(token)``.

Why a plain SHA-256 and not argon2 as for passwords: a token has 256 bits of entropy, so no dictionary or
brute force can invert its digest, and a token check must be cheap (scripts present one on every
request).  Slow hashing protects *guessable* secrets; a token is not one.

``TokenTable.match`` hashes the presented token and compares the digest with ``hmac.compare_digest``
against every stored digest, without stopping at a match: the time depends on the number of tokens, not
on which token (if any) matched or how many leading bytes agreed.  A dict keyed by the digest would be
faster and probably safe (nobody can aim at a digest without a preimage), but its timing does depend on
the stored digests; the scan is the conservative choice and cheap enough (measured on this host, median
of 20: 0.8 µs with 10 tokens, 37 µs with 1,000, the same for the first, the last and no match).

``user_name_problem`` is the rule for ``serialmuxd new-token NAME``: 1 to 64 ASCII letters, digits, ``.``,
``_`` and ``-``, starting with a letter or a digit, as for console names.  It keeps names printable in
audit lines and prompts, and a leading ``-`` out of command lines; every name it accepts is also a valid
``name`` in the users file (whose rule also allows e-mail-like names).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Final

TOKEN_PREFIX: Final = "smx_"
TOKEN_RANDOM_BYTES: Final = 32
USER_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DIGEST_RE: Final = re.compile(r"[0-9a-f]{64}")


def new_token() -> str:
    """A fresh token: ``smx_`` + 32 random bytes, unpadded URL-safe base64 (47 characters)."""
    raw = secrets.token_bytes(TOKEN_RANDOM_BYTES)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _token_bytes(token: str) -> bytes:
    # surrogatepass: whatever a client sent (a telnet line decoded with surrogateescape) hashes instead of
    # raising; such a token simply matches nothing.
    return token.encode("utf-8", "surrogatepass")


def token_digest(token: str) -> str:
    """The lowercase hex SHA-256 stored in the users file for ``token`` (of the whole string, prefix too)."""
    return hashlib.sha256(_token_bytes(token)).hexdigest()


def digest_problem(text: str) -> str | None:
    """None if ``text`` is a token digest as the users file stores it, else why not (for the validator).

    Never quotes ``text``: what was pasted into ``sha256`` may be the token itself.
    """
    if _DIGEST_RE.fullmatch(text):
        return None
    if text.startswith(TOKEN_PREFIX):
        return (
            "this is a token, not its SHA-256: store the sha256 that serialmuxd new-token printed "
            "(and make a new token, this one has been written down)"
        )
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return "must be lowercase hex (a SHA-256 as serialmuxd new-token prints it)"
    return (
        "must be 64 lowercase hex characters (a SHA-256 from serialmuxd new-token), "
        f"got {len(text)} characters"
    )


def user_name_problem(name: str) -> str | None:
    """None if ``name`` is a valid local user name, else why not."""
    if USER_NAME_RE.fullmatch(name):
        return None
    return (
        "a user name is 1 to 64 letters, digits, '.', '_' and '-' (ASCII), starting with a letter or a digit"
    )


class TokenTable:
    """The users file's tokens: ``{sha256 hex: user name}``, matched in time independent of the match."""

    __slots__ = ("_entries",)

    def __init__(self, digests: Mapping[str, str]) -> None:
        entries: list[tuple[bytes, str]] = []
        for digest, name in digests.items():
            problem = digest_problem(digest)
            if problem is not None:
                raise ValueError(f"token digest for {name!r}: {problem}")
            entries.append((bytes.fromhex(digest), name))
        self._entries: tuple[tuple[bytes, str], ...] = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, token: str) -> str | None:
        """The user name of ``token``, or None.  Compares with every stored digest, never stopping early."""
        presented = hashlib.sha256(_token_bytes(token)).digest()
        found: str | None = None
        for digest, name in self._entries:
            # Both operands are 32 bytes, so compare_digest's time is constant; the branch only assigns.
            if hmac.compare_digest(digest, presented):
                found = name
        return found
