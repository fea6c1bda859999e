"""The relays under test: serialmuxd, ser2net (tuned), socat, and the bare PTY (no relay at all).

Each target is started fresh for every measurement, on PTYs the bench created, and stopped by pid in a
``finally`` (SIGTERM, then SIGKILL after a grace period).  Startup time is measured from just before the
process is spawned until *every* configured TCP port is in LISTEN state (read from /proc/net/tcp, so nothing
connects early), and for serialmuxd also until it sends ``READY=1`` over ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import procfs
from .workload import BenchError, Endpoint, Pty, PtySlaveEndpoint, TcpEndpoint, wait_readable
from .wsclient import WsEndpoint

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
_STOP_GRACE_S = 8.0


@dataclass(frozen=True, slots=True)
class PortPlan:
    """One console port: the PTY the bench holds, the interactive TCP port and (if used) the viewer port."""

    pty: Pty | None
    tcp_port: int
    viewer_port: int | None = None
    unix_path: str | None = None  # the guest side is a listening unix socket the bench holds (no PTY)


@dataclass(frozen=True, slots=True)
class StartOptions:
    telnet: bool = False  # telnet framing on the client connection (raw TCP otherwise)
    client_buffer_bytes: int = 4 << 20  # serialmuxd: per-session output buffer before it counts as behind
    scrollback_bytes: int = 1 << 20  # serialmuxd: ring size per port
    max_connections: int = 101  # ser2net: connections per port (fan-out)
    http_port: int | None = None  # serialmuxd: serve HTTP (WebSocket consoles, /metrics) on this port
    max_sessions: int = 1000  # serialmuxd: per port (and per address: every bench client is 127.0.0.1)


@dataclass(frozen=True, slots=True)
class StartTimes:
    listen_s: float  # spawn -> every port in LISTEN
    ready_s: float | None  # spawn -> READY=1 (serialmuxd only)


class Unsupported(Exception):
    """This target cannot run this scenario (e.g. socat has no fan-out); reported as n/a."""


def stable_tcp_ports(count: int) -> list[int]:
    """``count`` free ports below the kernel's ephemeral range, for relays that bind thousands of them.

    Ports from ``free_tcp_ports`` are ephemeral ones: between picking 10,000 of them and the relay binding
    the last one, any outgoing connection on the machine (even the bench's own probe) may be given one of
    them and the bind fails.  Below the range the kernel never hands a port out by itself."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    candidate = low - 1
    while len(ports) < count and candidate >= 1024:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, candidate))
            except OSError:
                pass  # in use (or reserved): skip it
            else:
                ports.append(candidate)
        candidate -= 1
    if len(ports) < count:
        raise BenchError(f"only {len(ports)} free ports below the ephemeral range, {count} wanted")
    return sorted(ports)


