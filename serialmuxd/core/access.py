"""Who may do which verb on which console: the one place that decides.

Theory of operation
-------------------
Every request a client can make is one ``Verb``.  Two things decide whether it is allowed, and both are
asked here, never in a front end:

* the **attach mode** of the session it comes from: a session attached read-only (a ``telnet_readonly``
  listener, a WebSocket with ``mode=ro``, later ``ssh vm1.ro@host``) may only ``VIEW``, whatever its user
  may do elsewhere; requests without a session (HTTP API calls) have no mode;
* the **grants** of the identity: who the peer is and what its roles allow on this port.  Until
  authentication exists that is ``AllowAll`` (and listeners bind loopback unless the operator explicitly
  allows otherwise, ``daemon.allow_remote_unauthenticated``).

Arbitration (who holds the writer lease right now, whether the device is online) is not access: the hub
checks it after this policy said yes.  Front ends describe the peer as an ``Identity``, pass the request to
the hub, and show the refusal text they get back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Verb(enum.StrEnum):
    VIEW = "view"  # attach and watch, read the scrollback and the console's state
    WRITE = "write"  # hold the writer lease and type (named keys from a session are typing)
    TAKE_OVER = "takeover"  # take the lease from another writer
    BREAK = "break"  # a serial BREAK, SysRq, named keys sent through the API
    NMI = "nmi"  # inject a non-maskable interrupt (hypervisor)
    RESET = "reset"  # reset / restart / start the machine (hypervisor)
    ADMIN = "admin"  # enable / disable consoles, see every session


class AttachMode(enum.StrEnum):
    INTERACTIVE = "interactive"  # asks for the writer lease (takeover policy applies)
    READ_ONLY = "read_only"  # watches only: every verb but VIEW is refused


@dataclass(frozen=True, slots=True)
class Identity:
    """A peer as the front end knows it: where it came from and, once authenticated, who it is.

    ``user`` is None for a peer without credentials (no ``[auth]``, or anonymous access); ``groups`` come
    from an identity provider (OIDC); ``method`` says how the user was authenticated (``password``,
    ``token``, ``certificate``, ``oidc``, ``session``), for the audit trail.
    """

    transport: str  # "telnet", "raw", "ws", "http", ...
    address: str  # "127.0.0.1:51234"
    user: str | None = None
    groups: frozenset[str] = frozenset()
    method: str = ""
    # Which of the user's credentials proved it, where a user has several that can be withdrawn one by one
    # (an SSH key's fingerprint): a reload that removes that one ends what it opened.  Never a secret.
    credential: str = ""

    @property
    def host(self) -> str:
        """The source address without the port: sessions are capped per source address."""
        if self.address.startswith("["):
            return self.address[1:].partition("]")[0]
        return self.address.rpartition(":")[0] or self.address

    def audit_fields(self) -> dict[str, str | None]:
        """Who and from where, as the audit trail records it (never a credential)."""
        return {"user": self.user, "source": self.address, "transport": self.transport}

    def __str__(self) -> str:
        where = f"{self.transport} {self.address}"
        return f"{self.user} ({where})" if self.user else where


class Grants(Protocol):
    """What an identity's roles allow, per port (the authentication issue supplies real ones)."""

    def allows(self, identity: Identity, verb: Verb, port: str) -> bool: ...


class AllowAll:
    """The grants while no authentication is configured (loopback-only by default)."""

    def allows(self, identity: Identity, verb: Verb, port: str) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""  # for people, when refused: says which rule refused it

    def __bool__(self) -> bool:
        return self.allowed


_ALLOWED = Decision(True)
_READ_ONLY_VERBS = frozenset({Verb.VIEW})
_VERB_WORDS = {
    Verb.VIEW: "view this console",
    Verb.WRITE: "type into this console",
    Verb.TAKE_OVER: "take over write access",
    Verb.BREAK: "send BREAK, SysRq or keys",
    Verb.NMI: "send an NMI",
    Verb.RESET: "reset, restart or start the machine",
    Verb.ADMIN: "enable or disable consoles",
}


class AccessPolicy:
    """Decides every verb for every transport; see the module docstring."""

    __slots__ = ("grants",)

    def __init__(self, grants: Grants | None = None) -> None:
        self.grants: Grants = grants if grants is not None else AllowAll()

    def decide(self, identity: Identity, verb: Verb, port: str, mode: AttachMode | None = None) -> Decision:
        if mode is AttachMode.READ_ONLY and verb not in _READ_ONLY_VERBS:
            return Decision(False, f"this session is read-only: it may not {_VERB_WORDS[verb]}")
        if not self.grants.allows(identity, verb, port):
            who = identity.user or str(identity)
            return Decision(False, f"{who} may not {_VERB_WORDS[verb]} on {port}")
        return _ALLOWED
