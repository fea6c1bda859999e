"""WebSocket control messages (text frames, JSON) from console clients: text in, a typed message out.

Binary frames carry console bytes and need no parsing; text frames ask for something.  Parsing is kept
here, pure and synchronous, so that property tests can throw any text at it: the only exception it raises is
``BadMessage`` (the session is then closed with code 4002 and the reason).  Which of the messages a session
may act on (viewer or writer) is the hub's business, not this module's.

Messages (all JSON objects with a ``type``)::

    {"type": "resize", "cols": 1..1000, "rows": 1..1000}
    {"type": "break"}            {"type": "take_over"}      {"type": "read_only"}
    {"type": "key", "key": "F8"}                            named key, mapped per the port's key profile
    {"type": "sysrq", "key": "b"}                           one printable ASCII character
    {"type": "who"}              {"type": "ping"}
    {"type": "answer_takeover", "accept": true|false}       the writer's answer when asked to hand over
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import RemoteError

MAX_WINDOW_DIMENSION = 1000
_MAX_KEY_NAME = 32


class BadMessage(RemoteError):
    """The text frame is not a valid control message; the message says why (shown to that client)."""


@dataclass(frozen=True, slots=True)
class Resize:
    cols: int
    rows: int


@dataclass(frozen=True, slots=True)
class Break:
    pass


@dataclass(frozen=True, slots=True)
class TakeOver:
    pass


@dataclass(frozen=True, slots=True)
class ReadOnly:
    pass


@dataclass(frozen=True, slots=True)
class Key:
    name: str


@dataclass(frozen=True, slots=True)
class SysRq:
    key: str


@dataclass(frozen=True, slots=True)
class Who:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class AnswerTakeover:
    accept: bool


ControlMessage = Resize | Break | TakeOver | ReadOnly | Key | SysRq | Who | Ping | AnswerTakeover

_NO_ARGUMENTS: dict[str, ControlMessage] = {
    "break": Break(),
    "take_over": TakeOver(),
    "read_only": ReadOnly(),
    "who": Who(),
    "ping": Ping(),
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_control(text: str) -> ControlMessage:
    """Parse one text frame; raises ``BadMessage`` and nothing else."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested thousands deep
        raise BadMessage("not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise BadMessage('expected a JSON object with a "type"')
    kind: str = message["type"]
    if kind in _NO_ARGUMENTS:
        return _NO_ARGUMENTS[kind]
    if kind == "resize":
        cols, rows = message.get("cols"), message.get("rows")
        if not (_is_int(cols) and _is_int(rows)):
            raise BadMessage(f"resize needs integer cols and rows in 1..{MAX_WINDOW_DIMENSION}")
        assert isinstance(cols, int) and isinstance(rows, int)
        if not (1 <= cols <= MAX_WINDOW_DIMENSION and 1 <= rows <= MAX_WINDOW_DIMENSION):
            raise BadMessage(f"resize needs integer cols and rows in 1..{MAX_WINDOW_DIMENSION}")
        return Resize(cols, rows)
    if kind == "key":
        name = message.get("key")
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_KEY_NAME:
            raise BadMessage('key needs a key name such as "F8"')
        return Key(name)
    if kind == "sysrq":
        key = message.get("key")
        if not (isinstance(key, str) and len(key) == 1 and key.isascii() and key.isprintable()):
            raise BadMessage("sysrq needs one printable ASCII character")
        return SysRq(key)
    if kind == "answer_takeover":
        accept = message.get("accept")
        if not isinstance(accept, bool):
            raise BadMessage("answer_takeover needs accept: true or false")
        return AnswerTakeover(accept)
    raise BadMessage(f"unknown type {kind[:30]!r}")
