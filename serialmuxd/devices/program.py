"""``exec:COMMAND ARGS…``: a program on a PTY (a shell for the demo, ``ipmitool … sol activate`` for a BMC).

How the child gets a controlling terminal
-----------------------------------------
A console program needs the PTY as its *controlling* terminal: for job control, for ``SIGWINCH`` on resize,
for ``SIGHUP`` on hang-up.  The kernel gives a session leader without one the first terminal it opens
without ``O_NOCTTY``; a terminal that merely arrives as an inherited fd 0/1/2 does not count.  So the child
must call ``setsid()`` and then *open the slave by name*, and ``subprocess`` (hence
``asyncio.create_subprocess_exec``) cannot do that without ``preexec_fn``, which runs Python between
``fork`` and ``exec`` and can deadlock when other threads exist (the default executor used for tty opens and
DNS always may).  ``os.posix_spawnp`` can, with no Python in the child: ``setsid=True`` makes it a session
leader, then the file actions ``open(slave, O_RDWR)`` → fd 0 (which makes the PTY its controlling
terminal) and ``dup2`` to 1 and 2.  glibc applies ``setsid`` before the file actions and spawns with
``CLONE_VFORK``, so this is thread-safe and as cheap as ``vfork``.  Signals that the daemon ignores (Python
ignores ``SIGPIPE`` and ``SIGXFSZ``) are reset to their defaults, and the signal mask is cleared, as a
terminal would do for a login shell.

Without ``asyncio.subprocess`` something else has to wait for the child: a pidfd (``os.pidfd_open``) is
readable when the child exits and is watched with ``add_reader`` like any other fd; ``waitid(P_PIDFD)``
reaps it.  No SIGCHLD handler, no child watcher (deprecated since 3.12), no pid-reuse race.  asyncio's and
uvloop's own watchers only wait for pids they spawned, so they never steal our child's status.

Life of one run
---------------
openpty → window size on the master (80x24 until a client says otherwise) → spawn → close our copy of the
slave → read the master.  ``EIO`` on the master means every holder of the slave closed it; the link then
stops reading and waits for the exit (a program may close its terminal and still run).  When the pidfd fires
the link drains what the program wrote before exiting (the kernel flushes the PTY buffer on read), sends
``SIGHUP`` to whatever is left of its process group, reaps it, and goes offline with "program exited with
status N" (or "program killed by signal SIGKILL"); the reconnect loop restarts it with backoff.

``close()`` closes the master first (the kernel hangs up the slave and sends ``SIGHUP`` to the session's
foreground group, like closing a terminal window), then sends ``SIGTERM`` + ``SIGCONT`` to the process group,
waits up to ``terminate_timeout_s`` (2 s), then ``SIGKILL``, and reaps.  Signals go to the group while its
leader is still unreaped, so the group id cannot have been reused.

The environment is the daemon's plus ``TERM=xterm-256color``; it is never logged.  Descriptions show only
the program name, never its arguments (a BMC password could be one; the config should not put it there).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import termios
from collections.abc import Callable, Iterable, Sequence
from typing import Unpack

from ._fd import READ_SIZE, FdChannel
from .base import (
    Channel,
    ChannelOwner,
    DeviceListener,
    LinkOptions,
    ReconnectingLink,
    close_fd_quietly,
    os_error_text,
)

DEFAULT_COLS = 80
DEFAULT_ROWS = 24
TERMINATE_TIMEOUT_S = 2.0
EXIT_DRAIN_READS = 16  # at most 1 MiB read after the exit: a left-over writer must not keep us here

# Signals a daemon commonly ignores or handles; ignored ones would stay ignored across exec.
_RESET_SIGNALS = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGPIPE,
    signal.SIGTERM,
    signal.SIGXFSZ,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGWINCH,
)


def set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def describe_exit(info: os.waitid_result) -> str:
    if info.si_code == os.CLD_EXITED:
        return f"program exited with status {info.si_status}"
    try:
        name = signal.Signals(info.si_status).name
    except ValueError:
        name = str(info.si_status)
    core = " (core dumped)" if info.si_code == os.CLD_DUMPED else ""
    return f"program killed by signal {name}{core}"


def _signal_group(pgid: int, *signals: signal.Signals) -> None:
    for sig in signals:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def spawn_on_pty(argv: Sequence[str], slave_path: str, env: dict[str, str]) -> int:
    """Start ``argv`` as a session leader whose controlling terminal is ``slave_path``; return its pid."""
    file_actions: list[tuple[int, int] | tuple[int, int, int] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, slave_path, os.O_RDWR, 0),  # after setsid: becomes the controlling tty
        (os.POSIX_SPAWN_DUP2, 0, 1),
        (os.POSIX_SPAWN_DUP2, 0, 2),
    ]
    # Our fds are O_CLOEXEC (PEP 446) unless someone made one inheritable on purpose (e.g. a socket
    # activation fd); the program on the console must not get those.
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):
            if fd > 2 and os.get_inheritable(fd):
                file_actions.append((os.POSIX_SPAWN_CLOSE, fd))
    return os.posix_spawnp(
        argv[0],
        list(argv),
        env,
        file_actions=file_actions,
        setsid=True,
        setsigdef=_RESET_SIGNALS,
        setsigmask=(),
    )


class ProgramChannel(FdChannel):
    """The PTY master of one run of the program, plus the pidfd that tells us when it exits."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        master_fd: int,
        pid: int,
        pidfd: int,
        where: str,
        on_data: Callable[[bytes], None],
        *,
        terminate_timeout_s: float,
    ) -> None:
        super().__init__(loop, master_fd, where, on_data)
        self.pid = pid
        self._pidfd = pidfd
        self._watching_exit = False
        self._reaped = False
        self._master_hung_up = False
        self._terminate_timeout_s = terminate_timeout_s

    def activate(self, owner: ChannelOwner) -> None:
        super().activate(owner)
        self._loop.add_reader(self._pidfd, self._exited)
        self._watching_exit = True

    # ---- FdChannel hooks -------------------------------------------------------------------------------

    def _device_gone(self, reason: str, *, soon: bool = False) -> None:
        # EIO on the master: every holder of the slave has closed it.  That is not the end of the program;
        # stop reading and writing (input is kept and counted) and let the pidfd tell us when it has exited.
        self._master_hung_up = True
        self._failed = True  # later input is only counted as discarded
        self._stop_io()

    # ---- exit ------------------------------------------------------------------------------------------

    def _exited(self) -> None:
        try:
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            # Someone else reaped it (a waitpid(-1) elsewhere in the process): it is gone, status unknown.
            self._stop_watching_exit()
            self._reaped = True
            self._drain_master()
            self._report_lost("program exited (status unknown)")
            return
        if info is None:
            return  # not actually exited (spurious wake-up); keep watching
        self._stop_watching_exit()
        self._drain_master()
        _signal_group(self.pid, signal.SIGHUP)  # leftovers in its group; the zombie leader pins the pgid
        self._reap()
        self._report_lost(describe_exit(info))

    def _drain_master(self) -> None:
        if self._master_hung_up or not self.is_open:
            return
        for _ in range(EXIT_DRAIN_READS):
            try:
                data = os.read(self.fd, READ_SIZE)
            except OSError:
                return
            if not data:
                return
            self._on_data(data)

    def _report_lost(self, reason: str) -> None:
        self._master_hung_up = True
        self._stop_io()
        owner = self._owner
        if owner is not None:
            owner.channel_lost(self, reason)

    def _reap(self) -> None:
        if self._reaped:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
            self._reaped = True

    def _stop_watching_exit(self) -> None:
        if self._watching_exit:
            self._loop.remove_reader(self._pidfd)
            self._watching_exit = False

    # ---- close -----------------------------------------------------------------------------------------

    def close(self) -> tuple[int, bool]:
        """Release the master (and the pidfd once the child is reaped).  See ``shutdown`` for the child."""
        result = super().close()
        self._stop_watching_exit()
        if self._reaped:
            close_fd_quietly(self._pidfd)
            self._pidfd = -1
        return result

    async def shutdown(self) -> None:
        self.close()  # master first: the kernel hangs up the terminal and SIGHUPs the foreground group
        if self._pidfd < 0:
            return
        try:
            if not self._reaped:
                _signal_group(self.pid, signal.SIGTERM, signal.SIGCONT)
                if not await self._wait_exit(self._terminate_timeout_s):
                    _signal_group(self.pid, signal.SIGKILL)
                    await self._wait_exit(self._terminate_timeout_s)
        finally:
            # Also on cancellation: make sure it dies, reap it if it already has, never leak the pidfd.
            if not self._reaped:
                _signal_group(self.pid, signal.SIGKILL)
                self._reap()
            close_fd_quietly(self._pidfd)
            self._pidfd = -1

    async def _wait_exit(self, timeout_s: float) -> bool:
        exited = self._loop.create_future()

        def on_ready() -> None:
            if not exited.done():
                exited.set_result(None)

        self._loop.add_reader(self._pidfd, on_ready)
        try:
            async with asyncio.timeout(timeout_s):
                await exited
        except TimeoutError:
            return False
        finally:
            self._loop.remove_reader(self._pidfd)
        self._reap()
        return self._reaped


