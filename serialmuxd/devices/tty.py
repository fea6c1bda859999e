"""``tty:PATH``: a physical serial port, or the slave side of a PTY (QEMU ``-serial pty``, socat's ``link=``).

pyserial does what it is good at, the termios set-up: baud, framing, flow control and its ``exclusive`` flock.
It runs in the default executor because opening a USB serial adapter can take the driver a while.  Then the
link keeps a ``dup`` of pyserial's fd and closes pyserial's object: the dup holds the same open file
description (so the same termios state and flock), and we do not carry pyserial's four abort pipes per port.

Notes on the kernel behaviour this relies on (all checked on Linux 6.x):

* pyserial opens with ``O_NONBLOCK`` but leaves ``VMIN=0``; with that, ``read`` on an empty tty returns
  ``b""`` instead of ``EAGAIN``, which looks exactly like a hang-up.  The link sets ``VMIN=1, VTIME=0``.
* When the other side of a PTY goes away (QEMU exits, socat is killed) the slave is hung up: reads return
  ``b""`` and writes fail with ``EIO``.  A USB adapter being unplugged gives ``EIO``/hang-up, then ``ENOENT``
  on the next open.  All of these take the link offline; the open is retried with backoff.
* ``exclusive`` is pyserial's *advisory* ``flock``, not ``TIOCEXCL``: it keeps out other pyserial/flock users,
  and it dies with the process.  ``TIOCEXCL`` on a PTY slave would outlive a crashed daemon for as long as
  QEMU holds the master, locking a restarted (non-root) daemon out of its own console.
* BREAK: ``TIOCSBRK``, then ``TIOCCBRK`` from a ``call_later`` timer, so the loop never sleeps in
  ``tcsendbreak``.  On a PTY both ioctls (and ``tcsendbreak``) return success but do nothing: the pty driver
  has no ``break_ctl``, and the master side sees no break even with ``PARMRK``.  So ``send_break`` reports
  False on a PTY rather than pretending.
* Closing a real UART waits for queued output to drain (``closing_wait``, 30 s by default, forever while the
  peer holds CTS low).  The link discards kernel-queued output (``TCOFLUSH``) before closing a non-PTY tty so
  that ``close`` can never block the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import stat
import termios
from collections.abc import Callable
from typing import Unpack

import serial

from ..config import SerialSettings
from ._fd import FdChannel
from .base import Channel, DeviceListener, LinkOptions, ReconnectingLink, close_fd_quietly, os_error_text

# Linux ioctl numbers; Python's termios module does not export these two.
TIOCSBRK = getattr(termios, "TIOCSBRK", 0x5427)
TIOCCBRK = getattr(termios, "TIOCCBRK", 0x5428)

# Device majors of PTY slaves (Linux Documentation/admin-guide/devices.txt): 136-143 Unix98 /dev/pts/N,
# 3 legacy BSD ttyp*.
_PTY_SLAVE_MAJORS = frozenset({3, *range(136, 144)})

_PARITY = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}

DEFAULT_SERIAL = SerialSettings()


def is_pty_slave(fd: int) -> bool:
    """True if ``fd`` is the slave side of a pseudo-terminal (where BREAK cannot be sent)."""
    st = os.fstat(fd)
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTY_SLAVE_MAJORS


def framing(settings: SerialSettings) -> str:
    """``115200 8N1``-style summary for descriptions."""
    stop = f"{settings.stopbits:g}"
    return f"{settings.baud} {settings.bytesize}{settings.parity[:1].upper()}{stop}"


class TtyChannel(FdChannel):
    """An open tty: ``FdChannel`` plus BREAK and a close that cannot block."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        where: str,
        on_data: Callable[[bytes], None],
        *,
        is_pty: bool,
    ) -> None:
        super().__init__(loop, fd, where, on_data)
        self.is_pty = is_pty
        self._break_end: asyncio.TimerHandle | None = None

    def start_break(self, duration_s: float) -> bool:
        """Assert BREAK now and release it after ``duration_s`` from a timer.  One break at a time."""
        if not self.is_open or self.is_pty or self._break_end is not None:
            return False
        try:
            fcntl.ioctl(self.fd, TIOCSBRK)
        except OSError:
            return False
        self._break_end = self._loop.call_later(max(0.0, duration_s), self._end_break)
        return True

    @property
    def break_active(self) -> bool:
        return self._break_end is not None

    def _end_break(self) -> None:
        if self._break_end is not None:
            self._break_end.cancel()
            self._break_end = None
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.fd, TIOCCBRK)

    def _before_close(self) -> None:
        self._end_break()
        if not self.is_pty:
            with contextlib.suppress(OSError, termios.error):
                termios.tcflush(self.fd, termios.TCOFLUSH)


