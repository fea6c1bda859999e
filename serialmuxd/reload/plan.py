"""What a reload changes: the old and the new validated ``Config`` in, a ``ReloadPlan`` out (pure, no I/O).

Ports are matched by name and compared as the typed, frozen ``PortConfig`` objects the validator built, field
by field, so a key added to ``PortConfig`` later is covered without touching this module: unless it is
listed in ``LIVE_PORT_FIELDS`` (a setting ``PortHub.reconfigure`` applies in place) or ``LISTENER_FIELDS``
(the port's listeners are bound again; its sessions, which are connections already accepted, and its device
stay), a change to it rebuilds the port.  That is the safe default: a rebuild closes the port's sessions
with a notice, its device link and listeners, and starts them again from the new settings; a wrongly
"live" setting would be silently ignored.

Daemon-wide tables are compared the same way.  What the reload applies: ``[auth]``'s users file, custom
roles and OIDC group grants (the access policy and the authenticator are swapped in place), ``[tls]``'s
files (re-read on every reload, for certificate rotation), ``[alerts]``, ``daemon.log_level`` and
``log_format``, and ``daemon.allow_remote_unauthenticated`` (a rule the validator applies to the new
file).  Every other daemon-wide key that differs (``daemon.state_dir``, ``http.listen``, ``audit.file``,
tables added later, such as ``[ssh]``...) is reported as needing a restart, by key, and keeps its running
value; the rest of the reload is still applied.  One change refuses the whole reload: adding or removing
``[auth]``, because the new ports' listeners were validated for a daemon with (or without) authentication
that is not the one running.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config import AuthSettings, Config, PortConfig, TlsSettings

# Per-port settings PortHub.reconfigure applies without dropping a session.  Those read when a session
# attaches (notices, escape, client_buffer_bytes) apply to sessions that attach after the reload.
LIVE_PORT_FIELDS = frozenset(
    {
        "takeover",
        "ask_timeout_s",
        "enabled",
        "notices",
        "escape",
        "replay_bytes",
        "replay_lines",
        "slow_reader",
        "client_buffer_bytes",
        "input_rate_bytes_per_s",
        "key_profile",
        "max_sessions",
        "max_sessions_per_address",
        "writer_idle_timeout_s",
        "writer_idle_action",
        "logout_sequence",
        "group",
        "health",
        "health_patterns",
    }
)

# Per-port settings of the listeners only: the old listeners close, new ones are bound for the same hub.
# Sessions already attached keep the transport they connected with (telnet or raw, TLS or not).
LISTENER_FIELDS = frozenset({"telnet", "telnet_readonly", "raw", "telnet_tls"})

# Config fields that are not settings (where the file came from, its deprecation warnings) or that have
# their own rules below.
_NOT_SETTINGS = frozenset({"source", "warnings", "ports"})
_LIVE_AUTH_FIELDS = frozenset({"users_file", "roles", "oidc"})  # oidc: only its group_grants, see _auth
# A rule the validator applies to the new file; the log settings (structlog is configured again).
_LIVE_DAEMON_FIELDS = frozenset({"allow_remote_unauthenticated", "log_level", "log_format"})


@dataclass(frozen=True, slots=True)
class PortChange:
    name: str
    fields: tuple[str, ...]  # the PortConfig fields that differ, in declaration order


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What to do.  ``effective`` is the configuration the daemon runs afterwards: the new one, with the
    running values kept for every key in ``needs_restart``."""

    effective: Config
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rebuilt: tuple[PortChange, ...] = ()  # at least one field outside LIVE_PORT_FIELDS | LISTENER_FIELDS
    rebound: tuple[PortChange, ...] = ()  # listener fields (and maybe live ones) changed: new listeners
    updated: tuple[PortChange, ...] = ()  # only live fields changed
    unchanged: tuple[str, ...] = ()
    auth_changed: bool = False  # users file (re-read regardless), roles or group grants to swap in
    alerts_changed: bool = False
    needs_restart: tuple[tuple[str, str], ...] = ()  # (key, reason)
    refused: tuple[tuple[str, str], ...] = ()  # (key, reason): the reload must not be applied

    @property
    def port_changes(self) -> bool:
        return bool(self.added or self.removed or self.rebuilt or self.rebound or self.updated)


def changed_fields(old: Any, new: Any) -> tuple[str, ...]:
    """The fields of two instances of one dataclass that differ (by ``==``; the configs are frozen
    values)."""
    return tuple(f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name))


