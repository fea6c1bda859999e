"""Device links: the daemon's side of a guest's COM1.

A link owns one device (tty, unix socket, tcp socket or a program on a PTY).  It reads in large chunks with
callback-style I/O (``loop.add_reader`` on fds, ``asyncio.Protocol`` on sockets: streams cost ~95 µs per
keystroke round trip, see STACK.md) and hands every byte to its ``DeviceListener`` synchronously.  When the
device goes away the link reports ``device_offline`` and reconnects with exponential backoff until closed
(the delays are pure policy in ``core.backoff``); listeners (the port hub) keep their clients attached
meanwhile.

Input for the device goes through ``write``: it is written immediately when the device accepts it, the rest
is buffered; above ``write_buffer_limit`` the link calls ``device_write_paused`` (the hub then pauses
reading from the writer's client, which paces a paste at the device's drain rate) and
``device_write_resumed`` once the buffer has drained to a quarter of the limit.

Theory of operation (``ReconnectingLink``)
------------------------------------------
One task per link runs the reconnect loop::

    CONNECTING --_connect_once() ok--> ONLINE --channel lost--> OFFLINE --backoff--> CONNECTING ...
    CONNECTING --_connect_once() raised--> OFFLINE --backoff--> CONNECTING ...
    any state --close()--> CLOSED (terminal)

Each successful attempt yields a ``Channel``: the open fd or transport of that one connection.  A channel
never outlives its connection and carries its own buffers, so a late callback from an old connection cannot
touch a new one (the link ignores reports from any channel but the current one).

Listener contract, all on the event loop:

* ``device_online`` once per connection; it is always followed by exactly one ``device_offline`` unless the
  link is closed first.  ``close()`` itself reports nothing: whoever closes the link knows.
* A failed attempt reports ``device_offline(reason)`` only when the reason differs from the last one
  reported, so a device that stays away for an hour costs its clients one message, not one per retry.
* ``device_data_received`` is called straight from the read callback (no task, no queue), through the
  same guard as every other listener call (below).
* ``device_write_paused`` is called from inside ``write`` when the buffer crosses the limit (like asyncio's
  ``pause_writing``); ``device_write_resumed`` when it has drained, and also when the connection is lost with
  the writer paused, so the writer is never left stuck.  Input still buffered when the connection is lost is
  discarded and counted in the offline reason.

A listener that raises
----------------------
Every listener call goes through one guard, ``ReconnectingLink._notify``: the device's data, online,
offline, write paused and write resumed alike, on every backend.  An ``Exception`` raised by the listener
is a bug on our side of the link, not a fault of the device, so it has one outcome everywhere:

* it is logged (``device listener failed``, with the port, the callback and the traceback), rate-limited
  per link: the first at once, later ones only every ``LISTENER_ERROR_LOG_INTERVAL_S``, each saying how many
  were not logged in between;
* it is counted in the link's ``listener_errors``;
* nothing else happens: the device stays online, the link keeps reading and delivers the next chunk as
  usual, and the state is not changed.  The chunk that was being delivered is not delivered again.

A bug in one client's fan-out must not take the console away from everyone, and the outcome must not
depend on the transport: before the guard covered data, asyncio closed a socket whose protocol raised in
``data_received`` (the console went offline and reconnected) while an fd's reader callback only logged.
``BaseException`` (``KeyboardInterrupt``, ``SystemExit``) is not caught.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import os
import random
import traceback
from collections.abc import Callable
from typing import Protocol, TypedDict

import structlog

from ..core.backoff import Backoff, BackoffPolicy

log = structlog.get_logger("serialmuxd.devices")


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


# --------------------------------------------------------------------------------------------------------
# Shared machinery for the backends.  Not part of the public contract above; backends and tests use it.
# --------------------------------------------------------------------------------------------------------

STABLE_CONNECTION_S = 5.0
"""A connection that lasted at least this long resets the backoff: the device was really back, so the next
loss is a new incident and deserves a quick retry rather than the current (possibly maximal) delay."""


RECONNECT_JITTER = 0.2
"""Each reconnect delay is shortened by up to this fraction (see ``core.backoff``): links that failed
together, say every port of one terminal server, do not retry in lockstep."""

LISTENER_ERROR_LOG_INTERVAL_S = 60.0
"""At most one ``device listener failed`` log line per link per interval: a listener that raises on every
chunk of a busy console must not turn the log into a copy of the console."""


def os_error_text(exc: BaseException) -> str:
    """An exception as a short lower-case phrase: ``"connection refused"``, ``"no such file or directory"``.

    Prefers ``os.strerror(errno)`` because libraries wrap errors in messages of their own that repeat the
    path and the errno number; pyserial even drops the errno when termios fails (``"could not configure
    port: (25, 'Inappropriate ioctl for device')"``), so the exception chain is searched for one.  Resolver
    errors (negative errno) keep their ``strerror``.
    """
    errno_ = _find_errno(exc)
    if errno_ is not None:
        text = os.strerror(errno_)
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    else:
        text = str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def _find_errno(exc: BaseException) -> int | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            if current.errno is not None and current.errno > 0:
                return current.errno
        elif len(current.args) == 2 and isinstance(current.args[0], int) and current.args[0] > 0:
            return current.args[0]  # termios.error is (errno, message) without being an OSError
        current = current.__cause__ or current.__context__
    return None


class ChannelOwner(Protocol):
    """What a ``Channel`` reports to (the link).  Never called synchronously from inside ``Channel.write``."""

    def channel_lost(self, channel: Channel, reason: str) -> None: ...

    def channel_drained(self, channel: Channel) -> None: ...


class Channel(abc.ABC):
    """The I/O of one established connection: an fd with ``add_reader`` or a socket ``Protocol``.

    Life cycle: created by ``_connect_once`` (no callbacks yet) → ``activate(owner)`` starts reading → zero
    or more ``write`` → the channel calls ``owner.channel_lost`` once when the device goes away → the owner
    calls ``close()``.  ``close()`` may also come first (the link is closing); after it nothing is reported.
    """

    @abc.abstractmethod
    def activate(self, owner: ChannelOwner) -> None:
        """Start reading.  A loss that happened before activation is reported now (via ``call_soon``)."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Write or buffer ``data``.  Never raises; a failure is reported later through ``channel_lost``."""

    @property
    @abc.abstractmethod
    def buffered_bytes(self) -> int:
        """Input accepted by ``write`` and not yet handed to the kernel."""

    @abc.abstractmethod
    def close(self) -> tuple[int, bool]:
        """Stop all I/O and release the fd/transport now.  Returns ``(discarded_bytes, exact)``.

        ``exact`` is False when part of the count is an upper bound (a socket transport that dropped its
        buffer on a reset without saying how much of it had been sent).
        """

    async def shutdown(self) -> None:
        """Finish releasing everything for ``DeviceLink.close``, after ``close()`` (which it may repeat).
        Backends override it to terminate and reap a child or to await a transport's closing."""
        self.close()


class LinkOptions(TypedDict, total=False):
    """Keyword arguments every backend passes through to ``ReconnectingLink``."""

    write_buffer_limit: int
    reconnect_initial_s: float
    reconnect_max_s: float
    reconnect_jitter: float
    stable_after_s: float


class ReconnectingLink(DeviceLink):
    """The reconnect loop, the write-buffer hysteresis and the listener bookkeeping shared by all backends.

    A backend implements ``_connect_once`` (open the device, return a ``Channel`` and a description, or raise)
    and may override ``_describe_failure`` to turn its exceptions into human reasons.
    """

    def __init__(
        self,
        name: str,
        listener: DeviceListener,
        *,
        write_buffer_limit: int = 65536,
        reconnect_initial_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        reconnect_jitter: float = RECONNECT_JITTER,
        stable_after_s: float = STABLE_CONNECTION_S,
    ) -> None:
        if write_buffer_limit < 0:
            raise ValueError(f"write_buffer_limit must be >= 0, got {write_buffer_limit!r}")
        self.name = name
        self._listener = listener
        self._write_buffer_limit = write_buffer_limit
        # Validates early, in the caller.  random.random: jitter needs spread, not unpredictability.
        self._backoff = Backoff(
            BackoffPolicy(reconnect_initial_s, reconnect_max_s, reconnect_jitter), random.random
        )
        self._stable_after_s = stable_after_s
        self._state = LinkState.CONNECTING
        self._task: asyncio.Task[None] | None = None
        self._channel: Channel | None = None
        self._lost: asyncio.Future[None] | None = None  # resolved when the current channel is gone
        self._write_paused = False
        self._last_reason: str | None = None  # last offline reason reported (without the discard note)
        self._closed: asyncio.Event | None = None
        self.listener_errors = 0
        """Exceptions the listener raised from any callback (see "A listener that raises")."""
        self._listener_error_logged_at: float | None = None
        self._listener_errors_unlogged = 0

    # ---- DeviceLink ----------------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def write_buffer_size(self) -> int:
        channel = self._channel
        return channel.buffered_bytes if channel is not None else 0

    def start(self) -> None:
        """Start the reconnect task (needs a running loop).  Later calls, or one after close, do nothing."""
        if self._task is not None or self._closed is not None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"serialmuxd device {self.name} ({self.description})"
        )

    def write(self, data: bytes) -> bool:
        channel = self._channel
        if self._state is not LinkState.ONLINE or channel is None:
            return False
        if data:
            channel.write(data)
            if not self._write_paused and channel.buffered_bytes > self._write_buffer_limit:
                self._write_paused = True
                self._notify(self._listener.device_write_paused)
        return True

    def send_break(self, duration_s: float = 0.25) -> bool:
        """Not supported unless the backend overrides it (only ``tty`` can)."""
        return False

    async def close(self) -> None:
        if self._closed is not None:  # a close is done or in progress: wait for it, don't repeat it
            await self._closed.wait()
            return
        self._closed = asyncio.Event()
        self._state = LinkState.CLOSED
        # Detach and stop the channel's I/O first, synchronously: from here on no callback can reach the
        # listener or move the state away from CLOSED, even while we wait for the task below.
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        try:
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # close() itself is being cancelled, not just the task we cancelled
            if channel is not None:
                await channel.shutdown()  # what cannot be done synchronously: reap a child, await a socket
        finally:
            self._closed.set()

    # ---- for backends --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _connect_once(self) -> tuple[Channel, str]:
        """Open the device once.  Return the channel (not yet activated) and a description for
        ``device_online``; raise (typically ``OSError``) when the device is not there.  Must release
        everything it opened if it raises or is cancelled."""

    def _describe_failure(self, exc: Exception) -> str:
        """A human reason for a failed ``_connect_once``: ``"<device>: <what went wrong>"``."""
        return f"{self.description}: {os_error_text(exc)}"

    def _data_received(self, data: bytes) -> None:
        """What every channel calls with the device's bytes: to the listener, through the guard."""
        self._notify(self._listener.device_data_received, data)

    @property
    def _current_channel(self) -> Channel | None:
        """The channel while ONLINE (backends use it for break and window size)."""
        return self._channel

    # ---- ChannelOwner --------------------------------------------------------------------------------

    def channel_lost(self, channel: Channel, reason: str) -> None:
        if channel is not self._channel:
            return  # a late report from a connection we already dropped
        self._channel = None
        discarded, exact = channel.close()
        self._state = LinkState.OFFLINE
        self._last_reason = reason
        if discarded:
            reason += f"; {'' if exact else 'up to '}{discarded} bytes of input discarded"
        self._notify(self._listener.device_offline, reason)
        if self._write_paused:
            self._write_paused = False
            self._notify(self._listener.device_write_resumed)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def channel_drained(self, channel: Channel) -> None:
        if (
            channel is self._channel
            and self._write_paused
            and channel.buffered_bytes <= self._write_buffer_limit // 4
        ):
            self._write_paused = False
            self._notify(self._listener.device_write_resumed)

    # ---- the loop ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._state = LinkState.CONNECTING
            try:
                channel, description = await self._connect_once()
            except Exception as exc:  # anything the open raised is a reason to report, then retry
                self._state = LinkState.OFFLINE
                reason = self._describe_failure(exc)
                if reason != self._last_reason:
                    self._last_reason = reason
                    self._notify(self._listener.device_offline, reason)
            else:
                self._lost = loop.create_future()
                self._channel = channel
                self._state = LinkState.ONLINE
                self._last_reason = None
                connected_at = loop.time()
                channel.activate(self)
                self._notify(self._listener.device_online, description)
                try:
                    await self._lost
                finally:
                    self._lost = None
                if loop.time() - connected_at >= self._stable_after_s:
                    self._backoff.reset()
            await asyncio.sleep(self._backoff.next_delay_s())

    def _notify(self, callback: Callable[..., None], *args: str | bytes) -> None:
        """Call a listener method.  The one guard for every listener call; see "A listener that raises"."""
        try:
            callback(*args)
        except Exception as exc:
            self._listener_failed(callback.__name__, exc)

    def _listener_failed(self, callback_name: str, exc: Exception) -> None:
        self.listener_errors += 1
        now = asyncio.get_running_loop().time()
        logged_at = self._listener_error_logged_at
        if logged_at is not None and now - logged_at < LISTENER_ERROR_LOG_INTERVAL_S:
            self._listener_errors_unlogged += 1
            return
        self._listener_error_logged_at = now
        unlogged, self._listener_errors_unlogged = self._listener_errors_unlogged, 0
        # The traceback as a field of its own: both renderers (console and JSON) then show it whole.
        log.error(
            "device listener failed",
            port=self.name,
            device=self.description,
            callback=callback_name,
            error=repr(exc),
            traceback="".join(traceback.format_exception(exc)),
            listener_errors=self.listener_errors,
            unlogged_since_last=unlogged,
        )


def close_fd_quietly(fd: int) -> None:
    """Close an fd we own during cleanup, where a second error would only hide the first."""
    with contextlib.suppress(OSError):
        os.close(fd)
