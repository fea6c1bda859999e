"""The local terminal during ``serialmux connect``: raw mode while attached, its size (and SIGWINCH), and
the settings restored on every way out -- a normal return, an exception, SIGTERM, SIGHUP, SIGINT.

``RawTerminal`` is a context manager: it saves ``tcgetattr`` of stdin, switches to raw mode, and restores
the saved settings in ``__exit__`` (which runs on exceptions and on the cancellation the signal handlers
cause).  When stdin is not a terminal nothing is changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import sys
import termios
import tty
from collections.abc import Callable
from types import TracebackType

_Attrs = list[int | list[bytes | int]]
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def window_size(fd: int) -> tuple[int, int] | None:
    """(cols, rows) of the terminal on ``fd``, or None."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (cols, rows) if cols and rows else None


class RawTerminal:
    def __init__(self, fd: int | None = None) -> None:
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.is_tty = os.isatty(self.fd)
        self._saved: _Attrs | None = None

    def __enter__(self) -> RawTerminal:
        if self.is_tty:
            self._saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSADRAIN)
        return self

    def restore(self) -> None:
        if self._saved is not None:
            with contextlib.suppress(termios.error, OSError):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()


class Signals:
    """SIGWINCH calls ``on_resize``; SIGTERM/SIGHUP/SIGINT call ``on_stop`` with the signal number.  Only
    in the loop's own thread; removed again by ``close``."""

    def __init__(self, on_resize: Callable[[], None], on_stop: Callable[[int], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._installed: list[int] = []
        self._loop.add_signal_handler(signal.SIGWINCH, on_resize)
        self._installed.append(signal.SIGWINCH)
        for signum in STOP_SIGNALS:
            self._loop.add_signal_handler(signum, on_stop, int(signum))
            self._installed.append(signum)

    def close(self) -> None:
        for signum in self._installed:
            self._loop.remove_signal_handler(signum)
        self._installed.clear()
