"""End to end through the real path: the daemon in this process on a real event loop, real PTYs and programs
as devices, the real Debian ``telnet`` client and plain TCP clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from serialmuxd.config import parse_config
from serialmuxd.daemon import Daemon
from serialmuxd.hub import PortState
from serialmuxd.proto.telnet import TelnetCodec

from .support import FdReader, GuestPty, PtyChild, TcpClient, eventually, running_daemon

pytestmark = pytest.mark.asyncio

CTRL_E = b"\x05"
END_OF_STREAM = b"\r\n-- end of stream --\r\n"


def _config(body: str) -> str:
    return '[daemon]\nlog_level = "warning"\n' + body


async def start_daemon(body: str) -> Daemon:
    daemon = Daemon(parse_config(_config(body), "<test>"))
    await daemon.start()
    return daemon


@pytest_asyncio.fixture
async def guest() -> AsyncIterator[GuestPty]:
    g = GuestPty()
    yield g
    g.close()


async def wait_online(daemon: Daemon, port: str) -> None:
    hub = daemon.hubs[port]
    await eventually(lambda: hub.state is PortState.ONLINE, f"{port} online")


def telnet_unescape(data: bytes) -> bytes:
    """Strip telnet negotiation and un-double IAC, the way a telnet client presents data."""
    codec = TelnetCodec()
    # The server-side codec parses the same command syntax; we only need its data events.
    codec.receive_data(data)
    from serialmuxd.proto.telnet import DataReceived

    return b"".join(e.data for e in codec.events_received() if isinstance(e, DataReceived))


@pytest.mark.skipif(shutil.which("telnet") is None, reason="Debian telnet client not installed (./dev setup)")
async def test_real_telnet_client_types_sees_echo_and_is_evicted_by_second_client() -> None:
    daemon = await start_daemon(
        """
[[ports]]
name = "shell"
device = "exec:/bin/sh -i"
telnet = "127.0.0.1:0"
takeover = "evict"
"""
    )
    first = second = None
    try:
        await wait_online(daemon, "shell")
        port = daemon.listener("shell").tcp_port
        first = PtyChild(["telnet", "127.0.0.1", str(port)])
        await first.expect(b"you have write access")
        first.write(b"echo hello-$((6*7))\r")
        await first.expect(b"hello-42")

        second = PtyChild(["telnet", "127.0.0.1", str(port)])
        evicted = await first.expect(re.compile(rb"taken over by telnet 127\.0\.0\.1:(\d+)"))
        await first.expect(b"not logged out")
        await first.expect(b"Connection closed by foreign host")
        took = await second.expect(re.compile(rb"you took over write access from telnet 127\.0\.0\.1:\d+"))
        assert took
        # The evicted client named the newcomer's real source port.
        assert int(evicted.group(1)) != port
        mark = len(second.buffer)
        second.write(b"echo second-$((2+3))\r")
        await second.expect(b"second-5", start=mark)
    finally:
        for child in (first, second):
            if child is not None:
                child.close()
        await daemon.stop()


async def test_viewer_input_never_reaches_guest(guest: GuestPty) -> None:
    async with running_daemon(
        _config(
            f"""
[[ports]]
name = "vm"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
telnet_readonly = "127.0.0.1:0"
raw = true
"""
        ),
        online=("vm",),
    ) as daemon:
        writer = await TcpClient.connect("127.0.0.1", daemon.listener("vm", "raw").tcp_port)
        viewer = await TcpClient.connect("127.0.0.1", daemon.listener("vm", "raw-readonly").tcp_port)
        await writer.expect(b"you have write access")
        await viewer.expect(b"read-only")
        await viewer.send(b"VIEWER-TYPED\r")
        await viewer.send(CTRL_E + b"cf")  # take-over is refused on the read-only listener
        await viewer.expect(b"this session is read-only")
        await writer.send(b"WRITER-TYPED\r")
        await guest.expect(b"WRITER-TYPED\r")
        assert b"VIEWER" not in guest.buffer
        guest.write(b"guest says hi\r\n")
        await viewer.expect(b"guest says hi")
        await writer.expect(b"guest says hi")
        await writer.close()
        await viewer.close()


async def test_0xff_round_trips_through_telnet_both_ways(guest: GuestPty) -> None:
    async with running_daemon(
        _config(
            f"""
