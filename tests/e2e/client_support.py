"""What the ``serialmux`` client tests share: the daemon as a real process (``serialmuxd run``, READY over
a real ``$NOTIFY_SOCKET``, stopped with SIGTERM and started again on the same state directory), a guest
PTY held by the test, the real ``serialmux`` console script in a real pseudo-terminal (pexpect) or as a
plain subprocess, and a clean environment (no user config file, no ``SERIALMUX_*`` of the caller).

These tests are synchronous: pexpect blocks, and every program under test runs in its own process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tty
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pexpect

from .test_cli import free_port

SERIALMUX = str(Path(sys.executable).parent / "serialmux")  # the installed console script
TIMEOUT_S = 20.0


class DaemonProcess:
    """``serialmuxd run --config CONFIG`` in a child; ``start`` returns once it sent READY=1."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.parent / "daemon.log"

    def start(self) -> None:
        notify_path = self.config.parent / f"notify-{os.getpid()}-{time.monotonic_ns()}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(TIMEOUT_S)
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "serialmuxd", "run", "--config", str(self.config)],
                    env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                while b"READY=1" not in notify.recv(4096):
                    pass
            except TimeoutError:
                raise AssertionError(f"daemon not ready: {self.log.read_text()[-2000:]}") from None
            finally:
                notify_path.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(TIMEOUT_S)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT_S)
        self.proc = None


@contextlib.contextmanager
def daemon(tmp_path: Path, ports: str, extra: str = "") -> Iterator[tuple[DaemonProcess, str]]:
    """A daemon with ``ports`` (TOML) on a free HTTP port; yields it and its URL; stopped afterwards."""
    http_port = free_port()
    config = tmp_path / "serialmuxd.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
log_level = "info"
[http]
listen = "127.0.0.1:{http_port}"
{extra}
{ports}
"""
    )
    process = DaemonProcess(config)
    process.start()
    try:
        yield process, f"http://127.0.0.1:{http_port}"
    finally:
        process.kill()


class Guest:
    """The guest's side of a serial line: a PTY master held by the test; the daemon opens the slave path
    (``tty:``).  The slave stays open here too, so bytes the guest writes while the daemon is away wait in
    the PTY."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def client_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERIALMUX_")}
    env.update(SERIALMUX_URL=url, XDG_CONFIG_HOME=str(tmp_path / "xdg"), TERM="xterm", **extra)
    return env


def run_client(env: dict[str, str], *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [SERIALMUX, *args], env=env, input=stdin, capture_output=True, timeout=TIMEOUT_S, check=False
    )


def spawn(argv: list[str], env: dict[str, str], rows: int = 24, cols: int = 80) -> pexpect.spawn[bytes]:
    child: pexpect.spawn[bytes] = pexpect.spawn(
        argv[0], argv[1:], env=env, timeout=TIMEOUT_S, dimensions=(rows, cols), encoding=None
    )
    return child


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
        return json.loads(resp.read())


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Daemon state that has no event of its own (a byte counter), polled like support.eventually."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timeout waiting for {what}")
        time.sleep(0.01)
