"""Device links through real components: PTYs, socat, unix/tcp servers, programs on a PTY.

Every test waits on events (a recording listener, futures set from fd callbacks) or on state (``eventually``)
with a timeout, never on a sleep.  Reconnect timing is checked on the delays the link asks its ``Backoff``
for; real time is only ever checked from below (the link waited at least that long).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import sys
import termios
import threading
import tty
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest
from structlog.testing import capture_logs

from serialmuxd.config import DeviceKind, DeviceSpec
from serialmuxd.core.backoff import Backoff, BackoffPolicy
from serialmuxd.devices import DeviceLink, LinkState, base, open_link
from serialmuxd.devices import tty as tty_backend
from serialmuxd.devices.base import Channel, ReconnectingLink, os_error_text
from serialmuxd.devices.program import ExecLink
from serialmuxd.devices.sockets import UnixLink
from serialmuxd.devices.tty import OpenedTty, TtyChannel, TtyLink

from .support import eventually

TIMEOUT_S = 10.0
ALL_BYTES = bytes(range(256))
MIB = 1 << 20


def burst(size: int = MIB) -> bytes:
    return os.urandom(size)


# ---- a recording listener -----------------------------------------------------------------------------


class Recorder:
    """A ``DeviceListener`` that records everything and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.events: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def device_data_received(self, data: bytes) -> None:
        self.data += data
        self._changed.set()

    def device_online(self, description: str) -> None:
        self._event("online", description)

    def device_offline(self, reason: str) -> None:
        self._event("offline", reason)

    def device_write_paused(self) -> None:
        self._event("paused", "")

    def device_write_resumed(self) -> None:
        self._event("resumed", "")

    def _event(self, kind: str, text: str) -> None:
        self.events.append((kind, text))
        self._changed.set()

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.events if k == kind)

    def texts(self, kind: str) -> list[str]:
        return [t for k, t in self.events if k == kind]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_for(self, kind: str, count: int = 1) -> str:
        await self.wait_until(lambda: self.count(kind) >= count)
        return self.texts(kind)[count - 1]

    async def wait_data(self, needle: bytes) -> None:
        await self.wait_until(lambda: needle in self.data)

    async def wait_length(self, length: int) -> None:
        await self.wait_until(lambda: len(self.data) >= length)


class Attempts:
    """Counts connection attempts by wrapping the link's ``_connect_once`` (the real one still runs)."""

    def __init__(self, link: DeviceLink, monkeypatch: pytest.MonkeyPatch) -> None:
        assert isinstance(link, ReconnectingLink)
        self.times: list[float] = []
        self._changed = asyncio.Event()
        original = link._connect_once

        async def counted() -> tuple[Channel, str]:
            self.times.append(asyncio.get_running_loop().time())
            self._changed.set()
            return await original()

        monkeypatch.setattr(link, "_connect_once", counted)

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while len(self.times) < count:
                self._changed.clear()
                await self._changed.wait()


class RecordingBackoff(Backoff):
    """The link's backoff with the same policy, recording the delays it hands out and its resets."""

    def __init__(self, policy: BackoffPolicy) -> None:
        super().__init__(policy)  # no jitter: the delays are the policy's exact doubling sequence
        self.delays: list[float] = []
        self.resets = 0
        self._changed = asyncio.Event()

    @classmethod
    def install(cls, link: DeviceLink, monkeypatch: pytest.MonkeyPatch) -> RecordingBackoff:
        assert isinstance(link, ReconnectingLink)
        assert link._backoff.policy.jitter == 0.0
        recording = cls(link._backoff.policy)
        monkeypatch.setattr(link, "_backoff", recording)
        return recording

    def next_delay_s(self) -> float:
        delay = super().next_delay_s()
        self.delays.append(delay)
        self._changed.set()
        return delay

    def reset(self) -> None:
        super().reset()
        self.resets += 1

    async def wait(self, count: int) -> None:
        """Until ``count`` delays have been handed out."""
        async with asyncio.timeout(TIMEOUT_S):
            while len(self.delays) < count:
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def closing(link: DeviceLink) -> AsyncIterator[DeviceLink]:
    try:
        yield link
    finally:
        await link.close()


# ---- fd helpers (the test's side of a PTY) -------------------------------------------------------------


