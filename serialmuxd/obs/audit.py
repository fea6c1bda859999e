"""The audit trail: one JSON line per access or privileged action, in ``[audit] file`` and the daemon's log.

Theory of operation
-------------------
``AuditLog`` is a callable with the shape the hubs and the daemon already use for auditing,
``audit("attach", port=..., session=..., peer=...)``, so it is injected where a plain logging function was
(house rule 7: audit is injected, never global).  Each call

1. checks the event name against ``AuditEvent``, the closed set of events.  An unknown name is a
   programming error (``ValueError``): an event nobody classified must not slip into the trail under a
   misspelt or ad-hoc name, and a test scans the sources so that every name passed to ``audit(`` is a member;
2. checks the field names: one that could hold a secret (``password``, ``token``, ``ticket``, ``secret``,
   ``authorization``, ``cookie`` and a few spellings, anywhere in the name, in nested mappings too) is a
   ``ValueError``.  This is defence in depth behind the callers' own care: audit says *that* a token was
   used and by whom, never the token.  Name such a field by what it is about (``user=``, ``method="token"``);
3. cleans the values (``clean_value``): text has every non-printable character (C0/C1 controls, DEL, line
   and paragraph separators, bidi and other format characters, lone surrogates) written as ``\\xNN`` /
   ``\\uNNNN``, and is cut at ``MAX_TEXT_CHARS``.  Guest and client text (a user name typed at ``login:``, a
   reason from a device) therefore can never start a fake line, move a reader's cursor or retitle a
   terminal, in the file or in the journal.  ``bytes`` are recorded only as their length: console contents
   travel as bytes, and the trail never holds console contents;
4. appends ``{"time": RFC 3339 UTC with milliseconds, "event": ..., fields...}`` as one line of ASCII JSON
   to the file, then logs the same event and fields through structlog's ``serialmuxd.audit`` logger.

The file
--------
Opened with ``O_APPEND | O_CREAT``, mode ``0600`` when created (an existing file keeps its mode: that is the
operator's choice), written with one ``os.write`` per line and no user-space buffer.  Once ``write``
returns, the line is the kernel's: a SIGKILL of the daemon loses at most the line being written.  No
``fsync``: that guards against power loss, not a killed process, and would stall the event loop on every
event; a power cut may lose the last lines the kernel had not flushed.

A line is either whole or detectably partial.  If a write stops part-way (disk full), or a previous run
was killed mid-line, the next line starts with a newline, so the cut line stands alone and fails to parse
instead of corrupting its successor.

Write failures never reach the caller: a console session must not fail because the disk is full.  Each
event that could not be written is counted (``write_errors``, and ``failing`` is true until a write
succeeds again); the failure is logged at most once per ``FAILURE_LOG_INTERVAL_S`` with a count of the
others; the descriptor is closed and the file reopened at the next event, so a replaced file, a remounted
file system or freed space all resume writing without a restart.  When writing resumes, an ``audit_lost``
line records how many events are missing and since when, and the daemon's log says the same.  Every event
reaches the daemon's log regardless (journald is a second copy).  A caller that must fail closed (refuse a
privileged action it cannot audit) can check ``failing`` first.

For log rotation, ``reopen()`` (e.g. on SIGHUP) closes the descriptor and opens the path again.  Calls
are serialised by a lock, because some callers audit from worker threads (password verification).
"""

from __future__ import annotations

import contextlib
import enum
import errno as errno_module
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

from ..errors import StartupError
from .logging import LogRateLimiter

MAX_TEXT_CHARS = 1024  # longer text is cut and marked; a 64 KiB user name does not make a 64 KiB line
FAILURE_LOG_INTERVAL_S = 60.0  # at most one "cannot write the audit file" line per interval (plus a count)
FILE_MODE = 0o600
# Field names containing any of these (case-insensitive) are refused: they could carry a secret.
SECRET_NAME_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "token",
    "ticket",
    "secret",
    "authorization",
    "cookie",
)
# Keys of the record itself, or that the log renderer adds: a field of that name would hide them.
RESERVED_FIELDS = frozenset({"time", "event", "level", "timestamp"})

_audit_log = structlog.get_logger("serialmuxd.audit")
_log = structlog.get_logger("serialmuxd")


