"""Who may do what on which port: the seam the authentication issue fills in.

Until authentication exists every peer may do everything; listeners bind loopback unless the operator
explicitly allows otherwise (``daemon.allow_remote_unauthenticated``).  Front ends never decide access
themselves: they describe the peer as an ``Identity`` and the hub asks the ``AccessPolicy``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Verb(enum.StrEnum):
    VIEW = "view"  # attach and watch
    WRITE = "write"  # hold the writer lease (interactive attach)
    TAKE_OVER = "take_over"  # take the lease from another writer
    BREAK = "break"  # send a serial BREAK
    NMI = "nmi"  # inject a non-maskable interrupt (hypervisor)
    POWER = "power"  # reset / restart / start the machine (hypervisor)


@dataclass(frozen=True, slots=True)
class Identity:
    """A peer as the front end knows it.  ``user`` is None until authentication exists."""

    transport: str  # "telnet", "raw", "ws", ...
    address: str  # "127.0.0.1:51234"
    user: str | None = None

    def __str__(self) -> str:
        where = f"{self.transport} {self.address}"
        return f"{self.user} ({where})" if self.user else where


class AccessPolicy(Protocol):
    def allows(self, identity: Identity, verb: Verb, port: str) -> bool: ...


class AllowAll:
    """The policy while no authentication is configured (loopback-only by default)."""

    def allows(self, identity: Identity, verb: Verb, port: str) -> bool:
        return True
