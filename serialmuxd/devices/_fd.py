"""A ``Channel`` over a non-blocking fd (a tty, or the master side of a PTY): ``add_reader`` + ``os.read``.

Why not ``connect_read_pipe`` or pyserial-asyncio: a raw fd read in 64 KiB chunks straight from the reader
callback was the fastest path measured (~90 MiB/s vs ~40 MiB/s with 1 KiB reads, research/ecosystem.md §1)
and has no task wake-up per keystroke.  Writes go out with ``os.write`` at once; only what the kernel refuses
is buffered and flushed from an ``add_writer`` callback.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from .base import Channel, ChannelOwner, close_fd_quietly, os_error_text

READ_SIZE = 64 * 1024


class FdChannel(Channel):
    """One open fd.  ``where`` names the device in reasons (``"/dev/pts/7: input/output error"``)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, where: str, on_data: Callable[[bytes], None]
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._where = where
        self._on_data = on_data
        self._owner: ChannelOwner | None = None
        self._out = bytearray()  # input the kernel has not taken yet
        self._reading = False
        self._writing = False  # add_writer registered
        self._failed = False  # I/O stopped; later writes are only counted as discarded
        self._closed = False

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def is_open(self) -> bool:
        return not self._closed

    def activate(self, owner: ChannelOwner) -> None:
        self._owner = owner
        self._loop.add_reader(self._fd, self._read_ready)
        self._reading = True

    @property
    def buffered_bytes(self) -> int:
        return len(self._out)

    def write(self, data: bytes) -> None:
        if self._out or self._failed or self._closed:
            self._out += data  # keep order behind what is already waiting (or count it as discarded)
            return
        try:
            written = os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError as exc:
            self._out += data
            # Not synchronously: the caller is inside DeviceLink.write and must not see device_offline there.
            self._device_gone(f"{self._where}: {os_error_text(exc)}", soon=True)
            return
        if written < len(data):
            self._out += memoryview(data)[written:]
            self._loop.add_writer(self._fd, self._write_ready)
            self._writing = True

    def close(self) -> tuple[int, bool]:
        if self._closed:
            return 0, True
        self._stop_io()
        self._closed = True
        discarded = len(self._out)
        self._out.clear()
        self._before_close()
        close_fd_quietly(self._fd)
        return discarded, True

    # ---- hooks -----------------------------------------------------------------------------------------

    def _before_close(self) -> None:
        """Last chance to use the fd (tty: end a break, drop kernel output so close() cannot block)."""

    def _device_gone(self, reason: str, *, soon: bool = False) -> None:
        """Reading hit EOF/EIO or a write failed: stop I/O and report the loss (once)."""
        if self._failed:
            return
        self._failed = True
        self._stop_io()
        owner = self._owner
        if owner is None:
            return
        if soon:
            self._loop.call_soon(owner.channel_lost, self, reason)
        else:
            owner.channel_lost(self, reason)

    def _eof_reason(self) -> str:
        return f"{self._where}: hung up"

    # ---- callbacks -------------------------------------------------------------------------------------

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._device_gone(f"{self._where}: {os_error_text(exc)}")
            return
        if data:
            self._on_data(data)
        else:
            self._device_gone(self._eof_reason())

    def _write_ready(self) -> None:
        try:
            written = os.write(self._fd, self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._device_gone(f"{self._where}: {os_error_text(exc)}")
            return
        del self._out[:written]  # O(1) amortised: CPython bytearrays delete from the front cheaply
        if not self._out:
            self._loop.remove_writer(self._fd)
            self._writing = False
        if self._owner is not None:
            self._owner.channel_drained(self)

    def _stop_io(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
