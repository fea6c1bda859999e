"""Hot reload through a real daemon process: the file is edited, SIGHUP is sent, and what the operator
expects happens.  Ports added listen and serve; removed ports' sessions are told why and closed; changed
ports apply in place or are rebuilt; an unchanged port keeps its device connection (the same shell process
on the same PTY) and its telnet session through the real Debian ``telnet`` client.  A broken file changes
nothing and is reported in check-config's words and counted; systemd hears RELOADING=1 and READY=1 on a
notify socket this test made; the audit trail records the reload."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from serialmuxd.config import load_config
from serialmuxd.daemon import Daemon

from .reload_support import daemon_process, metric
from .support import GuestPty, PtyChild, TcpClient, eventually
from .test_cli import free_port
from .test_http import WsClient

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


def _port(name: str, device: str, extra: str = "") -> str:
    return f"""
[[ports]]
name = "{name}"
device = "{device}"
telnet = "127.0.0.1:0"
raw = true
replay_bytes = 0
{extra}
"""


def _head(tmp: Path, http_port: int) -> str:
    return f"""
[daemon]
state_dir = "{tmp / "state"}"
log_format = "json"
[audit]
file = "{tmp / "audit.jsonl"}"
[http]
listen = "127.0.0.1:{http_port}"

[[ports]]
name = "shell"
device = "exec:/bin/sh"
telnet = "127.0.0.1:0"
replay_bytes = 0
"""


async def _shell_pid(telnet: PtyChild, tag: str) -> int:
    start = len(telnet.buffer)
    telnet.write(f"echo {tag}-$$\r".encode())
    match = await telnet.expect(re.compile(tag.encode() + rb"-(\d+)"), start=start)
    return int(match.group(1))


async def _round_trip(client: TcpClient, guest: GuestPty, tag: bytes) -> None:
    """Guest to client and client to guest, through the daemon."""
    start = len(client.buffer)
    await guest.send(tag + b"-out\r\n")
    await client.expect(tag + b"-out", start=start)
    start = len(guest.buffer)
    await client.send(tag + b"-in\r")
    await guest.expect(tag + b"-in", start=start)


def _audit(tmp: Path, event: str) -> list[dict[str, object]]:
    lines = (tmp / "audit.jsonl").read_text().splitlines()
    return [record for line in lines if (record := json.loads(line))["event"] == event]


async def test_ports_added_removed_changed_and_unchanged(tmp_path: Path) -> None:
    gone, live, rebuilt, rebuilt_new, added = (GuestPty() for _ in range(5))
    http_port = free_port()
    config = tmp_path / "serialmuxd.toml"
    head = _head(tmp_path, http_port)
    config.write_text(
        head
        + _port("vm2", f"tty:{gone.path}")
        + _port("vm3", f"tty:{live.path}")
        + _port("vm4", f"tty:{rebuilt.path}")
    )
    telnet = None
    try:
        async with daemon_process(config, http_port) as daemon:
            telnet = PtyChild(["telnet", *map(str, daemon.address("shell", "telnet"))])
            await telnet.expect(b"you have write access")
            pid = await _shell_pid(telnet, "before")
            clients = {name: await daemon.connect(name) for name in ("vm2", "vm3", "vm4")}
            for name, guest in (("vm2", gone), ("vm3", live), ("vm4", rebuilt)):
                await clients[name].expect(b"you have write access")
                await _round_trip(clients[name], guest, name.encode())
            old_vm4 = daemon.address("vm4")
            http = aiohttp.ClientSession()
            ws = WsClient(await http.ws_connect(f"http://127.0.0.1:{http_port}/api/v1/ports/vm2/ws?mode=ro"))
            await ws.wait_kind("hello")

            # vm2 removed, vm5 added, vm3's takeover policy changed (in place), vm4's device changed
            # (rebuilt); the shell port is not touched in the file.
            config.write_text(
                head
                + _port("vm3", f"tty:{live.path}", 'takeover = "refuse"')
                + _port("vm4", f"tty:{rebuilt_new.path}")
                + _port("vm5", f"tty:{added.path}")
            )
            notices = await daemon.reload()
            assert "RELOADING=1" in notices[0] and re.search(r"MONOTONIC_USEC=\d+", notices[0]), notices
            assert "READY=1" in notices[-1], notices

            # Removed: told in-band why, then closed; its listener is gone.
            await clients["vm2"].expect(
                b"[serialmuxd] disconnected: console vm2 was removed from the configuration (reload)"
            )
            await clients["vm2"].wait_eof()
            with pytest.raises(OSError):
                await TcpClient.connect(*daemon.address("vm2"))
            closing = await ws.wait_kind("closing")  # the WebSocket is told the same, then closed (1001)
            assert "console vm2 was removed from the configuration" in closing["reason"]
            assert await ws.wait_closed() == 1001
            await http.close()

            # Added: listens and serves.
            vm5 = await daemon.connect("vm5")
            await vm5.expect(b"you have write access")
            await _round_trip(vm5, added, b"vm5")

            # Changed in place: the session stays, and the new policy decides the next attach.
            await _round_trip(clients["vm3"], live, b"vm3-after")
            second = await daemon.connect("vm3")
            await second.expect(b"(takeover policy: refuse)")
            await second.close()

            # Rebuilt: the old session is told and closed; the new device serves on the new listener.
            await clients["vm4"].expect(
                b"console vm4 is restarted by a configuration reload (device changed)"
            )
            await clients["vm4"].wait_eof()
            assert daemon.address("vm4") != old_vm4  # telnet = "127.0.0.1:0": a new port number
            vm4 = await daemon.connect("vm4")
            await vm4.expect(b"you have write access")
            await _round_trip(vm4, rebuilt_new, b"vm4-new")

            # Unchanged: the same shell process on the same PTY, the same telnet session, still typing.
            assert await _shell_pid(telnet, "after") == pid
            assert len([e for e in daemon.events("listening") if e["port"] == "shell"]) == 1

            scrape = await daemon.scrape()
            assert metric(scrape, "serialmuxd_config_reloads_total", result="ok") == 1
            assert metric(scrape, "serialmuxd_config_reloads_total", result="failed") == 0
            assert metric(scrape, "serialmuxd_config_last_reload_successful") == 1
            [reloaded] = daemon.events("reloaded")
            assert (reloaded["added"], reloaded["removed"]) == (["vm5"], ["vm2"])
            assert (reloaded["rebuilt"], reloaded["updated"]) == (["vm4"], ["vm3"])
            for client in (*clients.values(), vm5, vm4):
                await client.close()
        assert daemon.proc.returncode == 0
        [record] = _audit(tmp_path, "config_reload")
        assert record["trigger"] == "SIGHUP" and record["result"] == "ok", record
        assert (record["added"], record["removed"], record["rebuilt"]) == (["vm5"], ["vm2"], ["vm4"])
        assert any(d["port"] == "vm2" for d in _audit(tmp_path, "detach"))
    finally:
        if telnet is not None:
            telnet.close()
        for guest in (gone, live, rebuilt, rebuilt_new, added):
            guest.close()


def _check_config(path: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "serialmuxd", "check-config", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 2, out
    return out.stderr.splitlines()


async def test_a_broken_file_changes_nothing_and_is_reported_and_counted(tmp_path: Path) -> None:
    guest = GuestPty()
    http_port = free_port()
    config = tmp_path / "serialmuxd.toml"
    head = _head(tmp_path, http_port)
    config.write_text(head + _port("vm1", f"tty:{guest.path}"))
    try:
        async with daemon_process(config, http_port) as daemon:
            client = await daemon.connect("vm1")
            await client.expect(b"you have write access")
            before = daemon.address("vm1")
            # A bad value and a port that would be new: neither may take effect.
            config.write_text(
                head + _port("vm1", f"tty:{guest.path}", 'takeover = "bogus"') + _port("vm9", "tty:/dev/vm9")
            )
            notices = await daemon.reload()
            assert "READY=1" in notices[-1]
            failed = daemon.events("reload_failed")
            assert failed, daemon.log[-5:]
            expected = _check_config(config)
            assert [e["problem"] for e in failed] == expected
            assert any(e["key"] == "ports[1].takeover" for e in failed), failed
            assert not daemon.events("reloaded")
            # The old configuration keeps serving: same listener, same session, no vm9.
            await _round_trip(client, guest, b"still")
            assert daemon.address("vm1") == before
            assert not [e for e in daemon.events("listening") if e["port"] == "vm9"]
            scrape = await daemon.scrape()
            assert metric(scrape, "serialmuxd_config_reloads_total", result="failed") == 1
            assert metric(scrape, "serialmuxd_config_last_reload_successful") == 0
            stamp = metric(scrape, "serialmuxd_config_last_reload_success_timestamp_seconds")

            # Mended: the next reload applies, and the gauge says so.
            config.write_text(head + _port("vm1", f"tty:{guest.path}", 'takeover = "refuse"'))
            await daemon.reload()
            assert daemon.events("reloaded")[-1]["updated"] == ["vm1"]
            scrape = await daemon.scrape()
            assert metric(scrape, "serialmuxd_config_last_reload_successful") == 1
            assert metric(scrape, "serialmuxd_config_last_reload_success_timestamp_seconds") > stamp
            await _round_trip(client, guest, b"mended")
            await client.close()
        results = [r["result"] for r in _audit(tmp_path, "config_reload")]
        assert results == ["failed", "ok"]
    finally:
        guest.close()


async def test_new_listeners_for_a_port_keep_its_sessions_and_its_device(tmp_path: Path) -> None:
    """raw = true -> false and a read-only listener added: the port gets new listeners; the session that
    connected before keeps its raw connection, and the device link is the same one (never offline)."""
    guest = GuestPty()
    config = tmp_path / "serialmuxd.toml"
    head = _head(tmp_path, free_port())
    config.write_text(head + _port("vm1", f"tty:{guest.path}"))
    viewer = None
    try:
        async with daemon_process(config) as daemon:
            client = await daemon.connect("vm1")
            await client.expect(b"you have write access")
            await _round_trip(client, guest, b"before")
            old = daemon.address("vm1", "raw")
            config.write_text(
                head
                + _port("vm1", f"tty:{guest.path}", 'telnet_readonly = "127.0.0.1:0"').replace(
                    "raw = true\n", ""
                )
            )
            await daemon.reload()
            assert daemon.events("reloaded")[-1]["rebound"] == ["vm1"]
            await _round_trip(client, guest, b"after")  # the raw session carries on
            with pytest.raises(OSError):
                await TcpClient.connect(*old)
            viewer = PtyChild(["telnet", *map(str, daemon.address("vm1", "telnet-readonly"))])
            await viewer.expect(b"read-only")
            await guest.send(b"to-both\r\n")
            await viewer.expect(b"to-both")
            await client.expect(b"to-both")
            assert [e["port"] for e in daemon.events("device_online")].count("vm1") == 1
            assert not [e for e in daemon.events("device_offline") if e["port"] == "vm1"]
            await client.close()
    finally:
        if viewer is not None:
            viewer.close()
        guest.close()


async def test_console_log_settings_are_port_settings_to_a_reload(tmp_path: Path) -> None:
    """[logs] (persistent console logs) through a reload: a port added under it logs from its start, and a
    port whose log settings change (logs = false) is rebuilt and stops writing its file."""
    one, two = GuestPty(), GuestPty()
    logs = tmp_path / "logs"
    config = tmp_path / "serialmuxd.toml"
    head = _head(tmp_path, free_port()) + f'[logs]\ndir = "{logs}"\n'
    config.write_text(head + _port("vm1", f"tty:{one.path}"))
    try:
        async with daemon_process(config) as daemon:
            client = await daemon.connect("vm1")
            await client.expect(b"you have write access")
            await one.send(b"logged-before\r\n")
            await eventually(lambda: b"logged-before" in _read(logs / "vm1.log"), "vm1.log written")
            config.write_text(
                head + _port("vm1", f"tty:{one.path}", "logs = false") + _port("vm2", f"tty:{two.path}")
            )
            await daemon.reload()
            reloaded = daemon.events("reloaded")[-1]
            assert (reloaded["added"], reloaded["rebuilt"]) == (["vm2"], ["vm1"])
            await client.expect(b"console vm1 is restarted by a configuration reload (log changed)")
            vm2 = await daemon.connect("vm2")
            await vm2.expect(b"you have write access")
            await two.send(b"logged-after\r\n")
            await eventually(lambda: b"logged-after" in _read(logs / "vm2.log"), "vm2.log written")
            vm1 = await daemon.connect("vm1")
            await vm1.expect(b"you have write access")
            await one.send(b"not-logged\r\n")
            await vm1.expect(b"not-logged")  # served, but no longer logged
            await two.send(
                b"flush-marker\r\n"
            )  # one writer thread: once this is in vm2.log, vm1 had its turn
            await eventually(lambda: b"flush-marker" in _read(logs / "vm2.log"), "vm2.log written again")
            assert b"not-logged" not in _read(logs / "vm1.log")
            for each in (client, vm1, vm2):
                await each.close()
    finally:
        one.close()
        two.close()


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


async def test_the_log_level_changes_without_a_restart(tmp_path: Path) -> None:
    guest, other = GuestPty(), GuestPty()
    config = tmp_path / "serialmuxd.toml"
    head = _head(tmp_path, free_port())
    quiet_port = free_port()
    config.write_text(head + _port("vm1", f"tty:{guest.path}"))
    try:
        async with daemon_process(config) as daemon:
            quiet = _port("vm2", f"tty:{other.path}").replace("127.0.0.1:0", f"127.0.0.1:{quiet_port}")
            config.write_text(
                head.replace('log_format = "json"', 'log_format = "json"\nlog_level = "warning"')
                + _port("vm1", f"tty:{guest.path}")
                + quiet
            )
            await daemon.reload()
            # vm2 was added and serves; the info-level "reloaded" line, written after the switch, is not.
            client = await TcpClient.connect("127.0.0.1", quiet_port)
            await client.expect(b"you have write access")
            await client.close()
            assert daemon.events("reload_started") and not daemon.events("reloaded")
            config.write_text(head + _port("vm1", f"tty:{guest.path}") + quiet)
            await daemon.reload()
            await daemon.wait_for("the info line again", lambda: bool(daemon.events("reloaded")))
    finally:
        guest.close()
        other.close()


async def test_a_busy_address_for_a_new_port_rejects_the_whole_reload(tmp_path: Path) -> None:
    guest, second = GuestPty(), GuestPty()
    config = tmp_path / "serialmuxd.toml"
    head = _head(tmp_path, free_port()) + _port("vm1", f"tty:{guest.path}")
    config.write_text(head)
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            busy = squatter.getsockname()[1]
            async with daemon_process(config) as daemon:
                config.write_text(
                    head
                    + _port("vm2", f"tty:{second.path}")
                    + _port("vm3", f"tty:{second.path}x").replace("127.0.0.1:0", f"127.0.0.1:{busy}")
                )
                await daemon.reload()
                [failed] = daemon.events("reload_failed")
                assert (
                    failed["key"] == "ports[3].telnet"
                    and f"cannot listen on 127.0.0.1:{busy}" in failed["reason"]
                )
                # vm2's listener was bound before vm3's failed: it is closed again, and vm2 never started.
                with pytest.raises(OSError):
                    await TcpClient.connect(*daemon.address("vm2"))
                assert not [e for e in daemon.events("device_online") if e["port"] == "vm2"]
                client = await daemon.connect("vm1")
                await client.expect(b"you have write access")
                await client.close()
    finally:
        guest.close()
        second.close()


async def test_sighups_during_a_reload_queue_one_more_and_shutdown_ignores_them(tmp_path: Path) -> None:
    """Signals sent to a real process coalesce in the kernel, so this drives the daemon in this process:
    three SIGHUPs delivered before the loop runs the first reload give that reload and exactly one more,
    never two at once; a SIGHUP once the stop has begun is ignored."""
    guest = GuestPty()
    config = tmp_path / "serialmuxd.toml"
    config.write_text(_head(tmp_path, free_port()) + _port("vm1", f"tty:{guest.path}"))
    daemon = Daemon(load_config(config))
    daemon.install_signal_handlers()
    await daemon.start()
    try:
        running: list[bool] = []
        original = daemon.reloader.reload

        async def watched(trigger: str) -> bool:
            running.append(True)
            assert len(running) == 1, "two reloads at once"
            try:
                return await original(trigger)
            finally:
                running.pop()

        daemon.reloader.reload = watched  # type: ignore[method-assign]
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGHUP)  # each is a byte on asyncio's wake-up pipe
        await eventually(lambda: daemon.reloader.stats.ok == 2 and not running, "two reloads")
        await daemon.reloader.wait_idle()
        assert daemon.reloader.stats.ok == 2
        daemon.stop_requested.set()
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(lambda: daemon.reloader.ignored == 1, "the SIGHUP during the stop ignored")
        assert daemon.reloader.stats.ok == 2 and daemon.reloader.idle
    finally:
        daemon.stop_requested.set()
        await daemon.run_until_stopped()
        guest.close()


async def test_a_sighup_during_the_stop_is_ignored_and_the_exit_stays_clean(tmp_path: Path) -> None:
    """The console program ignores SIGTERM, so the stop takes its terminate timeout (2 s) before SIGKILL:
    a SIGHUP sent once STOPPING=1 is out surely lands inside the stop, which must still end with exit 0."""
    config = tmp_path / "serialmuxd.toml"
    stubborn = "exec:/bin/sh -c 'trap \\\"\\\" TERM; while :; do sleep 1; done'"
    config.write_text(_head(tmp_path, free_port()).replace('"exec:/bin/sh"', f'"{stubborn}"'))
    async with daemon_process(config) as daemon:
        await daemon.wait_for("the shell", lambda: bool(daemon.events("device_online")))
        daemon.proc.send_signal(signal.SIGTERM)
        await daemon.wait_for("STOPPING=1", lambda: any("STOPPING=1" in m for m in daemon.notices))
        daemon.proc.send_signal(signal.SIGHUP)
        assert await asyncio.wait_for(daemon.proc.wait(), 30) == 0
    assert daemon.events("reload_ignored") and not daemon.events("reload_started")


async def test_an_unchanged_port_streams_byte_exact_across_a_reload(tmp_path: Path) -> None:
    """A steady stream from the guest while the file changes around it: every byte arrives, in order."""
    guest, other = GuestPty(), GuestPty()
    config = tmp_path / "serialmuxd.toml"
    head = _head(tmp_path, free_port()) + _port("vm1", f"tty:{guest.path}")
    config.write_text(head)
    try:
        async with daemon_process(config) as daemon:
            client = await daemon.connect("vm1")
            await client.expect(b"you have write access")
            await client.expect(re.compile(rb"console vm1 online|console vm1 \(online"))  # no notice follows
            start = len(client.buffer)
            payload = b"".join(b"line %06d\r\n" % i for i in range(4000))
            half = len(payload) // 2
            await guest.send(payload[:half])
            config.write_text(head + _port("vm2", f"tty:{other.path}"))
            reload = asyncio.get_running_loop().create_task(daemon.reload())
            await guest.send(payload[half:])
            await reload
            await client.wait_bytes(start + len(payload))
            got = bytes(client.buffer[start:])
            assert got == payload, got[:300]
            await client.close()
    finally:
        guest.close()
        other.close()
