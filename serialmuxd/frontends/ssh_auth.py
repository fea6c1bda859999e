"""One SSH connection's authentication: who the key or certificate is, and which console it may reach.

See ``frontends.ssh`` for the whole picture.  asyncssh proves possession (the signature; for a certificate
the CA entry, type and validity window); ``SshConnection._check`` runs after asyncssh's verdict, for keys and
certificates alike, maps the key or a principal to a user and asks the daemon for the console, and refuses
everything that is not a known key (or trusted certificate) of a user who may view an existing console,
the same way on the same path.  Each refusal's reason is kept for the audit line the connection's end
writes; success is audited when asyncssh completes the authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncssh

from ..core.access import Identity
from .ssh_session import Accepted, SshConsoleSession
from .ssh_user import ConsoleRequest, MalformedUserName, parse_user_name
from .telnet import escape_controls, peer_text

if TYPE_CHECKING:
    from ..auth.authenticator import Authenticator
    from .ssh import SshFrontend

_TIMEOUT_TEXT = "Login timeout expired"  # asyncssh's ConnectionLost reason when login_timeout passes


class SshConnection(asyncssh.SSHServer):
    """One connection's authentication (asyncssh makes one server object per connection)."""

    def __init__(self, front: SshFrontend) -> None:
        self._front = front
        self._auth: Authenticator = front.door.authenticator
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = Identity("ssh", "?")
        self._in_gate = False
        self._in_door = False  # got a gate slot (a connection turned away at the gate is audited there)
        self._request: ConsoleRequest | None = None
        self._malformed = ""
        self._began = False
        self._candidate: Accepted | None = None
        self.accepted: Accepted | None = None
        self._failure: tuple[str | None, str, str] | None = None  # (user, method, reason) of the best refusal

    # -- connection ---------------------------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._front.connections.add(conn)
        self._peer = Identity("ssh", peer_text(conn.get_extra_info("peername")))
        if not self._front.door.gate.try_enter(self._peer.host):
            self._auth.refused(
                self._peer, "publickey", "too many connections are waiting to log in; try again in a minute"
            )
            conn.abort()
            return
        self._in_gate = self._in_door = True
        # asyncssh's own check runs first (signature, CA, validity); ours decides who and which console.
        # Assigned on the instance: SSHServer has no hook that sees certificates after asyncssh's verdict.
        original: Callable[[str, bytes, bytes, bytes], Awaitable[bool]] = conn.validate_public_key
        setattr(conn, "validate_public_key", self._wrap(original))  # noqa: B010

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_gate()
        if self._conn is not None:
            self._front.connections.discard(self._conn)
        if self.accepted is not None or not self._in_door:
            return
        timed_out = exc is not None and _TIMEOUT_TEXT in str(exc)
        if self._failure is not None:
            user, method, reason = self._failure
            self._auth.ssh_login(self._peer, user, method, reason)
        elif timed_out:  # also before any user name: an idle connection held a slot for the whole grace
            self._auth.refused(
                self._peer, "publickey", f"login timed out after {self._front.door.login_grace_s:g} s"
            )
        elif self._began:  # a client that only looked at the host key (ssh-keyscan) is not a login
            self._auth.refused(self._peer, "publickey", "disconnected before offering an acceptable key")

    def begin_auth(self, username: str) -> Awaitable[bool]:
        return self._begin(username)

    async def _begin(self, username: str) -> bool:
        self._began = True
        delay = self._auth.source_delay_s(self._peer)
        if delay > 0:
            await asyncio.sleep(delay)  # held, not refused; the login grace timer still runs
        try:
            self._request, self._malformed = parse_user_name(username), ""
        except MalformedUserName as exc:
            # Grammar only: it tells nothing about which consoles exist.
            self._request, self._malformed = None, str(exc)
            if self._conn is not None:
                self._conn.send_auth_banner(f"serialmuxd: {escape_controls(self._malformed)}\r\n")
        entries = self._front.ca_entries()
        if self._conn is not None and entries is not None:
            self._conn.set_authorized_keys(entries)
        return True

    def auth_completed(self) -> None:
        self._leave_gate()
        candidate = self._candidate
        assert candidate is not None, "asyncssh completed an authentication we did not accept"
        identity = self._auth.ssh_login(self._peer, candidate.identity.user, candidate.identity.method)
        assert identity is not None
        identity = dataclasses.replace(identity, credential=candidate.identity.credential)  # the key used
        self.accepted = Accepted(identity, candidate.console, candidate.request)

    def session_requested(self) -> SshConsoleSession | bool:
        if self.accepted is None:
            return False
        session = SshConsoleSession(self.accepted, self._front.audit)
        self._front.sessions.add(session)
        return session

    # -- keys -----------------------------------------------------------------------------------------
    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Plain keys only (certificates take the cert-authority entries); _check decides the rest.
        return self._auth.ssh_user(key.public_data) is not None

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # a certificate no ssh_ca_keys entry signed

    def _wrap(
        self, original: Callable[[str, bytes, bytes, bytes], Awaitable[bool]]
    ) -> Callable[[str, bytes, bytes, bytes], Awaitable[bool]]:
        async def check(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
            return await self._check(original, username, key_data, msg, signature)

        return check

    async def _check(
        self,
        original: Callable[[str, bytes, bytes, bytes], Awaitable[bool]],
        username: str,
        key_data: bytes,
        msg: bytes,
        signature: bytes,
    ) -> bool:
        proven = await original(username, key_data, msg, signature)
        cert = _certificate(key_data)
        if cert is None:
            method, user = "publickey", self._auth.ssh_user(key_data)
        else:
            # Principals mean a user only in a certificate asyncssh accepted: anyone can write one.
            method = "certificate"
            user = self._auth.ssh_user(None, cert.principals) if proven else None
        reason = ""
        if not proven:
            reason = _why_not_proven(cert, key_data, user, self._front.ca_blobs(), bool(msg))
        elif user is None:
            reason = (
                f"no user has any of the certificate's principals {list(cert.principals) if cert else []}"
            )
        if user is not None and msg:
            delay = self._auth.delay_s(self._peer, user)
            if delay > 0:
                await asyncio.sleep(delay)
        # The console is looked up for every key, known or not, on a console that exists or not: one path.
        key_id = _fingerprint(key_data) if user is not None and method == "publickey" else ""
        identity = Identity("ssh", self._peer.address, user=user, method=method, credential=key_id)
        request = self._request
        console = self._front.control.console(request.console, identity) if request else None
        if not reason:
            if request is None:
                reason = f"malformed user name: {self._malformed}"
            elif console is None or user is None:
                reason = f"no console {request.console!r} that {user} may view"
        if reason:
            self._refused(user, method, reason)
            return False
        assert console is not None and request is not None
        if msg:
            self._candidate = Accepted(identity, console, request)
        return True

    def _refused(self, user: str | None, method: str, reason: str) -> None:
        # Keep the refusal that says most: one with a user beats an unknown key the agent also offered.
        if self._failure is None or user is not None or self._failure[0] is None:
            self._failure = (user, method, reason)

    def _leave_gate(self) -> None:
        if self._in_gate:
            self._in_gate = False
            with contextlib.suppress(KeyError):
                self._front.door.gate.leave(self._peer.host)


def _certificate(key_data: bytes) -> Any:
    """The OpenSSH certificate in ``key_data``, or None for a plain key."""
    from asyncssh.public_key import KeyImportError, decode_ssh_certificate

    try:
        cert = decode_ssh_certificate(key_data)
    except (KeyImportError, ValueError):
        return None
    return None if cert.is_x509_chain else cert


def _why_not_proven(
    cert: Any, key_data: bytes, user: str | None, ca_blobs: frozenset[bytes], signed: bool
) -> str:
    """Why asyncssh refused a key or certificate, for the audit trail."""
    if cert is None:
        if user is None:
            fingerprint = _fingerprint(key_data)
            return f"unknown key {fingerprint}"
        return "bad signature" if signed else "key refused"
    from asyncssh.public_key import CERT_TYPE_USER

    claims = f" (principals {list(cert.principals)[:8]})"
    if cert.signing_key.public_data not in ca_blobs:
        return f"certificate from an untrusted CA {cert.signing_key.get_fingerprint()}{claims}"
    try:
        cert.validate(CERT_TYPE_USER, None)
    except ValueError as exc:
        return f"certificate refused: {str(exc).lower()}{claims}"
    return f"certificate refused (source-address or signature){claims}"


def _fingerprint(key_data: bytes) -> str:
    from asyncssh.public_key import KeyImportError, decode_ssh_public_key

    try:
        return str(decode_ssh_public_key(key_data).get_fingerprint())
    except (KeyImportError, ValueError):
        return "(undecodable)"
