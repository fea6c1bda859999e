"""``unix:PATH`` and ``tcp:HOST:PORT``: a QEMU socket chardev or a terminal server's raw TCP port.

Raw bytes only.  A terminal server's telnet or RFC 2217 port (option negotiation, IAC escaping, remote
baud/break control) is out of scope: point the link at its raw TCP port.  There is no BREAK over a socket
chardev (QEMU has no way to receive one there), so ``send_break`` is always False.

Reads use an ``asyncio.Protocol`` (callback style, no task per read; see STACK.md's hot-path table).  Writes
keep a queue of our own in front of the transport and hand it over in chunks of a quarter of
``write_buffer_limit`` whenever the transport's own buffer is empty (its watermarks are set to 0, so
``resume_writing`` means exactly "empty").  Two reasons: the link's pause/resume hysteresis is computed on the
total, and when a reset makes asyncio drop its buffer without saying how much of it had been sent, the
unknown part is at most one chunk: the offline reason then says "up to N bytes of input discarded".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Unpack, cast

from .base import Channel, ChannelOwner, DeviceListener, LinkOptions, ReconnectingLink, os_error_text

CONNECT_TIMEOUT_S = 10.0
"""A SYN into a black hole would otherwise take the kernel ~2 minutes to give up on."""

# Dead-peer detection for a quiet console: 30 s idle, then 3 probes 10 s apart (~1 minute to notice).
TCP_KEEPALIVE = ((socket.TCP_KEEPIDLE, 30), (socket.TCP_KEEPINTVL, 10), (socket.TCP_KEEPCNT, 3))

MIN_CHUNK = 4096


class SocketChannel(Channel, asyncio.Protocol):
    """One socket connection: the ``Protocol`` for ``create_(unix_)connection`` and the link's channel."""

    def __init__(self, where: str, on_data: Callable[[bytes], None], *, chunk_size: int) -> None:
        self._where = where
        self._on_data = on_data
        self._chunk_size = max(MIN_CHUNK, chunk_size)
        self._owner: ChannelOwner | None = None
        self._transport: asyncio.Transport | None = None
        self._queue = bytearray()  # ours, in front of the transport
        self._transport_busy = False  # the transport's buffer is not empty
        self._handed_pending = 0  # transport buffer right after the last hand-over: an upper bound later
        self._transport_dropped = False  # connection_lost seen: asyncio has discarded its buffer
        self._lost_reason: str | None = None
        self._closed = False
        self._connection_lost_seen: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        transport = self._transport
        self._connection_lost_seen = asyncio.get_running_loop().create_future()
        transport.set_write_buffer_limits(high=0, low=0)
        transport.pause_reading()  # until activate(): no data may reach the listener before device_online

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def eof_received(self) -> bool:
        self._gone(f"{self._where}: connection closed by peer")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport_dropped = True
        if self._connection_lost_seen is not None and not self._connection_lost_seen.done():
            self._connection_lost_seen.set_result(None)
        if exc is None:
            self._gone(f"{self._where}: connection closed")
        else:
            self._gone(f"{self._where}: {os_error_text(exc)}")

    def pause_writing(self) -> None:
        self._transport_busy = True

    def resume_writing(self) -> None:
        self._transport_busy = False
        self._handed_pending = 0
        self._feed()
        if self._owner is not None:
            self._owner.channel_drained(self)

    # ---- Channel ---------------------------------------------------------------------------------------

    def activate(self, owner: ChannelOwner) -> None:
        self._owner = owner
        if self._lost_reason is not None:
            asyncio.get_running_loop().call_soon(owner.channel_lost, self, self._lost_reason)
        elif self._transport is not None:
            self._transport.resume_reading()

    @property
    def buffered_bytes(self) -> int:
        in_transport = 0
        if self._transport is not None and not self._transport_dropped:
            in_transport = self._transport.get_write_buffer_size()
        return len(self._queue) + in_transport

    def write(self, data: bytes) -> None:
        self._queue += data
        self._feed()

    def close(self) -> tuple[int, bool]:
        if self._closed:
            return 0, True
        self._closed = True
        discarded, exact = len(self._queue), True
        self._queue.clear()
        transport = self._transport
        if transport is not None:
            if not self._transport_dropped:
                discarded += transport.get_write_buffer_size()
                transport.abort()
            elif self._transport_busy:
                discarded += self._handed_pending
                exact = False
        return discarded, exact

    async def shutdown(self) -> None:
        self.close()
        # abort() closes the socket from a call_soon callback; wait for it so close() leaves no fd behind.
        if self._connection_lost_seen is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._connection_lost_seen

    # ---- internals -------------------------------------------------------------------------------------

    def _feed(self) -> None:
        transport = self._transport
        if transport is None or self._closed or self._transport_dropped or self._lost_reason is not None:
            return
        while self._queue and not self._transport_busy:
            chunk = bytes(self._queue[: self._chunk_size])
            del self._queue[: self._chunk_size]
            transport.write(chunk)  # sends at once; what the kernel refuses stays there → pause_writing()
            if self._transport_busy:
                self._handed_pending = transport.get_write_buffer_size()

    def _gone(self, reason: str) -> None:
        if self._closed or self._lost_reason is not None:
            return
        self._lost_reason = reason
        if self._owner is not None:
            self._owner.channel_lost(self, reason)


