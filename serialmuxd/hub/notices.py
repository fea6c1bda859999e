"""In-band messages from serialmuxd to a session: their kinds, and the one rate limit they share.

Every message a session can get is a ``Notice``: a ``kind`` from a closed set (WebSocket clients get it as
the JSON event name; telnet shows ``text`` as a ``[serialmuxd] ...`` line), one line of ``text`` for people
and machine-readable ``fields``.  Texts are built where the event happens; this module only holds the
vocabulary and ``Throttle``, which keeps a client that types into a read-only or offline console from
getting one notice per keystroke.

What the user can do about a notice depends on the client in front of them (telnet's escape keys, the
browser's button, serialmux's ``~f``), so ``text`` never says how: a notice that suggests an action carries
a ``Hint``, and each front end names its own way to do it.  ``notice_line`` words that for the front ends
that write notices as lines (telnet, SSH); WebSocket sends the hint as the event's ``hint`` field.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final


class NoticeKind(enum.StrEnum):
    """Every in-band message a session can receive; WebSocket sends ``kind`` as a JSON event name."""

    ATTACHED = "attached"
    WRITE_GRANTED = "write_granted"
    TOOK_OVER = "took_over"  # you displaced someone
    EVICTED = "evicted"  # someone displaced you; you are being detached
    DEMOTED = "demoted"  # someone displaced you; you stay as a viewer
    REFUSED = "refused"  # a request of yours was refused (write access, a verb); you keep what you had
    ASKED = "asked"  # someone asks you for write access (takeover policy ask): answer yes or no
    WAITING = "waiting"  # your takeover request waits for the writer's answer
    READ_ONLY = "read_only"  # you are a viewer and typed, or chose read-only
    INPUT_DISCARDED = "input_discarded"  # device offline / input not accepted
    OFFLINE = "offline"
    ONLINE = "online"
    MISSED = "missed"  # you fell behind; n bytes were skipped
    RESTART_GAP = "restart_gap"  # serialmuxd restarted since the offset you resumed from
    REPLAY_START = "replay_start"
    REPLAY_END = "replay_end"
    INFO = "info"  # answers to who/help and similar
    VM_STATE = "vm_state"  # the machine behind the port changed state (hypervisor adapter)
    VM_ACTION = "vm_action"  # someone sent an NMI / reset / restart
    GUEST_HEALTH = "guest_health"  # the guest printed a panic, oops, lockup... (health_kind, line, offset)


class Hint(enum.StrEnum):
    """An action a notice suggests; WebSocket sends it as the event's ``hint`` field."""

    TAKE_OVER = "take_over"  # a viewer of a read-write session: taking over write access lets you type


# The words after the front end's own way of doing it: "Ctrl-E c f" + " takes over".
_HINT_WORDS: Final[dict[Hint, str]] = {Hint.TAKE_OVER: "takes over"}


@dataclass(frozen=True, slots=True)
class Notice:
    kind: NoticeKind
    text: str  # one line for people, without line ends, and never how to act on it (see ``hint``)
    fields: dict[str, Any] = field(default_factory=dict)  # machine-readable details (JSON-safe)
    hint: Hint | None = None  # what the user can do next, worded by each front end for its client


def notice_line(notice: Notice, keys: Callable[[Hint], str | None]) -> str:
    """The notice as one line for a terminal front end.  ``keys`` names what does the hinted action in
    that front end ("Ctrl-E c f"), or None when there is nothing (escape keys disabled): then the text
    alone.  ("read-only: input not sent", "Ctrl-E c f") -> "read-only: input not sent (Ctrl-E c f takes
    over)"."""
    if notice.hint is None:
        return notice.text
    how = keys(notice.hint)
    return notice.text if how is None else f"{notice.text} ({how} {_HINT_WORDS[notice.hint]})"


def clock_text(stamp: float) -> str:
    """A wall-clock time for people, as in "taken over by alice at 2026-12-01 12:00:01 UTC"."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(stamp))


# A session that keeps doing something refused (typing while read-only or offline) is reminded this often.
REMINDER_INTERVAL_S = 5.0


class Throttle:
    """At most one event per ``interval_s`` on the clock passed in."""

    __slots__ = ("_last", "interval_s")

    def __init__(self, interval_s: float = REMINDER_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: float | None = None

    def ready(self, now: float) -> bool:
        """True (and counted) if the last event was at least ``interval_s`` ago, or there was none."""
        if self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        return True