# The daemon's own service plumbing is none of a console program's business: systemd's notify socket (a
# program could claim READY or STOPPING for us), socket activation and watchdog variables.
_DAEMON_ONLY_ENV = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)
# Variables that hold secrets for other parts of the daemon (an IPMI adapter's password_env); the daemon
# registers them at start-up so that a shell on an exec: console cannot read them.
_hidden_env: set[str] = set()


def hide_from_programs(names: Iterable[str]) -> None:
    """Keep these environment variables away from every program an exec: link starts."""
    _hidden_env.update(names)


def program_environment() -> dict[str, str]:
    """The environment of a console program: the daemon's, minus service plumbing and secrets, plus TERM."""
    env = {k: v for k, v in os.environ.items() if k not in _DAEMON_ONLY_ENV and k not in _hidden_env}
    env["TERM"] = "xterm-256color"
    return env


class ExecLink(ReconnectingLink):
    """``exec:COMMAND ARGS…``: runs the program on a fresh PTY; restarts it (with backoff) when it exits."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        listener: DeviceListener,
        *,
        terminate_timeout_s: float = TERMINATE_TIMEOUT_S,
        **options: Unpack[LinkOptions],
    ) -> None:
        if not argv or not argv[0]:
            raise ValueError("exec device needs a command")
        super().__init__(name, listener, **options)
        self.argv = tuple(argv)
        self.terminate_timeout_s = terminate_timeout_s
        self._cols = DEFAULT_COLS
        self._rows = DEFAULT_ROWS

    @property
    def description(self) -> str:
        return f"exec:{os.path.basename(self.argv[0])}"

    @property
    def pid(self) -> int | None:
        """The running program's pid (for operators and tests); None when none is running."""
        channel = self._current_channel
        return channel.pid if isinstance(channel, ProgramChannel) else None

    def set_window_size(self, cols: int, rows: int) -> None:
        """Remember the size for later runs and set it on the current PTY (the kernel sends SIGWINCH)."""
        if cols <= 0 or rows <= 0:
            return  # telnet NAWS 0x0 means "unknown": keep what we have
        self._cols, self._rows = min(cols, 0xFFFF), min(rows, 0xFFFF)
        channel = self._current_channel
        if isinstance(channel, ProgramChannel) and channel.is_open:
            with contextlib.suppress(OSError):
                set_winsize(channel.fd, self._cols, self._rows)

    async def _connect_once(self) -> tuple[Channel, str]:
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        try:
            os.set_blocking(master, False)
            set_winsize(master, self._cols, self._rows)
            env = program_environment()
            pid = spawn_on_pty(self.argv, os.ttyname(slave), env)
        except BaseException:
            close_fd_quietly(master)
            raise
        finally:
            # Ours must go: the master reports EIO only once every holder of the slave has closed it.
            close_fd_quietly(slave)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # cannot watch it (EMFILE...): do not leave it running unsupervised
            close_fd_quietly(master)
            _signal_group(pid, signal.SIGKILL)
            await loop.run_in_executor(None, os.waitpid, pid, 0)
            raise
        channel = ProgramChannel(
            loop,
            master,
            pid,
            pidfd,
            self.description,
            self._data_received,
            terminate_timeout_s=self.terminate_timeout_s,
        )
        return channel, f"{self.description} (pid {pid}, {self._cols}x{self._rows})"

    def _describe_failure(self, exc: Exception) -> str:
        if isinstance(exc, FileNotFoundError):
            return f"{self.description}: program not found"
        if isinstance(exc, OSError) and exc.errno == errno.EACCES:
            return f"{self.description}: permission denied"
        return f"{self.description}: {os_error_text(exc)}"
