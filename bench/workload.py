"""Client side of the benchmark: the guest stream, PTYs, the guest writer, clients and the telnet client.

Everything here is stdlib-only and synchronous.  The guest side of a port is the master of a PTY that the
bench holds; the relay under test opens the slave path (``/dev/pts/N``).  The bench also keeps the slave open
itself so the PTY never hangs up while a relay closes and reopens it.

Synchronising a stream (works for every relay, whatever it does on attach): the guest writer repeats a short
``SYNC`` line every 10 ms until the bench has seen one on every client, then writes a unique ``GO`` line
followed by the payload.  A client discards everything before ``GO`` -- late-opened devices (ser2net and
socat open the tty on the first connection), banners, a leading ``[serialmuxd]`` notice -- so the payload is
counted byte-exactly.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import multiprocessing
import os
import random
import select
import socket
import termios
import time
import tty
from dataclasses import dataclass, field
from typing import Protocol

SYNC_MARKER = b"\r\n~bench-sync~\r\n"
NOTICE_PREFIX = b"\r\n[serialmuxd] "
_SYNC_INTERVAL_S = 0.01
_WRITE_CHUNK = 64 * 1024
READ_CHUNK = 256 * 1024


class BenchError(RuntimeError):
    """A measurement could not be completed; the message says why (shown in the report)."""


_stop_requested = False


def request_stop() -> None:
    """Called from the SIGTERM handler.  The handler also raises SystemExit, but an exception raised while a
    finaliser happens to run is swallowed ("Exception ignored in ..."); long loops call ``check_stop``."""
    global _stop_requested
    _stop_requested = True


def check_stop() -> None:
    if _stop_requested:
        raise SystemExit(128 + 15)


# -- the guest stream ----------------------------------------------------------------------------------------


def make_stream(size: int, seed: int) -> bytes:
    """Deterministic guest output: seeded PRNG bytes with an ``#<offset:010d>`` counter every 64 bytes and,
    every 64 KiB, runs of 0xFF (telnet IAC), NUL, ESC sequences and bare CR/LF.  Any loss, duplication or
    reordering is then locatable from the received bytes alone."""
    body = bytearray(random.Random(seed).randbytes(size))
    for offset in range(0, size - 11, 64):
        body[offset : offset + 11] = b"#%010d" % offset
    special = b"\xff" * 16 + b"\x00" * 8 + b"\x1b[31mred\x1b[0m\r\r\n\n\xff\r\x00\xff\xff"
    for offset in range(32, size - len(special), 64 * 1024):
        body[offset : offset + len(special)] = special
    return bytes(body)


@dataclass(frozen=True, slots=True)
class Stream:
    data: bytes
    sha256: str
    go_marker: bytes

    @classmethod
    def build(cls, size: int, seed: int) -> Stream:
        data = make_stream(size, seed)
        go = b"\r\n~bench-go-%08x~\r\n" % random.Random(seed ^ 0x5EED).getrandbits(32)
        return cls(data, hashlib.sha256(data).hexdigest(), go)


# -- PTYs ----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Pty:
    """A PTY pair in raw mode.  ``master`` is the guest's side; relays open ``path``."""

    master: int
    slave: int
    path: str

    @classmethod
    def open(cls) -> Pty:
        master, slave = os.openpty()
        try:
            tty.setraw(slave, termios.TCSANOW)  # no echo, no CR/LF mangling: the byte stream is exact
            return cls(master, slave, os.ttyname(slave))
        except BaseException:
            os.close(master)
            os.close(slave)
            raise

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:_WRITE_CHUNK])
        view = view[written:]


