"""Roles and grants: which verbs an identity may use on which console.

Theory of operation
-------------------
A **role** is a set of verbs.  Three are built in, after the model service (Azure's Serial Console allows
the console to a VM's contributors):

* ``viewer``   — attach read-only, read the scrollback and the console's state;
* ``operator`` — viewer + type, take over, BREAK/SysRq/keys, NMI, reset/restart/start;
* ``admin``    — operator + enable/disable and seeing every session.

``[auth.roles]`` may define more from the same verbs (``auditor = ["view"]``).

A **grant** gives one role on some consoles: ``{ role = "operator", ports = ["vm*", "group:web"] }``.
``ports`` holds console names, shell-style patterns (``fnmatch``: ``*``, ``?``, ``[…]``, case-sensitive)
or ``group:NAME`` for every console whose ``group`` is NAME.  A user's verbs on a console are the union of
the roles of every grant that matches it: their own grants (users file, tokens) and those of their
identity-provider groups (``[auth.oidc] group_grants``).  Nothing matches: nothing allowed (deny by default).

Host-wide actions (the global console switch) are asked for with the scope ``*``: only a grant whose
``ports`` contains ``*`` itself covers them, so an admin of ``vm*`` manages those consoles, not the host.

An identity without a user (no credentials) gets the ``anonymous`` role on every console when one is
configured; the config validator allows that only when every listener is on loopback.

Pure: no I/O, no clock; the grants are handed in, already validated.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .access import Identity, Verb

GROUP_PREFIX = "group:"
HOST_SCOPE = "*"

_OPERATOR = frozenset({Verb.VIEW, Verb.WRITE, Verb.TAKE_OVER, Verb.BREAK, Verb.NMI, Verb.RESET})
BUILTIN_ROLES: Mapping[str, frozenset[Verb]] = {
    "viewer": frozenset({Verb.VIEW}),
    "operator": _OPERATOR,
    "admin": _OPERATOR | {Verb.ADMIN},
}


@dataclass(frozen=True, slots=True)
class Grant:
    role: str
    ports: tuple[str, ...]  # names, shell-style patterns, group:NAME, or * (every console and the host)

    def covers(self, port: str, group: str | None) -> bool:
        for pattern in self.ports:
            if port == HOST_SCOPE:
                if pattern == HOST_SCOPE:
                    return True
            elif pattern.startswith(GROUP_PREFIX):
                if group is not None and pattern[len(GROUP_PREFIX) :] == group:
                    return True
            elif fnmatch.fnmatchcase(port, pattern):
                return True
        return False


class RoleGrants:
    """The ``Grants`` of ``core.access`` for configured users, tokens, groups and anonymous access."""

    __slots__ = ("_anonymous", "_by_group", "_by_user", "_port_groups", "_roles")

    def __init__(
        self,
        *,
        roles: Mapping[str, frozenset[Verb]],
        user_grants: Mapping[str, Iterable[Grant]],
        group_grants: Mapping[str, Iterable[Grant]] | None = None,
        port_groups: Mapping[str, str] | None = None,
        anonymous: str | None = None,
    ) -> None:
        self._roles = {**BUILTIN_ROLES, **roles}
        self._by_user = {name: tuple(grants) for name, grants in user_grants.items()}
        self._by_group = {name: tuple(grants) for name, grants in (group_grants or {}).items()}
        self._port_groups = dict(port_groups or {})
        self._anonymous = anonymous
        for grant in (*_flatten(self._by_user.values()), *_flatten(self._by_group.values())):
            if grant.role not in self._roles:
                raise ValueError(f"grant names unknown role {grant.role!r}")
        if anonymous is not None and anonymous not in self._roles:
            raise ValueError(f"anonymous names unknown role {anonymous!r}")

    def verbs(self, identity: Identity, port: str) -> frozenset[Verb]:
        """Every verb ``identity`` may use on ``port`` (or, for ``*``, host-wide)."""
        if identity.user is None:
            if self._anonymous is None:
                return frozenset()
            return self._roles[self._anonymous]
        group = self._port_groups.get(port)
        allowed: set[Verb] = set()
        grants = [*self._by_user.get(identity.user, ())]
        for name in identity.groups:
            grants.extend(self._by_group.get(name, ()))
        for grant in grants:
            if grant.covers(port, group):
                allowed |= self._roles[grant.role]
        return frozenset(allowed)

    def allows(self, identity: Identity, verb: Verb, port: str) -> bool:
        return verb in self.verbs(identity, port)


def _flatten(groups: Iterable[tuple[Grant, ...]]) -> list[Grant]:
    return [grant for grants in groups for grant in grants]