[[ports]]
name = "vm"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
replay_bytes = 0
"""
        ),
        online=("vm",),
    ) as daemon:
        client = await TcpClient.connect("127.0.0.1", daemon.listener("vm").tcp_port)
        await client.expect(b"you have write access\r\n")
        mark = len(client.buffer)
        payload = bytes(range(256)) * 4 + b"\xff\xff\xff"
        await guest.send(payload)
        # On the wire every 0xFF is doubled (and, with our BINARY not agreed by this client, CR → CR NUL).
        await eventually(
            lambda: len(telnet_unescape(bytes(client.buffer[mark:]))) >= len(payload), "guest bytes"
        )
        assert telnet_unescape(bytes(client.buffer[mark:])) == payload
        assert bytes(client.buffer[mark:]).count(b"\xff\xff") == payload.count(b"\xff")
        # Client → guest: 0xFF must be sent doubled (IAC IAC) and arrive single.  Our codec did
        # "DO BINARY"; answer WILL BINARY so CR is not translated either.
        await client.send(b"\xff\xfb\x00")  # IAC WILL BINARY
        await client.send(b"A\xff\xffB\rC")
        await guest.expect(b"A\xffB\rC")
        await client.close()


async def test_device_disappears_and_comes_back_clients_stay_attached(tmp_path: Path) -> None:
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat not installed (./dev setup)")
    link = tmp_path / "ttyV0"
    guest_link = tmp_path / "guest"

    def start_socat() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [socat, f"pty,raw,echo=0,link={link}", f"pty,raw,echo=0,link={guest_link}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def wait_path(path: Path) -> None:
        await eventually(lambda: os.path.exists(path), f"{path} to appear")

    proc = start_socat()
    daemon = await start_daemon(
        f"""
[[ports]]
name = "usb"
device = "tty:{link}"
telnet = "127.0.0.1:0"
raw = true
reconnect_initial_s = 0.05
reconnect_max_s = 0.2
"""
    )
    try:
        await wait_path(guest_link)
        await wait_online(daemon, "usb")
        client = await TcpClient.connect("127.0.0.1", daemon.listener("usb", "raw").tcp_port)
        await client.expect(b"you have write access")
        proc.terminate()
        proc.wait(timeout=5)
        await client.expect(b"console usb offline")
        proc = start_socat()
        await wait_path(guest_link)
        mark = len(client.buffer)
        await client.expect(b"console usb online", start=mark)
        fd = os.open(guest_link, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"back again\r\n")
            await client.expect(b"back again")
            await client.send(b"typed after return\r")
            device = FdReader(fd)
            try:
                await device.expect(b"typed after return")
            finally:
                device.stop()
        finally:
            os.close(fd)
        assert not client.eof
        await client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        await daemon.stop()


async def test_escape_commands_over_raw_tcp(guest: GuestPty) -> None:
    async with running_daemon(
        _config(
            f"""
[[ports]]
name = "vm"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
raw = true
"""
        ),
        online=("vm",),
    ) as daemon:
        client = await TcpClient.connect("127.0.0.1", daemon.listener("vm", "raw").tcp_port)
        await client.expect(b"you have write access")
        await client.send(CTRL_E + b"c?")
        await client.expect(b"detach")
        await client.send(CTRL_E + b"cw")
        await client.expect(re.compile(rb"writer: raw 127\.0\.0\.1:\d+"))
        await client.send(CTRL_E + b"cr")
        await client.expect(b"you are now read-only")
        await client.send(b"dropped\r")
        await client.expect(b"read-only: input not sent (Ctrl-E c f takes over)\r\n")
        await client.send(CTRL_E + b"cf")
        await client.expect(b"you have write access")
        await client.send(b"kept\r")
        await guest.expect(b"kept\r")
        assert b"dropped" not in guest.buffer
        guest.write(b"some history\r\n")
        await client.expect(b"some history")
        await client.send(CTRL_E + b"cp")
        await client.expect(b"replaying")
        await client.send(CTRL_E + b"c.")
        await client.expect(b"detached")
        await client.wait_eof()
        await client.close()


async def test_replay_on_attach_is_marked_then_live(guest: GuestPty) -> None:
    async with running_daemon(
        _config(
            f"""
