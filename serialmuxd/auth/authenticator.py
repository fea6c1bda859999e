"""Credentials in, an authenticated ``Identity`` out: the one place every front end checks who a peer is.

Front ends collect what the peer presented (a user name and password from a telnet prompt or an HTTP Basic
header, a bearer token, a TLS client certificate) and ask the ``Authenticator``; what the identity may then
do is the access policy's business (``core.access``, ``core.grants``), not this module's.

* **Passwords** are argon2id hashes from the users file, verified off the event loop; an unknown user name
  is verified against a dummy hash, so it costs the same time (no user enumeration by timing), and every
  failure gets the same answer.
* **Tokens** (``smx_…``) are compared by SHA-256 in constant time; a token is a user of its own.
* **Certificates**: the names a verified client certificate carries (CN, then SANs) are looked up in the
  users' ``cert_names`` (default: the user's own name).
* **Bearer JWTs** from the OpenID provider (``[auth.oidc]``) give a user name and groups.
* **SSH keys and user certificates** (``frontends.ssh``): asyncssh proves the client holds the key (and
  that a certificate is signed by a trusted CA and valid now); the key's owner, or the user a principal
  names, comes from the users file here (``ssh_user``), and the outcome is audited like any other login.
* **Throttling**: failed attempts per source address and per user name make the next attempt wait longer
  (``core.throttle``); front ends hold their answer for ``delay_s`` before asking again.

Every outcome is audited (``login_ok`` / ``login_failed`` with the method, user and source), never with the
secret that was presented.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from ..core.access import Identity
from ..core.throttle import LoginThrottle
from ..obs.audit import AuditFn
from .passwords import verify_password, verify_unknown_user
from .tokens import TokenTable
from .users import UserDirectory

TOKEN_PREFIX = "smx_"


def certificate_names(transport: object) -> tuple[str, ...]:
    """The names of the verified client certificate on ``transport`` (asyncio's or aiohttp's), or ``()``.
    One helper for every front end; ``serialmuxd.tls`` (and with it ``cryptography``) is loaded only for a
    TLS connection."""
    get_extra_info = getattr(transport, "get_extra_info", None)
    ssl_object = get_extra_info("ssl_object") if get_extra_info is not None else None
    if ssl_object is None:
        return ()
    from ..tls import client_identities

    return client_identities(ssl_object)


def throttle_source(peer: Identity) -> str:
    """The key failed logins are counted under: the address, or for IPv6 its /64 (one host owns a whole
    /64, so counting single addresses would give it 2**64 fresh starts)."""
    host = peer.host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


class JwtCheck(Protocol):
    """What the authenticator needs of ``auth.oidc.JwtVerifier``."""

    async def verify(self, token: str) -> Any: ...


class Authenticator:
    def __init__(
        self,
        directory: UserDirectory,
        *,
        oidc: JwtCheck | None = None,
        audit: AuditFn,
        throttle: LoginThrottle | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory  # as loaded: a reload compares the new one with it
        self._hashes: Mapping[str, str] = directory.password_hashes()
        self._tokens = TokenTable(directory.token_digests())
        self._cert_names = directory.certificate_names()
        self._ssh_keys = directory.ssh_keys()
        self._ssh_principals = directory.ssh_principals()
        self.ssh_ca_keys = directory.ssh_ca_keys
        self._oidc = oidc
        self._audit = audit
        self.throttle = throttle if throttle is not None else LoginThrottle()
        self._clock = clock
        # (method, "ok" | "failed") -> how many; read by the metrics collector at scrape time.
        self.login_counts: dict[tuple[str, str], int] = {}

    def use_directory(self, directory: UserDirectory) -> None:
        """The users file as a reload read it again: new users and tokens sign in, removed ones cannot."""
        self.directory = directory
        self._hashes = directory.password_hashes()
        self._tokens = TokenTable(directory.token_digests())
        self._cert_names = directory.certificate_names()
        self._ssh_keys = directory.ssh_keys()
        self._ssh_principals = directory.ssh_principals()
        self.ssh_ca_keys = directory.ssh_ca_keys

    def use_oidc(self, verifier: JwtCheck) -> None:
        """Accept bearer JWTs checked by ``verifier`` (built by the daemon once its loop runs)."""
        self._oidc = verifier

    # -- how long a front end must hold the next attempt --------------------------------------------
    def delay_s(self, peer: Identity, user: str) -> float:
        return float(self.throttle.delay_s(throttle_source(peer), user, self._clock()))

    def source_delay_s(self, peer: Identity) -> float:
        """The delay for the address alone, before the user is known (SSH: the key names the user)."""
        return float(self.throttle.delay_s(throttle_source(peer), "\x00no user", self._clock()))

    # -- credentials ---------------------------------------------------------------------------------
    async def password(self, peer: Identity, user: str, password: str) -> Identity | None:
        """A user name and password (telnet prompt, HTTP Basic).  A token typed as the password of its own
        name (or of ``token``) signs in as the token, for scripts."""
        if password.startswith(TOKEN_PREFIX):
            name = self._tokens.match(password)
            if name is not None and user in (name, "token"):
                return self._ok(peer, name, "token")
        stored = self._hashes.get(user)
        if stored is None:
            await verify_unknown_user(password)
            self._failed(peer, user, "password")
            return None
        if await verify_password(stored, password):
            return self._ok(peer, user, "password")
        self._failed(peer, user, "password")
        return None

    def token(self, peer: Identity, token: str) -> Identity | None:
        name = self._tokens.match(token)
        if name is None:
            self._failed(peer, "", "token")
            return None
        return self._ok(peer, name, "token")

    async def bearer(self, peer: Identity, value: str) -> Identity | None:
        """``Authorization: Bearer VALUE``: one of our tokens, or a JWT from the OpenID provider."""
        if value.startswith(TOKEN_PREFIX) or self._oidc is None:
            return self.token(peer, value)
        try:
            verified = await self._oidc.verify(value)
        except Exception as exc:  # InvalidToken: its reason is short and fixed, never the token
            self._failed(peer, "", "oidc", reason=str(exc)[:80])
            return None
        return self._ok(peer, str(verified.user), "oidc", groups=frozenset(verified.groups))

    def certificate(self, peer: Identity, names: tuple[str, ...]) -> Identity | None:
        """The names of a client certificate the TLS layer verified (CN, then SANs); None if none maps to
        a user (the peer may still sign in another way, so this is not a failure)."""
        for name in names:
            user = self._cert_names.get(name)
            if user is not None:
                return self._ok(peer, user, "certificate")
        if names:
            self._count("certificate", "failed")
            self._audit(
                "login_failed", method="certificate", **peer.audit_fields(), reason="no user for certificate"
            )
        return None

    def ssh_user(self, key_blob: bytes | None, principals: Sequence[str] = ()) -> str | None:
        """The user an SSH key (wire format) belongs to, or for a certificate (``key_blob`` None) the user
        its first principal that names one means.  Public keys are not secrets: a dict lookup will do."""
        if key_blob is not None:
            return self._ssh_keys.get(key_blob)
        for principal in principals:
            user = self._ssh_principals.get(principal)
            if user is not None:
                return user
        return None

    def ssh_login(self, peer: Identity, user: str | None, method: str, reason: str = "") -> Identity | None:
        """The outcome of one SSH connection's authentication (``method``: publickey or certificate):
        ``user`` and no ``reason`` is a login; anything else a failure, throttled and audited with it."""
        if user is not None and not reason:
            return self._ok(peer, user, method)
        self._failed(peer, user or "", method, reason or "bad credentials")
        return None

    def refused(self, peer: Identity, method: str, reason: str) -> None:
        """A connection turned away before any credential was checked (too many at a login prompt, login
        timeout): audited as a failed login, not counted by the throttle (no guess was made)."""
        self._count(method, "failed")
        self._audit("login_failed", method=method, **peer.audit_fields(), result="failed", reason=reason)

    # -- outcomes ------------------------------------------------------------------------------------
    def _ok(self, peer: Identity, user: str, method: str, groups: frozenset[str] = frozenset()) -> Identity:
        self.throttle.succeeded(throttle_source(peer), user, self._clock())
        self._count(method, "ok")
        self._audit("login_ok", method=method, **{**peer.audit_fields(), "user": user}, result="ok")
        return replace(peer, user=user, groups=groups, method=method)

    def _failed(self, peer: Identity, user: str, method: str, reason: str = "bad credentials") -> None:
        self.throttle.failed(throttle_source(peer), user, self._clock())
        self._count(method, "failed")
        fields = {**peer.audit_fields(), "user": user or None}
        self._audit("login_failed", method=method, **fields, result="failed", reason=reason)

    def _count(self, method: str, result: str) -> None:
        key = (method, result)
        self.login_counts[key] = self.login_counts.get(key, 0) + 1