async def fd_read_exactly(fd: int, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = bytearray()
    done: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if not done.done():
                done.set_exception(exc)
            return
        buf.extend(chunk)
        if (len(buf) >= size or not chunk) and not done.done():
            done.set_result(None)

    loop.add_reader(fd, ready)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await done
    finally:
        loop.remove_reader(fd)
    return bytes(buf)


async def fd_write_all(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    done: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        nonlocal view
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            return
        if not view and not done.done():
            done.set_result(None)

    loop.add_writer(fd, ready)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await done
    finally:
        loop.remove_writer(fd)


class PtyDevice:
    """A PTY whose slave the link opens through a symlink (like QEMU's or socat's ``/dev/pts/N``)."""

    def __init__(self, link_path: Path) -> None:
        self.path = link_path
        self.master = -1
        self.appear()

    def appear(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        os.set_blocking(master, False)
        self.pts = os.ttyname(slave)
        os.close(slave)
        self.master = master
        tmp = self.path.with_suffix(".new")
        tmp.symlink_to(self.pts)
        tmp.replace(self.path)

    def vanish(self) -> None:
        """Like QEMU exiting: the master closes and the link name goes away (so no reused pts number)."""
        os.close(self.master)
        self.master = -1
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.master >= 0:
            self.vanish()


@pytest.fixture
def pty_device(tmp_path: Path) -> Iterator[PtyDevice]:
    device = PtyDevice(tmp_path / "ttyVM")
    yield device
    device.close()


def tty_spec(path: Path | str) -> DeviceSpec:
    return DeviceSpec(kind=DeviceKind.TTY, raw=f"tty:{path}", path=str(path))


def unix_spec(path: Path | str) -> DeviceSpec:
    return DeviceSpec(kind=DeviceKind.UNIX, raw=f"unix:{path}", path=str(path))


def tcp_spec(port: int) -> DeviceSpec:
    return DeviceSpec(kind=DeviceKind.TCP, raw=f"tcp:127.0.0.1:{port}", host="127.0.0.1", port=port)


def exec_spec(*argv: str) -> DeviceSpec:
    return DeviceSpec(kind=DeviceKind.EXEC, raw="exec:" + " ".join(argv), argv=argv)


# ---- socket peers ----------------------------------------------------------------------------------------


class Peer:
    """The server side: echoes (or holds) what the link sends; one ``PeerConnection`` per accepted link."""

    def __init__(self, *, echo: bool = True, hold: bool = False) -> None:
        self.echo = echo
        self.hold = hold  # don't read until resume()
        self.connections: list[PeerConnection] = []
        self.changed = asyncio.Event()

    def __call__(self) -> PeerConnection:
        return PeerConnection(self)

    @property
    def current(self) -> PeerConnection:
        return self.connections[-1]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class PeerConnection(asyncio.Protocol):
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.received = bytearray()
        self.lost = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it
        if self.peer.hold:
            transport.pause_reading()
        self.peer.connections.append(self)
        self.peer.changed.set()

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.peer.echo and self.transport is not None:
            self.transport.write(data)
        self.peer.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.peer.changed.set()

    def resume(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()


# ---- pure parts ------------------------------------------------------------------------------------------


def test_os_error_text() -> None:
    assert os_error_text(ConnectionRefusedError(111, "Connection refused")) == "connection refused"
    assert os_error_text(OSError(5, "whatever pyserial said")) == "input/output error"
    assert os_error_text(socket.gaierror(-2, "Name or service not known")) == "name or service not known"
    assert os_error_text(TimeoutError()) == "timed out"


def test_bad_specs_are_rejected_before_anything_starts() -> None:
    recorder = Recorder()
    for spec in (
        DeviceSpec(kind=DeviceKind.TTY, raw="tty:"),
        DeviceSpec(kind=DeviceKind.UNIX, raw="unix:"),
        DeviceSpec(kind=DeviceKind.TCP, raw="tcp:h:0", host="h", port=0),
        DeviceSpec(kind=DeviceKind.EXEC, raw="exec:"),
    ):
        with pytest.raises(ValueError):
            open_link("p", spec, recorder)
    with pytest.raises(ValueError):
        open_link("p", unix_spec("/x"), recorder, reconnect_initial_s=2, reconnect_max_s=1)


# ---- tty -------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tty_bytes_both_ways(pty_device: PtyDevice) -> None:
    recorder = Recorder()
    async with closing(open_link("vm1", tty_spec(pty_device.path), recorder)) as link:
        description = await recorder.wait_for("online")
        assert f"{pty_device.path} → {pty_device.pts}" in description
        assert "115200 8N1" in description
        assert link.state is LinkState.ONLINE
        assert link.description == f"tty:{pty_device.path}"

        assert link.write(ALL_BYTES)
        assert await fd_read_exactly(pty_device.master, 256) == ALL_BYTES
        await fd_write_all(pty_device.master, ALL_BYTES)
        await recorder.wait_length(256)
        assert recorder.data == ALL_BYTES

        outgoing = burst()
        assert link.write(outgoing)
        assert await fd_read_exactly(pty_device.master, MIB) == outgoing
        recorder.data.clear()
        incoming = burst()
        await fd_write_all(pty_device.master, incoming)
        await recorder.wait_length(MIB)
        assert recorder.data == incoming


@pytest.mark.asyncio
async def test_tty_vanishes_and_comes_back(pty_device: PtyDevice, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    link = open_link(
        "vm1", tty_spec(pty_device.path), recorder, reconnect_initial_s=0.01, reconnect_max_s=0.02
    )
    attempts = Attempts(link, monkeypatch)
    async with closing(link):
        await recorder.wait_for("online")
        pty_device.vanish()
        assert await recorder.wait_for("offline") == f"{pty_device.path}: hung up"
        assert not link.write(b"x"), "offline: nothing is queued"
        assert await recorder.wait_for("offline", 2) == f"{pty_device.path}: no such file or directory"
        before = len(attempts.times)
        await attempts.wait(before + 4)
        assert recorder.count("offline") == 2, "the same reason is not repeated on every retry"

        pty_device.appear()
        await recorder.wait_for("online", 2)
        assert recorder.kinds() == ["online", "offline", "offline", "online"]
        assert link.write(b"back")
        assert await fd_read_exactly(pty_device.master, 4) == b"back"


@pytest.mark.asyncio
async def test_tty_not_a_tty_then_a_tty(tmp_path: Path) -> None:
    """A changed reason is reported: missing → not a terminal → online."""
    path = tmp_path / "ttyX"
    recorder = Recorder()
    async with closing(open_link("vm1", tty_spec(path), recorder, reconnect_initial_s=0.01)):
        assert await recorder.wait_for("offline") == f"{path}: no such file or directory"
        path.write_bytes(b"")
        assert await recorder.wait_for("offline", 2) == f"{path}: inappropriate ioctl for device"
        path.unlink()
        device = PtyDevice(path)
        try:
            await recorder.wait_for("online")
        finally:
            device.close()


@pytest.mark.asyncio
async def test_tty_write_pauses_resumes_and_discards(pty_device: PtyDevice) -> None:
    recorder = Recorder()
    link = open_link("vm1", tty_spec(pty_device.path), recorder, write_buffer_limit=4096)
    async with closing(link):
        await recorder.wait_for("online")
        data = burst(256 * 1024)
        assert link.write(data)  # nobody reads the master: the pty fills up, the rest is buffered
        assert recorder.kinds() == ["online", "paused"], "paused synchronously, from inside write()"
        assert link.write_buffer_size > 4096
        assert await fd_read_exactly(pty_device.master, len(data)) == data
        await recorder.wait_for("resumed")
        assert recorder.kinds() == ["online", "paused", "resumed"]
        assert link.write_buffer_size == 0

        assert link.write(burst(256 * 1024))
        assert recorder.count("paused") == 2
        pending = link.write_buffer_size
        assert pending > 0
        pty_device.vanish()
        reason = await recorder.wait_for("offline")
        assert reason == f"{pty_device.path}: hung up; {pending} bytes of input discarded"
        await recorder.wait_for("resumed", 2)
        assert recorder.kinds()[-2:] == ["offline", "resumed"], "the writer is not left paused"
        assert link.write_buffer_size == 0


@pytest.mark.asyncio
async def test_tty_send_break(pty_device: PtyDevice) -> None:
    recorder = Recorder()
    link = open_link("vm1", tty_spec(pty_device.path), recorder)
    assert not link.send_break(), "not online yet"
    async with closing(link):
        description = await recorder.wait_for("online")
        assert description.endswith(", pty)")
        # A PTY has no break_ctl: TIOCSBRK "succeeds" and does nothing, so the link says False.
        assert not link.send_break()

        # The real-UART path, exercised on the same fd (the ioctls are accepted by a pty, so this checks the
        # ioctl numbers and the timer that ends the break).
        assert isinstance(link, ReconnectingLink)
        channel = link._current_channel
        assert isinstance(channel, TtyChannel)
        channel.is_pty = False
        assert link.send_break(0.01)
        assert channel.break_active
        assert not link.send_break(0.01), "one break at a time"
        await eventually(lambda: not channel.break_active, "the break's timer ended it")
        assert link.send_break(10)  # still active when the link closes: close() ends it
    assert not channel.break_active


@pytest.mark.asyncio
async def test_tty_keeps_what_the_guest_wrote_before_the_link_opened(pty_device: PtyDevice) -> None:
    """A guest that booted before the daemon started: its lines wait in the PTY and are not flushed."""
    boot = b"[    0.000000] Linux version 6.1.0\r\n[    0.000001] Command line: console=ttyS0\r\n"
    await fd_write_all(pty_device.master, boot)
    recorder = Recorder()
    async with closing(open_link("vm1", tty_spec(pty_device.path), recorder)):
        await recorder.wait_for("online")
        await fd_write_all(pty_device.master, b"login: ")
        await recorder.wait_data(b"login: ")
    assert recorder.data == boot + b"login: "


@pytest.mark.asyncio
async def test_tty_uart_open_drops_stale_input(
    pty_device: PtyDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real-UART path, on a PTY that the link is told is not one: queued bytes are flushed after the
    termios set-up (they arrived during the open, or sat in an adapter's FIFO), later ones arrive."""
    monkeypatch.setattr(tty_backend, "is_pty_slave", lambda fd: False)
    await fd_write_all(pty_device.master, b"stale garbage")
    recorder = Recorder()
    async with closing(open_link("vm1", tty_spec(pty_device.path), recorder)):
        description = await recorder.wait_for("online")
        assert not description.endswith(", pty)")
        await fd_write_all(pty_device.master, b"fresh")
        await recorder.wait_data(b"fresh")
    assert recorder.data == b"fresh"


def claim_pty_number(name: str, *, raw: bool = True) -> int | None:
    """Open PTYs, as any other program on the host might, until one gets ``name``; return its non-blocking
    master (its slave closed, like QEMU's) or None if another process got the number first."""
    tried: list[int] = []
    try:
        for _ in range(256):
            master, slave = os.openpty()
            got = os.ttyname(slave)
            os.close(slave)
            if got == name:
                if raw:
                    tty.setraw(master)
                os.set_blocking(master, False)
                return master
            tried.append(master)  # kept open meanwhile, so the next openpty gets another number
        return None
    finally:
        for fd in tried:
            os.close(fd)


def is_raw(master: int) -> bool:
    return not termios.tcgetattr(master)[3] & termios.ICANON


GONE_FOR_GOOD = (
    "PTY {} went away; the number may now belong to another program; "
    "configure a stable name such as socat's link= to reconnect"
)


@pytest.mark.asyncio
async def test_tty_bare_pts_is_not_reopened_when_its_number_is_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    master_a, slave_a = os.openpty()
    tty.setraw(master_a)
    pts = os.ttyname(slave_a)
    os.close(slave_a)
    recorder = Recorder()
    link = open_link("vm1", tty_spec(pts), recorder, reconnect_initial_s=0.005, reconnect_max_s=0.01)
    attempts = Attempts(link, monkeypatch)
    master_b: int | None = None
    try:
        async with closing(link):
            await recorder.wait_for("online")
            os.close(master_a)  # QEMU exits: this terminal is gone for good
            master_a = -1
            assert await recorder.wait_for("offline") == f"{pts}: hung up"
            assert await recorder.wait_for("offline", 2) == GONE_FOR_GOOD.format(pts)

            # Someone's new terminal at the same /dev/pts/N, in the kernel's default (cooked) mode.
            master_b = claim_pty_number(pts, raw=False)
            if master_b is None:
                pytest.skip(f"another process took {pts} first")
            await attempts.wait(len(attempts.times) + 5)

            assert recorder.kinds() == ["online", "offline", "offline"], "never attached to the stranger"
            assert link.state is not LinkState.ONLINE  # offline, or in its next (refused) attempt
            assert not is_raw(master_b), "its terminal settings were not touched (it was never opened)"
            await fd_write_all(master_b, b"someone else's shell\n")
            assert b"someone else" not in recorder.data
    finally:
        for fd in (master_a, master_b):
            if fd is not None and fd >= 0:
                os.close(fd)


@pytest.mark.asyncio
async def test_tty_symlink_is_followed_once_re_pointed_not_while_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = tmp_path / "vm1-serial"
    device = PtyDevice(name)  # like socat's link=
    pts = device.pts
    recorder = Recorder()
    link = open_link("vm1", tty_spec(name), recorder, reconnect_initial_s=0.005, reconnect_max_s=0.01)
    attempts = Attempts(link, monkeypatch)
    master_b: int | None = None
    try:
        async with closing(link):
            await recorder.wait_for("online")
            # The owner is killed with SIGKILL: its terminal goes, its symlink stays behind.
            os.close(device.master)
            device.master = -1
            assert await recorder.wait_for("offline") == f"{name}: hung up"
            master_b = claim_pty_number(pts)
            if master_b is None:
                pytest.skip(f"another process took {pts} first")
            stale = await recorder.wait_for("offline", 2)
            assert stale == (
                f"{name} still points to {pts}, a PTY that went away; the number may now belong to "
                f"another program; waiting for {name} to be re-created"
            )
            await attempts.wait(len(attempts.times) + 5)
            assert recorder.count("online") == 1

            # The owner comes back and re-creates its name, here for the terminal at the same number.
            fresh = name.with_suffix(".new")
            fresh.symlink_to(pts)
            fresh.replace(name)
            assert pts in await recorder.wait_for("online", 2)
            assert link.write(b"hello again")
            assert await fd_read_exactly(master_b, 11) == b"hello again"
            await fd_write_all(master_b, b"guest here")
            await recorder.wait_data(b"guest here")
    finally:
        device.close()
        if master_b is not None:
            os.close(master_b)


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")
async def test_tty_through_socat_pty_pair(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "vm-ttyS0", tmp_path / "guest-side"

    async def start_socat() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            "socat",
            "-d",
            "-d",
            f"pty,raw,echo=0,link={ours}",
            f"pty,raw,echo=0,link={theirs}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        async with asyncio.timeout(TIMEOUT_S):
            while b"starting data transfer loop" not in await proc.stderr.readline():
                pass
        return proc

    async def stop_socat(proc: asyncio.subprocess.Process) -> None:
        proc.terminate()
        await proc.communicate()

    def open_theirs() -> int:
        fd = os.open(theirs, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        return fd

    recorder = Recorder()
    proc = await start_socat()
    link = open_link("vm1", tty_spec(ours), recorder, reconnect_initial_s=0.01, reconnect_max_s=0.05)
    try:
        await recorder.wait_for("online")
        fd = open_theirs()
        try:
            assert link.write(ALL_BYTES)
            assert await fd_read_exactly(fd, 256) == ALL_BYTES
            await fd_write_all(fd, ALL_BYTES)
            await recorder.wait_length(256)
            assert recorder.data == ALL_BYTES
        finally:
            os.close(fd)

        await stop_socat(proc)
        assert (await recorder.wait_for("offline")).startswith(f"{ours}: ")
        assert await recorder.wait_for("offline", 2) == f"{ours}: no such file or directory"

        proc = await start_socat()
        await recorder.wait_for("online", 2)
        fd = open_theirs()
        try:
            await fd_write_all(fd, b"after restart")
            await recorder.wait_data(b"after restart")
        finally:
            os.close(fd)
    finally:
        await link.close()
        if proc.returncode is None:
            await stop_socat(proc)


# ---- unix ------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unix_bytes_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "vm1.sock"
    peer = Peer(echo=True)
    server = await asyncio.get_running_loop().create_unix_server(peer, str(path))
    recorder = Recorder()
    try:
        async with closing(open_link("vm1", unix_spec(path), recorder)) as link:
            assert await recorder.wait_for("online") == str(path)
            assert link.write(ALL_BYTES)
            await recorder.wait_length(256)
            assert recorder.data == ALL_BYTES
            recorder.data.clear()
            data = burst()
            assert link.write(data)
            await recorder.wait_length(MIB)
            assert recorder.data == data
            assert peer.current.received == ALL_BYTES + data
            assert not link.send_break(), "no break over a socket chardev"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_unix_reasons_dedup_and_server_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "vm1.sock"
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    link = open_link("vm1", unix_spec(path), recorder, reconnect_initial_s=0.005, reconnect_max_s=0.01)
    attempts = Attempts(link, monkeypatch)
    async with closing(link):
        # Missing socket: reported once, however often it is retried.
        assert await recorder.wait_for("offline") == f"{path}: no such file or directory"
        await attempts.wait(4)
        assert recorder.count("offline") == 1

        # A socket nobody listens on (QEMU gone, stale file): a new reason, reported once.
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))
        try:
            assert await recorder.wait_for("offline", 2) == f"{path}: connection refused"
            await attempts.wait(len(attempts.times) + 3)
            assert recorder.count("offline") == 2
        finally:
            stale.close()

        peer = Peer()
        server = await loop.create_unix_server(peer, str(path))  # replaces the stale socket file
        await recorder.wait_for("online")
        assert link.write(b"one")
        await recorder.wait_data(b"one")

        # The peer closes (QEMU restarts): offline with its own reason, then back on the same path.
        assert peer.current.transport is not None
        peer.current.transport.close()
        server.close()
        await server.wait_closed()
        assert await recorder.wait_for("offline", 3) == f"{path}: connection closed by peer"
        server = await loop.create_unix_server(peer, str(path))
        try:
            await recorder.wait_for("online", 2)
            assert link.write(b"two")
            await recorder.wait_data(b"onetwo")
        finally:
            server.close()
            await server.wait_closed()


@pytest.mark.asyncio
async def test_unix_backoff_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "s"))
    recorder = Recorder()
    # Without jitter the delays are exactly core.backoff's doubling sequence (its own tests cover jitter).
    link = UnixLink(
        "vm1",
        str(tmp_path / "s"),
        recorder,
        reconnect_initial_s=0.02,
        reconnect_max_s=0.08,
        reconnect_jitter=0.0,
    )
    attempts = Attempts(link, monkeypatch)
    backoff = RecordingBackoff.install(link, monkeypatch)
    link.start()
    try:
        async with closing(link):
            await attempts.wait(7)
    finally:
        stale.close()
    # The delays handed out: doubling, then capped at reconnect_max_s.
    assert backoff.delays[:6] == [0.02, 0.04, 0.08, 0.08, 0.08, 0.08], backoff.delays
    # And the link really waits them: each gap between attempts is at least its delay (from below only:
    # a loaded machine may always wait longer).
    gaps = [b - a for a, b in zip(attempts.times, attempts.times[1:], strict=False)]
    for gap, delay in zip(gaps, backoff.delays, strict=False):
        assert gap >= delay * 0.9, (gaps, backoff.delays)
    assert backoff.resets == 0
    assert recorder.texts("offline") == [f"{tmp_path / 's'}: connection refused"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("stable_after_s", "resets", "delay_after_loss"),
    [
        pytest.param(0.0, 1, 0.02, id="stable-resets-to-initial"),
        pytest.param(3600.0, 0, 0.64, id="short-lived-keeps-the-grown-delay"),
    ],
)
async def test_unix_backoff_resets_after_a_stable_connection(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stable_after_s: float,
    resets: int,
    delay_after_loss: float,
) -> None:
    """A connection that lasted ``stable_after_s`` resets the backoff; one that did not keeps the delay the
    failures had grown to.  0 makes every connection stable and an hour none, so no test waits for time."""
    path = tmp_path / "vm1.sock"
    recorder = Recorder()
    link = UnixLink(
        "vm1",
        str(path),
        recorder,
        reconnect_initial_s=0.02,
        reconnect_max_s=0.64,
        reconnect_jitter=0.0,
        stable_after_s=stable_after_s,
    )
    attempts = Attempts(link, monkeypatch)
    backoff = RecordingBackoff.install(link, monkeypatch)
    link.start()
    async with closing(link):
        await attempts.wait(6)  # missing: delays grew 0.02, 0.04, 0.08, 0.16, 0.32 → the next one is 0.64
        peer = Peer()
        server = await asyncio.get_running_loop().create_unix_server(peer, str(path))
        try:
            await recorder.wait_for("online")
            assert backoff.delays[:5] == [0.02, 0.04, 0.08, 0.16, 0.32], backoff.delays
            handed_out = len(backoff.delays)  # while online the link asks for no delay
            await peer.wait_until(lambda: bool(peer.connections))  # the server side has accepted it too
            assert peer.current.transport is not None
            peer.current.transport.close()
            await recorder.wait_for("offline", 2)
            await backoff.wait(handed_out + 1)
            assert backoff.resets == resets
            assert backoff.delays[handed_out] == delay_after_loss, backoff.delays
            count = len(attempts.times)
            await attempts.wait(count + 1)  # and it does reconnect after that delay
        finally:
            server.close()
            await server.wait_closed()


@pytest.mark.asyncio
async def test_unix_write_pauses_with_a_peer_that_does_not_read(tmp_path: Path) -> None:
    path = tmp_path / "vm1.sock"
    peer = Peer(echo=False, hold=True)
    server = await asyncio.get_running_loop().create_unix_server(peer, str(path))
    recorder = Recorder()
    try:
        link = open_link("vm1", unix_spec(path), recorder, write_buffer_limit=16384)
        async with closing(link):
            await recorder.wait_for("online")
            await peer.wait_until(lambda: bool(peer.connections))
            data = burst(4 * MIB)
            assert link.write(data)
            assert recorder.kinds() == ["online", "paused"]
            assert link.write_buffer_size > 16384
            peer.current.resume()
            await recorder.wait_for("resumed")
            await peer.wait_until(lambda: len(peer.current.received) >= len(data))
            assert peer.current.received == data
            assert recorder.kinds() == ["online", "paused", "resumed"]
            assert link.write_buffer_size == 0
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_unix_discarded_input_is_counted_when_the_peer_goes(tmp_path: Path) -> None:
    path = tmp_path / "vm1.sock"
    peer = Peer(echo=False, hold=True)
    server = await asyncio.get_running_loop().create_unix_server(peer, str(path))
    recorder = Recorder()
    try:
        link = open_link("vm1", unix_spec(path), recorder, write_buffer_limit=16384)
        async with closing(link):
            await recorder.wait_for("online")
            await peer.wait_until(lambda: bool(peer.connections))
            assert link.write(burst(MIB))
            pending = link.write_buffer_size
            assert pending > 0
            assert peer.current.transport is not None
            peer.current.transport.abort()  # with unread data: our side sees a reset, not an EOF
            reason = await recorder.wait_for("offline")
            match = re.fullmatch(
                rf"{re.escape(str(path))}: (.+); (up to )?(\d+) bytes of input discarded", reason
            )
            assert match is not None, reason
            assert match[1] in ("connection reset by peer", "connection closed by peer")
            assert int(match[3]) == pending
            await recorder.wait_for("resumed")
            assert recorder.kinds() == ["online", "paused", "offline", "resumed"]
    finally:
        server.close()
        await server.wait_closed()


# ---- tcp -------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tcp_bytes_nodelay_and_restart_on_the_same_port() -> None:
    loop = asyncio.get_running_loop()
    peer = Peer(echo=True)
    server = await loop.create_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    recorder = Recorder()
    link = open_link("vm1", tcp_spec(port), recorder, reconnect_initial_s=0.01, reconnect_max_s=0.02)
    try:
        async with closing(link):
            assert await recorder.wait_for("online") == f"127.0.0.1:{port}"
            assert link.description == f"tcp:127.0.0.1:{port}"
            assert isinstance(link, ReconnectingLink)
            channel = link._current_channel
            assert channel is not None
            transport = channel._transport  # type: ignore[attr-defined]
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1

            assert link.write(ALL_BYTES)
            await recorder.wait_length(256)
            assert recorder.data == ALL_BYTES
            recorder.data.clear()
            data = burst()
            assert link.write(data)
            await recorder.wait_length(MIB)
            assert recorder.data == data
            assert not link.send_break()

            assert peer.current.transport is not None
            peer.current.transport.close()
            server.close()
            await server.wait_closed()
            assert await recorder.wait_for("offline") == f"127.0.0.1:{port}: connection closed by peer"
            assert await recorder.wait_for("offline", 2) == f"127.0.0.1:{port}: connection refused"

            server = await loop.create_server(peer, "127.0.0.1", port)
            await recorder.wait_for("online", 2)
            recorder.data.clear()
            assert link.write(b"again")
            await recorder.wait_data(b"again")
    finally:
        server.close()
        await server.wait_closed()


# ---- exec ------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_exec_bytes_both_ways() -> None:
    recorder = Recorder()
    spec = exec_spec("/bin/sh", "-c", "stty raw -echo; echo ready; exec cat")
    async with closing(open_link("vm1", spec, recorder)) as link:
        description = await recorder.wait_for("online")
        assert re.fullmatch(r"exec:sh \(pid \d+, 80x24\)", description), description
        assert link.description == "exec:sh"
        await recorder.wait_data(b"ready\n")
        recorder.data.clear()
        assert link.write(ALL_BYTES)
        await recorder.wait_length(256)
        assert recorder.data == ALL_BYTES
        recorder.data.clear()
        data = burst()
        assert link.write(data)
        await recorder.wait_length(MIB)
        assert recorder.data == data
        assert not link.send_break()


@pytest.mark.asyncio
async def test_exec_restarts_after_kill_and_reports_exit_status() -> None:
    recorder = Recorder()
    spec = exec_spec("/bin/sh", "-c", "echo ready $$; read line; exit 3")
    async with closing(open_link("vm1", spec, recorder, reconnect_initial_s=0.01)) as link:
        assert isinstance(link, ExecLink)
        await recorder.wait_until(lambda: re.search(rb"ready (\d+)", recorder.data) is not None)
        match = re.search(rb"ready (\d+)", recorder.data)
        assert match is not None
        first_pid = int(match[1])
        assert link.pid == first_pid
        recorder.data.clear()

        os.kill(first_pid, signal.SIGKILL)
        assert await recorder.wait_for("offline") == "program killed by signal SIGKILL"
        await recorder.wait_for("online", 2)
        await recorder.wait_until(lambda: re.search(rb"ready (\d+)", recorder.data) is not None)
        assert link.pid not in (None, first_pid)

        assert link.write(b"go\n")
        assert await recorder.wait_for("offline", 2) == "program exited with status 3"
        await recorder.wait_for("online", 3)


@pytest.mark.asyncio
async def test_exec_window_size_reaches_the_child() -> None:
    script = (
        "import os, signal; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH}); "
        "print('ready', flush=True); signal.sigwait({signal.SIGWINCH}); "
        "size = os.get_terminal_size(0); print(f'winch {size.columns}x{size.lines}', flush=True)"
    )
    recorder = Recorder()
    spec = exec_spec("/bin/sh", "-c", 'stty size; exec "$0" -c "$1"', sys.executable, script)
    async with closing(open_link("vm1", spec, recorder)) as link:
        await recorder.wait_data(b"ready")
        assert b"24 80\r\n" in recorder.data, "80x24 by default"
        link.set_window_size(100, 37)  # TIOCSWINSZ on the master; the kernel sends SIGWINCH to the child
        await recorder.wait_data(b"winch 100x37")


@pytest.mark.asyncio
async def test_exec_window_size_set_before_start_applies_to_the_first_run() -> None:
    recorder = Recorder()
    link = open_link("vm1", exec_spec("/bin/sh", "-c", "stty size; exec cat"), recorder)
    link.set_window_size(132, 43)
    async with closing(link):
        await recorder.wait_data(b"43 132\r\n")
        link.set_window_size(0, 0)  # "unknown" from a telnet client: ignored
        assert "132x43" in recorder.texts("online")[0]


@pytest.mark.asyncio
async def test_exec_program_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    link = open_link("vm1", exec_spec("no-such-program-xyz"), recorder, reconnect_initial_s=0.005)
    attempts = Attempts(link, monkeypatch)
    async with closing(link):
        assert await recorder.wait_for("offline") == "exec:no-such-program-xyz: program not found"
        await attempts.wait(4)
        assert recorder.count("offline") == 1


@pytest.mark.asyncio
async def test_exec_close_kills_a_child_that_ignores_sigterm() -> None:
    recorder = Recorder()
    link = ExecLink(
        "vm1",
        ("/bin/sh", "-c", "trap '' TERM HUP; echo ready $$; exec sleep 1000"),
        recorder,
        terminate_timeout_s=0.3,
    )
    link.start()
    await recorder.wait_data(b"ready")
    pid = link.pid
    assert pid is not None
    await link.close()
    assert link.state is LinkState.CLOSED
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # not even a zombie: it was killed and reaped
    assert recorder.kinds() == ["online"], "close() reports nothing"


# ---- close() leaks nothing -------------------------------------------------------------------------------


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def settle_peer(peer: Peer) -> None:
    await peer.wait_until(lambda: all(c.lost for c in peer.connections))


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["tty", "unix", "tcp", "exec", "missing", "unstarted"])
async def test_close_leaks_no_fd_task_or_child(kind: str, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    peer = Peer()
    device: PtyDevice | None = None
    server: asyncio.Server | None = None
    if kind == "tty":
        device = PtyDevice(tmp_path / "tty")
        spec = tty_spec(device.path)
    elif kind == "unix":
        server = await loop.create_unix_server(peer, str(tmp_path / "s"))
        spec = unix_spec(tmp_path / "s")
    elif kind == "tcp":
        server = await loop.create_server(peer, "127.0.0.1", 0)
        spec = tcp_spec(server.sockets[0].getsockname()[1])
    elif kind == "exec":
        spec = exec_spec("/bin/sh", "-c", "echo ready; exec cat")
    else:
        spec = unix_spec(tmp_path / "missing")

    async def cycle() -> None:
        recorder = Recorder()
        link = open_link("vm1", spec, recorder)
        pid: int | None = None
        if kind in ("tty", "unix", "tcp", "exec"):
            await recorder.wait_for("online")
            assert link.write(b"hello\n")
            if isinstance(link, ExecLink):
                await recorder.wait_data(b"hello")
                pid = link.pid
        elif kind == "missing":
            await recorder.wait_for("offline")  # closed while waiting for the next attempt
        events = list(recorder.events)
        await link.close()
        assert recorder.events == events, "close() reports nothing"
        await link.close()  # idempotent
        assert link.state is LinkState.CLOSED
        assert not link.write(b"x")
        await settle_peer(peer)
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # killed and reaped

    # The first cycle may make the loop allocate things it keeps (the default executor; uvloop opens a
    # reserve fd on its first failed connect).  A leak of ours shows up in every cycle, so measure the second.
    await cycle()
    fds_before = open_fds()
    tasks_before = asyncio.all_tasks()
    await cycle()
    assert asyncio.all_tasks() == tasks_before
    assert open_fds() == fds_before

    if device is not None:
        device.close()
    if server is not None:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_close_while_a_tty_open_is_in_flight(
    pty_device: PtyDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() lands while pyserial's open runs in the executor: it waits for it and closes its fd."""
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    release = threading.Event()
    recorder = Recorder()
    fds_before = open_fds()
    link = open_link("vm1", tty_spec(pty_device.path), recorder)
    assert isinstance(link, TtyLink)
    real_open = link._open_blocking

    def slow_open() -> OpenedTty:
        result = real_open()
        loop.call_soon_threadsafe(started.set)
        release.wait(TIMEOUT_S)
        return result

    monkeypatch.setattr(link, "_open_blocking", slow_open)
    async with asyncio.timeout(TIMEOUT_S):
        await started.wait()
    closer = asyncio.create_task(link.close())
    await eventually(lambda: link.state is LinkState.CLOSED, "close() under way")
    assert not closer.done(), "close() waits for the open in flight"
    release.set()
    await closer
    assert open_fds() == fds_before
    assert recorder.events == []


@pytest.mark.asyncio
async def test_tty_exclusive_lock_keeps_a_second_opener_out(pty_device: PtyDevice) -> None:
    first, second = Recorder(), Recorder()
    async with closing(open_link("a", tty_spec(pty_device.path), first)):
        await first.wait_for("online")
        async with closing(open_link("b", tty_spec(pty_device.path), second)):
            reason = await second.wait_for("offline")
            assert reason == f"{pty_device.path}: in use by another program (locked)"


@pytest.mark.asyncio
async def test_exec_child_reaped_by_someone_else() -> None:
    recorder = Recorder()
    async with closing(
        open_link("vm1", exec_spec("/bin/sh", "-c", "echo ready; exec cat"), recorder)
    ) as link:
        assert isinstance(link, ExecLink)
        await recorder.wait_data(b"ready")
        pid = link.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # Reap it before the loop runs again, as a stray waitpid(-1) elsewhere in the daemon could.
        os.waitpid(pid, 0)  # noqa: ASYNC222 - deliberately synchronous, see above
        assert await recorder.wait_for("offline") == "program exited (status unknown)"
        await recorder.wait_for("online", 2)


def listener_failures(logs: Sequence[Mapping[str, object]]) -> list[Mapping[str, object]]:
    return [entry for entry in logs if entry["event"] == "device listener failed"]


@pytest.mark.asyncio
async def test_a_failing_listener_does_not_kill_the_link(tmp_path: Path) -> None:
    class Grumpy(Recorder):
        def device_online(self, description: str) -> None:
            super().device_online(description)
            raise RuntimeError("listener bug")

    device = PtyDevice(tmp_path / "tty")
    recorder = Grumpy()
    try:
        with capture_logs() as logs:
            async with closing(open_link("vm1", tty_spec(device.path), recorder)) as link:
                await recorder.wait_for("online")
                assert link.write(b"still works")
                assert await fd_read_exactly(device.master, 11) == b"still works"
                assert isinstance(link, ReconnectingLink)
                assert link.listener_errors == 1
    finally:
        device.close()
    (failure,) = listener_failures(logs)
    assert failure["callback"] == "device_online" and failure["port"] == "vm1"
    assert failure["log_level"] == "error"
    assert "RuntimeError: listener bug" in str(failure["traceback"])


class FailingOnData(Recorder):
    """Records every chunk, then raises when it holds ``boom``: a bug in the hub's fan-out."""

    def device_data_received(self, data: bytes) -> None:
        super().device_data_received(data)
        if b"boom" in data:
            raise RuntimeError("fan-out bug")


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["tty", "unix", "tcp"])
async def test_a_listener_raising_on_data_is_logged_counted_and_the_console_stays(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same outcome on an fd device and on a socket device: the device stays online and keeps reading, the
    failures are counted, the log gets one line per interval saying how many it did not show."""
    loop = asyncio.get_running_loop()
    recorder = FailingOnData()
    peer = Peer(echo=False)
    device: PtyDevice | None = None
    server: asyncio.Server | None = None
    if kind == "tty":
        device = PtyDevice(tmp_path / "tty")
        spec = tty_spec(device.path)
    elif kind == "unix":
        server = await loop.create_unix_server(peer, str(tmp_path / "s"))
        spec = unix_spec(tmp_path / "s")
    else:
        server = await loop.create_server(peer, "127.0.0.1", 0)
        spec = tcp_spec(server.sockets[0].getsockname()[1])

    async def guest_writes(data: bytes) -> None:
        if device is not None:
            await fd_write_all(device.master, data)
        else:
            assert peer.current.transport is not None
            peer.current.transport.write(data)

    async def guest_reads(size: int) -> bytes:
        if device is not None:
            return await fd_read_exactly(device.master, size)
        await peer.wait_until(lambda: len(peer.current.received) >= size)
        return bytes(peer.current.received)

    monkeypatch.setattr(base, "LISTENER_ERROR_LOG_INTERVAL_S", 3600.0)
    try:
        with capture_logs() as logs:
            async with closing(open_link("vm1", spec, recorder)) as link:
                assert isinstance(link, ReconnectingLink)
                await recorder.wait_for("online")
                if server is not None:
                    await peer.wait_until(lambda: bool(peer.connections))
                for chunk in (b"boom 1\r\n", b"boom 2\r\n"):  # one at a time: two reads, two failures
                    await guest_writes(chunk)
                    await recorder.wait_data(chunk)
                assert link.listener_errors == 2
                assert len(listener_failures(logs)) == 1, "the second one is only counted"

                monkeypatch.setattr(base, "LISTENER_ERROR_LOG_INTERVAL_S", 0.0)  # "the interval has passed"
                await guest_writes(b"boom 3\r\n")
                await recorder.wait_data(b"boom 3")
                await guest_writes(b"later data\r\n")
                await recorder.wait_data(b"later data\r\n")
                assert link.write(b"typed")
                assert await guest_reads(5) == b"typed"

                assert link.state is LinkState.ONLINE
                assert recorder.kinds() == ["online"], "never offline, never reconnected"
                assert len(peer.connections) == (0 if device is not None else 1)
                assert link.listener_errors == 3
    finally:
        if device is not None:
            device.close()
        if server is not None:
            server.close()
            await server.wait_closed()
    first, second = listener_failures(logs)
    assert first["callback"] == second["callback"] == "device_data_received"
    assert (first["unlogged_since_last"], second["unlogged_since_last"]) == (0, 1)
    assert second["listener_errors"] == 3
    assert "RuntimeError: fan-out bug" in str(first["traceback"])
    assert recorder.data == b"boom 1\r\nboom 2\r\nboom 3\r\nlater data\r\n", "nothing lost, nothing repeated"


@pytest.mark.asyncio
async def test_exec_program_gets_no_service_plumbing_or_adapter_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serialmuxd.devices.program import hide_from_programs

    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("SMX_TEST_BMC_PASSWORD", "hunter2")
    monkeypatch.setenv("SMX_TEST_VISIBLE", "fine")
    hide_from_programs(["SMX_TEST_BMC_PASSWORD"])
    recorder = Recorder()
    spec = exec_spec(
        "/bin/sh", "-c", 'echo "[$NOTIFY_SOCKET|$SMX_TEST_BMC_PASSWORD|$SMX_TEST_VISIBLE|$TERM]"'
    )
    async with closing(open_link("vm1", spec, recorder)):
        await recorder.wait_data(b"]")
    assert b"[||fine|xterm-256color]" in recorder.data
