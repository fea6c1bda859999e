"""The systemd unit passes ``systemd-analyze verify`` cleanly (it only warns, so any output fails), and
the daemon speaks the notify protocol the unit relies on: READY, the watchdog, STOPPING."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .support import read_until

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "serialmuxd.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's console script.
    serialmuxd = Path(sys.executable).parent / "serialmuxd"
    assert serialmuxd.exists()
    text = UNIT.read_text().replace("/usr/bin/serialmuxd", str(serialmuxd))
    unit = tmp_path / "serialmuxd.service"
    unit.write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stdout + out.stderr


def test_unit_is_hardened_and_uses_notify() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"] and settings["WatchdogSec"]
    assert settings["ExecReload"][-1] == "/bin/kill -HUP $MAINPID", settings["ExecReload"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "DevicePolicy": "closed",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert settings[key] == [value], key
    assert "char-ttyS rw" in settings["DeviceAllow"]


def test_daemon_pings_the_watchdog_from_its_loop(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[ports]]\nname = "vm1"\ndevice = "exec:/bin/cat"\n')
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(20)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "serialmuxd", "run", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            messages = [notify.recv(4096).decode() for _ in range(4)]
            assert sum("WATCHDOG=1" in m for m in messages) >= 3, messages
            assert any("READY=1" in m for m in messages), messages
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_sighup_reloads_without_stopping_the_daemon(tmp_path: Path) -> None:
    """SIGHUP reloads: RELOADING=1 (with MONOTONIC_USEC), then READY=1, no STOPPING=1; afterwards the daemon
    still serves, proven by a new connection that gets the attach notice and its echo."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[ports]]\nname = "vm1"\ndevice = "exec:/bin/cat"\ntelnet = "127.0.0.1:0"\nraw = true\n')
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(20)
        proc = subprocess.Popen(
            [sys.executable, "-m", "serialmuxd", "run", "--config", str(cfg)],
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stderr is not None
            err = read_until(proc.stderr.fileno(), b"kind=raw", 20)
            listening = re.search(rb"127\.0\.0\.1:(\d+)[^\n]*kind=raw", err)
            assert listening, err
            assert "READY=1" in notify.recv(4096).decode()
            proc.send_signal(signal.SIGHUP)
            reloading = notify.recv(4096).decode()
            assert "RELOADING=1" in reloading and re.search(r"MONOTONIC_USEC=\d+", reloading), reloading
            assert "READY=1" in notify.recv(4096).decode()
            read_until(proc.stderr.fileno(), b"reloaded", 15)
            with socket.create_connection(("127.0.0.1", int(listening.group(1))), timeout=10) as client:
                read_until(client.fileno(), b"you have write access")
                client.sendall(b"still-serving\n")
                read_until(client.fileno(), b"still-serving")  # through /bin/cat and back
            notify.setblocking(False)
            pending: list[str] = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    pending.append(notify.recv(4096).decode())
            assert not any("STOPPING=1" in m for m in pending), pending  # SIGHUP began no stop
            notify.settimeout(20)
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=15)
            assert proc.returncode == 0
            assert "STOPPING=1" in notify.recv(4096).decode()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
