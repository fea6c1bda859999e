"""SSH front end (asyncssh): ``ssh vm1@host`` attaches to console vm1, ``ssh vm1@host nmi`` runs a command.

Theory of operation
-------------------
The SSH *user name* names the console and the mode (``frontends.ssh_user``: ``vm1``, ``vm1.ro``,
``vm1.force``, ``vm1.replay-lines=200``); the *key* says who connects.  So authentication has two halves:

* asyncssh proves possession: the client's signature, and for an OpenSSH user certificate that it is signed
  by a CA from the users file's ``ssh_ca_keys`` (an ``authorized_keys`` ``cert-authority`` entry that
  accepts any principal) and valid now;
* ``_ConnectionAuth.check`` (wrapped around asyncssh's own ``validate_public_key`` of the connection, so it
  runs for keys and certificates alike and after asyncssh's verdict) maps the key, or the certificate's
  principals, to a serialmuxd user (``Authenticator.ssh_user``) and asks the daemon for the console
  (``ConsoleControl.console``: None for a console that does not exist *and* for one this user may not view).
  Any "no" there is the same "no" a bad key gets, on the same path with the same work, so names cannot be
  probed.  Why a key was refused (unknown key, untrusted CA, expired certificate, no such console, no
  grant) goes to the audit trail (``login_failed``), never to the client.

Each connection holds one slot of the daemon's ``ConnectionGate`` until it authenticated (the same caps as
telnet's login prompt), has ``[auth] login_grace_s`` to do so (asyncssh's default is 120 s), and waits the
``LoginThrottle``'s delay for its address before its first key is looked at and for its user before its
signature counts.  Only public-key authentication is offered; algorithms are a modern set (``ALGORITHMS``).

A session channel is an ``SshConsoleSession``: the hub's ``SessionSink``, built like the telnet connection.
Guest bytes go straight to ``channel.write`` (asyncssh buffers; its flow control calls ``pause_writing``
above ``client_buffer_bytes``, which pauses the hub's session exactly like a telnet transport), never
awaited on the fan-out path; notices bypass the pause under an ``OutputBudget``.  The stream is 8-bit clean
(no encoding, asyncssh's line editor off); ``pty-req`` sizes and ``window-change`` go to the device like
telnet NAWS; the ``break`` request (OpenSSH ``~B``) is a serial BREAK; the console's escape key works as on
telnet.  An exec request runs one command (``COMMANDS``) through the hub's session-less API, which decides
and audits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncssh
import structlog

from ..adapters import Action, AdapterError
from ..auth.setup import FrontDoor
from ..config import ListenAddress
from ..control import Console, ConsoleControl
from ..core.access import AttachMode, Identity
from ..core.policy import NoticePolicy
from ..errors import StartupError
from ..hub import EndReason, Notice, NoticeKind, Refused, Session
from ..obs.audit import AuditFn
from ..proto import escape as esc
from .output import OutputBudget
from .ssh_user import ConsoleRequest, MalformedUserName, SshMode, parse_user_name
from .telnet import escape_controls, peer_text

if TYPE_CHECKING:
    from ..auth.authenticator import Authenticator
    from ..auth.ssh_keys import SshPublicKey

log = structlog.get_logger("serialmuxd.ssh")

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
COMMANDS = ("nmi", "reset", "restart", "start", "state", "log", "who")
ACTION_FOLLOW_S = 2.0  # an action's command prints what the guest says this long afterwards (--follow S)
MAX_FOLLOW_S = 600.0
_FOLLOW_POLL_S = 0.1
_REPLAY_WINDOW_BYTES = 1024 * 1024  # replay-lines=N looks for its lines in at most this much scrollback
_NOTICE_PREFIX = b"\r\n[serialmuxd] "
_CA_PRINCIPALS = 'cert-authority,principals="*"'  # any principal: _ConnectionAuth maps it to a user
_TIMEOUT_TEXT = "Login timeout expired"  # asyncssh's ConnectionLost reason when login_timeout passes


@dataclass(frozen=True, slots=True)
class _Accepted:
    identity: Identity  # authenticated, not yet audited (auth_completed does it)
    console: Console
    request: ConsoleRequest


class _ConnectionAuth(asyncssh.SSHServer):
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
        self._candidate: _Accepted | None = None
        self.accepted: _Accepted | None = None
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
        self.accepted = _Accepted(identity, candidate.console, candidate.request)

    def session_requested(self) -> SshConsoleSession | bool:
        if self.accepted is None:
            return False
        return SshConsoleSession(self._front, self.accepted)

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
            method, user = "certificate", self._auth.ssh_user(None, cert.principals)
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
        # The console is looked up for every key that got this far, known console or not: same path.
        identity = Identity("ssh", self._peer.address, user=user, method=method)
        request = self._request
        console = self._front.control.console(request.console, identity) if request and user else None
        if not reason:
            if request is None:
                reason = f"malformed user name: {self._malformed}"
            elif console is None:
                reason = f"no console {request.console!r} that {user} may view"
        if reason:
            self._refused(user, method, reason)
            return False
        assert console is not None and request is not None
        if msg:
            self._candidate = _Accepted(identity, console, request)
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

    if cert.signing_key.public_data not in ca_blobs:
        return f"certificate from an untrusted CA {cert.signing_key.get_fingerprint()}"
    try:
        cert.validate(CERT_TYPE_USER, None)
    except ValueError as exc:
        return f"certificate refused: {str(exc).lower()}"
    return "certificate refused (source-address or signature)"


def _fingerprint(key_data: bytes) -> str:
    from asyncssh.public_key import KeyImportError, decode_ssh_public_key

    try:
        return str(decode_ssh_public_key(key_data).get_fingerprint())
    except (KeyImportError, ValueError):
        return "(undecodable)"


class SshConsoleSession(asyncssh.SSHServerSession[bytes]):
    """One session channel: an attached console (shell request) or one command (exec request)."""

    def __init__(self, front: SshFrontend, accepted: _Accepted) -> None:
        self._front = front
        self.identity = accepted.identity
        self.console = accepted.console
        self.request = accepted.request
        config = self.console.config
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._size: tuple[int, int] | None = None
        self._command: str | None = None
        self.session: Session | None = None
        self._closing = False
        self._inband = config.notices is NoticePolicy.INBAND
        self.escape = esc.EscapeParser(esc.parse_escape_key(config.escape))
        self._asked = False
        self._confirming: Action | None = None
        self._budget = OutputBudget(config.client_buffer_bytes)
        self._writable = asyncio.Event()
        self._writable.set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- asyncssh.SSHServerSession ------------------------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan
        limit = self.console.config.client_buffer_bytes
        chan.set_write_buffer_limits(high=limit, low=limit // 4)

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        width, height = term_size[0], term_size[1]
        if width > 0 and height > 0:
            self._size = (width, height)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def session_started(self) -> None:
        if self._command is not None:
            self._spawn(self._run_command(self._command))
            return
        self._attach()

    def data_received(self, data: bytes, datatype: Any) -> None:
        if not self._closing and self.session is not None:
            self._keyboard(data)

    def eof_received(self) -> bool:
        if self._command is not None:
            return True  # a command reads nothing: its output still goes out (ssh host cmd </dev/null)
        if self.session is not None:
            self.session.detach()
        self._close(0)
        return False

    def break_received(self, msec: int) -> bool:
        if self.session is None:
            return False
        self.session.send_break()  # the hub decides (writer, BREAK verb) and says so in a notice
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if width > 0 and height > 0:
            self._size = (width, height)
            if self.session is not None:
                self.session.window_size_changed(width, height)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._writable.set()
        if self.session is not None:
            self.session.detach()

    def pause_writing(self) -> None:
        self._budget.pause()
        self._writable.clear()
        if self.session is not None:
            self.session.pause_output()

    def resume_writing(self) -> None:
        self._budget.resume()
        self._writable.set()
        if self.session is not None and not self._closing:
            self.session.resume_output()

    # -- attaching ----------------------------------------------------------------------------------
    def _attach(self) -> None:
        request = self.request
        mode = AttachMode.READ_ONLY if request.mode is SshMode.READ_ONLY else AttachMode.INTERACTIVE
        self.console.attach(
            _Sink(self),
            self.identity,
            mode,
            from_offset=self._replay_from(request),
            force=request.mode is SshMode.FORCE,  # the hub checks the takeover verb
        )
        if self.session is not None and self._size is not None:
            self.session.window_size_changed(*self._size)

    def _replay_from(self, request: ConsoleRequest) -> int | None:
        """``replay-lines=N``: the offset where the last N lines of the scrollback start."""
        if request.replay_lines is None:
            return None
        start, end = self.console.scrollback_bounds()
        if request.replay_lines == 0:
            return end
        begin = max(start, end - _REPLAY_WINDOW_BYTES)
        data = self.console.scrollback(self.identity, begin, end - begin)
        pos = len(data.data) - 1 if data.data.endswith(b"\n") else len(data.data)
        cut = 0
        for _ in range(request.replay_lines):
            found = data.data.rfind(b"\n", 0, pos)
            if found < 0:
                cut = 0
                break
            cut, pos = found + 1, found
        return data.offset + cut

    # -- what the hub's session calls (through _Sink) ------------------------------------------------------
    def hub_session_started(self, session: Session) -> None:
        self.session = session

    def send_output(self, data: bytes) -> None:
        if self._chan is not None and not self._closing:
            self._chan.write(data)

    def send_notice(self, notice: Notice) -> None:
        self._write_line(notice.text)
        if notice.kind is NoticeKind.ASKED:
            self._asked = True
            self._write_line("press y to hand over now, n to keep writing")

    def close_session(self, reason: str, kind: EndReason = EndReason.PROTOCOL) -> None:
        if self._closing:
            return
        self._write_line(f"disconnected: {reason}")
        self._close(0 if kind is EndReason.DETACHED else 1)

    def pause_input(self) -> None:
        if self._chan is not None and not self._closing:
            self._chan.pause_reading()

    def resume_input(self) -> None:
        if self._chan is not None and not self._closing:
            self._chan.resume_reading()

    # -- typing (as on telnet: the escape key, confirmations, takeover answers) ---------------------------
    def _keyboard(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        for event in self.escape.feed(data):
            if self._closing:
                return
            if isinstance(event, esc.PassThrough):
                payload = event.data
                if self._confirming is not None:
                    self._answer_confirmation(session, payload[:1])
                    payload = payload[1:]
                if payload and self._asked:
                    payload = self._answer_takeover(session, payload)
                if payload:
                    session.input(payload)
            elif isinstance(event, esc.EscapeCommand):
                self._confirming = None
                self._escape_command(session, event.command)
            else:
                self._write_help()

    def _answer_takeover(self, session: Session, payload: bytes) -> bytes:
        if not session.being_asked():
            self._asked = False
            return payload
        answer = payload[:1].lower()
        if answer not in (b"y", b"n"):
            return payload
        self._asked = False
        session.answer_takeover(answer == b"y")
        return payload[1:]

    def _answer_confirmation(self, session: Session, key: bytes) -> None:
        assert self._confirming is not None
        action, self._confirming = self._confirming, None
        if key in (b"y", b"Y"):
            self._spawn(session.run_action(action))
        else:
            self._write_line(f"{action} cancelled")

    def _escape_command(self, session: Session, command: esc.Command) -> None:
        if command is esc.Command.DETACH:
            self._write_line("detached")
            session.detach()
            self._close(0)
        elif command is esc.Command.TAKE_OVER:
            session.take_over()
        elif command is esc.Command.READ_ONLY:
            session.become_viewer()
        elif command is esc.Command.REPLAY:
            session.replay()
        elif command is esc.Command.BREAK:
            session.send_break()
        elif command is esc.Command.WHO:
            session.who()
        elif command in _ESCAPE_ACTIONS:
            action = _ESCAPE_ACTIONS[command]
            refusal = session.check_action(action)
            if refusal is not None:
                self._write_line(refusal)
                return
            self._confirming = action
            self._write_line(f"{action} {self.console.name}? press y to confirm, any other key cancels")
        else:
            self._write_help()

    def _write_help(self) -> None:
        prefix = esc.parse_escape_key(self.console.config.escape)
        if prefix is not None:
            for line in esc.help_text(prefix):
                self._write_line(line)

    def _write_line(self, text: str) -> None:
        if not self._inband or self._chan is None or self._closing:
            return
        data = _NOTICE_PREFIX + escape_controls(text).encode("utf-8", "replace") + b"\r\n"
        self._chan.write(data)
        if self._budget.written(len(data)):  # notices bypass the pause: a client reading nothing is cut
            log.info("client_not_reading", port=self.console.name, session=self.session and self.session.id)
            self._closing = True
            if self.session is not None:
                self.session.detach()
            self._chan.abort()

    def _close(self, status: int) -> None:
        if self._closing or self._chan is None:
            return
        self._closing = True
        with contextlib.suppress(OSError):
            self._chan.exit(status)  # flushes what is buffered, then closes

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- exec requests ----------------------------------------------------------------------------------
    async def _run_command(self, command: str) -> None:
        words = command.split()
        name = words[0] if words else ""
        try:
            follow = _follow_seconds(words[1:])
        except ValueError as exc:
            self._fail(2, str(exc))
            return
        if name not in COMMANDS:
            self._fail(2, f"unknown command {name[:40]!r}; commands: {' '.join(COMMANDS)}")
            return
        if name in ("state", "who", "log") and len(words) > 1:
            self._fail(2, f"{name} takes no arguments")
            return
        try:
            if name == "log":
                await self._print_log()
            elif name == "state":
                await self._print_state()
            elif name == "who":
                self._print_who()
            else:
                await self._run_action(Action(name), follow)
        except Refused as exc:
            self._fail(1, str(exc))
            return
        except AdapterError as exc:
            # The detail names sockets and hosts: it goes to the operator's log, the client gets the kind.
            log.warning("ssh_action_failed", port=self.console.name, action=name, error=str(exc))
            self._fail(1, f"{name} failed: {exc.kind} (details in the serialmuxd log)")
            return
        self._close(0)

    async def _run_action(self, action: Action, follow: float) -> None:
        start = self.console.stream_end
        await self.console.api_action(self.identity, action)  # decides, audits, raises Refused
        self._print(f"{self.console.name}: {action} done\n".encode())
        deadline = time.monotonic() + follow
        cursor = start
        while not self._closing and time.monotonic() < deadline:
            await asyncio.sleep(_FOLLOW_POLL_S)
            cursor = await self._print_scrollback(cursor)

    async def _print_scrollback(self, cursor: int) -> int:
        """Print what the guest wrote since ``cursor``; returns the new cursor."""
        start, end = self.console.scrollback_bounds()
        cursor = max(cursor, start)
        while cursor < end and not self._closing:
            part = self.console.scrollback(self.identity, cursor, min(64 * 1024, end - cursor))
            if not part.data:
                break
            await self._writable.wait()
            self._print(part.data)
            cursor = part.offset + len(part.data)
        return cursor

    async def _print_log(self) -> None:
        start, end = self.console.scrollback_bounds()
        self.console.scrollback(self.identity, start, 0)  # decides VIEW (raises Refused) before any output
        await self._print_scrollback(start)
        self._front.audit(
            "scrollback_download",
            port=self.console.name,
            **self.identity.audit_fields(),
            bytes=end - start,
            format="raw",
        )

    async def _print_state(self) -> None:
        status = self.console.status()
        lines = [
            f"console {status.name}: {status.state}"
            + (f" ({status.state_reason})" if status.state_reason else "")
        ]
        if status.hypervisor is not None:
            report = await self.console.api_vm_state(self.identity)
            lines.append(f"machine: {report.state}" + (f" ({report.reason})" if report.reason else ""))
        self._print(("\n".join(escape_controls(line) for line in lines) + "\n").encode())

    def _print_who(self) -> None:
        status = self.console.status()
        writer = "nobody"
        if status.writer is not None:
            since = time.strftime("%H:%M:%S", time.localtime(status.writer.since))
            writer = f"{status.writer.who} since {since}"
        text = f"{status.name}: writer: {writer}; viewers: {status.viewers}; sessions: {status.sessions}"
        self._print((escape_controls(text) + "\n").encode())

    def _print(self, data: bytes) -> None:
        if self._chan is not None and not self._closing:
            self._chan.write(data)

    def _fail(self, status: int, message: str) -> None:
        if self._chan is not None and not self._closing:
            self._chan.write_stderr(f"serialmuxd: {escape_controls(message)}\n".encode())
        self._close(status)


class _Sink:
    """The hub's ``SessionSink`` for one SSH session (asyncssh's ``session_started`` has another meaning)."""

    __slots__ = ("_ssh",)

    def __init__(self, ssh: SshConsoleSession) -> None:
        self._ssh = ssh

    def session_started(self, session: Session) -> None:
        self._ssh.hub_session_started(session)

    def send_output(self, data: bytes) -> None:
        self._ssh.send_output(data)

    def send_notice(self, notice: Notice) -> None:
        self._ssh.send_notice(notice)

    def close_session(self, reason: str, kind: EndReason) -> None:
        self._ssh.close_session(reason, kind)

    def pause_input(self) -> None:
        self._ssh.pause_input()

    def resume_input(self) -> None:
        self._ssh.resume_input()


_ESCAPE_ACTIONS = {
    esc.Command.NMI: Action.NMI,
    esc.Command.RESET: Action.RESET,
    esc.Command.RESTART: Action.RESTART,
}


def _follow_seconds(args: list[str]) -> float:
    """``--follow SECONDS`` (an action's command only): how long to print the guest's output after it."""
    if not args:
        return ACTION_FOLLOW_S
    if len(args) != 2 or args[0] != "--follow":
        raise ValueError("the one option is --follow SECONDS")
    try:
        value = float(args[1])
    except ValueError:
        raise ValueError(f"--follow wants seconds, got {args[1][:20]!r}") from None
    if not 0 <= value <= MAX_FOLLOW_S:
        raise ValueError(f"--follow must be from 0 to {MAX_FOLLOW_S:g} seconds")
    return value


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
        try:
            self._acceptor = await asyncssh.create_server(
                lambda: _ConnectionAuth(self),
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
        connections = list(self.connections)
        for conn in connections:
            conn.close()
        for conn in connections:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)


def _b64(blob: bytes) -> str:
    import base64

    return base64.b64encode(blob).decode("ascii")


__all__ = ["ALGORITHMS", "COMMANDS", "SshConsoleSession", "SshFrontend"]
