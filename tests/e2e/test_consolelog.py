"""Persistent console logs end to end: a real daemon, a real PTY guest, real ``tail -F``, real ``telnet``.

* rotation: a real ``tail -F`` prints every guest byte, in order, across several rotations; client input
  never reaches the log; files 0600, directory 0700, owned by the daemon's user;
* SIGKILL then restart: the scrollback API and WebSocket ``?from=`` serve the persisted history at its
  exact offsets, then the restart-gap line / notice, then new output at higher offsets;
* a full log filesystem (a 256 KiB tmpfs mounted here): the telnet session gets every byte, the loss is
  counted (metric), and once space is freed the log resumes after a gap marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest

from .support import Expecter, GuestPty, PtyChild, TcpClient, eventually, running_daemon
from .test_cli import free_port
from .test_daemon_process import daemon_process
from .test_http import WsClient

pytestmark = [pytest.mark.asyncio]


class Tail(Expecter):
    """``tail -F`` (coreutils, by name with retry) of one file; its stdout is the buffer."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__()
        self.proc = proc
        self.stderr = b""
        self._tasks = [asyncio.get_running_loop().create_task(self._pump())]

    @classmethod
    @contextlib.asynccontextmanager
    async def follow(cls, path: Path) -> AsyncIterator[Tail]:
        proc = await asyncio.create_subprocess_exec(
            "tail", "-F", "-n", "+1", "-s", "0.1", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        tail = cls(proc)
        try:
            yield tail
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
            for task in tail._tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _pump(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        err = asyncio.get_running_loop().create_task(self._pump_stderr())
        self._tasks.append(err)
        while data := await self.proc.stdout.read(65536):
            self.feed(data)

    async def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        while data := await self.proc.stderr.read(4096):
            self.stderr += data


def _toml(guest: GuestPty, logs: Path, extra: str = "", *, raw: bool = True) -> str:
    return f"""
[daemon]
log_level = "warning"

[logs]
dir = "{logs}"
{extra}

[[ports]]
name = "p1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
raw = {"true" if raw else "false"}
replay_bytes = 0
"""


def _lines(tag: str, first: int, count: int) -> bytes:
    return b"".join(b"%s %05d %s\r\n" % (tag.encode(), i, b"x" * 40) for i in range(first, first + count))


async def test_rotation_is_followed_by_tail_F_and_files_are_private(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    guest = GuestPty()
    toml = _toml(guest, logs, "rotate_bytes = 4096\nkeep = 2\nboot_bytes = 0")
    sent = b""
    async with running_daemon(toml, online=["p1"], cleanup=guest.close) as daemon:
        hub = daemon.hubs["p1"]
        client = await TcpClient.connect("127.0.0.1", daemon.listener("p1", "raw").tcp_port)
        await client.send(b"typed-by-a-client-secret\r")
        await guest.expect(b"typed-by-a-client-secret", 5)  # reached the guest (a raw PTY: no echo)
        async with Tail.follow(logs / "p1.log") as tail:
            # 24 batches of 30 lines (1.5 KiB each): 36 KiB, about nine rotations of 4 KiB; each batch is
            # waited for in tail's output, which is how a console is read (not a firehose).
            for batch in range(24):
                data = _lines("rot", batch * 30, 30)
                sent += data
                await guest.send(data)
                await tail.expect(b"rot %05d " % (batch * 30 + 29), 10)
            await eventually(
                lambda: hub.console_log is not None and hub.console_log.bytes_logged == len(sent), "logged"
            )
            assert bytes(tail.buffer) == sent  # every byte once, in order, across the rotations
            assert tail.stderr.count(b"has been replaced") >= 5, tail.stderr  # tail really saw rotations
        await client.close()
    assert b"typed-by-a-client-secret" not in b"".join(p.read_bytes() for p in logs.iterdir())
    # What is kept is the newest stretch of the stream, split across NAME.log.2, NAME.log.1, NAME.log.
    names = sorted(p.name for p in logs.iterdir())
    assert names == ["p1.log", "p1.log.1", "p1.log.1.idx", "p1.log.2", "p1.log.2.idx", "p1.log.idx"], names
    kept = b"".join((logs / n).read_bytes() for n in ("p1.log.2", "p1.log.1", "p1.log"))
    assert sent.endswith(kept) and len(kept) > 8192
    assert all((logs / n).stat().st_size <= 4096 for n in ("p1.log.2", "p1.log.1"))
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    for path in logs.iterdir():
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600, path
        assert info.st_uid == os.getuid()


async def test_timestamps_are_written_when_each_line_completes(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    guest = GuestPty()
    async with running_daemon(
        _toml(guest, logs, "timestamps = true"), online=["p1"], cleanup=guest.close
    ) as daemon:
        hub = daemon.hubs["p1"]
        assert hub.console_log is not None
        await guest.send(b"first half ")
        await guest.send(b"and the rest\r\nnext\r\n")
        await guest.send(b"login: ")  # no newline: written after its idle wait, stamped
        await eventually(
            lambda: hub.console_log is not None and hub.console_log.bytes_logged == 38, "logged", 5
        )
        text = (logs / "p1.log").read_bytes()
    stamp = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    assert re.fullmatch(
        stamp + rb"first half and the rest\r\n" + stamp + rb"next\r\n" + stamp + rb"login: ", text
    ), text


def _proc_toml(tmp_path: Path, guest: GuestPty, http_port: int) -> Path:
    path = tmp_path / "serialmuxd.toml"
    path.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
log_format = "json"

[logs]
dir = "{tmp_path / "logs"}"

[http]
listen = "127.0.0.1:{http_port}"

[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet_readonly = "127.0.0.1:0"
raw = true
replay_bytes = 0
"""
    )
    return path


async def _ws(http: aiohttp.ClientSession, port: int, query: str) -> WsClient:
    client = WsClient(await http.ws_connect(f"http://127.0.0.1:{port}/api/v1/ports/vm1/ws?{query}"))
    await client.wait_kind("hello")
    return client


async def _scrollback(
    http: aiohttp.ClientSession, port: int, query: str = ""
) -> tuple[bytes, dict[str, int]]:
    async with http.get(f"http://127.0.0.1:{port}/api/v1/ports/vm1/scrollback?{query}") as resp:
        assert resp.status == 200, await resp.text()
        headers = {
            k[len("X-Scrollback-") :].lower(): int(v)
            for k, v in resp.headers.items()
            if k.startswith("X-Scrollback-")
        }
        return await resp.read(), headers


@pytest.mark.slow
async def test_sigkill_then_restart_serves_the_persisted_history_with_a_gap(tmp_path: Path) -> None:
    guest = GuestPty()
    http_port = free_port()
    config = _proc_toml(tmp_path, guest, http_port)
    log_file = tmp_path / "logs" / "vm1.log"
    persisted = _lines("before", 0, 150)
    try:
        async with aiohttp.ClientSession() as http:
            async with daemon_process(config) as first:
                ws = await _ws(http, http_port, "mode=ro")
                base = next(e for e in ws.events if e["type"] == "hello")["offset"]
                await guest.send(persisted)
                await ws.wait_for(lambda: ws.data.endswith(persisted), "the first run's output")
                await eventually(
                    lambda: log_file.exists() and log_file.read_bytes().endswith(persisted), "on disk"
                )
                # This may or may not reach the disk before the kill; either way it must not be invented,
                # shifted or silently dropped.
                await guest.send(b"maybe lost\r\n")
                await ws.wait_for(lambda: ws.data.endswith(b"maybe lost\r\n"), "the last line")
                seen = bytes(ws.data)
                await ws.ws.close()
                first.proc.send_signal(signal.SIGKILL)
                assert await first.proc.wait() == -signal.SIGKILL
            end_of_first = base + len(seen)

            async with daemon_process(config) as second:
                history, h = await _scrollback(http, http_port)
                assert h["start"] == h["offset"] == base  # the persisted history comes first ...
                async with http.get(f"http://127.0.0.1:{http_port}/api/v1/ports/vm1") as resp:
                    assert (await resp.json())["scrollback"]["start"] == base  # (the port's status says so)
                assert history == seen[: len(history)] and len(history) >= len(
                    persisted
                )  # ... at its offsets
                assert h["next"] == base + len(history)
                after, a = await _scrollback(http, http_port, f"from={h['next']}")
                assert a["offset"] >= end_of_first  # offsets never go back, whatever the disk had
                marker = (
                    rb"(\r\n)?\[serialmuxd\] restart gap: serialmuxd restarted at .*; the logged output "
                    rb"above ends at offset %d, .* not known .*; new output starts at offset %d\r\n"
                )
                assert re.match(marker % (h["next"], a["offset"]), after), after

                # A client resuming from inside the old run gets the rest of it, then the restart gap.
                resume = base + 1000
                ws = await _ws(http, http_port, f"mode=ro&from={resume}")
                await ws.wait_for(lambda: bytes(ws.data) == history[1000:], "the persisted rest")
                gap = await ws.wait_kind("restart_gap")
                assert gap["from"] == h["next"] and gap["to"] > end_of_first and gap["exact"] is False
                await guest.send(b"after the restart\r\n")
                await ws.wait_for(lambda: ws.data.endswith(b"after the restart\r\n"), "new output")
                assert "missed" not in ws.kinds()
                await ws.ws.close()
                tail, t = await _scrollback(http, http_port, f"from={a['offset']}")
                assert tail.endswith(b"after the restart\r\n") and t["offset"] == a["offset"]
                second.proc.send_signal(signal.SIGTERM)
                assert await second.proc.wait() == 0
        text = log_file.read_bytes()
        assert (
            persisted in text
            and b"[serialmuxd] restart gap:" in text
            and text.endswith(b"after the restart\r\n")
        )
    finally:
        guest.close()


# -- a full log filesystem -------------------------------------------------------------------------------


@contextlib.contextmanager
def _small_tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> Path:
    """Fill the filesystem at ``path`` to the last byte (raw writes: nothing left in a buffer)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) == size:
                    pass
    finally:
        os.close(fd)
    return filler


def _metric(daemon: object, name: str) -> float:
    text = generate_latest(daemon.metrics_registry).decode()  # type: ignore[attr-defined]
    found = re.search(rf'^serialmuxd_{name}{{group="",port="p1"}} (\S+)$', text, flags=re.MULTILINE)
    assert found is not None, text[:2000]
    return float(found.group(1))


async def test_a_full_log_disk_never_stops_the_console(tmp_path: Path) -> None:
    guest = GuestPty()
    with _small_tmpfs(tmp_path / "logs") as logs:
        toml = _toml(guest, logs, "rotate_bytes = 1048576\nboot_bytes = 0", raw=False)
        async with running_daemon(toml, online=["p1"], cleanup=guest.close) as daemon:
            hub = daemon.hubs["p1"]
            log = hub.console_log
            assert log is not None
            telnet = PtyChild(["telnet", "127.0.0.1", str(daemon.listener("p1", "telnet").tcp_port)])
            try:
                await telnet.expect(b"attached to console p1", 10)
                await guest.send(b"before the disk filled\r\n")
                await eventually(lambda: log.bytes_logged == len(b"before the disk filled\r\n"), "logged")
                filler = _fill(logs)
                # 200 KiB while the disk is full: every byte reaches the telnet client, none the log.
                full = _lines("full", 0, 4000)
                await guest.send(full)
                await telnet.expect(b"full 03999 ", 20)
                await eventually(lambda: log.bytes_lost > 0, "the loss counted", 5)
                assert _metric(daemon, "port_log_lost_bytes_total") == log.bytes_lost
                # The console still takes input from the telnet session while the log is paused.
                telnet.write(b"still typing\r")
                await guest.expect(b"still typing", 5)
                filler.unlink()
                await guest.send(b"after space was freed\r\n")
                await telnet.expect(b"after space was freed", 10)
                path = logs / "p1.log"
                await eventually(
                    lambda: path.read_bytes().endswith(b"after space was freed\r\n"), "resumed", 10
                )
            finally:
                telnet.close()
            text = path.read_bytes()
            assert text.startswith(b"before the disk filled\r\n")
            gap = re.search(
                rb"\n?\[serialmuxd\] log gap: (\d+) bytes not written \(No space left on device\)\n", text
            )
            assert gap is not None, text[-500:]
            # What reached the file before the disk filled plus the gap account for every byte.
            written_full = text[len(b"before the disk filled\r\n") : gap.start()]
            assert full.startswith(written_full)
            assert int(gap.group(1)) == len(full) - len(written_full) == log.bytes_lost
            assert _metric(daemon, "port_log_bytes_total") == log.bytes_logged
            assert text.endswith(b"after space was freed\r\n")


# -- reload ----------------------------------------------------------------------------------------------


def _reload_toml(path: Path, guests: dict[str, GuestPty], logs: Path, timestamps: bool) -> None:
    ports = "".join(
        f'[[ports]]\nname = "{name}"\ndevice = "tty:{guest.path}"\ntelnet = "127.0.0.1:0"\nraw = true\n'
        "replay_bytes = 0\n"
        for name, guest in guests.items()
    )
    stamps = "true" if timestamps else "false"
    path.write_text(
        f'[daemon]\nlog_format = "json"\n\n[logs]\ndir = "{logs}"\ntimestamps = {stamps}\n\n{ports}'
    )


def _open_logs(pid: int, logs: Path) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(logs)):
                found.add(Path(target).name)
    return found


@pytest.mark.slow
async def test_reload_closes_a_removed_ports_log_and_applies_changed_log_settings(tmp_path: Path) -> None:
    from .reload_support import daemon_process as reloadable

    logs = tmp_path / "logs"
    guests = {"p1": GuestPty(), "p2": GuestPty()}
    config = tmp_path / "serialmuxd.toml"
    _reload_toml(config, guests, logs, timestamps=False)
    try:
        async with reloadable(config) as daemon:
            pid = daemon.proc.pid
            await guests["p1"].send(b"p1 before\r\n")
            await guests["p2"].send(b"p2 unfinished line, no newline")
            await eventually(
                lambda: (logs / "p2.log").exists() and (logs / "p2.log").stat().st_size == 30, "p2"
            )
            await eventually(lambda: _open_logs(pid, logs) >= {"p1.log", "p2.log"}, "both logs open")
            # p2 removed, p1's log settings changed: p2's log is written out and closed; p1 is rebuilt.
            _reload_toml(config, {"p1": guests["p1"]}, logs, timestamps=True)
            await daemon.reload()
            assert "p2.log" not in _open_logs(pid, logs)
            assert (logs / "p2.log").read_bytes() == b"p2 unfinished line, no newline"
            client = await daemon.connect("p1")
            await client.expect(b"attached", 10)
            await guests["p1"].send(b"p1 after\r\n")
            await client.expect(b"p1 after", 10)
            await eventually(
                lambda: (logs / "p1.log").read_bytes().endswith(b" p1 after\r\n"), "p1 stamped", 10
            )
            await client.close()
        text = (logs / "p1.log").read_bytes()
        assert re.fullmatch(rb"p1 before\r\n\d{4}-\d\d-\d\dT[\d:.]{12}Z p1 after\r\n", text), text
    finally:
        for guest in guests.values():
            guest.close()


async def test_attach_replay_after_a_restart_starts_in_the_logged_history(tmp_path: Path) -> None:
    """ConMan-style: whoever attaches after a restart first sees what the guest printed before it."""
    logs = tmp_path / "logs"
    guest = GuestPty()
    toml = _toml(guest, logs).replace("replay_bytes = 0", "replay_bytes = 2048")
    toml = toml.replace("[daemon]\n", f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    try:
        async with running_daemon(toml, online=["p1"]) as daemon:
            old = _lines("old", 0, 100)  # 5 KiB: more than the replay
            await guest.send(old)
            hub = daemon.hubs["p1"]
            await eventually(
                lambda: hub.console_log is not None and hub.console_log.bytes_logged == len(old), "log"
            )
            end = hub.stream_end
        async with running_daemon(toml, online=["p1"]) as daemon:
            await guest.send(b"new run\r\n")
            hub = daemon.hubs["p1"]
            await eventually(lambda: hub.stream_end >= hub.output.run_start + 9, "new output")
            client = await TcpClient.connect("127.0.0.1", daemon.listener("p1", "raw").tcp_port)
            done = await client.expect(b"end of replay", 10)
            text = bytes(client.buffer[: done.end()])
            await client.close()
        old_tail = old[-(2048 - 9) :]
        old_tail = old_tail[old_tail.index(b"\n") + 1 :]  # from a line start
        start = text.index(b"replaying")
        body = text[text.index(b"\n", start) + 1 :]
        assert body.startswith(old_tail), body[:200]
        gap = re.compile(
            rb"(\r\n)?\[serialmuxd\] serialmuxd restarted: the logged output above ends at offset %d "
            rb"\(0 bytes not logged\); the stream continues at offset \d+\r?\n" % end
        )
        rest = body[len(old_tail) :]
        assert gap.match(rest), rest[:300]
        assert rest[gap.match(rest).end() :].startswith(b"new run\r\n")  # type: ignore[union-attr]
    finally:
        guest.close()
