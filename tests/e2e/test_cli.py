"""The command line as users run it: real subprocesses, real signals, sd_notify over a real socket, and the
README's quick-start demo command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from serialmuxd import __version__

from .support import TcpClient

ROOT = Path(__file__).resolve().parents[2]
SERIALMUXD = [sys.executable, "-m", "serialmuxd"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SERIALMUXD, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_version_and_help() -> None:
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"serialmuxd {__version__}"
    helped = run("--help")
    assert helped.returncode == 0
    for word in ("run", "check-config", "demo", "Exit codes"):
        assert word in helped.stdout
    run_help = run("run", "--help")
    assert "--config" in run_help.stdout


def test_check_config_accepts_the_example() -> None:
    out = run("check-config", "config.example.toml")
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_check_config_reports_every_problem_with_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[ports]]\nname = "a"\ndevice = "exec:/bin/cat"\ntakeover = "steal"\nenabel = true\n'
        '[[ports]]\nname = "a"\ndevice = "floppy:/dev/fd0"\n'
    )
    out = run("check-config", str(bad))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert any(line.startswith(f"{bad}: ports[0].takeover:") for line in lines), lines
    assert any(line.startswith(f"{bad}: ports[0].enabel:") and "enabled" in line for line in lines), lines
    assert any(line.startswith(f"{bad}: ports[1].name:") for line in lines), lines
    assert any(line.startswith(f"{bad}: ports[1].device:") for line in lines), lines


def test_run_with_missing_config_exits_2_naming_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    out = run("run", "--config", str(missing))
    assert out.returncode == 2
    assert str(missing) in out.stderr and "No such file" in out.stderr


def test_run_on_busy_address_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[[ports]]\nname = "vm1"\ndevice = "exec:/bin/cat"\ntelnet = "127.0.0.1:{port}"\n')
        out = run("run", "--config", str(cfg))
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("serialmuxd:")]
    assert len(errors) == 1
    assert f"127.0.0.1:{port}" in errors[0] and "vm1" in errors[0] and "in use" in errors[0]


def test_run_notifies_ready_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[ports]]\nname = "vm1"\ndevice = "exec:/bin/cat"\ntelnet = "127.0.0.1:{port}"\n')
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(20)
        proc = subprocess.Popen(
            [*SERIALMUXD, "run", "--config", str(cfg)],
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            message = notify.recv(4096).decode()
            assert "READY=1" in message and "1 console ports" in message
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                assert client.recv(4096)  # telnet negotiation or the attach notice
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            assert "STOPPING=1" in notify.recv(4096).decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.communicate()


@contextlib.asynccontextmanager
async def running_demo(argv: list[str], banner_timeout_s: float) -> AsyncIterator[tuple[bytes, int, int]]:
    """Start a demo command with free ports; yield (banner, telnet port, http port); stop it by SIGTERM and
    check it exits 0.  Its stderr is drained all along, so the daemon's log can never fill the pipe."""
    port, http_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        "--telnet-port",
        str(port),
        "--http-port",
        str(http_port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    drain: asyncio.Task[bytes] | None = None
    try:
        assert proc.stderr is not None
        banner = b""
        while b"stop the daemon" not in banner:
            line = await asyncio.wait_for(proc.stderr.readline(), banner_timeout_s)
            assert line, f"demo exited early: {banner!r}"
            banner += line
        drain = asyncio.get_running_loop().create_task(proc.stderr.read())
        yield banner, port, http_port
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        if drain is not None:
            await drain


@pytest.mark.asyncio
async def test_readme_demo_command_gives_a_working_console() -> None:
    """The README's first quick-start command, as written (./dev demo), with free ports."""
    readme = (ROOT / "README.md").read_text()
    assert "./dev demo" in readme
    async with running_demo([str(ROOT / "dev"), "demo"], 120) as (banner, port, http_port):
        assert f"telnet 127.0.0.1 {port}".encode() in banner
        assert f"http://127.0.0.1:{http_port}/console/demo".encode() in banner
        assert f"serialmux connect demo --url http://127.0.0.1:{http_port}\n".encode() in banner
        assert b"loopback only, no authentication" in banner
        client = await TcpClient.connect("127.0.0.1", port)
        await client.expect(b"you have write access")
        await client.send(b"echo demo-$((40+2))\r\n")  # Enter as a telnet client sends it
        await client.expect(re.compile(rb"demo-42"))
        await client.close()
        page = await asyncio.to_thread(_http_get, f"http://127.0.0.1:{http_port}/console/demo")
        assert b"<html" in page.lower()


@pytest.mark.asyncio
async def test_the_demo_banners_serialmux_command_attaches() -> None:
    """The banner's serialmux line, run as printed (in a shell, in a real pseudo-terminal) against the
    demo it came from: the guest's shell answers, and ~. detaches with exit 0."""
    import pexpect

    async with running_demo([*SERIALMUXD, "demo"], 60) as (banner, _, http_port):
        found = re.search(rb"with serialmux: +(.+ connect demo --url (\S+))\n", banner)
        assert found is not None, banner
        command, url = found.group(1).decode(), found.group(2).decode()
        assert url == f"http://127.0.0.1:{http_port}"

        def session() -> int:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SERIALMUX_")}
            child = pexpect.spawn("/bin/sh", ["-c", command], env=env, timeout=20, dimensions=(24, 80))
            try:
                child.expect_exact(b"you have write access")
                child.send(b"echo demo-via-$((6*7))\r")
                child.expect_exact(b"demo-via-42")
                child.expect(rb"[$#] ")  # the guest shell's prompt after the command (# as root)
                child.send(b"~.")
                child.expect(pexpect.EOF)
            finally:
                child.close()
            return int(child.exitstatus if child.exitstatus is not None else -1)

        assert await asyncio.to_thread(session) == 0


def _http_get(url: str, data: bytes | None = None) -> bytes:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as resp:
        body: bytes = resp.read()
        return body


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed")
async def test_demo_qemu_boots_a_real_guest_with_nmi() -> None:
    async with running_demo([*SERIALMUXD, "demo", "--qemu"], 300) as (banner, port, http_port):
        assert b"QEMU guest" in banner
        client = await TcpClient.connect("127.0.0.1", port)
        await client.expect(b"sertest login: ", 60)
        mark = len(client.buffer)
        reply = await asyncio.to_thread(_http_get, f"http://127.0.0.1:{http_port}/api/v1/ports/demo/nmi", b"")
        assert b'"ok": true' in reply
        await client.expect(re.compile(rb"NMI received for unknown reason"), 20, mark)
        await client.close()
