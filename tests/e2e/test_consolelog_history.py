"""The persisted history after a restart, end to end: a real daemon (in this loop, or ``serialmuxd run``
children killed with SIGKILL), a real PTY guest, real raw-TCP and WebSocket clients, Debian's asciinema.

* ``replay_lines`` counts back across the restart: the attach replay shows the last N lines, the older
  ones from the persisted log, with the restart told in between (it is not one of the N lines);
* a recording of output from before the restart keeps its original timing (the index's record times);
* after two crashes the older run is served too, at its exact offsets, with each hole told;
* a hole that is a log gap (a full disk) is told as missed bytes, exactly as many as were not logged.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import termios
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from serialmuxd.obs.consolelog_policy import parse_index

from .support import GuestPty, TcpClient, eventually, running_daemon
from .test_cli import free_port
from .test_consolelog import _fill, _lines, _small_tmpfs
from .test_daemon_process import daemon_process
from .test_http import WsClient

pytestmark = [pytest.mark.asyncio]


def _toml(tmp_path: Path, guest: GuestPty, extra: str = "") -> str:
    return f"""
[daemon]
log_level = "warning"
state_dir = "{tmp_path / "state"}"

[logs]
dir = "{tmp_path / "logs"}"
boot_bytes = 0

[http]
listen = "127.0.0.1:0"

[[ports]]
name = "p1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
raw = true
{extra}
"""


def _logged_end(idx: Path) -> int:
    """One past the newest guest byte the index names (0 when there is none yet)."""
    if not idx.exists():
        return 0
    return max((r.end for r in parse_index(idx.read_bytes())), default=0)


async def _replay(daemon: Any) -> bytes:
    """What a raw TCP client sees on attach, up to the end of the replay."""
    client = await TcpClient.connect("127.0.0.1", daemon.listener("p1", "raw").tcp_port)
    try:
        done = await client.expect(b"end of replay", 10)
        return bytes(client.buffer[: done.end()])
    finally:
        await client.close()


def _body(text: bytes) -> bytes:
    """A replay's bytes between the ``replaying`` line and the ``end of replay`` line."""
    start = text.index(b"\n", text.index(b"replaying")) + 1
    return text[start : text.rindex(b"\r\n[serialmuxd] end of replay")]  # a notice starts a line


async def test_replay_lines_count_back_across_the_restart(tmp_path: Path) -> None:
    guest = GuestPty()
    toml = _toml(tmp_path, guest, "replay_bytes = 65536\nreplay_lines = 5")
    try:
        async with running_daemon(toml, online=["p1"]) as daemon:
            old = _lines("old", 0, 20)
            await guest.send(old)
            hub = daemon.hubs["p1"]
            assert hub.console_log is not None
            await eventually(lambda: hub.console_log.bytes_logged == len(old), "logged")  # type: ignore[union-attr]
            end = hub.stream_end
        async with running_daemon(toml, online=["p1"]) as daemon:
            new = _lines("new", 0, 2)
            await guest.send(new)
            hub = daemon.hubs["p1"]
            await eventually(lambda: hub.stream_end == hub.output.run_start + len(new), "new output")
            body = _body(await _replay(daemon))
            # 5 lines: the last 3 before the restart, the gap (not a line of the guest's), the 2 after it.
            gap = re.compile(
                rb"\r\n\[serialmuxd\] serialmuxd restarted: the logged output above ends at offset %d "
                rb"\(0 bytes not logged\); the stream continues at offset %d\r\n"
                % (end, hub.output.run_start)
            )
            old_tail = b"".join(old.splitlines(keepends=True)[-3:])
            assert body.startswith(old_tail), body[:300]
            rest = body[len(old_tail) :]
            found = gap.match(rest)
            assert found is not None, rest[:300]
            assert rest[found.end() :] == new
            # Once this run has the lines itself, the replay is this run's alone.
            more = _lines("new", 2, 5)
            await guest.send(more)
            await eventually(lambda: hub.stream_end == hub.output.run_start + len(new + more), "more")
            assert _body(await _replay(daemon)) == more
    finally:
        guest.close()