class AuditEvent(enum.StrEnum):
    """Every event the audit trail can hold.  Adding one is a deliberate act: name it here, with a line
    saying what it records, and the test that scans the sources for ``audit(`` names lets it through."""

    # -- sessions on a console
    ATTACH = "attach"  # a session attached to a console (peer, mode)
    ATTACH_DENIED = "attach_denied"  # the access policy refused an attach (peer, reason)
    ATTACH_REFUSED = "attach_refused"  # an attach over a session limit (peer, which limit)
    DETACH = "detach"  # a session left a console (bytes it missed while attached)
    READER_MISSED = "reader_missed"  # a slow reader lost output that was overwritten in the ring
    SCROLLBACK_DOWNLOAD = "scrollback_download"  # scrollback fetched over the API (who, how many bytes)
    # -- the writer lease
    WRITE_GRANTED = "write_granted"  # a session became the console's writer
    WRITE_RELEASED = "write_released"  # the writer gave up writing (or left)
    TAKEOVER = "takeover"  # a session took the writer lease (the displaced writer evicted or demoted)
    TAKEOVER_REFUSED = "takeover_refused"  # a takeover was refused (policy, or the holder said no)
    TAKEOVER_ASKED = "takeover_asked"  # a session asked the writer to hand over
    # -- input and actions on the machine
    WRITER_IDLE = "writer_idle"  # a writer typed nothing for writer_idle_timeout_s (demoted or detached)
    LOGOUT_SENT = "logout_sent"  # the port's logout_sequence was sent to the guest (the writer changed)
    BREAK = "break"  # a serial BREAK (SysRq) sent to the guest
    API_INPUT = "api_input"  # keys or SysRq sent through the API (recorded by size, never content)
    VM_ACTION = "vm_action"  # NMI, reset, restart or start run through the hypervisor (result)
    VM_STATE = "vm_state"  # the hypervisor reported a new machine state
    # -- switches and devices
    PORT_ENABLED = "port_enabled"  # a console was enabled
    PORT_DISABLED = "port_disabled"  # a console was disabled (its sessions closed)
    PORT_SWITCH = "port_switch"  # an admin asked to enable or disable one console (reason)
    CONSOLE_SWITCH = "console_switch"  # an admin asked to enable or disable every console of this host
    DEVICE_ONLINE = "device_online"  # the console's device link is up
    DEVICE_OFFLINE = "device_offline"  # the console's device link went down (reason)
    GUEST_HEALTH = "guest_health"  # the guest printed a panic, oops, OOM kill... (kind, line, offset)
    # -- authentication
    LOGIN_OK = "login_ok"  # a peer authenticated (method: password, token, certificate, oidc)
    LOGIN_FAILED = "login_failed"  # an authentication attempt failed (method, reason; no credentials)
    LOGOUT = "logout"  # a signed-in page session was ended by its user
    SESSION_EXPIRED = "session_expired"  # a signed-in page session reached its idle or absolute lifetime
    SESSION_ENDED = "session_ended"  # a page session ended (why) with the WebSockets and tickets it opened
    CREDENTIAL_REVOKED = "credential_revoked"  # a reload removed a user or token, or changed a password
    TICKET_ISSUED = "ticket_issued"  # a single-use console ticket was issued (user, console, mode)
    TICKET_USED = "ticket_used"  # a console ticket opened a WebSocket
    TICKET_REFUSED = "ticket_refused"  # a ticket was replayed, expired, or for another console or mode
    ACCESS_DENIED = "access_denied"  # a request was refused by the access policy (verb, console)
    # -- the HTTP and WebSocket front end
    ORIGIN_REFUSED = "origin_refused"  # a cross-origin request or upgrade refused (403)
    HOST_REFUSED = "host_refused"  # a request for a Host this daemon does not serve (421)
    WS_PROTOCOL_CLOSE = "ws_protocol_close"  # a WebSocket closed for a protocol error (1002, 1007, 1009)
    HEARTBEAT_CUT = "heartbeat_cut"  # a peer stopped answering heartbeats and was disconnected
    # -- the daemon itself
    CONFIG_PROBLEM = "config_problem"  # a configuration or security problem found at start-up or reload
    CONFIG_RELOAD = "config_reload"  # SIGHUP read the file again (trigger, result, ports added/removed...)
    AUDIT_LOST = "audit_lost"  # written by AuditLog itself: events the file missed during a write outage


class AuditFn(Protocol):
    """What every part that audits is given: ``AuditLog`` itself, or a stand-in in a unit test."""

    def __call__(self, event: str, /, **fields: Any) -> None: ...


