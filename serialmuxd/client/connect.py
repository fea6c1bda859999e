"""``serialmux connect``: a raw-mode terminal session on one console.

Keystrokes go through ``escape.EscapeParser`` (``~.`` detach and friends, ssh-style); what it lets through
goes to the guest as binary frames.  Guest bytes go to stdout untouched; everything the client or the
daemon has to say goes to stderr as ``[serialmux] ...`` status lines, so ``connect vm1 > file`` captures
only the guest's bytes.  The stream (``stream.ConsoleStream``) reconnects by itself and says what was
missed; the terminal (``terminal.RawTerminal``) is restored on every way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any

from . import escape
from .errors import ClientError, Exit
from .http import Api
from .lines import StatusLines, write_all
from .stream import ConsoleStream
from .terminal import RawTerminal, Signals, window_size

_ACTION_WORDS = {escape.Action.NMI: "send an NMI to", escape.Action.RESET: "hard-reset"}
_API_ACTIONS = {escape.Action.NMI: "nmi", escape.Action.RESET: "reset"}
_WRITER_KINDS = frozenset({"write_granted", "took_over"})
_VIEWER_KINDS = frozenset({"evicted", "demoted", "read_only"})
_EARLY_MAX = 4096  # bytes typed before the first attach that are kept for it


def attach_mode(
    read_only: bool, force: bool, writer: str | None, escape_byte: int | None = ord(escape.DEFAULT_ESCAPE)
) -> tuple[str, str]:
    """The WebSocket mode for an attach, and a line to show (or ""): read-write unless asked otherwise, or
    someone else is writing and ``force`` (``--force``, first attach only) does not say to take over: a
    read-write attach would displace them under the default takeover policy, so a reconnect never does
    that by itself either (whoever attached while we were away keeps writing)."""
    if read_only:
        return "ro", ""
    if writer is None or force:
        return "rw", ""
    keys = escape.action_keys(escape_byte, escape.Action.TAKE_OVER)
    how = f"{keys} takes over, or connect --force" if keys else "connect --force takes over"
    return "ro", f"{writer} is writing; you are read-only ({how})"


class Interactive:
    """``stream.Handler`` for a person at a terminal."""

    def __init__(
        self,
        api: Api,
        name: str,
        *,
        read_only: bool,
        force: bool,
        from_offset: int | None,
        escape_byte: int | None,
    ) -> None:
        self.api = api
        self.name = name
        self.force = force
        self.parser = escape.EscapeParser(escape_byte)
        self.terminal = RawTerminal()
        self.lines = StatusLines(self.terminal.is_tty and os.isatty(sys.stderr.fileno()))
        self.stream = ConsoleStream(
            api, name, self, read_only=read_only, from_offset=from_offset, choose_mode=self._choose_mode
        )
        self.exit_code: int = Exit.OK
        self._keys: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._discard_told = False
        self._tasks: set[asyncio.Task[bool]] = set()
        # Typed before the first attach (the client was still starting): sent once it is attached.  Typing
        # during a later outage is discarded instead: the user cannot see what it would land in.
        self._early: bytearray | None = bytearray()

    # -- stream.Handler --------------------------------------------------------------------------------
    def output(self, data: bytes) -> None:
        write_all(sys.stdout.fileno(), data)
        self.lines.guest_output(data)

    def status(self, text: str) -> None:
        self.lines.show(text)

    def hint(self, hint: object) -> str | None:
        return escape.hint_text(self.parser.escape, hint)

    def connected(self) -> None:
        self._discard_told = False
        self._send_size()
        if self._early is not None:
            self._keys.put_nowait(b"")  # the input task sends what was typed early, in order

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind in _WRITER_KINDS:
            self.parser.answer_settled()
            self._send_size()  # a viewer's size was not applied; the writer's is
        elif kind in _VIEWER_KINDS:
            self.parser.answer_settled()
        elif kind == "asked":
            self.parser.expect_answer()
            self.lines.show("press y to hand over write access, n to keep it")
        elif kind == "info" and event.get("ask") == "kept":
            self.parser.answer_settled()

    # -- the session -----------------------------------------------------------------------------------
    def _choose_mode(self, status: dict[str, Any], reconnect: bool) -> str:
        writer = status.get("writer")
        who = writer.get("who") if isinstance(writer, dict) else None
        mode, note = attach_mode(
            self.stream.read_only,
            self.force and not reconnect,
            who if isinstance(who, str) else None,
            self.parser.escape,
        )
        if note:
            self.status(f"{self.name}: {note}")
        return mode

    def _send_size(self) -> None:
        size = window_size(self.terminal.fd) if self.terminal.is_tty else None
        if size is not None and self.stream.connected:
            cols, rows = (min(max(v, 1), 1000) for v in size)
            task = asyncio.get_running_loop().create_task(
                self.stream.send_json({"type": "resize", "cols": cols, "rows": rows})
            )
            self._tasks.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._tasks.discard)

    def _stop(self, signum: int) -> None:
        self.exit_code = 128 + signum
        self.stream.stop()

    def _readable(self) -> None:
        try:
            data = os.read(self.terminal.fd, 4096)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.terminal.fd)
        self._keys.put_nowait(data or None)

    async def _input(self) -> None:
        while (data := await self._keys.get()) is not None:
            if not data:
                early, self._early = self._early, None
                if early:
                    await self.stream.send_bytes(bytes(early))
                continue
            for ev in self.parser.feed(data):
                await self._handle(ev)
        self.status(f"end of input: detached from {self.name}")
        self.stream.stop()

    async def _handle(self, ev: escape.Event) -> None:
        match ev:
            case escape.Send(data):
                if self._early is not None and len(self._early) + len(data) <= _EARLY_MAX:
                    self._early += data
                elif not await self.stream.send_bytes(data) and not self._discard_told:
                    self._discard_told = True
                    self.status(f"not connected to {self.name}: typing is discarded until it is back")
            case escape.Ask(action, need):
                if need is escape.Need.KEY:
                    self.lines.prompt("SysRq key (any other key cancels):")
                else:
                    self.lines.prompt(f"{_ACTION_WORDS[action]} {self.name}? [y/N]")
            case escape.Cancelled(action):
                self.status(f"{action.value} cancelled")
            case escape.Do(action, arg):
                await self._do(action, arg)

    async def _do(self, action: escape.Action, arg: str) -> None:
        A = escape.Action
        if action is A.DETACH:
            self.status(f"detached from {self.name}")
            self.stream.stop()
        elif action is A.HELP:
            self.status(escape.help_text(self.parser.escape))
        elif action is A.TAKE_OVER and self.stream.mode == "ro":
            self.status(f"taking over {self.name}: attaching read-write")
            self.stream.read_only = False
            self.stream.reconnect("rw")
        elif action in _API_ACTIONS:
            verb = _API_ACTIONS[action]
            try:
                await self.api.request("POST", Api.port_path(self.name, verb), f"{verb} {self.name}", {})
            except ClientError as exc:
                self.status(str(exc))
            else:
                self.status(f"{verb} sent to {self.name}")
        else:
            if action in (A.TAKE_OVER, A.READ_ONLY):
                self.stream.read_only = action is A.READ_ONLY  # and so after a reconnect too
            messages: dict[escape.Action, dict[str, Any]] = {
                A.TAKE_OVER: {"type": "take_over"},
                A.READ_ONLY: {"type": "read_only"},
                A.BREAK: {"type": "break"},
                A.SYSRQ: {"type": "sysrq", "key": arg},
                A.ANSWER_TAKEOVER: {"type": "answer_takeover", "accept": arg == "y"},
            }
            if not await self.stream.send_json(messages[action]):
                self.status(f"not connected to {self.name}")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals = Signals(self._send_size, self._stop)
        try:
            with self.terminal:
                if self.parser.escape is not None:
                    name = escape.escape_name(self.parser.escape)
                    self.status(f"connecting to {self.name} ({name}. detaches, {name}? for help)")
                loop.add_reader(self.terminal.fd, self._readable)
                keys = loop.create_task(self._input())
                try:
                    result = await self.stream.run()
                finally:
                    loop.remove_reader(self.terminal.fd)
                    keys.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await keys
        finally:
            signals.close()
        return self.exit_code if self.exit_code != Exit.OK else int(result)
