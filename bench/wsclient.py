"""A minimal synchronous WebSocket client for the bench (RFC 6455, stdlib only), as an ``Endpoint``.

It does what a console client of ``/api/v1/ports/{name}/ws`` needs and nothing more: the opening
handshake (checking ``Sec-WebSocket-Accept``), masked binary frames out, unmasked frames in.  ``recv()``
returns the guest bytes of every complete binary frame read from the socket (possibly none: then
``closed_by_peer`` says whether that was EOF); text frames (the daemon's JSON events: ``hello``, notices)
are kept in ``events`` with the number of guest bytes received before each, so a slow viewer's ``missed``
notices can be placed exactly in its stream.  Pings are answered.  The daemon never fragments a message
(aiohttp sends whole ones), so continuation frames are refused rather than reassembled.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import socket
import struct
from typing import Any

from .workload import READ_CHUNK, BenchError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def _mask(payload: bytes, key: bytes) -> bytes:
    # XOR with the repeating 4-byte key, as one big integer operation (no per-byte Python loop).
    if not payload:
        return payload
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (FIN set).  The key from ``random`` (no system call per keystroke): the
    masking protects proxies from browser scripts, which a benchmark client is not."""
    key = random.randbytes(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + _mask(payload, key)


class WsEndpoint:
    """One WebSocket console connection (``mode`` rw or ro)."""

    def __init__(
        self,
        host: str,
        port: int,
        console: str,
        mode: str = "rw",
        timeout_s: float = 10.0,
        rcvbuf: int | None = None,
    ) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect: the window scale is agreed in the handshake
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._sock.settimeout(timeout_s)
        self._sock.connect((host, port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.received = 0  # guest bytes returned by recv() so far
        self.closed_by_peer = False
        key = base64.b64encode(os.urandom(16))
        request = (
            f"GET /api/v1/ports/{console}/ws?mode={mode} HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise BenchError(f"WebSocket handshake: connection closed after {head[:200]!r}")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/1.1 101"):
            raise BenchError(f"WebSocket handshake refused: {lines[0]!r} {rest[:200]!r}")
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("sec-websocket-accept") != accept:
            raise BenchError("WebSocket handshake: wrong Sec-WebSocket-Accept")
        self._sock.settimeout(None)
        self._buf += rest

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, data: bytes) -> None:
        self._sock.sendall(frame(OP_BINARY, data))

    def send_text(self, text: str) -> None:
        self._sock.sendall(frame(OP_TEXT, text.encode()))

    def recv(self) -> bytes:
        """Guest bytes of the complete binary frames now readable (``closed_by_peer`` tells EOF apart)."""
        chunk = self._sock.recv(READ_CHUNK)
        if not chunk:
            self.closed_by_peer = True
            return b""
        self._buf += chunk
        return self.parse_buffered()

    def parse_buffered(self) -> bytes:
        out = bytearray()
        buf = self._buf
        pos = 0
        while True:
            if len(buf) - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            at = pos + 2
            if n == 126:
                if len(buf) - at < 2:
                    break
                (n,) = struct.unpack_from("!H", buf, at)
                at += 2
            elif n == 127:
                if len(buf) - at < 8:
                    break
                (n,) = struct.unpack_from("!Q", buf, at)
                at += 8
            if b1 & 0x80:
                raise BenchError("server sent a masked frame")
            if len(buf) - at < n:
                break
            opcode = b0 & 0x0F
            if not b0 & 0x80 or opcode == 0:
                raise BenchError("fragmented frame from the server (not expected)")
            payload = buf[at : at + n]
            pos = at + n
            if opcode == OP_BINARY:
                out += payload
                self.received += n
            elif opcode == OP_TEXT:
                self.events.append((self.received, json.loads(bytes(payload))))
            elif opcode == OP_PING:
                self._sock.sendall(frame(OP_PONG, bytes(payload)))
            elif opcode == OP_CLOSE:
                self.closed_by_peer = True
        del buf[:pos]
        return bytes(out)  # may be empty without EOF (only an event, or half a frame): see closed_by_peer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(frame(OP_CLOSE, struct.pack("!H", 1000)))
        self._sock.close()