class AuditLog:
    """The audit trail.  ``AuditLog(path)`` does no I/O; ``open()`` (at start-up) raises ``StartupError`` if
    the file cannot be opened, and without it the first event opens the file.  ``path=None``: the daemon's
    log only."""

    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.write_errors = 0  # events the file missed, since start
        self._clock = clock
        self._monotonic = monotonic
        self._fd: int | None = None
        self._closed = False
        self._line_open = False  # the file's last byte is not a newline (a cut line, ours or a killed run's)
        self._lost = 0  # events missed since the last successful write
        self._lost_since: float | None = None  # wall time of the first of those
        self._limiter = LogRateLimiter(FAILURE_LOG_INTERVAL_S)
        self._lock = threading.Lock()

    @property
    def failing(self) -> bool:
        """The last attempt to write the file failed (and nothing has been written since)."""
        return self._lost > 0

    def open(self) -> None:
        """Open (create) the file now.  Raises ``StartupError`` naming it, for start-up."""
        if self.path is None:
            return
        with self._lock:
            try:
                self._open()
            except OSError as exc:
                raise StartupError(f"audit file {self.path}: {_strerror(exc)}") from exc

    def reopen(self) -> None:
        """Close and open the path again (log rotation).  A failure is counted at the next event."""
        with self._lock:
            self._close_fd()
            if self.path is not None and not self._closed:
                try:
                    self._open()
                except OSError as exc:
                    self._report_failure(exc)

    def close(self) -> None:
        """Close the file.  Later events still reach the daemon's log, but not the file."""
        with self._lock:
            self._closed = True
            self._close_fd()

    def __call__(self, event: str, /, **fields: Any) -> None:
        try:
            name = AuditEvent(event).value
        except ValueError:
            raise ValueError(f"unknown audit event {event!r}: add it to AuditEvent") from None
        for key in fields:
            if key.lower() in RESERVED_FIELDS:
                raise ValueError(f"audit field {key!r} is reserved")
        clean = {key: clean_value(value) for key, value in fields.items() if _check_name(key)}
        if self.path is not None and not self._closed:
            record = {"time": rfc3339_ms(self._clock()), "event": name, **clean}
            with self._lock:
                self._write(_line(record))
        _audit_log.info(name, **clean)

    # -- the file ----------------------------------------------------------------------------------------
    def _open(self) -> None:
        assert self.path is not None
        # O_RDWR only to read the last byte back: a run killed mid-line left it without a newline.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            self._line_open = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:  # EIO on close: the data may be gone; nothing left to do but say so
                self._report_failure(exc)

    def _write(self, line: bytes) -> None:
        now = self._clock()
        data = line
        if self._lost:
            gap = {
                "time": rfc3339_ms(now),
                "event": AuditEvent.AUDIT_LOST.value,
                "lost": self._lost,
                "since": rfc3339_ms(self._lost_since if self._lost_since is not None else now),
            }
            data = _line(gap) + line
        try:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            if self._line_open:
                data = b"\n" + data
            self._write_all(self._fd, data)
            self._line_open = False
        except OSError as exc:
            self.write_errors += 1
            if not self._lost:
                self._lost_since = now
            self._lost += 1
            self._report_failure(exc)
            # Reopen at the next event: recovers from a replaced file or a remount, and _open reads back
            # whether this attempt left a cut line.
            fd, self._fd = self._fd, None
            if fd is not None:
                with contextlib.suppress(OSError):  # already failing; the failure is counted above
                    os.close(fd)
            return
        if self._lost:
            _log.warning("audit_write_recovered", path=str(self.path), lost=self._lost)
            self._lost, self._lost_since = 0, None

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)  # a short write (disk nearly full) continues; an error raises
            if written == 0:  # cannot happen for a regular file; never spin on it
                raise OSError(errno_module.EIO, "write wrote nothing")
            view = view[written:]

    def _report_failure(self, exc: OSError) -> None:
        verdict = self._limiter.admit("audit_write_failed", self._monotonic(), 1)
        if verdict.log:
            _log.error(
                "audit_write_failed",
                path=str(self.path),
                errno=errno_module.errorcode.get(exc.errno or 0, str(exc.errno)),
                error=_strerror(exc),
                write_errors=self.write_errors,
                suppressed=verdict.unreported,
                hint="events still reach this log; the audit file resumes when it can be written",
            )


# -- values ----------------------------------------------------------------------------------------------
def rfc3339_ms(timestamp: float) -> str:
    """``2026-12-01T09:30:00.123Z``: UTC, milliseconds, the form log shippers parse without a hint."""
    seconds, millis = divmod(round(timestamp * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def escape_text(text: str) -> str:
    """``text`` with every non-printable character as ``\\xNN``/``\\uNNNN``/``\\UNNNNNNNN``, cut at
    ``MAX_TEXT_CHARS``.  Printable is Python's ``str.isprintable``: letters, marks, numbers, punctuation,
    symbols and the ASCII space, in any script."""
    cut = len(text) - MAX_TEXT_CHARS
    if cut > 0:
        text = text[:MAX_TEXT_CHARS]
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)
    return f"{text}...[{cut} more characters]" if cut > 0 else text


def clean_value(value: Any) -> Any:
    """A field value as it is recorded: JSON types only, text escaped, bytes as their length."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):  # also StrEnum members: their value
        return escape_text(str(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"  # console contents travel as bytes: never record them
    if isinstance(value, Mapping):
        return {escape_text(str(key)): clean_value(item) for key, item in value.items() if _check_name(key)}
    if isinstance(value, set | frozenset):
        return sorted((clean_value(item) for item in value), key=str)
    if isinstance(value, Iterable):
        return [clean_value(item) for item in value]
    return escape_text(str(value))


def _check_name(name: object) -> bool:
    """True, or ``ValueError`` for a field name that could hold a secret (a filter, for comprehensions)."""
    text = str(name)
    if any(part in text.lower() for part in SECRET_NAME_PARTS):
        raise ValueError(f"audit field {text!r} could hold a secret; audit who and what, never credentials")
    return True


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _line(record: Mapping[str, Any]) -> bytes:
    # ensure_ascii: the file is plain ASCII whatever the text, so no reader's terminal or locale matters.
    return (json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False) + "\n").encode()


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
