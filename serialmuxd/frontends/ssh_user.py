"""The SSH user name: which console, in which mode, with which options (``ssh vm1.ro@host``).

Like the public clouds' serial-console gateways, the SSH user name does not say *who* connects (the key or
certificate does, see ``frontends.ssh``) but *what* to connect to::

    CONSOLE [ "." MODE ] { "." OPTION "=" VALUE }

* ``CONSOLE``: a console name (``PORT_NAME_RE``; names may contain dots themselves).
* ``MODE``: ``rw`` (interactive, the default: asks for the writer lease like a telnet attach), ``ro``
  (read-only for the whole session), ``force`` (interactive, and takes the writer lease at once, whatever
  the console's takeover policy; needs the ``takeover`` verb).
* ``OPTION=VALUE``: ``replay-lines=N`` (replay the last N lines of the scrollback on attach instead of the
  console's own replay window; 0 replays nothing; at most ``MAX_REPLAY_LINES``).

The string is read from the right: trailing ``OPTION=VALUE`` parts, then at most one mode word, and the
rest is the console.  So a console whose own name ends in ``.ro`` (or ``.rw``, ``.force``) is reached by
spelling the mode out: ``lab.ro.rw``.  Anything else is malformed and refused with a reason (the reason
never depends on which consoles exist: that is decided later, and an unknown console fails like a bad key).
Pure: no I/O, no asyncssh.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ..config import PORT_NAME_RE

MAX_USER_NAME_CHARS = 256  # SSH allows longer; nothing sensible is
MAX_REPLAY_LINES = 100_000
_OPTION_RE = re.compile(r"([a-z][a-z0-9-]*)=(.*)", re.DOTALL)
_NUMBER_RE = re.compile(r"0|[1-9][0-9]{0,8}")


class SshMode(enum.StrEnum):
    INTERACTIVE = "rw"
    READ_ONLY = "ro"
    FORCE = "force"


@dataclass(frozen=True, slots=True)
class ConsoleRequest:
    console: str
    mode: SshMode = SshMode.INTERACTIVE
    replay_lines: int | None = None  # None: the console's own replay (replay_bytes / replay_lines)


class MalformedUserName(ValueError):
    """The user name does not follow the grammar; ``str()`` says why, for the client's banner."""


def parse_user_name(name: str) -> ConsoleRequest:
    """``vm1.ro.replay-lines=50`` -> ``ConsoleRequest("vm1", READ_ONLY, 50)``, or ``MalformedUserName``."""
    if not name:
        raise MalformedUserName("the user name is empty; write the console's name: ssh CONSOLE@HOST")
    if len(name) > MAX_USER_NAME_CHARS:
        raise MalformedUserName(f"the user name is longer than {MAX_USER_NAME_CHARS} characters")
    parts = name.split(".")
    options: dict[str, str] = {}
    while parts and "=" in parts[-1]:
        option = _OPTION_RE.fullmatch(parts.pop())
        if option is None:
            raise MalformedUserName(f"options are written .name=value (lower-case name), in {name!r}")
        key, value = option.groups()
        if key in options:
            raise MalformedUserName(f"option {key} is given twice, in {name!r}")
        options[key] = value
    mode = SshMode.INTERACTIVE
    if len(parts) > 1 and parts[-1] in {m.value for m in SshMode}:
        mode = SshMode(parts.pop())
    console = ".".join(parts)
    if not PORT_NAME_RE.fullmatch(console):
        raise MalformedUserName(
            f"{console!r} is not a console name (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or "
            "digit); the grammar is CONSOLE[.ro|.rw|.force][.option=value...]"
        )
    replay_lines = None
    for key, value in options.items():
        if key != "replay-lines":
            raise MalformedUserName(f"unknown option {key!r}; the one option is replay-lines=N")
        if not _NUMBER_RE.fullmatch(value) or int(value) > MAX_REPLAY_LINES:
            raise MalformedUserName(
                f"replay-lines must be a number from 0 to {MAX_REPLAY_LINES}, got {value!r}"
            )
        replay_lines = int(value)
    return ConsoleRequest(console, mode, replay_lines)
