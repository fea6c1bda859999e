"""Named keys → bytes, per key profile (the API's ``/keys`` and the console page's function-key menu).

Windows EMS/SAC and its boot menus read VT100+ function keys (F8 = ESC 8: the Advanced Boot Options key the
Azure console has a button for); Linux's terminfo for xterm expects the xterm sequences.
"""

from __future__ import annotations

_COMMON: dict[str, bytes] = {
    "Enter": b"\r",
    "Escape": b"\x1b",
    "Tab": b"\t",
    "Backspace": b"\x7f",
    "Up": b"\x1b[A",
    "Down": b"\x1b[B",
    "Right": b"\x1b[C",
    "Left": b"\x1b[D",
    "Home": b"\x1b[H",
    "End": b"\x1b[F",
    "Insert": b"\x1b[2~",
    "Delete": b"\x1b[3~",
    "PageUp": b"\x1b[5~",
    "PageDown": b"\x1b[6~",
    "Ctrl-C": b"\x03",
    "Ctrl-D": b"\x04",
    "Ctrl-Z": b"\x1a",
}

_XTERM_F = [b"\x1bOP", b"\x1bOQ", b"\x1bOR", b"\x1bOS"] + [
    b"\x1b[%d~" % n for n in (15, 17, 18, 19, 20, 21, 23, 24)
]
_VT100_PLUS_F = [
    b"\x1b" + c for c in (b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9", b"0", b"!", b"@")
]

PROFILES: dict[str, dict[str, bytes]] = {
    "xterm": {**_COMMON, **{f"F{i + 1}": seq for i, seq in enumerate(_XTERM_F)}},
    "vt100+": {**_COMMON, **{f"F{i + 1}": seq for i, seq in enumerate(_VT100_PLUS_F)}},
}

MAX_KEYS_PER_REQUEST = 64


def key_bytes(profile: str, name: str) -> bytes:
    """The bytes for key ``name`` in ``profile``; ``KeyError`` names the unknown key."""
    try:
        return PROFILES[profile][name]
    except KeyError:
        raise KeyError(name) from None


def key_names(profile: str) -> list[str]:
    return sorted(PROFILES[profile])
