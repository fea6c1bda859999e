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

Input queued before the open
----------------------------
pyserial's ``open()`` flushes the input queue (``TCIFLUSH``).  The link stops it and decides itself:

* **PTY: keep it.**  Whatever the other side wrote into the master while nobody had the slave open is real
  console output (a guest's boot lines, the start of a panic), held by the kernel (about 18 KiB on Linux
  6.x) until someone reads it; the daemon starting late or restarting must not throw it away.  (QEMU's own
  ``-serial pty`` drops guest output while no one holds the slave, so there the gain is the window between
  our open and the first read; socat and other producers write into the master regardless.)
* **Real UART or USB adapter: flush it, after the termios set-up.**  A UART receives nothing while it is
  closed (the driver shuts the port down on the last close and clears its FIFO on the next open), so what is
  queued at open time arrived during the open itself, possibly at the previous speed and framing, or sat in
  a USB adapter's own FIFO since long before: stale or garbled either way.  That is pyserial's behaviour,
  kept for the devices it was meant for.

Reconnecting only to the same terminal
--------------------------------------
A PTY is its master: when the program holding it (QEMU, socat) closes it, that terminal is gone for good,
since a Unix98 master cannot be reopened, and the kernel hands its number to the next ``/dev/ptmx`` open,
any program's (a login shell's, say).  Nothing in ``stat`` tells the successor apart: ``st_rdev`` and the
devpts inode number (N + 3) come with the number, and ``st_ctime`` is the allocation time at the kernel's
coarse clock, identical for a number reallocated within the same tick (197 of 200 immediate reuses here) and
changed by any ``chmod``/``chown``.  So the link does not try to recognise "the same terminal" after a loss;
it follows names:

* a PTY reached without a symlink (``tty:/dev/pts/7``) is never reopened once lost: the port stays offline
  with a reason that says so and asks for a stable name;
* a PTY reached through symlinks (socat's ``link=``, a udev rule, an operator's own link) is reopened once
  the name has been re-pointed, i.e. once some symlink on the way is not the one the lost terminal was
  reached through (another inode, ctime or target).  A name still pointing where it did, left behind by an
  owner that was killed with ``SIGKILL``, is stale: the reason says so and the link waits for the owner to
  re-create it.

The check runs before the open, because opening is not harmless: pyserial's set-up would put the other
program's terminal into raw mode at our speed.  Non-PTY devices (UARTs, USB adapters) are reopened by name
as before: their node belongs to the hardware, not to whoever allocated a number last.  The memory of a
lost PTY lives in the link, so a link created anew (a console disabled and enabled) starts from the name.
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
from dataclasses import dataclass
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

_MAX_SYMLINK_HOPS = 40  # the kernel's own limit (MAXSYMLINKS) for one path walk

SymlinkHop = tuple[int, int, int, str]
"""One symlink on the way to the device: ``(st_dev, st_ino, st_ctime_ns, target)``."""


def is_pty_slave(fd: int) -> bool:
    """True if ``fd`` is the slave side of a pseudo-terminal (where BREAK cannot be sent)."""
    st = os.fstat(fd)
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTY_SLAVE_MAJORS


def symlink_chain(path: str) -> tuple[SymlinkHop, ...]:
    """The symlinks followed from ``path`` to the node it names, outermost first; ``()`` for a plain node.

    Only the last component is followed hop by hop: a symlinked directory on the way does not name a
    terminal.  A dangling or unreadable link ends the chain (the open then reports why).
    """
    hops: list[SymlinkHop] = []
    current = path
    for _ in range(_MAX_SYMLINK_HOPS):
        try:
            st = os.lstat(current)
            if not stat.S_ISLNK(st.st_mode):
                break
            target = os.readlink(current)
        except OSError:
            break
        hops.append((st.st_dev, st.st_ino, st.st_ctime_ns, target))
        current = os.path.join(os.path.dirname(current), target)  # an absolute target replaces it all
    return tuple(hops)


@dataclass(frozen=True, slots=True)
class OpenedTty:
    """What one successful open found: our fd, where the name led, and how it got there."""

    fd: int
    real_path: str
    is_pty: bool
    chain: tuple[SymlinkHop, ...]


