"""The client's escape key, as ssh has it: ``~`` typed at the start of a line, then one command key.

Theory of operation
===================
``EscapeParser`` is fed the bytes the user types and returns events: ``Send`` (bytes for the guest),
``Do`` (a command for the client), ``Ask`` (show a prompt: the command needs a SysRq key or a y/N answer)
and ``Cancelled`` (the prompt was answered with something else).  States:

* ``NORMAL``: bytes pass through.  The escape byte is special only at a line start: at the beginning of the
  session and right after a ``\\r`` or ``\\n`` that went to the guest (or after a command).  It is held
  and the state becomes ``ESCAPE``.
* ``ESCAPE``: the next byte picks a command from ``COMMANDS``; the escape byte itself sends one literal
  escape byte (``~~``); any other byte goes to the guest together with the held escape byte (``~z``), as
  in ssh.  Commands that need more go to ``SYSRQ_KEY`` (the next printable ASCII key is the SysRq key) or
  ``CONFIRM`` (``y``/``Y`` does it, anything else cancels, and that byte is not typed into the guest).
* ``ANSWER``: the daemon asked this writer to hand over (takeover policy ``ask``; the client calls
  ``expect_answer``): ``y``/``n`` answer it, any other byte leaves the state and is handled as in ``NORMAL``.

An escape byte at the end of a chunk is held until the next chunk decides what it was, so any chunking of
the same keystrokes gives the same events.  ``help_text`` is generated from ``COMMANDS``.  Pure: no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, TypeAlias

DEFAULT_ESCAPE: Final = "~"


class Action(enum.Enum):
    DETACH = "detach"
    TAKE_OVER = "take_over"
    READ_ONLY = "read_only"
    BREAK = "break"
    SYSRQ = "sysrq"  # arg: the key
    NMI = "nmi"  # confirmed
    RESET = "reset"  # confirmed
    HELP = "help"
    ANSWER_TAKEOVER = "answer_takeover"  # arg: "y" (hand over) or "n" (keep writing)


class Need(enum.Enum):
    NOTHING = "nothing"
    KEY = "key"  # a SysRq key
    CONFIRM = "confirm"  # y/N


@dataclass(frozen=True, slots=True)
class CommandKey:
    key: str
    action: Action
    need: Need
    description: str


COMMANDS: Final[tuple[CommandKey, ...]] = (
    CommandKey(".", Action.DETACH, Need.NOTHING, "detach (the guest session stays logged in)"),
    CommandKey("f", Action.TAKE_OVER, Need.NOTHING, "take over write access"),
    CommandKey("r", Action.READ_ONLY, Need.NOTHING, "become read-only"),
    CommandKey("B", Action.BREAK, Need.NOTHING, "send a serial BREAK"),
    CommandKey("s", Action.SYSRQ, Need.KEY, "SysRq: the next key is the SysRq command (s, u, b, ...)"),
    CommandKey("n", Action.NMI, Need.CONFIRM, "send an NMI to the machine (asks y/N)"),
    CommandKey("x", Action.RESET, Need.CONFIRM, "hard-reset the machine (asks y/N)"),
    CommandKey("?", Action.HELP, Need.NOTHING, "this help"),
)
_BY_KEY: Final = {ord(c.key): c for c in COMMANDS}


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Do:
    action: Action
    arg: str = ""


@dataclass(frozen=True, slots=True)
class Ask:
    action: Action
    need: Need


@dataclass(frozen=True, slots=True)
class Cancelled:
    action: Action


Event: TypeAlias = Send | Do | Ask | Cancelled


class State(enum.Enum):
    NORMAL = "normal"
    ESCAPE = "escape"
    SYSRQ_KEY = "sysrq_key"
    CONFIRM = "confirm"
    ANSWER = "answer"


def parse_escape(text: str) -> int | None:
    """``"~"``, ``"^]"`` (a control key) or ``"none"`` -> the escape byte, or None (no escape key)."""
    if text.lower() == "none":
        return None
    if len(text) == 2 and text[0] == "^" and 0x3F <= ord(text[1].upper()) <= 0x5F:
        return ord(text[1].upper()) ^ 0x40
    if len(text) == 1 and 0 < ord(text) < 0x80 and text not in "\r\n":
        return ord(text)
    raise ValueError(f"escape must be one ASCII character, ^X for a control key, or none; got {text!r}")


def escape_name(byte: int) -> str:
    return f"^{chr(byte ^ 0x40)}" if byte < 0x20 or byte == 0x7F else chr(byte)


def action_keys(escape: int | None, action: Action) -> str | None:
    """What to type for ``action`` (``"~f"``), or None without an escape key (``-e none``)."""
    if escape is None:
        return None
    return escape_name(escape) + next(c.key for c in COMMANDS if c.action is action)


# The daemon's notice hints (the event's "hint" field) that this client can act on, and the words for them.
_HINTS: Final = {"take_over": (Action.TAKE_OVER, "takes over")}


def hint_text(escape: int | None, hint: object) -> str | None:
    """A notice's ``hint`` in this client's words ("~f takes over"); None for a hint it does not know (a
    newer daemon) or cannot act on (no escape key)."""
    known = _HINTS.get(hint) if isinstance(hint, str) else None
    if known is None:
        return None
    keys = action_keys(escape, known[0])
    return None if keys is None else f"{keys} {known[1]}"


def help_text(escape: int | None) -> str:
    if escape is None:
        return "no escape key (-e none): end the session by closing the terminal or with kill"
    name = escape_name(escape)
    lines = [f"escape commands ({name} at the start of a line):"]
    lines += [f"  {name}{c.key}  {c.description}" for c in COMMANDS]
    lines.append(f"  {name}{name}  send a literal {name}")
    return "\n".join(lines)


class EscapeParser:
    """See the module docstring.  ``feed`` returns the events for a chunk of keystrokes, in order."""

    __slots__ = ("_at_line_start", "_pending", "escape", "state")

    def __init__(self, escape: int | None = ord(DEFAULT_ESCAPE)) -> None:
        self.escape = escape
        self.state = State.NORMAL
        self._at_line_start = True
        self._pending: Action | None = None  # the command waiting for a key or y/N

    def expect_answer(self) -> None:
        """The daemon asked us to hand over write access: the next ``y``/``n`` answers it."""
        if self.state is State.NORMAL:
            self.state = State.ANSWER

    def answer_settled(self) -> None:
        """The question went away (answered elsewhere or timed out): stop waiting for y/n."""
        if self.state is State.ANSWER:
            self.state = State.NORMAL

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        out = bytearray()

        def flush() -> None:
            if out:
                events.append(Send(bytes(out)))
                out.clear()

        def emit(event: Event) -> None:
            flush()
            events.append(event)

        for byte in data:
            state = self.state
            if state is State.ANSWER:
                self.state = State.NORMAL
                if byte in b"yYnN":
                    emit(Do(Action.ANSWER_TAKEOVER, "y" if byte in b"yY" else "n"))
                    continue
                state = State.NORMAL
            if state is State.NORMAL:
                if byte == self.escape and self._at_line_start:
                    self.state = State.ESCAPE
                    continue
                out.append(byte)
                self._at_line_start = byte in b"\r\n"
            elif state is State.ESCAPE:
                self.state = State.NORMAL
                assert self.escape is not None
                command = _BY_KEY.get(byte)
                if byte == self.escape:
                    out.append(byte)  # ~~: one literal escape byte; not a line start any more
                    self._at_line_start = False
                elif command is None:
                    out += bytes((self.escape, byte))  # ~z goes to the guest as typed
                    self._at_line_start = byte in b"\r\n"
                elif command.need is Need.NOTHING:
                    emit(Do(command.action))
                    self._at_line_start = True  # so that ~? can be followed by ~.
                else:
                    self.state = State.SYSRQ_KEY if command.need is Need.KEY else State.CONFIRM
                    self._pending = command.action
                    emit(Ask(command.action, command.need))
            else:
                action = self._pending
                assert action is not None
                self.state = State.NORMAL
                self._pending = None
                self._at_line_start = True
                if state is State.SYSRQ_KEY and 0x21 <= byte <= 0x7E:
                    emit(Do(action, chr(byte)))
                elif state is State.CONFIRM and byte in b"yY":
                    emit(Do(action))
                else:
                    emit(Cancelled(action))
        flush()
        return events
