"""Process limits the daemon sets for itself at start: the open-file limit.

Every session, listener, device link and QMP connection is a file descriptor (an exec console is two: the
PTY master and the pidfd).  The soft ``RLIMIT_NOFILE`` is 1,024 on most systems (what a login shell gets,
and what systemd gives a unit without ``LimitNOFILE``) while the hard limit is much higher; past the soft
limit every ``accept`` fails with ``EMFILE`` and new users get an immediate EOF, at about a thousand
connections.  Raising the soft limit to the hard one costs nothing and leaves the ceiling to the operator
(``LimitNOFILE=`` in the unit, which ships with 65536).

Why the soft limit is low by default, and why that does not apply here: ``select(2)`` cannot watch an fd
numbered 1,024 or higher (``FD_SETSIZE``), so programs that use it must keep the limit low.  serialmuxd
does not: asyncio and uvloop use epoll, and the devices are read with ``add_reader``, never with pyserial's
``select``-based ``read``/``write``.

On Linux the hard limit is never ``RLIM_INFINITY`` (the kernel refuses any ``RLIMIT_NOFILE`` above
``fs.nr_open``), so "the hard limit" is always a number that can become the soft one.  Failing to raise is
not an error: the daemon runs with what it has, and the caller logs the values in effect.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

# What the daemon holds open whatever its ports: stdio, the log, the event loop's epoll and wake-up fds,
# the executor's pipes, the audit log (13 measured with one port, uvloop); with room to spare.
BASE_DESCRIPTORS = 24
# Below this many descriptors left for clients after listeners and devices, the daemon starts but warns.
CLIENT_HEADROOM = 64


@dataclass(frozen=True, slots=True)
class DescriptorBudget:
    """Descriptors a configuration holds once started, before any client connects."""

    listeners: int
    devices: int

    @property
    def fixed(self) -> int:
        return BASE_DESCRIPTORS + self.listeners + self.devices

    def refusal(self, soft_limit: int) -> str | None:
        """None if the listeners and devices fit in ``soft_limit``; else the reason, with the numbers."""
        if self.fixed <= soft_limit:
            return None
        return (
            f"this configuration needs at least {self.fixed} open files ({self.listeners} listeners, "
            f"{self.devices} for devices, {BASE_DESCRIPTORS} for the daemon itself) before any client "
            f"connects, but the open-file limit is {soft_limit}: raise LimitNOFILE in the systemd unit (or "
            "the hard limit, ulimit -Hn) or serve fewer ports from one daemon"
        )

    def clients_left(self, soft_limit: int) -> int:
        return soft_limit - self.fixed


def descriptor_budget(config: Config) -> DescriptorBudget:
    """Count the descriptors ``config``'s listeners and devices hold once started.

    Per port: one per listener (``telnet``, ``telnet_readonly``), one per device (an ``exec`` console two:
    the PTY master and the child's pidfd), one for a ``[ports.hypervisor]`` socket and one for a console
    log file.  A disabled port counts too: it can be enabled through the API.  Daemon-wide: the HTTP and SSH
    listeners.  Clients are not known in advance (``CLIENT_HEADROOM`` is only warned about)."""
    listeners = sum(1 for address in (config.http.listen, config.ssh.listen) if address is not None)
    devices = 0
    for port in config.ports:
        listeners += (port.telnet is not None) + (port.telnet_readonly is not None)
        devices += 2 if port.device.kind == "exec" else 1
        devices += (port.hypervisor is not None) + (getattr(port, "log", None) is not None)
    return DescriptorBudget(listeners, devices)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit; returns ``(soft, hard)`` now in effect.

    Never lowers either limit and never raises: the returned values are what the process has afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        # Refused (a seccomp filter, a hard limit lowered meanwhile): keep what we have.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def open_descriptors(soft_limit: int) -> int | None:
    """How many file descriptors this process has open now (Linux ``/proc/self/fd``); None if unknown.

    Listing the directory needs a descriptor itself: when none is left, that failure is the answer (all of
    them are in use)."""
    try:
        # Linux 6.2+ reports the number of open descriptors as the directory's size: O(1), where listing
        # 20,000 descriptors (10,000 consoles) costs ~25 ms every few seconds on an idle daemon.
        counted = os.stat("/proc/self/fd").st_size
        if counted > 0:
            return counted
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself held open
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return soft_limit
        return None


class DescriptorWatch:
    """Says when open descriptors near the soft limit, and when they are back to normal (with hysteresis).

    Both event loops recover from EMFILE on their own, but neither says so usefully: asyncio logs from inside
    its accept loop (routed to ``accept_failed``), uvloop (libuv) accepts and drops the excess connection
    silently.  A periodic look at the count makes exhaustion visible on either loop, before and while it
    happens, at the cost of one directory listing every few seconds for the whole daemon.
    """

    HIGH = 0.9  # warn at 90 % of the soft limit ...
    LOW = 0.8  # ... and say it recovered below 80 %

    def __init__(self) -> None:
        self.high = False

    def check(self, in_use: int, soft_limit: int) -> str | None:
        """``"low"`` when usage crosses HIGH, ``"recovered"`` when it falls below LOW again, else None."""
        if not self.high and in_use >= self.HIGH * soft_limit:
            self.high = True
            return "low"
        if self.high and in_use < self.LOW * soft_limit:
            self.high = False
            return "recovered"
        return None
