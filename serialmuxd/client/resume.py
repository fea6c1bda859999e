"""Where in the console's stream the client is, and what a resumed session missed.  Pure: no I/O.

Offsets are the daemon's absolute stream offsets (README, "WebSocket protocol").  After ``hello`` the next
binary byte is at the ``from`` the client asked for, else at ``hello.offset``; ``replay_start``,
``replay_end`` and ``missed`` notices carry the offset of the next binary byte, ``restart_gap`` its ``to``;
every binary byte moves it on by one.  (``guest_health`` notices carry an ``offset`` too, but that is where
a line started: it must not move the cursor.)

After a reconnect the daemon sends ``attached``, then ``missed`` (bytes overwritten while we were away)
and/or ``restart_gap`` (the daemon restarted: ``lost`` bytes gone, or unknown after a crash), then the
bytes.  ``Resumption`` collects those and says in one line, at the first byte or the first other notice,
exactly how many bytes were missed.
"""

from __future__ import annotations

from typing import Any

_CURSOR_NOTICES = frozenset({"replay_start", "replay_end", "missed"})
# Notices that may come between "attached" and the resumed bytes without ending the report.
_BEFORE_RESUME = frozenset({"attached", "vm_state", "missed", "restart_gap", "info", "offline", "online"})


class Cursor:
    """The offset of the next binary byte (None before the first ``hello``)."""

    __slots__ = ("offset",)

    def __init__(self, offset: int | None = None) -> None:
        self.offset = offset

    def hello(self, event: dict[str, Any], requested: int | None) -> None:
        offset = requested if requested is not None else event.get("offset")
        if isinstance(offset, int):
            self.offset = offset

    def notice(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        value = event.get("to") if kind == "restart_gap" else event.get("offset")
        if (kind in _CURSOR_NOTICES or kind == "restart_gap") and isinstance(value, int):
            self.offset = value

    def data(self, n: int) -> None:
        if self.offset is not None:
            self.offset += n


class Resumption:
    """What one reconnect missed; ``event``/``data`` return the report line once it is complete."""

    __slots__ = ("_done", "_from", "_missed", "_unknown")

    def __init__(self, from_offset: int) -> None:
        self._from = from_offset
        self._missed = 0
        self._unknown = False
        self._done = False

    def event(self, event: dict[str, Any]) -> str | None:
        if self._done or event.get("type") != "notice":
            return None
        kind = event.get("kind")
        if kind == "missed" and isinstance(event.get("missed"), int):
            self._missed += event["missed"]
            return None
        if kind == "restart_gap":
            lost = event.get("lost")
            if event.get("exact") and isinstance(lost, int):
                self._missed += lost
            else:
                self._unknown = True
            return None
        if kind in _BEFORE_RESUME:
            return None
        return self._report()

    def data(self) -> str | None:
        return None if self._done else self._report()

    def finish(self) -> str | None:
        """The connection ended before anything came: report what is known."""
        return None if self._done else self._report()

    def _report(self) -> str:
        self._done = True
        where = f"resumed from offset {self._from}"
        if self._unknown:
            extra = f" (and {self._missed} more)" if self._missed else ""
            return (
                f"{where}: serialmuxd restarted after a crash, so how much output was lost is unknown{extra}"
            )
        if self._missed:
            return f"{where}: {self._missed} bytes of console output were missed"
        return f"{where}: no bytes missed"
