"""Device links: the daemon's side of a guest's COM1.

A link owns one device (tty, unix socket, tcp socket or a program on a PTY).  It reads in large chunks with
callback-style I/O (``loop.add_reader`` on fds, ``asyncio.Protocol`` on sockets: streams cost ~95 µs per
keystroke round trip, see STACK.md) and hands every byte to its ``DeviceListener`` synchronously.  When the
device goes away the link reports ``device_offline`` and reconnects with exponential backoff until closed;
listeners (the port hub) keep their clients attached meanwhile.

Input for the device goes through ``write``: it is written immediately when the device accepts it, the rest
is buffered; above ``write_buffer_limit`` the link calls ``device_write_paused`` (the hub then pauses reading
from the writer's client, which paces a paste at the device's drain rate) and ``device_write_resumed`` once the
buffer has drained below a quarter of the limit.
"""

from __future__ import annotations

import abc
import enum
from typing import Protocol


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"  # lost or never reached; a reconnect is scheduled
    CLOSED = "closed"  # close() was called; terminal


class DeviceListener(Protocol):
    """What a link reports to; implemented by ``hub.PortHub``.  All calls happen on the event loop."""

    def device_data_received(self, data: bytes) -> None: ...

    def device_online(self, description: str) -> None: ...

    def device_offline(self, reason: str) -> None: ...

    def device_write_paused(self) -> None: ...

    def device_write_resumed(self) -> None: ...


class DeviceLink(abc.ABC):
    """Base of every backend.  Subclasses implement ``_connect_once`` and the I/O hooks."""

    @abc.abstractmethod
    def start(self) -> None:
        """Begin connecting (in a task the link owns); returns at once.  Outcomes arrive via the listener."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop reconnecting, close the device, cancel and await every task the link owns.  Idempotent."""

    @abc.abstractmethod
    def write(self, data: bytes) -> bool:
        """Queue input for the device.  Returns False (nothing queued) when the device is not online."""

    @abc.abstractmethod
    def send_break(self, duration_s: float = 0.25) -> bool:
        """Send a serial BREAK (tty: tcsendbreak; others: not supported).  False if not done."""

    def set_window_size(self, cols: int, rows: int) -> None:  # noqa: B027 - optional hook, no-op by default
        """Tell a PTY-backed device (exec) the client's window size; other devices ignore it."""

    @property
    @abc.abstractmethod
    def state(self) -> LinkState: ...

    @property
    @abc.abstractmethod
    def write_buffer_size(self) -> int:
        """Bytes accepted by ``write`` but not yet handed to the device."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Human-readable device name for messages, e.g. ``unix:/run/vm1.sock``."""