[[ports]]
name = "vm"
device = "tty:{guest.path}"
telnet_readonly = "127.0.0.1:0"
raw = true
replay_bytes = 64
"""
        ),
        online=("vm",),
    ) as daemon:
        guest.write(b"".join(b"boot line %d\r\n" % i for i in range(20)))
        hub = daemon.hubs["vm"]
        await eventually(lambda: hub.ring.end >= 20 * 13, "boot lines in the ring")
        client = await TcpClient.connect("127.0.0.1", daemon.listener("vm", "raw-readonly").tcp_port)
        start = await client.expect(b"replaying")
        end = await client.expect(b"end of replay")
        replayed = bytes(client.buffer[start.end() : end.start()])
        assert b"boot line 19\r\n" in replayed and b"boot line 0\r\n" not in replayed
        guest.write(b"live line\r\n")
        await client.expect(b"live line", start=end.end())
        await client.close()


async def test_slow_reader_is_resynced_with_exact_count_fast_reader_byte_exact(guest: GuestPty) -> None:
    async with running_daemon(
        _config(
            f"""
[[ports]]
name = "vm"
device = "tty:{guest.path}"
telnet_readonly = "127.0.0.1:0"
raw = true
replay_bytes = 0
scrollback_bytes = 262144
client_buffer_bytes = 16384
"""
        ),
        online=("vm",),
    ) as daemon:
        port = daemon.listener("vm", "raw-readonly").tcp_port
        fast = await TcpClient.connect("127.0.0.1", port)
        # The slow reader: a socket with a tiny receive buffer that we do not read from for a while.
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        await fast.expect(b"read-only")
        hub = daemon.hubs["vm"]
        await eventually(lambda: len(hub.sessions) == 2, "both viewers attached")
        mark = len(fast.buffer)
        stream = os.urandom(8 * 1024 * 1024).replace(b"\r", b"R").replace(b"\n", b"N")
        total = len(stream)
        for i in range(0, total, 65536):
            await guest.send(stream[i : i + 65536])
            # Pace the guest by the fast reader so that only the slow one falls behind.
            await fast.wait_bytes(mark + min(total, i + 65536), timeout_s=30)
        assert bytes(fast.buffer[mark : mark + total]) == stream
        # The end of the stream: a marker the stream cannot contain (it has no CR or LF), written after it.
        await guest.send(END_OF_STREAM)
        await fast.expect(END_OF_STREAM, timeout_s=30, start=mark + total)
        # Now drain the slow reader: it must see a prefix, a "missed N" notice, then exactly the rest, then
        # the marker (the newest bytes in the ring, so never skipped).  Reading stops at the marker, not at a
        # pause in the flow.
        slow_reader = FdReader(slow.fileno())
        try:
            at_end = await slow_reader.expect(END_OF_STREAM, timeout_s=30)
        finally:
            slow_reader.stop()
            slow.close()
        received = bytes(slow_reader.buffer[: at_end.start()])
        assert slow_reader.buffer[at_end.end() :] == b"", "nothing after the marker"
        pattern = re.compile(rb"\r\n\[serialmuxd\] your connection fell behind: (\d+) bytes[^\r]*\r\n")
        notices = list(pattern.finditer(received))
        assert notices, "slow reader was not told it missed bytes"
        # Reassemble: segments between notices must be exact slices with the reported gaps.
        body = bytearray()
        pos = 0
        offset = 0
        start_notice = re.search(rb"read-only[^\r]*\r\n", received)
        assert start_notice is not None
        pos = start_notice.end()
        for m in notices:
            segment = received[pos : m.start()]
            assert segment == stream[offset : offset + len(segment)]
            offset += len(segment) + int(m.group(1))
            body += segment
            pos = m.end()
        tail = received[pos:]
        assert tail == stream[offset : offset + len(tail)]
        assert offset + len(tail) == total, "missed + received must equal what the guest wrote"
        assert hub.bytes_missed == sum(int(m.group(1)) for m in notices)
        await fast.close()


async def test_busy_listen_address_names_it() -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        daemon = Daemon(
            parse_config(
                _config(f'[[ports]]\nname = "a"\ndevice = "exec:/bin/cat"\ntelnet = "127.0.0.1:{port}"\n'),
                "<test>",
            )
        )
        from serialmuxd.errors import StartupError

        with pytest.raises(StartupError, match=rf"127\.0\.0\.1:{port}.*port a.*in use"):
            await daemon.start()
    finally:
        blocker.close()


async def test_client_that_never_reads_but_floods_commands_loses_only_its_session(guest: GuestPty) -> None:
    async with running_daemon(
        _config(
            f"""