def wait_readable(fd: int, timeout_s: float) -> bool:
    """poll(2), not select(2): the idle test holds thousands of fds and select() stops at 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def read_some(fd: int, timeout_s: float, what: str) -> bytes:
    if not wait_readable(fd, timeout_s):
        raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
    data = os.read(fd, READ_CHUNK)
    if not data:
        raise BenchError(f"EOF while waiting for {what}")
    return data


def drain(fd: int) -> int:
    """Read and drop whatever is pending on ``fd`` right now; return how many bytes that was."""
    total = 0
    while wait_readable(fd, 0):
        try:
            chunk = os.read(fd, READ_CHUNK)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EIO):
                break
            raise
        if not chunk:
            break
        total += len(chunk)
    return total


# -- the guest writer (a separate process, so the bench's own GIL never paces the guest) ---------------------


def _guest_writer_main(
    master: int, control: int, go_marker: bytes, data: bytes, rate_bytes_per_s: float | None
) -> None:
    os.set_blocking(master, True)
    while not wait_readable(control, _SYNC_INTERVAL_S):
        write_all(master, SYNC_MARKER)
    write_all(master, go_marker)
    if rate_bytes_per_s is None:
        write_all(master, data)
        return
    start = time.perf_counter()
    view = memoryview(data)
    for offset in range(0, len(data), _WRITE_CHUNK):
        due = start + offset / rate_bytes_per_s
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        write_all(master, view[offset : offset + _WRITE_CHUNK])


class GuestWriter:
    """Writes ``SYNC`` lines until ``go()``, then the ``GO`` marker and the payload, then exits."""

    def __init__(self, master: int, stream: Stream, rate_bytes_per_s: float | None = None) -> None:
        """``rate_bytes_per_s``: pace the payload (64 KiB writes on a schedule) instead of writing it at
        once."""
        self._control_r, self._control_w = os.pipe()
        context = multiprocessing.get_context("fork")
        self._process = context.Process(
            target=_guest_writer_main,
            args=(master, self._control_r, stream.go_marker, stream.data, rate_bytes_per_s),
            name="bench-guest-writer",
            daemon=True,
        )
        self._process.start()

    def go(self) -> None:
        os.write(self._control_w, b"g")

    def join(self, timeout_s: float) -> None:
        self._process.join(timeout_s)

    def stop(self) -> None:
        """Terminate the writer if it is still running (by its pid) and release the pipe."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
        for fd in (self._control_r, self._control_w):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- client endpoints ----------------------------------------------------------------------------------------


