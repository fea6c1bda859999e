"""Writing to the terminal: guest bytes (all of them, however the write is split) and the client's
``[serialmux] ...`` status lines on stderr, which in raw mode start on a line of their own."""

from __future__ import annotations

import os
import select
import sys

from .visible import visible


class StatusLines:
    """Status lines on stderr; in raw mode each starts on a line of its own (CR LF)."""

    def __init__(self, raw: bool) -> None:
        self.raw = raw
        self.at_line_start = True  # of the terminal both streams share

    def guest_output(self, data: bytes) -> None:
        if data:
            self.at_line_start = data.endswith((b"\n", b"\r"))

    def show(self, text: str) -> None:
        # Notices can quote the guest (a guest-health line): its escape sequences are shown, not obeyed.
        text = visible(text.encode("utf-8", "replace"))
        if self.raw:
            lead = "" if self.at_line_start else "\r\n"
            line = lead + "\r\n".join(f"[serialmux] {part}" for part in text.split("\n")) + "\r\n"
        else:
            line = "\n".join(f"[serialmux] {part}" for part in text.split("\n")) + "\n"
        write_all(sys.stderr.fileno(), line.encode("utf-8", "replace"))
        self.at_line_start = True

    def prompt(self, text: str) -> None:
        """A question whose answer is the next key: no line end after it."""
        lead = "" if self.at_line_start or not self.raw else "\r\n"
        write_all(sys.stderr.fileno(), f"{lead}[serialmux] {visible(text.encode())} ".encode())
        self.at_line_start = False


def write_all(fd: int, data: bytes) -> None:
    """All of ``data``; waits (blocking) when the terminal is full, also on a non-blocking descriptor."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])
