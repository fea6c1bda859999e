"""Exec requests: ``ssh vm1@host COMMAND``, one command per channel, through the hub's session-less API.

``nmi``, ``reset``, ``restart``, ``start`` run the hypervisor action (``Console.api_action``: the access
policy decides and the hub audits it), then print what the guest writes for ``--follow SECONDS`` (default
``ACTION_FOLLOW_S``; the scrollback is polled, so nothing here ever holds up the guest's output).
``state`` prints the console's and the machine's state, ``log`` the scrollback (audited like a download),
``who`` the writer and how many watch.  A refusal goes to stderr with exit status 1; an unknown command or
option, exit status 2.  A mixin of ``SshConsoleSession``, which owns the channel.
"""

from __future__ import annotations

import asyncio
import time

import asyncssh
import structlog

from ..adapters import Action, AdapterError
from ..control import Console
from ..core.access import Identity
from ..hub import Refused
from ..obs.audit import AuditFn
from .telnet import escape_controls

log = structlog.get_logger("serialmuxd.ssh")

COMMANDS = ("nmi", "reset", "restart", "start", "state", "log", "who")
ACTION_FOLLOW_S = 2.0  # an action's command prints what the guest says this long afterwards (--follow S)
MAX_FOLLOW_S = 600.0
_FOLLOW_POLL_S = 0.1


class CommandRunner:
    # What the mixin uses; SshConsoleSession sets them all.
    console: Console
    identity: Identity
    _audit: AuditFn
    _chan: asyncssh.SSHServerChannel[bytes] | None
    _closing: bool
    _writable: asyncio.Event

    def _close(self, status: int) -> None:
        raise NotImplementedError

    # -- the commands ----------------------------------------------------------------------------------
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
        self._audit(
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