class TtyLink(ReconnectingLink):
    """``tty:PATH``.  See the module docstring for the kernel behaviour it relies on."""

    def __init__(
        self,
        name: str,
        path: str,
        listener: DeviceListener,
        *,
        serial: SerialSettings = DEFAULT_SERIAL,
        **options: Unpack[LinkOptions],
    ) -> None:
        if not path:
            raise ValueError("tty device needs a path")
        if serial.parity not in _PARITY:
            raise ValueError(f"parity must be one of {sorted(_PARITY)}, got {serial.parity!r}")
        if serial.flow not in ("none", "rtscts", "xonxoff"):
            raise ValueError(f"flow must be none, rtscts or xonxoff, got {serial.flow!r}")
        if serial.bytesize not in (5, 6, 7, 8) or serial.stopbits not in (1, 1.5, 2) or serial.baud <= 0:
            raise ValueError(f"unsupported serial settings {framing(serial)}")
        super().__init__(name, listener, **options)
        self.path = path
        self.serial = serial

    @property
    def description(self) -> str:
        return f"tty:{self.path}"

    def send_break(self, duration_s: float = 0.25) -> bool:
        """BREAK for ``duration_s`` without blocking; False when offline, on a PTY, or while one is active."""
        channel = self._current_channel
        return isinstance(channel, TtyChannel) and channel.start_break(duration_s)

    async def _connect_once(self) -> tuple[Channel, str]:
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, self._open_blocking)
        try:
            fd, real, is_pty = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The thread cannot be interrupted: wait for it so its fd is closed before close() returns.
            with contextlib.suppress(Exception):  # the open failed: nothing to close
                try:
                    close_fd_quietly((await opening)[0])
                except asyncio.CancelledError:  # cancelled again: close it whenever the thread is done
                    opening.add_done_callback(_close_result)
                    raise
            raise
        channel = TtyChannel(loop, fd, self.path, self._data_received, is_pty=is_pty)
        shown = self.path if real == self.path else f"{self.path} → {real}"
        return channel, f"{shown} ({framing(self.serial)}{', pty' if is_pty else ''})"

    def _open_blocking(self) -> tuple[int, str, bool]:
        """In the default executor: open and configure through pyserial.  Returns our own non-blocking fd,
        the path it resolved to and whether it is a PTY."""
        settings = self.serial
        port = serial.Serial(
            port=None,
            baudrate=settings.baud,
            bytesize=settings.bytesize,
            parity=_PARITY[settings.parity],
            stopbits=settings.stopbits,
            xonxoff=settings.flow == "xonxoff",
            rtscts=settings.flow == "rtscts",
            exclusive=settings.exclusive,
        )
        port.port = self.path
        port.open()
        try:
            fd = os.dup(port.fd)  # same open file description: termios state and flock stay with it
        finally:
            port.close()
        try:
            os.set_blocking(fd, False)
            attrs = termios.tcgetattr(fd)
            attrs[6][termios.VMIN] = 1  # so that an empty non-blocking read is EAGAIN, not b"" (= hang-up)
            attrs[6][termios.VTIME] = 0
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            return fd, os.path.realpath(self.path), is_pty_slave(fd)
        except termios.error as exc:
            os.close(fd)
            raise OSError(*exc.args) from None
        except BaseException:
            os.close(fd)
            raise

    def _describe_failure(self, exc: Exception) -> str:
        if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return f"{self.path}: in use by another program (locked)"
        return f"{self.path}: {os_error_text(exc)}"


def _close_result(opening: asyncio.Future[tuple[int, str, bool]]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        close_fd_quietly(opening.result()[0])
