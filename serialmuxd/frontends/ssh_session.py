"""One SSH session channel: an attached console (a shell request) or one command (an exec request).

Built like the telnet connection (``frontends.telnet``): the hub's ``Session`` decides everything, this
class carries bytes and notices.  Guest bytes go straight to ``channel.write`` (asyncssh buffers; its flow
control calls ``pause_writing`` above ``client_buffer_bytes``, which pauses the hub's session as a telnet
transport does), never awaited on the fan-out path; notices bypass the pause under an ``OutputBudget``.
The channel is 8-bit clean (no encoding, asyncssh's line editor off, see ``frontends.ssh``); the pty
request's size and every window change go to the device like telnet NAWS; the break request (OpenSSH
``~B``) is a serial BREAK; the console's escape key works as on telnet.  Exec requests are
``frontends.ssh_exec``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import asyncssh
import structlog

from ..control import Console
from ..core.access import AttachMode, Identity
from ..core.policy import NoticePolicy
from ..hub import EndReason, Notice, NoticeKind, Session, notice_line
from ..obs.audit import AuditFn
from ..proto import escape as esc
from .keyboard import InBandKeys
from .output import OutputBudget
from .ssh_exec import CommandRunner
from .ssh_user import ConsoleRequest, SshMode
from .telnet import escape_controls, escape_hint

log = structlog.get_logger("serialmuxd.ssh")

_REPLAY_WINDOW_BYTES = 1024 * 1024  # replay-lines=N looks for its lines in at most this much scrollback
_NOTICE_PREFIX = b"\r\n[serialmuxd] "


@dataclass(frozen=True, slots=True)
class Accepted:
    identity: Identity  # authenticated, not yet audited (auth_completed does it)
    console: Console
    request: ConsoleRequest


class SshConsoleSession(CommandRunner, asyncssh.SSHServerSession[bytes]):
    """One session channel: an attached console (shell request) or one command (exec request)."""

    def __init__(self, accepted: Accepted, audit: AuditFn) -> None:
        self._audit = audit
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
        self.keys = InBandKeys(
            esc.EscapeParser(esc.parse_escape_key(config.escape)),
            self.console.name,
            write_line=self._write_line,
            close=lambda: self._close(0),
            closing=lambda: self._closing,
        )
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
            self.keys.feed(self.session, data)

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

    async def wait_closed(self) -> None:
        """Until the channel is closed (both sides sent CLOSE): what was written before has been sent."""
        if self._chan is not None:
            await self._chan.wait_closed()

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
        self._write_line(notice_line(notice, functools.partial(escape_hint, self.keys.escape.prefix)))
        if notice.kind is NoticeKind.ASKED:
            self.keys.asked = True
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