def free_tcp_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel considers free right now (bound together, then released)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the bench dies without running its ``finally`` blocks."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class ManagedProcess:
    """A child process whose output goes to a log file and which is always stopped by its pid."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                close_fds=True,
                preexec_fn=_die_with_parent,  # the bench has no threads, so preexec_fn is safe here
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_running(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"{self.argv[0]} exited with status {self.popen.returncode}: {self.log_tail()}")

    def log_tail(self, limit: int = 600) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""
        return " | ".join(line for line in text.splitlines() if line.strip())

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL: only this pid, never a name match."""
        try:
            if self.popen.poll() is None:
                os.kill(self.popen.pid, signal.SIGTERM)
                try:
                    self.popen.wait(_STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    os.kill(self.popen.pid, signal.SIGKILL)
                    self.popen.wait(_STOP_GRACE_S)
        except ProcessLookupError:
            pass
        finally:
            self._log.close()


class ListenProbe:
    """When is every port of a relay listening?  Cheap to poll, and it never opens a device early.

    It tries to connect to the *last* configured port (a refused connect costs microseconds; ser2net and
    serialmuxd bind in config order) and, once that port accepts, confirms from /proc/net/tcp that every
    other port is listening too.  (Parsing /proc/net/tcp with 1,000 listeners takes ~12 ms, so polling it
    alone would be both coarse and a CPU load on a machine where the relay is starting up.)  The one
    accepted probe connection is closed at once; for ser2net it opens and closes that port's device.  With
    ``connect=False`` (socat, which serves exactly one connection) only /proc/net/tcp is polled.
    """

    def __init__(self, ports: Sequence[int], t_spawn: float, *, connect: bool = True) -> None:
        self._wanted = set(ports)
        self._last = ports[-1]
        self._t_spawn = t_spawn
        self._last_accepted = not connect

    def poll(self) -> float | None:
        """Seconds from spawn to "all listening" once that is true, else None."""
        if not self._last_accepted:
            try:
                socket.create_connection((HOST, self._last), timeout=2.0).close()
            except ConnectionRefusedError:
                return None
            self._last_accepted = True
            now = time.perf_counter()
            if self._wanted <= procfs.listening_tcp_ports():
                return now - self._t_spawn
            return None
        if self._wanted <= procfs.listening_tcp_ports():
            return time.perf_counter() - self._t_spawn
        return None

    def missing(self) -> int:
        return len(self._wanted - procfs.listening_tcp_ports())


def wait_listening(
    ports: Sequence[int], proc: ManagedProcess, t_spawn: float, timeout_s: float, *, connect: bool = True
) -> float:
    """Seconds from ``t_spawn`` until every port in ``ports`` is listening (see ``ListenProbe``)."""
    probe = ListenProbe(ports, t_spawn, connect=connect)
    deadline = time.perf_counter() + timeout_s
    while True:
        listen_s = probe.poll()
        if listen_s is not None:
            return listen_s
        proc.check_running()
        if time.perf_counter() > deadline:
            raise BenchError(f"{probe.missing()} of {len(ports)} ports not listening after {timeout_s:g} s")
        time.sleep(0.002)


class Target(abc.ABC):
    """A relay under test (or the no-relay baseline)."""

    name: str = ""
    label: str = ""
    fanout = True
    idle_ports = True
    telnet_mode = False

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: ManagedProcess | None = None
        self.ports: Sequence[PortPlan] = ()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def available(self) -> str | None:
        """None if the target can run here, else the reason it cannot."""
        return None

    @abc.abstractmethod
    def start(self, ports: Sequence[PortPlan], options: StartOptions, timeout_s: float) -> StartTimes:
        """Spawn the relay for ``ports`` and wait until it serves them."""

    def stop(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stop()
            finally:
                self.proc = None

    def connect_writer(self, index: int) -> Endpoint:
        """A new interactive client of port ``index``."""
        return TcpEndpoint(HOST, self.ports[index].tcp_port)

    def connect_viewer(self, index: int) -> Endpoint:
        """A new read-only client of port ``index`` (the same port where the relay has no viewer role)."""
        return self.connect_writer(index)

    def check_running(self) -> None:
        if self.proc is not None:
            self.proc.check_running()


class BarePty(Target):
    """No relay: the client reads and writes the PTY slave itself.  The floor every relay adds cost to."""

    name = "pty"
    label = "raw PTY (no relay)"
    fanout = False
    idle_ports = False

    def start(self, ports: Sequence[PortPlan], options: StartOptions, timeout_s: float) -> StartTimes:
        if options.telnet:
            raise Unsupported("no telnet without a relay")
        self.ports = ports
        return StartTimes(0.0, None)

    def connect_writer(self, index: int) -> Endpoint:
        pty = self.ports[index].pty
        assert pty is not None
        return PtySlaveEndpoint(pty)


class Socat(Target):
    """``socat -b 65536 TCP-LISTEN:P,nodelay /dev/pts/N,raw,echo=0``: one client, no fan-out, one port."""

    name = "socat"
    label = "socat"
    fanout = False
    idle_ports = False

    def available(self) -> str | None:
        return None if shutil.which("socat") else "socat not installed (apt-get install socat)"

    def start(self, ports: Sequence[PortPlan], options: StartOptions, timeout_s: float) -> StartTimes:
        if options.telnet:
            raise Unsupported("socat has no telnet server")
        if len(ports) != 1:
            raise Unsupported("one socat process serves one port")
        self.ports = ports
        port = ports[0]
        assert port.pty is not None
        argv = [
            "socat",
            "-b",
            "65536",
            f"TCP-LISTEN:{port.tcp_port},bind={HOST},reuseaddr,nodelay",
            f"{port.pty.path},raw,echo=0",
        ]
        t_spawn = time.perf_counter()
        self.proc = ManagedProcess(argv, self.workdir / "socat.log")
        # No connect probe: socat without ``fork`` serves one connection and exits.
        return StartTimes(wait_listening([port.tcp_port], self.proc, t_spawn, timeout_s, connect=False), None)


class Ser2net(Target):
    """ser2net 4 tuned for throughput and latency: chardelay off, 64 KiB buffers, TCP_NODELAY (default)."""

    name = "ser2net"
    label = "ser2net (tuned)"
    telnet_mode = True

    def available(self) -> str | None:
        return None if shutil.which("ser2net") else "ser2net not installed (apt-get install ser2net)"

    def start(self, ports: Sequence[PortPlan], options: StartOptions, timeout_s: float) -> StartTimes:
        self.ports = ports
        config = self.workdir / "ser2net.yaml"
        config.write_text(self.yaml(ports, options))
        argv = ["ser2net", "-n", "-d", "-c", str(config)]
        t_spawn = time.perf_counter()
        self.proc = ManagedProcess(argv, self.workdir / "ser2net.log")
        listen_s = wait_listening([p.tcp_port for p in ports], self.proc, t_spawn, timeout_s)
        return StartTimes(listen_s, None)

    @staticmethod
    def yaml(ports: Sequence[PortPlan], options: StartOptions) -> str:
        accepter = "telnet,tcp" if options.telnet else "tcp"
        lines = ["%YAML 1.1", "---"]
        for i, port in enumerate(ports):
            assert port.pty is not None
            lines += [
                f"connection: &p{i}",
                f"    accepter: {accepter},{HOST},{port.tcp_port}",
                f"    connector: serialdev,{port.pty.path},115200n81,local",
                "    options:",
                "      kickolduser: false",
                "      chardelay: false",
                f"      max-connections: {options.max_connections}",
                "      dev-to-net-bufsize: 65536",
                "      net-to-dev-bufsize: 65536",
                "",
            ]
        return "\n".join(lines)


def default_daemon_command() -> list[str]:
    venv_script = REPO_ROOT / ".venv" / "bin" / "serialmuxd"
    if venv_script.exists():
        return [str(venv_script)]
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    return [str(venv_python if venv_python.exists() else Path(sys.executable)), "-m", "serialmuxd"]


class Serialmuxd(Target):
    """The daemon under test: ``serialmuxd run --config FILE``, readiness from sd_notify ``READY=1``."""

    name = "serialmuxd"
    label = "serialmuxd"
    telnet_mode = True

    def __init__(self, workdir: Path, command: Sequence[str] | None = None) -> None:
        super().__init__(workdir)
        self.command = list(command) if command else default_daemon_command()
        self.ports_missing_at_ready: int | None = None
        self.http_port: int | None = None

    def available(self) -> str | None:
        try:
            done = subprocess.run(
                [*self.command, "--version"],
                capture_output=True,
                timeout=20,
                check=False,
                cwd=REPO_ROOT,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(self.command)} --version failed: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()[-1:]
            return f"{' '.join(self.command)} --version exited {done.returncode}: {' '.join(tail)}"
        return None

    def start(self, ports: Sequence[PortPlan], options: StartOptions, timeout_s: float) -> StartTimes:
        self.ports = ports
        self.http_port = options.http_port
        self.ports_missing_at_ready = None
        config = self.workdir / "serialmuxd.toml"
        config.write_text(self.toml(ports, options))
        notify_path = self.workdir / "notify.sock"
        with contextlib.suppress(FileNotFoundError):
            notify_path.unlink()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            notify.bind(str(notify_path))
            env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
            t_spawn = time.perf_counter()
            self.proc = ManagedProcess(
                [*self.command, "run", "--config", str(config)], self.workdir / "serialmuxd.log", env
            )
            listen_s, ready_s = self._wait_ready(notify, t_spawn, timeout_s)
        finally:
            notify.close()
            with contextlib.suppress(FileNotFoundError):
                notify_path.unlink()
        return StartTimes(listen_s, ready_s)

    def _wait_ready(
        self, notify: socket.socket, t_spawn: float, timeout_s: float
    ) -> tuple[float, float | None]:
        """Watch READY=1 and the listening ports side by side; seconds from spawn to each.

        READY is None if the daemon never sends it within 5 s of listening on every port (the fallback).
        """
        assert self.proc is not None
        wanted = self._all_ports(self.ports)
        if self.http_port is not None:
            wanted.append(self.http_port)
        probe = ListenProbe(wanted, t_spawn)
        deadline = t_spawn + timeout_s
        listen_s: float | None = None
        ready_s: float | None = None
        while time.perf_counter() < deadline:
            if wait_readable(notify.fileno(), 0.002):
                message = notify.recv(4096)
                if ready_s is None and b"READY=1" in message.split(b"\n"):
                    ready_s = time.perf_counter() - t_spawn
                    # READY must mean "serving": count the ports that were not listening yet at that moment.
                    self.ports_missing_at_ready = probe.missing()
            if listen_s is None:
                listen_s = probe.poll()
            if listen_s is not None and (ready_s is not None or time.perf_counter() - t_spawn > listen_s + 5):
                return listen_s, ready_s
            self.proc.check_running()
        raise BenchError(f"serialmuxd not ready after {timeout_s:g} s: {self.proc.log_tail()}")

    @staticmethod
    def _all_ports(ports: Sequence[PortPlan]) -> list[int]:
        out: list[int] = []
        for port in ports:
            out.append(port.tcp_port)
            if port.viewer_port is not None:
                out.append(port.viewer_port)
        return out

    @staticmethod
    def toml(ports: Sequence[PortPlan], options: StartOptions) -> str:
        lines = ["[daemon]", 'log_level = "warning"', ""]
        if options.http_port is not None:
            lines += ["[http]", f'listen = "{HOST}:{options.http_port}"', "max_connections = 100000", ""]
        for i, port in enumerate(ports):
            if port.unix_path is not None:
                device = f"unix:{port.unix_path}"
            else:
                assert port.pty is not None
                device = f"tty:{port.pty.path}"
            lines += [
                "[[ports]]",
                f'name = "p{i}"',
                f'device = "{device}"',
                f'telnet = "{HOST}:{port.tcp_port}"',
            ]
            if port.viewer_port is not None:
                lines.append(f'telnet_readonly = "{HOST}:{port.viewer_port}"')
            lines += [
                f"raw = {'false' if options.telnet else 'true'}",
                f"scrollback_bytes = {options.scrollback_bytes}",
                "replay_bytes = 0",
                f"client_buffer_bytes = {options.client_buffer_bytes}",
                # Every bench client comes from 127.0.0.1: the per-address cap must not count them.
                f"max_sessions = {options.max_sessions}",
                f"max_sessions_per_address = {options.max_sessions}",
                "",
            ]
        return "\n".join(lines)

    def connect_viewer(self, index: int) -> Endpoint:
        viewer_port = self.ports[index].viewer_port
        if viewer_port is None:
            raise BenchError("port planned without a viewer listener")
        return TcpEndpoint(HOST, viewer_port)

    def connect_ws(self, index: int, mode: str = "rw", rcvbuf: int | None = None) -> WsEndpoint:
        """A WebSocket console client of port ``index`` (``mode`` rw or ro); needs ``http_port``."""
        if self.http_port is None:
            raise BenchError("started without an HTTP listener")
        return WsEndpoint(HOST, self.http_port, f"p{index}", mode, rcvbuf=rcvbuf)


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="serialmuxd-bench-"))