[[ports]]
name = "vm"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
telnet_readonly = "127.0.0.1:0"
raw = true
client_buffer_bytes = 4096
"""
        ),
        online=("vm",),
    ) as daemon:
        hub = daemon.hubs["vm"]
        watcher = await TcpClient.connect("127.0.0.1", daemon.listener("vm", "raw-readonly").tcp_port)
        await watcher.expect(b"read-only")
        flooder = socket.socket()
        flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flooder.connect(("127.0.0.1", daemon.listener("vm", "raw").tcp_port))
        flooder.setblocking(False)
        loop = asyncio.get_running_loop()
        await eventually(lambda: len(hub.sessions) == 2, "flooder attached")
        # Every "who" command answers with a notice; the flooder never reads any of them.
        deadline = loop.time() + 20
        with contextlib.suppress(ConnectionError):
            while len(hub.sessions) == 2 and loop.time() < deadline:
                # Kernel socket buffers take a few MB first; then the daemon's own buffer fills up.
                await loop.sock_sendall(flooder, (CTRL_E + b"cw") * 1000)
        await eventually(lambda: len(hub.sessions) == 1, "flooder's session cut")
        flooder.close()
        assert hub.status().writer is None  # its write access went with it
        await guest.send(b"others unaffected\r\n")
        await watcher.expect(b"others unaffected")
        await watcher.close()


async def test_replay_larger_than_the_client_buffer_is_delivered_not_cut(guest: GuestPty) -> None:
    async with running_daemon(
        _config(
            f"""
[[ports]]
name = "vm"
device = "tty:{guest.path}"
telnet_readonly = "127.0.0.1:0"
raw = true
scrollback_bytes = 4194304
replay_bytes = 2097152
client_buffer_bytes = 65536
"""
        ),
        online=("vm",),
    ) as daemon:
        hub = daemon.hubs["vm"]
        history = b"".join(b"line %07d\r\n" % i for i in range(2 * 1024 * 1024 // 14))
        for i in range(0, len(history), 65536):
            await guest.send(history[i : i + 65536])
        await eventually(lambda: hub.ring.end == len(history), "history in the ring")
        client = await TcpClient.connect("127.0.0.1", daemon.listener("vm", "raw-readonly").tcp_port)
        start = await client.expect(b"replaying")
        end = await client.expect(b"end of replay", timeout_s=20)
        replayed = bytes(client.buffer[start.end() : end.start()])
        assert history.endswith(replayed.split(b"\r\n", 1)[1].rsplit(b"\r\n[serialmuxd]", 1)[0])
        assert len(replayed) > 2_000_000
        assert not client.eof
        await client.close()
