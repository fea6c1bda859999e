"""From the configuration to the daemon's access policy and authenticator (done once at start-up).

Without ``[auth]`` the policy allows everything and no front end asks for credentials: the daemon is then
loopback-only unless the operator overrode that (the demo runs this way).  With ``[auth]`` the policy is
deny-by-default ``RoleGrants`` and every front end authenticates before it attaches a session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Config
from ..core.access import AccessPolicy
from ..core.grants import RoleGrants
from ..core.throttle import ConnectionGate
from ..obs.audit import AuditFn
from .authenticator import Authenticator
from .users import UserDirectory, load_users


@dataclass(frozen=True, slots=True)
class FrontDoor:
    """What front ends need to know about authentication."""

    authenticator: Authenticator
    anonymous: bool  # peers without credentials may go on (as the anonymous role): loopback-only setups
    login_grace_s: float
    # Connections at a login prompt, per source and in all (one gate for every listener of the daemon).
    gate: ConnectionGate = field(default_factory=ConnectionGate)


def build_access(config: Config, audit: AuditFn) -> tuple[AccessPolicy, FrontDoor | None]:
    """Raises ``ConfigError`` for a bad users file (exit 2, like a bad configuration)."""
    auth = config.auth
    if auth is None:
        return AccessPolicy(), None
    grants, directory = build_grants(config)
    # The OIDC verifier needs aiohttp and the loop: the daemon attaches it when it starts (set_oidc).
    authenticator = Authenticator(directory, audit=audit)
    return AccessPolicy(grants), FrontDoor(authenticator, auth.anonymous is not None, auth.login_grace_s)


def build_grants(config: Config) -> tuple[RoleGrants, UserDirectory]:
    """The grants of an ``[auth]`` configuration and its users file (read now); at start-up and on every
    reload.  Raises ``ConfigError`` for a bad users file."""
    auth = config.auth
    assert auth is not None
    custom = {name: verbs for name, verbs in auth.roles}
    directory = load_users(auth.users_file, custom) if auth.users_file is not None else UserDirectory((), ())
    group_grants = dict(auth.oidc.group_grants) if auth.oidc is not None else {}
    grants = RoleGrants(
        roles=custom,
        user_grants=directory.grants(),
        group_grants=group_grants,
        port_groups={port.name: port.group for port in config.ports if port.group is not None},
        anonymous=auth.anonymous,
    )
    return grants, directory