class Endpoint(Protocol):
    """One client's byte pipe: a TCP connection to a relay, or the PTY slave itself (no relay)."""

    def fileno(self) -> int: ...

    def send(self, data: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def close(self) -> None: ...


class TcpEndpoint:
    def __init__(self, host: str, port: int, timeout_s: float = 10.0, rcvbuf: int | None = None) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect: the window scale is agreed in the handshake
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.connect((host, port))
        except BaseException:
            self._sock.close()
            raise
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(None)

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv(self) -> bytes:
        return self._sock.recv(READ_CHUNK)

    def close(self) -> None:
        self._sock.close()


class PtySlaveEndpoint:
    """The no-relay baseline: the client reads and writes the PTY slave directly."""

    def __init__(self, pty: Pty) -> None:
        self._fd = pty.slave

    def fileno(self) -> int:
        return self._fd

    def send(self, data: bytes) -> None:
        write_all(self._fd, data)

    def recv(self) -> bytes:
        return os.read(self._fd, READ_CHUNK)

    def close(self) -> None:
        """The slave belongs to the ``Pty``; nothing to close here."""


def connect_when_listening(host: str, port: int, timeout_s: float) -> TcpEndpoint:
    """Connect, retrying while the port refuses (a relay that is still starting up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return TcpEndpoint(host, port)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise BenchError(f"{host}:{port} refused connections for {timeout_s:g} s") from None
            time.sleep(0.005)


# -- a minimal telnet client (for the raw = false case) ------------------------------------------------------

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
OPT_BINARY, OPT_ECHO, OPT_SGA = 0, 1, 3
_HIM_OK = {OPT_BINARY, OPT_ECHO, OPT_SGA}  # options we let the server enable (it sends WILL)
_US_OK = {OPT_BINARY, OPT_SGA}  # options we enable when asked (it sends DO)


class TelnetClient:
    """Un-escapes a telnet server's output and answers its negotiation (BINARY both ways, SGA, ECHO).

    Replies are sent once per option change, so negotiation cannot loop.  While the server has not agreed to
    send BINARY, ``CR NUL`` is turned back into ``CR`` (RFC 854); once it has, bytes pass unchanged.
    """

    _DATA, _IAC, _OPTION, _SB, _SB_IAC = range(5)

    def __init__(self) -> None:
        self._state = self._DATA
        self._command = 0
        self._him: dict[int, bool] = {}
        self._us: dict[int, bool] = {}
        self._replies = bytearray()
        self._cr_pending = False
        self.server_binary = False

    def take_replies(self) -> bytes:
        replies = bytes(self._replies)
        self._replies.clear()
        return replies

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == self._DATA:
                j = data.find(b"\xff", i)
                stop = n if j < 0 else j
                self._emit(out, data[i:stop])
                if j < 0:
                    break
                i = j + 1
                self._state = self._IAC
                continue
            byte = data[i]
            i += 1
            if state == self._IAC:
                if byte == IAC:
                    self._emit(out, b"\xff")
                    self._state = self._DATA
                elif byte in (WILL, WONT, DO, DONT):
                    self._command = byte
                    self._state = self._OPTION
                elif byte == SB:
                    self._state = self._SB
                else:  # NOP, GA, DM, ...: no payload
                    self._state = self._DATA
            elif state == self._OPTION:
                self._negotiate(self._command, byte)
                self._state = self._DATA
            elif state == self._SB:
                if byte == IAC:
                    self._state = self._SB_IAC
            else:  # _SB_IAC
                self._state = self._DATA if byte == SE else self._SB
        return bytes(out)

    def _emit(self, out: bytearray, data: bytes) -> None:
        if not data:
            return
        if self.server_binary:
            out += data
            return
        if self._cr_pending and data[:1] == b"\x00":
            data = data[1:]
        self._cr_pending = data.endswith(b"\r")
        out += data.replace(b"\r\x00", b"\r")

    def _negotiate(self, command: int, option: int) -> None:
        if command in (WILL, WONT):
            want = command == WILL and option in _HIM_OK
            if self._him.get(option) != want:
                self._him[option] = want
                self._replies += bytes((IAC, DO if want else DONT, option))
            if option == OPT_BINARY:
                self.server_binary = want
        else:
            want = command == DO and option in _US_OK
            if self._us.get(option) != want:
                self._us[option] = want
                self._replies += bytes((IAC, WILL if want else WONT, option))


# -- receiving a synchronised stream -------------------------------------------------------------------------


@dataclass(slots=True)
class StreamReceiver:
    """One client's view of a synchronised stream: finds ``SYNC`` and ``GO``, then hashes the payload."""

    stream: Stream
    telnet: TelnetClient | None = None
    saw_sync: bool = False
    in_payload: bool = False
    received: int = 0
    extra: int = 0  # bytes after the payload (should stay 0)
    notices: int = 0
    first_notice: bytes = b""
    t_go: float = 0.0
    t_done: float = 0.0
    _pre: bytes = b""
    _tail: bytes = b""
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)

    @property
    def done(self) -> bool:
        return self.received >= len(self.stream.data)

    @property
    def exact(self) -> bool:
        return self.done and self.extra == 0 and self._hash.hexdigest() == self.stream.sha256

    def feed(self, raw: bytes, now: float) -> bytes:
        """Consume bytes read from the relay; returns telnet replies the caller must send (usually b"")."""
        payload = raw
        replies = b""
        if self.telnet is not None:
            payload = self.telnet.feed(raw)
            replies = self.telnet.take_replies()
        if not self.in_payload:
            pre = self._pre + payload
            if not self.saw_sync and SYNC_MARKER in pre:
                self.saw_sync = True
            at = pre.find(self.stream.go_marker)
            if at < 0:
                self._pre = pre[-len(self.stream.go_marker) :]
                return replies
            self.in_payload = True
            self.saw_sync = True
            self.t_go = now
            self._pre = b""
            payload = pre[at + len(self.stream.go_marker) :]
        if payload:
            self._take(payload, now)
        return replies

    def _take(self, payload: bytes, now: float) -> None:
        view = self._tail + payload
        if NOTICE_PREFIX in view:
            self.notices += view.count(NOTICE_PREFIX)
            if not self.first_notice:
                at = view.index(NOTICE_PREFIX)
                self.first_notice = view[at : at + 160]
        self._tail = view[-(len(NOTICE_PREFIX) - 1) :]
        room = len(self.stream.data) - self.received
        if room <= 0:
            self.extra += len(payload)
            return
        take = payload[:room]
        self._hash.update(take)
        self.received += len(take)
        self.extra += len(payload) - len(take)
        if self.received >= len(self.stream.data):
            self.t_done = now

    def describe_failure(self) -> str:
        parts = [f"received {self.received} of {len(self.stream.data)} payload bytes"]
        if self.done and self._hash.hexdigest() != self.stream.sha256:
            parts.append("sha256 mismatch")
        if self.extra:
            parts.append(f"{self.extra} extra bytes")
        if self.notices:
            parts.append(f"{self.notices} in-band notice(s), first: {self.first_notice!r}")
        return "; ".join(parts)
