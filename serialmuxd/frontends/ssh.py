"""SSH front end (asyncssh): ``ssh vm1@host`` attaches to console vm1, ``ssh vm1@host nmi`` runs a command.

Theory of operation
-------------------
The SSH *user name* names the console and the mode (``frontends.ssh_user``: ``vm1``, ``vm1.ro``,
``vm1.force``, ``vm1.replay-lines=200``); the *key* says who connects.  So authentication has two halves:

* asyncssh proves possession: the client's signature, and for an OpenSSH user certificate that it is signed
  by a CA from the users file's ``ssh_ca_keys`` (an ``authorized_keys`` ``cert-authority`` entry that
  accepts any principal) and valid now;
* ``SshConnection._check`` (``ssh_auth``; wrapped around asyncssh's own ``validate_public_key`` of the
  connection, so it runs for keys and certificates alike and after asyncssh's verdict) maps the key, or
  the certificate's principals, to a serialmuxd user (``Authenticator.ssh_user``) and asks the daemon for
  the console (``ConsoleControl.console``: None for a console that does not exist *and* for one this user
  may not view).  Any "no" there is the same "no" a bad key gets, on the same path with the same work, so
  names cannot be probed.  Why a key was refused (unknown key, untrusted CA, expired certificate, no such
  console, no grant) goes to the audit trail (``login_failed``), never to the client.

Each connection holds one slot of the daemon's ``ConnectionGate`` until it authenticated (the same caps as
telnet's login prompt), has ``[auth] login_grace_s`` to do so (asyncssh's default is 120 s), and waits the
``LoginThrottle``'s delay for its address before its first key is looked at and for its user before its
signature counts.  Only public-key authentication is offered; algorithms are a modern set (``ALGORITHMS``).

A session channel is an ``SshConsoleSession`` (``ssh_session``): the hub's ``SessionSink``, built like the
telnet connection, 8-bit clean (no encoding, asyncssh's line editor off).  An exec request runs one command
(``ssh_exec``) through the hub's session-less API, which decides and audits it.  This module is the
listener: host keys, the algorithms, the CA entries, and closing connections at shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import weakref
from typing import TYPE_CHECKING

import asyncssh

from ..auth.setup import FrontDoor
from ..config import ListenAddress
from ..control import ConsoleControl
from ..errors import StartupError
from ..obs.audit import AuditFn
from .ssh_auth import SshConnection
from .ssh_exec import COMMANDS
from .ssh_session import SshConsoleSession

if TYPE_CHECKING:
    from ..auth.ssh_keys import SshPublicKey

# A modern set: no SHA-1, no CBC, no ssh-rsa (SHA-1) signatures, no DSA.  OpenSSH 8.5+ speaks all of it.
ALGORITHMS: dict[str, list[str]] = {
    "kex_algs": [
        "mlkem768x25519-sha256",
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "ecdh-sha2-nistp256",
        "ecdh-sha2-nistp384",
        "ecdh-sha2-nistp521",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group18-sha512",
    ],
    "encryption_algs": [
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-ctr",
        "aes128-ctr",
    ],
    "mac_algs": [
        "hmac-sha2-256-etm@openssh.com",
        "hmac-sha2-512-etm@openssh.com",
        "umac-128-etm@openssh.com",
    ],
    "signature_algs": [
        "ssh-ed25519",
        "sk-ssh-ed25519@openssh.com",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "rsa-sha2-512",
        "rsa-sha2-256",
    ],
    "compression_algs": ["none"],
}
_CA_PRINCIPALS = 'cert-authority,principals="*"'  # any principal: SshConnection maps it to a user
CHANNEL_CLOSE_TIMEOUT_S = 2.0  # at stop: how long clients get to read their channel's last bytes


class SshFrontend:
    """The SSH listener of the daemon: host keys, the CA entries, and the asyncssh acceptor."""

    def __init__(
        self,
        control: ConsoleControl,
        door: FrontDoor,
        audit: AuditFn,
        host_keys: list[asyncssh.SSHKey],
    ) -> None:
        self.control = control
        self.door = door
        self.audit = audit
        self.host_keys = host_keys
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self.connections: set[asyncssh.SSHServerConnection] = set()  # closed at stop (the acceptor does not)
        self.sessions: weakref.WeakSet[SshConsoleSession] = weakref.WeakSet()  # waited for at stop
        # Built again only when the authenticator's CA list changes (a reload of the users file).
        self._ca_source: tuple[SshPublicKey, ...] | None = None
        self._ca_entries: asyncssh.SSHAuthorizedKeys | None = None
        self._ca_blobs: frozenset[bytes] = frozenset()

    def ca_entries(self) -> asyncssh.SSHAuthorizedKeys | None:
        """The ``cert-authority`` entries for ``ssh_ca_keys`` (any principal: the front end maps it)."""
        self._refresh_cas()
        return self._ca_entries

    def ca_blobs(self) -> frozenset[bytes]:
        self._refresh_cas()
        return self._ca_blobs

    def _refresh_cas(self) -> None:
        ca_keys = self.door.authenticator.ssh_ca_keys
        if ca_keys is self._ca_source:
            return
        self._ca_source = ca_keys
        self._ca_blobs = frozenset(key.blob for key in ca_keys)
        lines = "".join(f"{_CA_PRINCIPALS} {key.algorithm} {_b64(key.blob)}\n" for key in ca_keys)
        self._ca_entries = asyncssh.import_authorized_keys(lines) if lines else None

    async def start(self, address: ListenAddress) -> tuple[str, int]:
        # asyncssh logs every connection, channel and auth step at INFO; serialmuxd's own log and the audit
        # trail already say what matters (listening, logins, sessions), so only its warnings come through.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        try:
            self._acceptor = await asyncssh.create_server(
                lambda: SshConnection(self),
                address.host,
                address.port,
                server_host_keys=self.host_keys,
                login_timeout=self.door.login_grace_s,
                encoding=None,
                line_editor=False,
                allow_pty=True,
                x11_forwarding=False,
                agent_forwarding=False,
                password_auth=False,
                kbdint_auth=False,
                gss_host=None,
                host_based_auth=False,
                public_key_auth=True,
                keepalive_interval=30,
                keepalive_count_max=4,
                reuse_address=True,
                **ALGORITHMS,
            )
        except OSError as exc:
            raise StartupError(f"cannot listen on {address} (ssh.listen): {exc.strerror or exc}") from exc
        sockname = self._acceptor.sockets[0].getsockname()
        return sockname[0], sockname[1]

    async def stop_listening(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._acceptor.wait_closed(), 5)
            self._acceptor = None

    async def stop(self) -> None:
        """Stop listening and close every connection (the hubs have told their sessions why)."""
        await self.stop_listening()
        # The hubs' goodbyes are written and each channel is closing (exit status, EOF, CLOSE): let the
        # clients read them before the connections go, or a disconnect can overtake the last line.
        closing = [asyncio.ensure_future(session.wait_closed()) for session in list(self.sessions)]
        if closing:
            _done, late = await asyncio.wait(closing, timeout=CHANNEL_CLOSE_TIMEOUT_S)
            for task in late:
                task.cancel()
        connections = list(self.connections)
        for conn in connections:
            conn.close()
        for conn in connections:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


__all__ = ["ALGORITHMS", "COMMANDS", "SshConsoleSession", "SshFrontend"]
