"""What the daemon writes to its log when peers misbehave, as a real process: malformed HTTP requests over raw
sockets, and connections beyond a real lowered descriptor limit.  Under ``log_format = "json"`` every line
is one JSON object; floods are rate-limited and what was left out is counted, never silently dropped.
Everything waits for the log line or the bytes it expects; nothing sleeps to synchronise."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from serialmuxd.obs.logging import BURST_BAD_REQUEST, RATE_INTERVAL_S

from .support import TcpClient

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

# One of each kind of request aiohttp's parser refuses (each answered 400 on its own connection).
MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello on the HTTP port
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


class LogLines:
    """Every line a child writes to stderr, kept raw (to check that each one is JSON) and parsed."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.raw: list[bytes] = []
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.raw.append(line)
            self._changed.set()
        self._changed.set()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        parsed = []
        for line in self.raw:
            with contextlib.suppress(ValueError):
                parsed.append(json.loads(line))
        return [e for e in parsed if name is None or e.get("event") == name]

    async def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0 or self._task.done():
                tail = b"".join(self.raw[-10:]).decode(errors="replace")
                raise AssertionError(f"no {what} in the log; last lines:\n{tail}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def finish(self) -> None:
        await self._task


@contextlib.asynccontextmanager
async def child(argv: list[str], nofile: int | None = None) -> AsyncIterator[LogLines]:
    def limit() -> None:
        if nofile is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, preexec_fn=limit
    )
    assert proc.stderr is not None
    lines = LogLines(proc.stderr)
    try:
        yield lines
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        await lines.finish()


def _suppressed(lines: LogLines, event: str) -> int:
    return sum(e["suppressed"] for e in lines.events("log_suppressed") if e["suppressed_event"] == event)


