"""The in-band keyboard dialog of a terminal session, shared by the telnet and SSH front ends.

What a person types goes through the escape key's parser (proto/escape.py); besides plain input it can be
an escape command (detach, take over, read-only, replay, BREAK, who, NMI/reset/restart), the answer to a
"press y to confirm" after a hypervisor command, or the y/n answer when this writer is asked to hand over
(takeover policy ``ask``).  The hub decides every verb; this only turns keys into session requests and
writes the prompts.  The front end supplies how to write a ``[serialmuxd]`` line, how to close itself
after a detach, and whether it is closing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..adapters import Action
from ..hub import Session
from ..proto import escape as esc

_VM_COMMANDS = {
    esc.Command.NMI: Action.NMI,
    esc.Command.RESET: Action.RESET,
    esc.Command.RESTART: Action.RESTART,
}
_ACTION_WORDS = {
    Action.NMI: "send an NMI to",
    Action.RESET: "hard-reset",
    Action.RESTART: "restart",
}


class InBandKeys:
    __slots__ = ("_actions", "_close", "_closing", "_console", "_write_line", "asked", "confirming", "escape")

    def __init__(
        self,
        escape: esc.EscapeParser,
        console: str,
        *,
        write_line: Callable[[str], None],
        close: Callable[[], None],
        closing: Callable[[], bool],
    ) -> None:
        self.escape = escape
        self._console = console
        self._write_line = write_line
        self._close = close
        self._closing = closing
        self.confirming: Action | None = None  # a hypervisor command waiting for its y
        self.asked = False  # this writer was asked to hand over: a y or n typed first answers
        self._actions: set[asyncio.Task[None]] = set()

    @property
    def plain(self) -> bool:
        """Nothing half typed or waiting for an answer: input without the escape byte is just input."""
        return self.confirming is None and not self.asked and self.escape.state is esc.EscapeState.IDLE

    def feed(self, session: Session, data: bytes) -> None:
        for event in self.escape.feed(data):
            if self._closing():
                return
            if isinstance(event, esc.PassThrough):
                payload = event.data
                if self.confirming is not None:
                    # The first key after a hypervisor prompt answers it, even within the same chunk.
                    self._answer_confirmation(session, payload[:1])
                    payload = payload[1:]
                if payload and self.asked:
                    payload = self._answer_takeover(session, payload)
                if payload:
                    session.input(payload)
            elif isinstance(event, esc.EscapeCommand):
                self.confirming = None
                self._command(session, event.command)
            else:
                self.write_help()

    def write_help(self) -> None:
        prefix = self.escape.prefix  # the keys this session has (a reload may have changed the port's)
        if prefix is not None:
            for line in esc.help_text(prefix):
                self._write_line(line)

    def _answer_takeover(self, session: Session, payload: bytes) -> bytes:
        """While asked to hand over, a y or n typed first answers; anything else is typed as usual."""
        if not session.being_asked():
            self.asked = False
            return payload
        answer = payload[:1].lower()
        if answer not in (b"y", b"n"):
            return payload
        self.asked = False
        session.answer_takeover(answer == b"y")
        return payload[1:]

    def _answer_confirmation(self, session: Session, key: bytes) -> None:
        assert self.confirming is not None
        action, self.confirming = self.confirming, None
        if key in (b"y", b"Y"):
            # The hub checks again (write access may be gone); outcomes reach every session as notices.
            task = asyncio.get_running_loop().create_task(session.run_action(action))
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)
        else:
            self._write_line(f"{action} cancelled")

    def _command(self, session: Session, command: esc.Command) -> None:
        if command is esc.Command.DETACH:
            self._write_line("detached")
            session.detach()
            self._close()
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
        elif command in _VM_COMMANDS:
            action = _VM_COMMANDS[command]
            refusal = session.check_action(action)
            if refusal is not None:
                self._write_line(refusal)
                return
            self.confirming = action
            self._write_line(
                f"{_ACTION_WORDS[action]} {self._console}? press y to confirm, any other key cancels"
            )
        else:
            self.write_help()