async def _asciinema_cat(cast: Path, home: Path) -> bytes:
    asciinema = shutil.which("asciinema")
    if asciinema is None:
        pytest.fail("asciinema is not installed: ./dev installs the Debian package")
    master, slave = os.openpty()  # asciinema cat reads keys from its controlling terminal

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = await asyncio.create_subprocess_exec(
            asciinema, "cat", str(cast), stdin=slave,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": str(home), "LANG": "C.UTF-8"},
            preexec_fn=controlling_terminal,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0, err
    return out


async def test_a_recording_from_before_the_restart_keeps_its_timing(tmp_path: Path) -> None:
    guest = GuestPty()
    toml = _toml(tmp_path, guest, "replay_bytes = 0")
    lines = [b"[    0.000000] Linux version 6.1\r\n", b"[    0.412000] Memory: 512M\r\n"]
    lines += [b"[    1.%03d000] probe %d ok\r\n" % (i * 111, i) for i in range(3)]
    pauses_s = [0.35, 0.8, 0.15, 0.5, 0.0]
    try:
        async with running_daemon(toml, online=["p1"]) as daemon:
            watcher = await TcpClient.connect("127.0.0.1", daemon.listener("p1", "raw").tcp_port)
            try:
                await watcher.expect(b"attached to console p1")
                start = daemon.hubs["p1"].stream_end
                for line, pause in zip(lines, pauses_s, strict=True):
                    guest.write(line)
                    await watcher.expect(line)  # the daemon has it
                    await asyncio.sleep(pause)
            finally:
                await watcher.close()
            end = start + sum(map(len, lines))
            idx = tmp_path / "logs" / "p1.log.idx"
            await eventually(lambda: _logged_end(idx) == end, "the index names every byte")
        # When the first run's daemon saw each line arrive, as it recorded it (the index: to the ms).
        records = parse_index(idx.read_bytes())
        line_offsets = [start + sum(map(len, lines[:i])) for i in range(len(lines))]
        arrived_ms = [next(r.at_ms for r in records if r.offset <= at < r.end) for at in line_offsets]
        async with (
            running_daemon(toml, online=["p1"], cleanup=guest.close) as daemon,
            aiohttp.ClientSession() as http,
        ):
            assert daemon.http_address is not None
            url = "http://{}:{}/api/v1/ports/p1/recording".format(*daemon.http_address)
            async with http.get(url, params={"download": "1"}) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.read()
                # From the first byte of the persisted history (the default), every byte with its time.
                assert int(resp.headers["X-Scrollback-Offset"]) == start
                assert int(resp.headers["X-Recording-Timed-From"]) == start
                assert int(resp.headers["X-Scrollback-Next"]) == end
        header, *events = (json.loads(line) for line in body.decode().splitlines())
        assert header["timestamp"] == arrived_ms[0] // 1000  # the boot's own time, not the restart's
        assert "".join(e[2] for e in events) == b"".join(lines).decode()
        times = [next(e[0] for e in events if line.decode() in e[2]) for line in lines]
        # Exactly the first run's own arrival times (no comparison with this test's clock) ...
        assert times == [round((ms - arrived_ms[0]) / 1000, 6) for ms in arrived_ms]
        # ... which kept the pauses between the lines: each line was written after the daemon had the one
        # before and the test had slept, so the daemon saw it at least that much later (less 1 ms: the
        # index keeps whole milliseconds).
        for i in range(1, len(lines)):
            assert times[i] - times[i - 1] >= pauses_s[i - 1] - 0.001, (i, times)
        cast = tmp_path / "boot.cast"
        cast.write_bytes(body)
        assert await _asciinema_cat(cast, tmp_path) == b"".join(lines)
    finally:
        guest.close()


_LINES_15 = "replay_bytes = 65536\nreplay_lines = 15"


def _proc_toml(tmp_path: Path, guest: GuestPty, http_port: int, telnet_port: int) -> Path:
    path = tmp_path / "serialmuxd.toml"
    path.write_text(
        _toml(
            tmp_path,
            guest,
            f'telnet_readonly = "127.0.0.1:{telnet_port}"\nreplay_bytes = 65536\nreplay_lines = 15',
        )
        .replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{http_port}"')
        .replace('log_level = "warning"', 'log_level = "warning"\nlog_format = "json"')
    )
    return path


async def _scrollback(http: aiohttp.ClientSession, port: int, start: int) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{port}/api/v1/ports/p1/scrollback?from={start}"
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return int(resp.headers["X-Scrollback-Offset"]), await resp.read()


async def _ws(http: aiohttp.ClientSession, port: int, query: str) -> WsClient:
    ws = WsClient(await http.ws_connect(f"http://127.0.0.1:{port}/api/v1/ports/p1/ws?{query}"))
    await ws.wait_kind("hello")
    return ws


@pytest.mark.slow
async def test_older_runs_are_served_after_two_crashes(tmp_path: Path) -> None:
    guest = GuestPty()
    http_port, telnet_port = free_port(), free_port()
    config = _proc_toml(tmp_path, guest, http_port, telnet_port)
    idx = tmp_path / "logs" / "p1.log.idx"
    run1, run2 = _lines("run1", 0, 20), _lines("run2", 0, 10)
    try:
        async with aiohttp.ClientSession() as http:
            ends = []
            for output in (run1, run2):
                async with daemon_process(config) as child:
                    ws = await _ws(http, http_port, "mode=ro")
                    await guest.send(output)
                    await ws.wait_for(lambda ws=ws, out=output: ws.data.endswith(out), "the output")
                    await ws.ws.close()
                    async with http.get(f"http://127.0.0.1:{http_port}/api/v1/ports/p1") as resp:
                        ends.append((await resp.json())["scrollback"]["end"])
                    await eventually(lambda: _logged_end(idx) == ends[-1], "the index names every byte")
                    child.proc.send_signal(signal.SIGKILL)  # a crash: the next run's offsets leave a reserve
                    assert await child.proc.wait() == -signal.SIGKILL
            base = ends[0] - len(run1)
            async with daemon_process(config) as third:
                # The scrollback API: the first run at its offsets, then the second one, each read ending
                # at its run's end; the reader sees the jump in X-Scrollback-Offset.
                assert await _scrollback(http, http_port, base) == (base, run1)
                second_start, second = await _scrollback(http, http_port, ends[0])
                assert second_start > ends[0]  # the reserve the crash left
                assert second_start + len(second) == ends[1] and second.endswith(run2)
                assert second.startswith(b"[serialmuxd] restart gap: ")
                assert b"ends at offset %d," % ends[0] in second.splitlines()[0]
                third_start, third_data = await _scrollback(http, http_port, ends[1])
                assert third_start > ends[1] and third_data.startswith(b"[serialmuxd] restart gap: ")

                # A WebSocket resuming inside the first run gets all the rest, each hole told.
                ws = await _ws(http, http_port, f"mode=ro&from={base + 100}")
                await ws.wait_for(lambda: len(ws.data) >= len(run1) - 100 + len(second), "the history")
                assert bytes(ws.data) == run1[100:] + second
                await ws.wait_for(lambda: ws.kinds().count("restart_gap") == 2, "two gaps")
                gaps = [e for e in ws.events if e.get("kind") == "restart_gap"]
                assert (gaps[0]["from"], gaps[0]["to"], gaps[0]["exact"]) == (ends[0], second_start, False)
                assert (gaps[1]["from"], gaps[1]["exact"]) == (ends[1], False) and gaps[1]["to"] > ends[1]
                assert "missed" not in ws.kinds()
                await ws.ws.close()

                # The attach replay's 15 lines: 4 of the first run, the hole, the second run's restart
                # line and its 10 lines, then the restart into this run (which printed nothing yet).
                client = await TcpClient.connect("127.0.0.1", telnet_port)
                try:
                    done = await client.expect(b"end of replay", 10)
                    body = _body(bytes(client.buffer[: done.end()]))
                finally:
                    await client.close()
                hole = rb"\r\n\[serialmuxd\] serialmuxd restarted: the logged output above ends at offset %d"
                expected = (
                    re.escape(b"".join(run1.splitlines(keepends=True)[-4:]))
                    + hole % ends[0]
                    + rb"; the stream continues at offset %d\r\n" % second_start
                    + re.escape(second)
                    + hole % ends[1]
                    + rb" \(what came after it is not known\); the stream continues at offset \d+\r\n"
                )
                assert re.fullmatch(expected, body), body
                third.proc.send_signal(signal.SIGTERM)
                assert await third.proc.wait() == 0
    finally:
        guest.close()


async def test_a_log_gap_in_the_history_is_told_as_missed_bytes(tmp_path: Path) -> None:
    guest = GuestPty()
    with _small_tmpfs(tmp_path / "logs") as logs:
        toml = _toml(tmp_path, guest, "replay_bytes = 0")
        before, after = b"before the disk filled\r\n", b"after space was freed\r\n"
        async with running_daemon(toml, online=["p1"]) as daemon:
            log = daemon.hubs["p1"].console_log
            assert log is not None
            await guest.send(before)
            await eventually(lambda: log.bytes_logged == len(before), "logged")
            filler = _fill(logs)
            full = _lines("full", 0, 4000)  # 200 KiB: more than the disk had left
            await guest.send(full)
            # Every byte so far through the writer, each either in the file (counted logged, also the
            # part of a batch written before the disk filled) or counted lost.
            await eventually(lambda: log.bytes_logged + log.bytes_lost == len(before + full), "accounted")
            assert log.bytes_lost > 0
            filler.unlink()
            await guest.send(after)
            await eventually(lambda: (logs / "p1.log").read_bytes().endswith(after), "resumed")
            lost = log.bytes_lost
            end = daemon.hubs["p1"].stream_end
        async with (
            running_daemon(toml, online=["p1"], cleanup=guest.close) as daemon,
            aiohttp.ClientSession() as http,
        ):
            assert daemon.http_address is not None
            url = "http://{}:{}/api/v1/ports/p1/ws?mode=ro&from=0".format(*daemon.http_address)
            ws = WsClient(await http.ws_connect(url))
            await ws.wait_kind("restart_gap")
            (missed,) = [e for e in ws.events if e.get("kind") == "missed"]
            # Exactly the bytes the log lost, and the stream goes on at the first one logged again.
            assert missed["missed"] == lost and missed["offset"] == end - len(after)
            data = bytes(ws.data)
            assert data.startswith(before) and data.endswith(after)
            written = data[len(before) : -len(after)]
            assert full.startswith(written) and len(written) + lost == len(full)
            await ws.ws.close()
            # serialmux log (no --follow) prints the same bytes and says, on stderr, how many are missing.
            client = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "serialmuxd.client",
                "--url",
                "http://{}:{}".format(*daemon.http_address),
                "log",
                "p1",
                "--from",
                "0",
                "--raw",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(client.communicate(), 60)
            assert client.returncode == 0, err
            assert out.startswith(before + written) and after in out
            gap = (
                f"[serialmux] {lost} bytes from offset {len(before) + len(written)} are not in the scrollback"
            )
            assert gap.encode() in err.splitlines(), err


async def test_history_bytes_bounds_what_a_restart_reads_back_and_serves(tmp_path: Path) -> None:
    guest = GuestPty()
    toml = _toml(tmp_path, guest).replace("boot_bytes = 0", "boot_bytes = 0\nhistory_bytes = 8192")
    sent = _lines("old", 0, 800)  # 40 KiB logged, more than history_bytes
    try:
        async with running_daemon(toml, online=["p1"]) as daemon:
            hub = daemon.hubs["p1"]
            await guest.send(sent)
            await eventually(
                lambda: _logged_end(tmp_path / "logs" / "p1.log.idx") == hub.stream_end, "logged"
            )
            end = hub.stream_end
        async with (
            running_daemon(toml, online=["p1"], cleanup=guest.close) as daemon,
            aiohttp.ClientSession() as http,
        ):
            assert daemon.http_address is not None
            base = "http://{}:{}/api/v1/ports/p1".format(*daemon.http_address)
            async with http.get(base) as resp:
                scrollback = (await resp.json())["scrollback"]
            # Only the newest history_bytes were read back, at their exact offsets; older ones are on disk.
            assert scrollback["start"] == end - 8192
            async with http.get(f"{base}/scrollback", params={"from": str(end - 8192)}) as resp:
                assert resp.status == 200, await resp.text()
                assert int(resp.headers["X-Scrollback-Offset"]) == end - 8192
                assert await resp.read() == sent[-8192:]
            async with http.get(f"{base}/scrollback", params={"from": str(end - 8193)}) as resp:
                assert resp.status == 416, await resp.text()  # offset_unavailable, like an overwritten one
                assert (await resp.json())["start"] == end - 8192
    finally:
        guest.close()