def _seconds(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


async def _exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await reader.read()  # aiohttp answers 400 and closes the connection
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_200_malformed_requests_give_bounded_json_lines_and_every_one_is_counted(
    tmp_path: Path,
) -> None:
    config = tmp_path / "serialmuxd.toml"
    config.write_text(
        textwrap.dedent(
            """
            [daemon]
            log_format = "json"
            state_dir = "{state}"

            [http]
            listen = "127.0.0.1:0"

            [[ports]]
            name = "vm1"
            device = "exec:/bin/cat"
            """
        ).format(state=tmp_path / "state")
    )
    async with child([sys.executable, "-m", "serialmuxd", "run", "--config", str(config)]) as lines:
        await lines.wait(lambda: bool(lines.events("ready")), "ready line")
        port = int(lines.events("ready")[0]["http"].rsplit(":", 1)[1])
        before = len(lines.raw)

        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = [await _exchange(port, MALFORMED[i % len(MALFORMED)]) for i in range(200)]
        flood_s = loop.time() - started
        assert all(answer.startswith(b"HTTP/1.") and b" 400 " in answer[:20] for answer in answers)

        # Every bad request is accounted for: logged, or counted in a log_suppressed line (which comes when
        # the rate interval ends, even though no further request arrives).
        def accounted() -> int:
            return len(lines.events("http_bad_request")) + _suppressed(lines, "http_bad_request")

        await lines.wait(lambda: accounted() >= 200, "account of all 200 bad requests")
        assert accounted() == 200

        logged = lines.events("http_bad_request")
        intervals = int(flood_s / RATE_INTERVAL_S) + 2
        assert len(logged) <= BURST_BAD_REQUEST * intervals
        flood_lines = lines.raw[before:]
        assert len(flood_lines) <= (BURST_BAD_REQUEST + 1) * intervals, b"".join(flood_lines)[:2000]
        for line in lines.raw:
            json.loads(line)  # every line is JSON: no traceback, no stdlib logging format
        first = logged[0]
        assert first["peer"] == "127.0.0.1" and first["status"] == 400 and first["level"] == "info"
        assert first["reason"] == "Transfer-Encoding can't be present with Content-Length"
        assert "Traceback" not in b"".join(lines.raw).decode()

        # The daemon is unaffected.
        health = await _exchange(
            port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        assert health.startswith(b"HTTP/1.1 200")


# A small server in a child whose descriptor limit is lowered: a greeting on every accepted connection,
# then an echo.  It uses the daemon's logging set-up and loop exception handler.
_SERVER = """
import asyncio, sys
from serialmuxd.obs.logging import configure_logging, install_loop_exception_handler

async def main():
    configure_logging("info", "json")
    install_loop_exception_handler()

    async def serve(reader, writer):
        writer.write(b"hi\\n")
        while data := await reader.read(1024):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print('{"event": "serving", "port": %d}' % port, file=sys.stderr, flush=True)
    await asyncio.Event().wait()

if sys.argv[1] == "uvloop":
    import uvloop
    factory = uvloop.new_event_loop
else:
    factory = None
with asyncio.Runner(loop_factory=factory) as runner:
    runner.run(main())
"""
_NOFILE = 32
_EXTRA_CONNECTIONS = 16  # beyond what the server can accept with _NOFILE descriptors


async def _connect_until_refused(port: int, lines: LogLines) -> tuple[list[TcpClient], list[TcpClient]]:
    """Connect one client at a time until the server reports accept_failed instead of greeting one, then
    a few more: (greeted clients, clients waiting in the listen backlog)."""
    greeted: list[TcpClient] = []
    for _ in range(_NOFILE):
        client = await TcpClient.connect("127.0.0.1", port)
        greeting = asyncio.ensure_future(client.expect(b"hi\n"))
        failure = asyncio.ensure_future(
            lines.wait(lambda: bool(lines.events("accept_failed")), "accept_failed")
        )
        await asyncio.wait({greeting, failure}, return_when=asyncio.FIRST_COMPLETED)
        for task in (greeting, failure):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not (greeting.done() and not greeting.cancelled() and greeting.exception() is None):
            break
        greeted.append(client)
    else:
        raise AssertionError(f"{_NOFILE} connections accepted under RLIMIT_NOFILE={_NOFILE}")
    pending = [client]
    for _ in range(_EXTRA_CONNECTIONS):
        pending.append(await TcpClient.connect("127.0.0.1", port))
    return greeted, pending


async def test_emfile_in_the_accept_loop_is_one_line_per_interval_and_connections_keep_working() -> None:
    clients: list[TcpClient] = []
    async with child([sys.executable, "-c", _SERVER, "asyncio"], nofile=_NOFILE) as lines:
        await lines.wait(lambda: bool(lines.events("serving")), "serving line")
        port = lines.events("serving")[0]["port"]
        greeted: list[TcpClient] = []
        pending: list[TcpClient] = []
        try:
            greeted, pending = await _connect_until_refused(port, lines)
            clients = greeted + pending
            # CPython's accept loop retries every second and reports up to 100 times per retry: wait for
            # three intervals' worth.
            await lines.wait(lambda: len(lines.events("accept_failed")) >= 3, "three accept_failed lines")
            failed = lines.events("accept_failed")
            assert {e["errno"] for e in failed} == {"EMFILE"}
            assert {e["listener"] for e in failed} == {f"127.0.0.1:{port}"}
            assert all(e["level"] == "error" for e in failed)
            gaps = [_seconds(b) - _seconds(a) for a, b in itertools.pairwise(failed)]
            assert all(gap >= RATE_INTERVAL_S * 0.9 for gap in gaps), gaps
            # The retries beyond one line per interval are counted, not written.
            await lines.wait(
                lambda: _suppressed(lines, "accept_failed") > 0, "suppressed accept_failed count"
            )
            for line in lines.raw:
                json.loads(line)

            # Connections accepted before the limit keep working meanwhile.
            for i, client in enumerate(greeted):
                await client.send(b"ping %d\n" % i)
                await client.expect(b"ping %d\n" % i)

            # Free descriptors: the server accepts the connections that waited in the backlog.
            for client in greeted:
                await client.close()
            for client in pending[: _NOFILE // 2]:
                await client.expect(b"hi\n")
        finally:
            for client in clients:
                await client.close()


@pytest.mark.skipif(sys.platform != "linux", reason="libuv's EMFILE handling is what is described")
async def test_emfile_on_uvloop_closes_the_excess_connection_and_the_listener_recovers() -> None:
    """uvloop (libuv) handles EMFILE itself and tells nobody: it accepts the excess connection with a
    reserved descriptor and closes it at once.  No accept_failed line (a known limit, README), but nothing
    breaks: accepted connections keep working and the listener serves again once descriptors are free."""
    pytest.importorskip("uvloop")
    clients: list[TcpClient] = []
    async with child([sys.executable, "-c", _SERVER, "uvloop"], nofile=_NOFILE) as lines:
        await lines.wait(lambda: bool(lines.events("serving")), "serving line")
        port = lines.events("serving")[0]["port"]
        try:
            for _ in range(_NOFILE):
                client = await TcpClient.connect("127.0.0.1", port)
                clients.append(client)
                try:
                    await client.expect(b"hi\n")
                except AssertionError:
                    break  # closed without a greeting
            refused = clients[-1]
            assert refused.eof and b"hi" not in refused.buffer
            greeted = clients[:-1]
            assert 0 < len(greeted) < _NOFILE
            for i, client in enumerate(greeted):
                await client.send(b"ping %d\n" % i)
                await client.expect(b"ping %d\n" % i)
            for client in greeted:
                await client.close()
            again = await TcpClient.connect("127.0.0.1", port)
            clients.append(again)
            await again.expect(b"hi\n")
            assert not lines.events("accept_failed")
            for line in lines.raw:
                json.loads(line)
        finally:
            for client in clients:
                await client.close()
