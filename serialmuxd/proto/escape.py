"""In-band escape key: how a console user reaches serialmuxd's commands from inside the byte stream.

Theory of operation
===================
Everything a writer types goes to the guest, except one sequence: the escape *prefix* (a control key,
Ctrl-E by default), then a lowercase ``c``, then one command character -- ``Ctrl-E c .`` detaches.  The
second step (``c``) keeps the prefix itself usable: in an editor or shell Ctrl-E followed by anything else
reaches the guest unchanged.

``EscapeParser`` is a three-state machine fed with the (already telnet- or WebSocket-decoded) input bytes:

* ``IDLE``: bytes pass through.  The prefix is held back and moves to ``PREFIX_SEEN``.
* ``PREFIX_SEEN``: ``c`` is held back too and moves to ``COMMAND``.  A second prefix releases the first one
  to the guest and stays in ``PREFIX_SEEN`` (so a user who hit Ctrl-E twice can still type ``c .``).  Any
  other byte goes to the guest *together with the held prefix*, and the parser returns to ``IDLE``.
* ``COMMAND``: the next byte, whatever it is, picks a command from ``COMMANDS`` (``EscapeCommand``) or, if
  it names none, yields ``UnknownEscape`` (the frontend shows ``help_text``); the held ``prefix c`` and the
  command byte never reach the guest.  Back to ``IDLE``.

A prefix, or ``prefix c``, at the end of a chunk is held until the next chunk decides what it was: nothing is
ever emitted early and then retracted, so any chunking of the same input gives the same events (apart from
how ``PassThrough`` is split).  A held prefix therefore reaches the guest only with the next keystroke.

The transitions are one table, ``_TRANSITIONS``: (state, input class) → (state, action).  The fast path skips
it: in ``IDLE`` a chunk without the prefix byte is returned as one ``PassThrough`` after a single ``in`` scan.

``COMMANDS`` is the single key → command table; the help text is generated from it.  New commands (NMI,
reset -- the frontend asks for confirmation) are one row each.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "COMMANDS",
    "Command",
    "EscapeCommand",
    "EscapeEvent",
    "EscapeParser",
    "EscapeState",
    "PassThrough",
    "UnknownEscape",
    "command_keys",
    "escape_key_name",
    "help_text",
    "parse_escape_key",
]


class Command(enum.Enum):
    """What an escape sequence asks serialmuxd to do (values are stable names for audit and metrics)."""

    DETACH = "detach"
    TAKE_OVER = "take_over"  # force the write lease to this session
    READ_ONLY = "read_only"  # give the write lease up, stay as a viewer
    REPLAY = "replay"  # replay the scrollback
    BREAK = "break"  # send a serial BREAK to the guest
    WHO = "who"  # list the sessions on this port
    NMI = "nmi"  # hypervisor: non-maskable interrupt (front end asks to confirm)
    RESET = "reset"  # hypervisor: hard reset (front end asks to confirm)
    RESTART = "restart"  # hypervisor: graceful restart (front end asks to confirm)
    HELP = "help"


@dataclass(frozen=True, slots=True)
class CommandKey:
    """One row of the command table."""

    key: str  # one ASCII character typed after "prefix c"
    command: Command
    description: str  # for the help text


COMMANDS: Final[tuple[CommandKey, ...]] = (
    CommandKey(".", Command.DETACH, "detach"),
    CommandKey("f", Command.TAKE_OVER, "take over writing (force)"),
    CommandKey("r", Command.READ_ONLY, "become read-only"),
    CommandKey("p", Command.REPLAY, "replay scrollback"),
    CommandKey("b", Command.BREAK, "send BREAK"),
    CommandKey("w", Command.WHO, "who is connected"),
    CommandKey("n", Command.NMI, "send an NMI to the machine (asks to confirm)"),
    CommandKey("x", Command.RESET, "hard-reset the machine (asks to confirm)"),
    CommandKey("g", Command.RESTART, "restart the machine gracefully (asks to confirm)"),
    CommandKey("?", Command.HELP, "this help"),
)

_COMMAND_BY_BYTE: Final[dict[int, Command]] = {ord(row.key): row.command for row in COMMANDS}

_COMMAND_INTRO: Final = ord("c")

# Control keys that would break normal typing if they were the prefix: NUL, backspace (Ctrl-H on many
# terminals), TAB, LF, CR, ESC (starts every arrow and function key).
_FORBIDDEN_PREFIXES: Final = frozenset({0x00, 0x08, 0x09, 0x0A, 0x0D, 0x1B})


def parse_escape_key(spec: str) -> int | None:
    """Caret notation → the prefix byte: ``"^E"`` → 0x05, ``"^]"`` → 0x1D; ``""`` → None (escapes disabled).

    Accepts ``^A`` .. ``^_`` (upper-case letters and ``[ \\ ] ^ _``) except ``^@ ^H ^I ^J ^M ^[``;
    anything else raises ``ValueError``.
    """
    if spec == "":
        return None
    if len(spec) != 2 or spec[0] != "^" or not "@" <= spec[1] <= "_":
        raise ValueError(f"escape key must be caret notation ^A .. ^_ or empty, not {spec!r}")
    byte = ord(spec[1]) - 0x40
    if byte in _FORBIDDEN_PREFIXES:
        raise ValueError(f"escape key {spec} ({escape_key_name(byte)}) would break normal typing")
    return byte


def escape_key_name(byte: int) -> str:
    """The prefix byte as a key name for help text: 0x05 → ``"Ctrl-E"``, 0x1D → ``"Ctrl-]"``."""
    if not 0 <= byte <= 0x1F:
        raise ValueError(f"not a control key: {byte:#x}")
    return f"Ctrl-{chr(byte + 0x40)}"


def command_keys(prefix: int, command: Command) -> str:
    """What to type for ``command``, as the help text says it: (0x05, TAKE_OVER) → ``"Ctrl-E c f"``."""
    key = next(row.key for row in COMMANDS if row.command is command)
    return f"{escape_key_name(prefix)} c {key}"


def help_text(prefix: int) -> tuple[str, ...]:
    """One line per command, e.g. ``"Ctrl-E c .  detach"``, without line ends: the front end writes each as
    one of serialmuxd's own lines (marked like every other notice, each ending in CR LF)."""
    name = escape_key_name(prefix)
    return ("commands:", *(f"{name} c {row.key}  {row.description}" for row in COMMANDS))


@dataclass(frozen=True, slots=True)
class PassThrough:
    """Bytes for the guest (never empty)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EscapeCommand:
    """The user typed ``prefix c <key>`` for a known command."""

    command: Command


@dataclass(frozen=True, slots=True)
class UnknownEscape:
    """The user typed ``prefix c <char>`` and ``char`` names no command (show the help)."""

    char: bytes


EscapeEvent: TypeAlias = PassThrough | EscapeCommand | UnknownEscape


class EscapeState(enum.Enum):
    IDLE = enum.auto()
    PREFIX_SEEN = enum.auto()  # the prefix is held back
    COMMAND = enum.auto()  # "prefix c" is held back; the next byte is the command


class _Input(enum.Enum):
    PREFIX = enum.auto()
    INTRO = enum.auto()  # "c"
    OTHER = enum.auto()


class _Action(enum.Enum):
    PASS = enum.auto()  # the byte goes to the guest
    HOLD = enum.auto()  # the byte is held back (it is part of the sequence)
    RELEASE_HELD_PREFIX = enum.auto()  # the held prefix goes to the guest; this byte (a prefix) is held
    RELEASE_HELD_PREFIX_AND_PASS = enum.auto()  # the held prefix and this byte go to the guest
    DISPATCH = enum.auto()  # this byte is the command; the held "prefix c" is dropped


_TRANSITIONS: Final[dict[tuple[EscapeState, _Input], tuple[EscapeState, _Action]]] = {
    (EscapeState.IDLE, _Input.PREFIX): (EscapeState.PREFIX_SEEN, _Action.HOLD),
    (EscapeState.IDLE, _Input.INTRO): (EscapeState.IDLE, _Action.PASS),
    (EscapeState.IDLE, _Input.OTHER): (EscapeState.IDLE, _Action.PASS),
    (EscapeState.PREFIX_SEEN, _Input.PREFIX): (EscapeState.PREFIX_SEEN, _Action.RELEASE_HELD_PREFIX),
    (EscapeState.PREFIX_SEEN, _Input.INTRO): (EscapeState.COMMAND, _Action.HOLD),
    (EscapeState.PREFIX_SEEN, _Input.OTHER): (EscapeState.IDLE, _Action.RELEASE_HELD_PREFIX_AND_PASS),
    (EscapeState.COMMAND, _Input.PREFIX): (EscapeState.IDLE, _Action.DISPATCH),
    (EscapeState.COMMAND, _Input.INTRO): (EscapeState.IDLE, _Action.DISPATCH),
    (EscapeState.COMMAND, _Input.OTHER): (EscapeState.IDLE, _Action.DISPATCH),
}


class EscapeParser:
    """Splits a writer's input into guest bytes and escape commands.  ``prefix=None`` disables escapes."""

    def __init__(self, prefix: int | None) -> None:
        if prefix is not None and (not 0 <= prefix <= 0xFF or prefix == _COMMAND_INTRO):
            raise ValueError(f"escape prefix must be a byte value other than 'c', not {prefix!r}")
        self._prefix = prefix
        self._prefix_byte = b"" if prefix is None else bytes([prefix])
        self._state = EscapeState.IDLE

    @property
    def state(self) -> EscapeState:
        """``IDLE`` unless part of an escape sequence is held back."""
        return self._state

    @property
    def prefix(self) -> int | None:
        """The prefix byte this parser acts on (None: escapes off), which help and hints must name: a
        reload that changes the port's ``escape`` applies to sessions that attach afterwards."""
        return self._prefix

    def feed(self, data: bytes) -> list[EscapeEvent]:
        """Input bytes → events, in order.  Adjacent guest bytes come as one ``PassThrough``."""
        if not data:
            return []
        if self._prefix is None or (self._state is EscapeState.IDLE and self._prefix_byte not in data):
            return [PassThrough(data)]
        return self._feed_slow(data, self._prefix)

    def _feed_slow(self, data: bytes, prefix: int) -> list[EscapeEvent]:
        events: list[EscapeEvent] = []
        passed: list[bytes] = []
        end = len(data)
        pos = 0
        while pos < end:
            if self._state is EscapeState.IDLE:
                # Everything up to the next prefix passes in one slice.
                found = data.find(self._prefix_byte, pos)
                stop = end if found < 0 else found
                if stop > pos:
                    passed.append(data[pos:stop])
                pos = stop
                if found < 0:
                    break
            byte = data[pos]
            pos += 1
            kind = (
                _Input.PREFIX if byte == prefix else _Input.INTRO if byte == _COMMAND_INTRO else _Input.OTHER
            )
            self._state, action = _TRANSITIONS[self._state, kind]
            if action is _Action.PASS:
                passed.append(data[pos - 1 : pos])
            elif action is _Action.RELEASE_HELD_PREFIX:
                passed.append(self._prefix_byte)
            elif action is _Action.RELEASE_HELD_PREFIX_AND_PASS:
                passed.append(self._prefix_byte)
                passed.append(data[pos - 1 : pos])
            elif action is _Action.DISPATCH:
                if passed:
                    events.append(PassThrough(b"".join(passed)))
                    passed.clear()
                command = _COMMAND_BY_BYTE.get(byte)
                events.append(UnknownEscape(bytes([byte])) if command is None else EscapeCommand(command))
            # HOLD: nothing to emit yet.
        if passed:
            events.append(PassThrough(b"".join(passed)))
        return events
