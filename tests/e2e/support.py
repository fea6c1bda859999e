"""Test helpers that drive real programs and sockets: a PTY-attached child (for the real ``telnet`` client),
a TCP client with ``expect``, and a guest side on a PTY master.  No sleeps to synchronise: everything waits
for the bytes it expects, with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import signal
import subprocess
import termios
import time
import tty
from collections.abc import AsyncIterator, Callable, Sequence

from serialmuxd.config import parse_config
from serialmuxd.daemon import Daemon
from serialmuxd.hub import PortState

DEFAULT_TIMEOUT_S = 10.0


class Expecter:
    """Accumulates bytes from a source and waits for patterns in them."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self._changed = asyncio.Event()

    def feed(self, data: bytes) -> None:
        self.buffer += data
        self._changed.set()

    def feed_eof(self) -> None:
        self.eof = True
        self._changed.set()

    async def expect(
        self, pattern: bytes | re.Pattern[bytes], timeout_s: float = DEFAULT_TIMEOUT_S, start: int = 0
    ) -> re.Match[bytes]:
        """Wait until ``pattern`` occurs at or after ``start``; returns the match."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            match = regex.search(self.buffer, start)
            if match:
                return match
            if self.eof:
                raise AssertionError(f"EOF before {regex.pattern!r}; got {bytes(self.buffer[-2000:])!r}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"timeout waiting for {regex.pattern!r}; got {bytes(self.buffer[-2000:])!r}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_eof(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.eof:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError("timeout waiting for EOF")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_bytes(self, n: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.buffer) < n:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.eof:
                raise AssertionError(f"wanted {n} bytes, have {len(self.buffer)} (eof={self.eof})")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


class FdReader(Expecter):
    """Reads a non-blocking fd on the loop into an Expecter."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.feed(data)
        else:
            asyncio.get_running_loop().remove_reader(self.fd)
            self.feed_eof()

    def write(self, data: bytes) -> None:
        """Write a few bytes (keystrokes); fails rather than blocking the loop the daemon shares."""
        written = os.write(self.fd, data)
        assert written == len(data), f"short write {written}/{len(data)}: use send() for bulk data"

    async def send(self, data: bytes) -> None:
        """Write bulk data, waiting on the loop for the fd to become writable (never blocks the loop)."""
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
                continue
            except BlockingIOError:
                pass
            ready: asyncio.Future[None] = loop.create_future()

            def writable(ready: asyncio.Future[None] = ready) -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_writer(self.fd, writable)
            try:
                await ready
            finally:
                loop.remove_writer(self.fd)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fd)


class PtyChild(FdReader):
    """A real program (e.g. Debian's ``telnet``) on a PTY, as a person at a terminal would run it."""

    def __init__(self, argv: Sequence[str]) -> None:
        master, slave = os.openpty()
        termios_attrs = termios.tcgetattr(slave)
        termios_attrs[3] &= ~termios.ECHO  # our keystrokes should not be echoed by the local tty
        termios.tcsetattr(slave, termios.TCSANOW, termios_attrs)
        self.proc = subprocess.Popen(
            list(argv),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, "TERM": "xterm"},
        )
        os.close(slave)
        super().__init__(master)

    def close(self) -> None:
        self.stop()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self.fd)


class GuestPty(FdReader):
    """The guest's side of a serial line: the PTY master; the daemon opens the slave path as ``tty:``."""

    def __init__(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        self.slave_fd = slave  # kept open so the line stays up while the daemon reconnects
        self.path = os.ttyname(slave)
        super().__init__(master)

    def close(self) -> None:
        self.stop()
        for fd in (self.fd, self.slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class TcpClient(Expecter):
    """A plain TCP client (what ``nc`` would be) with expect; for telnet mode, un-escape IAC IAC yourself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader = reader
        self.writer = writer
        self._task = asyncio.get_running_loop().create_task(self._pump())

    @classmethod
    async def connect(cls, host: str, port: int) -> TcpClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def _pump(self) -> None:
        while True:
            try:
                data = await self.reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                self.feed_eof()
                return
            self.feed(data)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Wait for daemon-internal state that has no event of its own (e.g. a hub's byte counter)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for _ in iter(int, 1):
        if predicate():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timeout waiting for {what}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running_daemon(
    toml: str, online: Sequence[str] = (), cleanup: Callable[[], None] | None = None
) -> AsyncIterator[Daemon]:
    """A daemon started in this event loop from ``toml``; waits until the ``online`` ports are online;
    always stopped afterwards (then ``cleanup`` runs, e.g. closing the guest PTY)."""
    daemon = Daemon(parse_config(toml, "<test>"))
    await daemon.start()
    try:
        for name in online:
            hub = daemon.hubs[name]
            await eventually(lambda hub=hub: hub.state is PortState.ONLINE, f"{name} online")  # type: ignore[misc]
        yield daemon
    finally:
        await daemon.stop()
        if cleanup is not None:
            cleanup()


def read_until(fd: int, needle: bytes, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
    """Read a blocking fd (a child's stderr pipe, a socket) outside any event loop until ``needle`` has been
    seen; returns everything read.  Fails at EOF or at the deadline instead of blocking the test forever."""
    got = bytearray()
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while needle not in got:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timeout waiting for {needle!r}; got {bytes(got[-2000:])!r}")
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}; got {bytes(got[-2000:])!r}")
            got += chunk
    return bytes(got)