class _SocketLink(ReconnectingLink):
    def __init__(self, name: str, listener: DeviceListener, **options: Unpack[LinkOptions]) -> None:
        super().__init__(name, listener, **options)

    def _new_channel(self, where: str) -> SocketChannel:
        return SocketChannel(where, self._data_received, chunk_size=self._write_buffer_limit // 4)


class UnixLink(_SocketLink):
    """``unix:PATH``: a QEMU ``-chardev socket,path=PATH,server=on,wait=off``.

    Refused, missing, or closed by the peer (QEMU restarted, the VM stopped) are all just "offline, retry".
    """

    def __init__(
        self, name: str, path: str, listener: DeviceListener, **options: Unpack[LinkOptions]
    ) -> None:
        if not path:
            raise ValueError("unix device needs a path")
        super().__init__(name, listener, **options)
        self.path = path

    @property
    def description(self) -> str:
        return f"unix:{self.path}"

    async def _connect_once(self) -> tuple[Channel, str]:
        loop = asyncio.get_running_loop()
        channel = self._new_channel(self.path)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await loop.create_unix_connection(lambda: channel, self.path)
        return channel, self.path

    def _describe_failure(self, exc: Exception) -> str:
        if isinstance(exc, TimeoutError) and exc.errno is None:
            return f"{self.path}: connection timed out"
        return f"{self.path}: {os_error_text(exc)}"


class TcpLink(_SocketLink):
    """``tcp:HOST:PORT``: a QEMU ``-chardev socket,host=…,port=…,server=on,wait=off`` or a terminal server.

    ``TCP_NODELAY`` (a keystroke must not wait for Nagle) and keepalive (a quiet console on a dead peer would
    otherwise look online forever) are set on every connection.
    """

    def __init__(
        self, name: str, host: str, port: int, listener: DeviceListener, **options: Unpack[LinkOptions]
    ) -> None:
        if not host or not 0 < port < 65536:
            raise ValueError(f"tcp device needs a host and a port in 1..65535, got {host!r}:{port!r}")
        super().__init__(name, listener, **options)
        self.host = host
        self.port = port

    @property
    def _where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def description(self) -> str:
        return f"tcp:{self._where}"

    async def _connect_once(self) -> tuple[Channel, str]:
        loop = asyncio.get_running_loop()
        channel = self._new_channel(self._where)
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            # No happy_eyeballs_delay: uvloop's create_connection does not accept it.
            transport, _ = await loop.create_connection(lambda: channel, self.host, self.port)
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in TCP_KEEPALIVE:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
        except OSError:
            channel.close()
            raise
        peer = transport.get_extra_info("peername")
        shown = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        return channel, f"{self._where} ({shown})" if shown != self._where else self._where

    def _describe_failure(self, exc: Exception) -> str:
        if isinstance(exc, TimeoutError) and exc.errno is None:
            return f"{self._where}: connection timed out"
        return f"{self._where}: {os_error_text(exc)}"
