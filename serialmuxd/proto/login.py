"""The telnet login prompt as a sans-I/O line editor: ``login:`` then ``Password:``, bytes in, events out.

Theory of operation
-------------------
The telnet codec has already negotiated character mode with the server doing the echo (``WILL ECHO``), so
the client echoes nothing itself: this editor echoes the user name as it is typed and the password not at
all (the "WILL ECHO trick" every telnet login uses).  ``feed(data)`` returns events in order:

* ``Output(bytes)`` — to write to the client: echoed characters, erase sequences, the next prompt;
* ``Submitted(user, password)`` — both lines entered (or an empty user line alone: ``Submitted("", "")``);
  the caller checks them and calls ``retry()`` (after any throttle delay) or stops feeding;
* ``Cancelled()`` — Ctrl-C or Ctrl-D: the client wants out.

A line ends at CR or LF (telnet clients send CR NUL or CR LF; the byte after CR is swallowed when it is NUL
or LF).  Backspace and DEL erase one character, Ctrl-U the whole line.  Lines are bounded
(``MAX_LINE_BYTES``): further bytes are dropped without echo, so a client cannot make us buffer without
end.  Other control characters are ignored.  Bytes are kept as typed and decoded as UTF-8 (replacing what
is not) only when the line is submitted: a password may be any text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

MAX_LINE_BYTES = 256
LOGIN_PROMPT = b"login: "
PASSWORD_PROMPT = b"Password: "
_ERASE = b"\x08 \x08"


@dataclass(frozen=True, slots=True)
class Output:
    data: bytes


@dataclass(frozen=True, slots=True)
class Submitted:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    pass


LoginEvent: TypeAlias = Output | Submitted | Cancelled


class _Field(enum.Enum):
    USER = "user"
    PASSWORD = "password"
    DONE = "done"  # submitted; waiting for retry() or the end


class LoginPrompt:
    __slots__ = ("_after_cr", "_field", "_line", "_user")

    def __init__(self) -> None:
        self._field = _Field.USER
        self._line = bytearray()
        self._user = ""
        self._after_cr = False

    def start(self) -> list[LoginEvent]:
        return [Output(LOGIN_PROMPT)]

    def retry(self, message: bytes = b"") -> list[LoginEvent]:
        """Ask again from ``login:`` (after a failed attempt), optionally after ``message``."""
        self._field, self._user = _Field.USER, ""
        self._line.clear()
        return [Output(message + LOGIN_PROMPT)]

    def feed(self, data: bytes) -> list[LoginEvent]:
        events: list[LoginEvent] = []
        echo = bytearray()
        for byte in data:
            if self._field is _Field.DONE:
                break  # typed ahead while the attempt is checked: dropped, the next prompt starts clean
            if self._after_cr:
                self._after_cr = False
                if byte in (0x00, 0x0A):
                    continue
            if byte in (0x0D, 0x0A):
                self._after_cr = byte == 0x0D
                echo += b"\r\n"
                events.extend(self._flush(echo))
                events.extend(self._end_line())
            elif byte in (0x03, 0x04):  # Ctrl-C, Ctrl-D
                events.extend(self._flush(echo))
                events.append(Cancelled())
                self._field = _Field.DONE
                break
            elif byte in (0x08, 0x7F):
                if self._line:
                    del self._line[-1]
                    if self._field is _Field.USER:
                        echo += _ERASE
            elif byte == 0x15:  # Ctrl-U
                if self._field is _Field.USER:
                    echo += _ERASE * len(self._line)
                self._line.clear()
            elif byte < 0x20:
                continue
            elif len(self._line) < MAX_LINE_BYTES:
                self._line.append(byte)
                if self._field is _Field.USER:
                    echo.append(byte)
        events.extend(self._flush(echo))
        return events

    def _flush(self, echo: bytearray) -> list[LoginEvent]:
        if not echo:
            return []
        out: list[LoginEvent] = [Output(bytes(echo))]
        echo.clear()
        return out

    def _end_line(self) -> list[LoginEvent]:
        text = self._line.decode("utf-8", "replace")
        self._line.clear()
        if self._field is _Field.USER:
            self._user = text.strip()
            if not self._user:  # Enter alone: no user (anonymous, where allowed); no password asked
                self._field = _Field.DONE
                return [Submitted("", "")]
            self._field = _Field.PASSWORD
            return [Output(PASSWORD_PROMPT)]
        self._field = _Field.DONE
        return [Submitted(self._user, text)]