def classify_port(old: PortConfig, new: PortConfig) -> tuple[PortChange | None, str]:
    """(the change, or None when equal; what it takes: "unchanged", "updated", "rebound" or "rebuilt")."""
    fields = changed_fields(old, new)
    if not fields:
        return None, "unchanged"
    if any(f not in LIVE_PORT_FIELDS and f not in LISTENER_FIELDS for f in fields):
        return PortChange(new.name, fields), "rebuilt"
    return PortChange(new.name, fields), "rebound" if any(f in LISTENER_FIELDS for f in fields) else "updated"


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    old_ports = {p.name: p for p in old.ports}
    new_ports = {p.name: p for p in new.ports}
    added = tuple(name for name in new_ports if name not in old_ports)
    removed = tuple(name for name in old_ports if name not in new_ports)
    changes: dict[str, list[PortChange]] = {"rebuilt": [], "rebound": [], "updated": []}
    unchanged: list[str] = []
    for name, port in new_ports.items():
        before = old_ports.get(name)
        if before is None:
            continue
        change, action = classify_port(before, port)
        if change is None:
            unchanged.append(name)
        else:
            changes[action].append(change)

    restart: list[tuple[str, str]] = []
    refused: list[tuple[str, str]] = []
    kept: dict[str, Any] = {}  # Config field -> the running value to keep
    auth, auth_changed = _auth(old.auth, new.auth, restart, refused)
    kept["auth"] = auth
    kept["tls"] = _tls(old.tls, new.tls, restart)
    for field in dataclasses.fields(Config):
        name = field.name
        if name in _NOT_SETTINGS or name in ("auth", "tls", "alerts"):
            continue
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        live = _LIVE_DAEMON_FIELDS if name == "daemon" else frozenset()
        if dataclasses.is_dataclass(before) and dataclasses.is_dataclass(after):
            differ = changed_fields(before, after)
            stuck = [f for f in differ if f not in live]
            restart.extend((f"{name}.{f}", _restart_reason(name)) for f in stuck)
            if stuck:  # keep the running values of what cannot change, take the live ones
                kept[name] = dataclasses.replace(
                    before,
                    **{f: getattr(after, f) for f in differ if f in live},
                )
        else:
            restart.append((name, _restart_reason(name)))
            kept[name] = before
    effective = dataclasses.replace(new, **kept)
    return ReloadPlan(
        effective=effective,
        added=added,
        removed=removed,
        rebuilt=tuple(changes["rebuilt"]),
        rebound=tuple(changes["rebound"]),
        updated=tuple(changes["updated"]),
        unchanged=tuple(unchanged),
        auth_changed=auth_changed,
        alerts_changed=old.alerts != new.alerts,
        needs_restart=tuple(restart),
        refused=tuple(refused),
    )


def _restart_reason(table: str) -> str:
    what = {
        "daemon": "read once at start-up",
        "http": "the HTTP listener is set up at start-up",
        "audit": "the audit file is opened at start-up (a reload only reopens it, for log rotation)",
    }.get(table, "read once at start-up")
    return f"needs a restart ({what}); the running value is kept"


def _auth(
    old: AuthSettings | None,
    new: AuthSettings | None,
    restart: list[tuple[str, str]],
    refused: list[tuple[str, str]],
) -> tuple[AuthSettings | None, bool]:
    """The [auth] to run with, and whether the policy must be rebuilt (always, with a users file: its
    contents may have changed even when its path did not)."""
    if (old is None) != (new is None):
        verb = "adding" if old is None else "removing"
        refused.append(
            (
                "auth",
                f"{verb} [auth] needs a restart: listeners were checked for a daemon "
                f"{'with' if new is not None else 'without'} authentication; nothing was reloaded",
            )
        )
        return old, False
    if old is None or new is None:
        return None, False
    differ = changed_fields(old, new)
    stuck = [f for f in differ if f not in _LIVE_AUTH_FIELDS]
    oidc = new.oidc
    if "oidc" in differ:
        if old.oidc is None or new.oidc is None:
            stuck.append("oidc")
            oidc = old.oidc
        else:
            oidc_stuck = [f for f in changed_fields(old.oidc, new.oidc) if f != "group_grants"]
            restart.extend((f"auth.oidc.{f}", _restart_reason("auth")) for f in oidc_stuck)
            oidc = dataclasses.replace(old.oidc, group_grants=new.oidc.group_grants)
    restart.extend((f"auth.{f}", _restart_reason("auth")) for f in stuck)
    merged = dataclasses.replace(old, users_file=new.users_file, roles=new.roles, oidc=oidc)
    return merged, merged.users_file is not None or merged != old


def _tls(
    old: TlsSettings | None, new: TlsSettings | None, restart: list[tuple[str, str]]
) -> TlsSettings | None:
    if new is None:
        if old is not None:
            restart.append(("tls", "needs a restart to remove; TLS listeners keep the current certificate"))
        return old
    if old is not None and (old.client_ca_file is None) != (new.client_ca_file is None):
        restart.append(
            (
                "tls.client_ca_file",
                "needs a restart to add or remove (whether clients are asked for a certificate is set when "
                "a listener starts); the current certificate files stay in use",
            )
        )
        return old
    return new


def port_names(changes: Iterable[PortChange]) -> list[str]:
    return [change.name for change in changes]