class PtyGoneError(Exception):
    """The name leads to a PTY number whose terminal went away; the message is the offline reason."""


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
        opened: OpenedTty | None = None,
    ) -> None:
        super().__init__(loop, fd, where, on_data)
        self.is_pty = is_pty
        self.opened = opened  # how the link got here; remembered by the link if this PTY is lost
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
        # The open that led to a PTY we have since lost; see "Reconnecting only to the same terminal".
        # Written on the loop only while no attempt runs; read by the attempt's executor thread.
        self._lost_pty: OpenedTty | None = None

    @property
    def description(self) -> str:
        return f"tty:{self.path}"

    def channel_lost(self, channel: Channel, reason: str) -> None:
        if (
            channel is self._current_channel
            and isinstance(channel, TtyChannel)
            and channel.is_pty
            and channel.opened is not None
        ):
            self._lost_pty = channel.opened
        super().channel_lost(channel, reason)

    def send_break(self, duration_s: float = 0.25) -> bool:
        """BREAK for ``duration_s`` without blocking; False when offline, on a PTY, or while one is active."""
        channel = self._current_channel
        return isinstance(channel, TtyChannel) and channel.start_break(duration_s)

    async def _connect_once(self) -> tuple[Channel, str]:
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, self._open_blocking)
        try:
            opened = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The thread cannot be interrupted: wait for it so its fd is closed before close() returns.
            with contextlib.suppress(Exception):  # the open failed: nothing to close
                try:
                    close_fd_quietly((await opening).fd)
                except asyncio.CancelledError:  # cancelled again: close it whenever the thread is done
                    opening.add_done_callback(_close_result)
                    raise
            raise
        self._lost_pty = None  # a terminal reached through a re-pointed name: the old one is history
        channel = TtyChannel(
            loop, opened.fd, self.path, self._data_received, is_pty=opened.is_pty, opened=opened
        )
        real = opened.real_path
        shown = self.path if real == self.path else f"{self.path} → {real}"
        return channel, f"{shown} ({framing(self.serial)}{', pty' if opened.is_pty else ''})"

    def _refuse_lost_pty(self, chain: tuple[SymlinkHop, ...]) -> None:
        """Raise ``PtyGoneError`` when ``chain`` is the way to the PTY we lost (see the module docstring)."""
        lost = self._lost_pty
        if lost is None or chain != lost.chain:
            return
        if not chain:
            raise PtyGoneError(
                f"PTY {self.path} went away; the number may now belong to another program; "
                "configure a stable name such as socat's link= to reconnect"
            )
        raise PtyGoneError(
            f"{self.path} still points to {lost.real_path}, a PTY that went away; the number may now "
            f"belong to another program; waiting for {self.path} to be re-created"
        )

    def _open_blocking(self) -> OpenedTty:
        """In the default executor: open and configure through pyserial.  Returns our own non-blocking fd,
        the path it resolved to, whether it is a PTY and the symlinks that led there."""
        chain = symlink_chain(self.path)
        self._refuse_lost_pty(chain)
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
        # pyserial's open() ends with _reset_input_buffer() (TCIFLUSH).  Shadowed on this instance: whether
        # to drop what is queued is decided below, once we know what the device is (module docstring,
        # "Input queued before the open").  test_devices checks that queued PTY output survives the open,
        # so a pyserial that renames the method is noticed.
        port._reset_input_buffer = _keep_queued_input
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
            is_pty = is_pty_slave(fd)
            if not is_pty:
                termios.tcflush(fd, termios.TCIFLUSH)  # a UART's stale or mis-clocked bytes, not the guest's
            return OpenedTty(fd, os.path.realpath(self.path), is_pty, chain)
        except termios.error as exc:
            os.close(fd)
            raise OSError(*exc.args) from None
        except BaseException:
            os.close(fd)
            raise

    def _describe_failure(self, exc: Exception) -> str:
        if isinstance(exc, PtyGoneError):
            return str(exc)
        if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return f"{self.path}: in use by another program (locked)"
        return f"{self.path}: {os_error_text(exc)}"


def _keep_queued_input() -> None:
    """Stands in for pyserial's input flush during ``open()``."""


def _close_result(opening: asyncio.Future[OpenedTty]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        close_fd_quietly(opening.result().fd)
