"""Exit codes a script can rely on, and the daemon's JSON error codes (``frontends/http/errors.py``
``ERROR_CODES``) mapped onto them.  Pure: no I/O."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """``serialmux`` exit codes (documented in the README and ``serialmux --help``)."""

    OK = 0
    USAGE = 1  # bad arguments, a bad config file, a request the daemon called bad
    NOT_FOUND = 2  # no such console (or one you may not see), an offset no longer kept
    DENIED = 3  # no or wrong credentials, a verb you lack, too many failed sign-ins
    CONFLICT = 4  # someone else holds the writer lease; taken over while connected
    UNAVAILABLE = 5  # daemon unreachable, console disabled or offline, hypervisor unavailable or slow
    FAILED = 6  # the hypervisor refused or failed, not supported, an unexpected answer
    INTERRUPTED = 130  # SIGINT/SIGTERM/SIGHUP before the command finished


# Every code the daemon sends (ERROR_CODES); unknown ones fall back to the HTTP status (STATUS_EXITS).
CODE_EXITS: dict[str, Exit] = {
    "bad_request": Exit.USAGE,
    "payload_too_large": Exit.USAGE,
    "unsupported_media_type": Exit.USAGE,
    "method_not_allowed": Exit.USAGE,
    "upgrade_required": Exit.FAILED,
    "misdirected": Exit.USAGE,
    "unauthorized": Exit.DENIED,
    "forbidden": Exit.DENIED,
    "too_many_attempts": Exit.DENIED,
    "unknown_port": Exit.NOT_FOUND,
    "not_found": Exit.NOT_FOUND,
    "offset_unavailable": Exit.NOT_FOUND,
    "console_in_use": Exit.CONFLICT,
    "not_supported": Exit.FAILED,
    "console_disabled": Exit.UNAVAILABLE,
    "console_offline": Exit.UNAVAILABLE,
    "input_queue_full": Exit.UNAVAILABLE,
    "too_many_connections": Exit.UNAVAILABLE,
    "hypervisor_unavailable": Exit.UNAVAILABLE,
    "hypervisor_timeout": Exit.UNAVAILABLE,
    "hypervisor_refused": Exit.FAILED,
    "hypervisor_failed": Exit.FAILED,
}


def exit_for_status(status: int) -> Exit:
    """The exit code for an HTTP status without a (known) JSON code."""
    if status in (401, 403, 429):
        return Exit.DENIED
    if status in (404, 416):
        return Exit.NOT_FOUND
    if status == 409:
        return Exit.CONFLICT
    if status in (503, 504):
        return Exit.UNAVAILABLE
    if 400 <= status < 500:
        return Exit.USAGE
    return Exit.FAILED


def exit_for(code: str | None, status: int) -> Exit:
    if code is not None and code in CODE_EXITS:
        return CODE_EXITS[code]
    return exit_for_status(status)


# WebSocket close codes (frontends/http/ws.py) that end a session for good, with what the client says.
WS_CLOSE_EXITS: dict[int, Exit] = {
    4000: Exit.CONFLICT,  # taken over (evicted)
    4001: Exit.UNAVAILABLE,  # console disabled
    4002: Exit.FAILED,  # the daemon called a message of ours bad: a bug, retrying would repeat it
    4005: Exit.DENIED,  # access denied
}
# 1000 (closed by the daemon, e.g. an idle writer detached) ends the session with 0; every other code
# (4003 fell behind, 4006 too many sessions, 1001 daemon shutting down, 1006 connection lost, ...) is
# retried from the offset reached.


class ClientError(Exception):
    """A failure to report as one line on stderr and an exit code."""

    def __init__(self, message: str, exit_code: Exit) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def api_error(status: int, body: object, what: str) -> ClientError:
    """A ``ClientError`` from the daemon's error answer (``{"code", "message", ...}``) to ``what``."""
    code: str | None = None
    message = ""
    if isinstance(body, dict):
        raw_code, raw_message = body.get("code"), body.get("message")
        code = raw_code if isinstance(raw_code, str) else None
        message = raw_message if isinstance(raw_message, str) else ""
    if not message:
        message = f"HTTP {status}"
    label = f" ({code})" if code else ""
    return ClientError(f"{what}: {message}{label}", exit_for(code, status))
