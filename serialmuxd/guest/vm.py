"""A real Linux guest under QEMU for tests and demos: build it (cached), start it, drive it, stop it.

The guest is Debian's kernel plus busybox in an initramfs (``build-guest.sh``, shipped in this package):
COM1 (``ttyS0``, also the kernel console) on a unix socket, QMP on a second unix socket for the program
under test and a third (``ctl.sock``) for the harness, since QEMU serves one client per QMP socket.  It
boots to ``sertest login:`` in 2-5 s under TCG (PVH direct boot, no firmware), prints the kernel's NMI
lines on ``inject-nmi``, and powers off on the ACPI power button.  See ``build-guest.sh`` and
``run-guest.sh`` for every knob; this module is the asyncio face of those two scripts.

Why QEMU is started with ``-daemonize`` and stopped by pid: QEMU returns only once its sockets exist (so
there is nothing to poll for), it survives the harness's event loop, and ``stop``/``kill`` find it by the pid
QEMU wrote itself.  The pid is checked against the run directory in ``/proc/PID/cmdline`` and then held as a
pidfd, so a recycled pid can never be signalled, and waiting for QEMU to exit is an fd becoming readable,
not a polling loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..adapters.base import AdapterError
from ..adapters.command import run_bounded
from ..adapters.qmp import QmpErrorReply, QmpProtocol, QmpProtocolError, QmpReady, QmpReturn
from ..errors import LocalError

GUEST_CACHE_ENV = "SERIALMUXD_GUEST_CACHE"
QEMU_BINARY = "qemu-system-x86_64"
PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_SCRIPT = PACKAGE_DIR / "build-guest.sh"
RUN_SCRIPT = PACKAGE_DIR / "run-guest.sh"

# What the guest prints, for tests that wait for it.
BANNER = b"SERTEST-GUEST: userspace up"
LOGIN_PROMPT = b"sertest login: "
PASSWORD_PROMPT = b"Password: "
ROOT_PROMPT = b"root@sertest:~# "
KERNEL_START = b"Linux version"
NMI_PATTERN = rb"NMI received for unknown reason [0-9a-f]{2} on CPU [0-9]+"
NMI_CONTINUE = b"Dazed and confused, but trying to continue"
NMI_PANIC = b"Kernel panic - not syncing: NMI: Not continuing"
POWER_BUTTON = b"SERTEST-GUEST: ACPI power button pressed"
POWER_DOWN = b"reboot: Power down"

_RUN_DIR_MAX = 80  # run-guest.sh refuses >= 90; sockets inside must stay under 107 bytes


class GuestError(LocalError):
    """The test guest could not be built, started or stopped."""


def default_cache_dir() -> Path:
    """``$SERIALMUXD_GUEST_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/serialmuxd/guest`` (outside repos)."""
    configured = os.environ.get(GUEST_CACHE_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "serialmuxd" / "guest"


def qemu_binary() -> str | None:
    """Path of ``qemu-system-x86_64``, or None when QEMU is not installed."""
    return shutil.which(QEMU_BINARY)


@dataclass(frozen=True, slots=True)
class GuestImage:
    """A built guest: the files ``build-guest.sh`` wrote and the facts from its ``guest.env``."""

    cache_dir: Path
    kernel: Path  # bzImage
    kernel_pvh: Path | None  # uncompressed ELF for PVH boot (faster under TCG)
    initrd: Path
    kernel_version: str  # "6.1.0-56-amd64"
    root_password: str
    user: str
    user_password: str
    hostname: str

    @classmethod
    def load(cls, cache_dir: Path) -> GuestImage:
        facts = _read_env_file(cache_dir / "guest.env")
        try:
            pvh = facts.get("GUEST_KERNEL_PVH", "")
            return cls(
                cache_dir=cache_dir,
                kernel=Path(facts["GUEST_KERNEL"]),
                kernel_pvh=Path(pvh) if pvh else None,
                initrd=Path(facts["GUEST_INITRD"]),
                kernel_version=facts["GUEST_KVER"],
                root_password=facts["GUEST_ROOT_PASSWORD"],
                user=facts["GUEST_USER"],
                user_password=facts["GUEST_USER_PASSWORD"],
                hostname=facts["GUEST_HOSTNAME"],
            )
        except KeyError as exc:
            raise GuestError(f"{cache_dir}/guest.env lacks {exc.args[0]}; rebuild the guest") from None


def _read_env_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise GuestError(f"cannot read {path}: {exc.strerror}") from None
    return _parse_env_lines(text)


def _parse_env_lines(text: str) -> dict[str, str]:
    facts: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.isidentifier():
            facts[name] = value
    return facts


def _tail(data: bytes, lines: int = 15) -> str:
    return "\n".join(data.decode("utf-8", "replace").rstrip().splitlines()[-lines:])


async def ensure_guest(cache_dir: Path | None = None, *, timeout_s: float = 900.0) -> GuestImage:
    """Build the guest into ``cache_dir`` unless it is up to date (~20 ms then); return it.

    A first build downloads Debian's kernel and busybox packages with ``apt-get download`` (~70 MB, about
    10 s here) and needs no root; concurrent callers serialise on a lock in the cache directory.
    """
    cache = (cache_dir or default_cache_dir()).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    try:
        result = await run_bounded(
            ["bash", str(BUILD_SCRIPT), str(cache)],
            timeout_s=timeout_s,
            description="build-guest.sh",
        )
    except AdapterError as exc:
        raise GuestError(str(exc)) from None
    if result.returncode != 0:
        raise GuestError(f"build-guest.sh failed (exit status {result.returncode}):\n{_tail(result.stderr)}")
    return GuestImage.load(cache)


async def qmp_execute_once(
    socket_path: Path | str,
    command: str,
    arguments: Mapping[str, object] | None = None,
    *,
    timeout_s: float = 5.0,
) -> object:
    """Connect, negotiate, run one QMP command, disconnect; returns QEMU's ``return`` value.

    For the harness's own control socket; serialmuxd's long-lived client is ``adapters.qmp.QmpAdapter``.
    """
    protocol = QmpProtocol()
    command_id: int | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            try:
                while True:
                    data = await reader.read(65536)
                    protocol.receive_data(data)
                    for event in protocol.events_received():
                        if isinstance(event, QmpReady):
                            command_id = protocol.send_command(command, arguments)
                        elif isinstance(event, QmpReturn) and event.command_id == command_id:
                            return event.value
                        elif isinstance(event, QmpErrorReply) and event.command_id == command_id:
                            raise GuestError(f"QMP {command} failed: {event.desc} ({event.error_class})")
                    writer.write(protocol.data_to_send())
                    if not data:
                        # "quit" may close the connection before its reply arrives: QEMU is going away.
                        if command == "quit":
                            return None
                        raise GuestError(f"QEMU closed {socket_path} before answering {command}")
            finally:
                writer.close()
    except TimeoutError:
        raise GuestError(f"QMP {command} on {socket_path}: no answer within {timeout_s:g} s") from None
    except (OSError, QmpProtocolError) as exc:
        raise GuestError(f"QMP {command} on {socket_path}: {exc}") from None


class GuestVM:
    """One guest VM in its own run directory; ``start`` may be called again after ``stop``/``kill``.

    Restarting reuses the run directory, so the serial and QMP socket paths stay the same and a daemon
    port (or QMP adapter) pointed at them reconnects by itself.  ``console.log`` keeps everything the guest
    ever wrote on COM1, across restarts and also while no client was connected.
    """

    def __init__(self, image: GuestImage, run_dir: Path | None = None) -> None:
        self.image = image
        self._owns_run_dir = run_dir is None
        if run_dir is None:
            run_dir = Path(tempfile.mkdtemp(prefix="smx-", dir="/tmp"))
        if len(os.fsencode(str(run_dir))) > _RUN_DIR_MAX:
            raise GuestError(
                f"run directory path too long for unix sockets (max {_RUN_DIR_MAX} bytes): {run_dir}"
            )
        self.run_dir = run_dir
        self.serial_socket = run_dir / "ttyS0.sock"
        self.qmp_socket = run_dir / "qmp.sock"  # for the program under test
        self.control_socket = run_dir / "ctl.sock"  # for the harness (cont, quit, query-status)
        self.console_log = run_dir / "console.log"
        self.pid: int | None = None
        self.accel: str | None = None
        self._pidfd: int | None = None

    async def __aenter__(self) -> GuestVM:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(
        self,
        *,
        paused: bool = False,
        nmi_panic: bool = False,
        autologin: bool = False,
        no_shutdown: bool = False,
        pvpanic: str | None = None,
        append: Sequence[str] = (),
        accel: str = "auto",
        memory: str = "128M",
        boot: str = "auto",
        qemu_args: Sequence[str] = (),
        timeout_s: float = 60.0,
    ) -> None:
        """Launch QEMU (returns once its sockets exist; the guest then boots in the background).

        ``paused`` starts with the vCPUs stopped (connect to COM1 first, then ``cont``: with ``wait=off``
        nothing written while no client is connected reaches the socket).  ``nmi_panic`` makes an NMI panic
        the kernel (``unknown_nmi_panic``).  ``no_shutdown`` keeps QEMU alive after a guest poweroff (QMP
        status ``shutdown``).  ``pvpanic`` (``none``/``pause``/``shutdown``) adds the pvpanic device, so a
        panic raises QMP ``GUEST_PANICKED``.  ``accel``: ``auto`` probes KVM once per machine and falls back
        to TCG.  ``qemu_args`` are appended to QEMU's command line (extra devices, e.g. an IPMI BMC).
        ``timeout_s`` covers a first-time KVM probe (up to 8 s).
        """
        if self.is_running():
            raise GuestError(f"guest in {self.run_dir} is already running (pid {self.pid})")
        self._forget_process()
        argv = [
            "bash",
            str(RUN_SCRIPT),
            "--daemonize",
            "-d",
            str(self.run_dir),
            "-c",
            str(self.image.cache_dir),
        ]
        argv += ["--accel", accel, "-m", memory, "--boot", boot]
        for flag, wanted in (
            ("--paused", paused),
            ("--nmi-panic", nmi_panic),
            ("--autologin", autologin),
            ("--no-shutdown", no_shutdown),
        ):
            if wanted:
                argv.append(flag)
        if pvpanic is not None:
            argv.append(f"--pvpanic={pvpanic}")
        if append:
            argv += ["--append", " ".join(append)]
        if qemu_args:
            argv += ["--", *qemu_args]
        env = {**os.environ, "GUEST_NO_BUILD": "1"}  # ensure_guest built it; no apt-cache call per start
        try:
            result = await run_bounded(argv, timeout_s=timeout_s, description="run-guest.sh", env=env)
        except AdapterError as exc:
            raise GuestError(str(exc)) from None
        if result.returncode != 0:
            raise GuestError(
                f"run-guest.sh failed (exit status {result.returncode}):\n{_tail(result.stderr)}"
            )
        facts = _parse_env_lines(result.stdout.decode("utf-8", "replace"))
        try:
            pid = int(facts["QEMU_PID"])
        except (KeyError, ValueError):
            raise GuestError(f"run-guest.sh printed no QEMU_PID:\n{_tail(result.stdout)}") from None
        self.accel = facts.get("ACCEL")
        self._adopt(pid)

    def _adopt(self, pid: int) -> None:
        """Hold QEMU by pidfd after checking that the pid is the QEMU of this run directory."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            raise GuestError(
                f"QEMU (pid {pid}) exited right after starting; see {self.run_dir}/qemu.log"
            ) from None
        if os.fsencode(str(self.run_dir)) not in cmdline:
            raise GuestError(f"pid {pid} is not the QEMU of {self.run_dir}")
        try:
            self._pidfd = os.pidfd_open(pid)  # Linux >= 5.3
        except OSError as exc:
            raise GuestError(f"cannot hold QEMU (pid {pid}) by pidfd: {exc.strerror}") from None
        self.pid = pid

    def _forget_process(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
        self._pidfd = None
        self.pid = None

    def is_running(self) -> bool:
        """Whether our QEMU process still exists."""
        if self._pidfd is None:
            return False
        try:
            signal.pidfd_send_signal(self._pidfd, 0)
        except ProcessLookupError:
            return False
        return True

    def _signal(self, signum: int) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)

    async def wait_exited(self, timeout_s: float) -> bool:
        """Wait until QEMU has exited; False if it is still running after ``timeout_s``."""
        pidfd = self._pidfd
        if pidfd is None or not self.is_running():
            return True
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:  # a pidfd becomes readable when the process exits
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            async with asyncio.timeout(timeout_s):
                await exited
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(pidfd)
        return True

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop QEMU by pid: SIGTERM (QEMU exits cleanly), SIGKILL if it has not after ``timeout_s``."""
        if self.pid is None:
            return
        self._signal(signal.SIGTERM)
        if not await self.wait_exited(timeout_s):
            self._signal(signal.SIGKILL)
            if not await self.wait_exited(5.0):
                raise GuestError(f"QEMU (pid {self.pid}) survived SIGKILL")
        self._forget_process()

    async def kill(self) -> None:
        """SIGKILL QEMU, as a crash would: no SHUTDOWN event, sockets left behind."""
        if self.pid is None:
            return
        self._signal(signal.SIGKILL)
        if not await self.wait_exited(5.0):
            raise GuestError(f"QEMU (pid {self.pid}) survived SIGKILL")
        self._forget_process()

    async def close(self) -> None:
        """Stop QEMU and remove the run directory if this object created it."""
        try:
            await self.stop()
        finally:
            if self._owns_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- harness controls -------------------------------------------------------------------------------

    async def qmp(
        self, command: str, arguments: Mapping[str, object] | None = None, timeout_s: float = 5.0
    ) -> object:
        """Run one QMP command on the harness's control socket (not the one serialmuxd owns)."""
        return await qmp_execute_once(self.control_socket, command, arguments, timeout_s=timeout_s)

    async def cont(self) -> None:
        """Resume a guest started with ``paused=True``."""
        await self.qmp("cont")

    async def status(self) -> str:
        """QEMU's run state (``running``, ``paused``, ``prelaunch``, ``shutdown``, ...)."""
        reply = await self.qmp("query-status")
        return str(reply.get("status")) if isinstance(reply, dict) else json.dumps(reply)

    def console_output(self) -> bytes:
        """Everything the guest wrote on COM1 so far (QEMU's chardev log, across restarts)."""
        try:
            return self.console_log.read_bytes()
        except FileNotFoundError:
            return b""
