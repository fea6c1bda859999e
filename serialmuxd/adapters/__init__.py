"""Hypervisor adapters: NMI, reset, restart, start and power state of the machine behind a port.

The seam to the rest of the daemon is four names:

* ``check_hypervisor(table, key, problems)`` checks a port's ``[ports.hypervisor]`` TOML table with the
  configuration's own machinery (``serialmuxd.configcheck``): every problem goes into ``problems`` as
  ``(key path, reason)`` in the same words as the rest of the file, and it returns the config or None;
* ``parse_hypervisor(table, key)`` is the same returning ``(config, problems)``, for callers without a
  ``Problems`` of their own;
* ``make_adapter(config, port_name)`` builds the adapter for it;
* ``HypervisorAdapter`` is what the daemon, the escape commands and the HTTP API call.

Keys (every type): ``type`` (``qmp`` | ``command`` | ``ipmi`` | ``libvirt``), ``timeout_s`` (default 5).
``qmp``: ``socket`` (absolute path of QEMU's QMP unix socket).  ``command``: ``nmi``, ``reset``,
``restart``, ``state``, ``start``, each an argv array (no shell; ``{port}`` becomes the port name).
``ipmi``: ``host``, ``username``, ``password_file`` or ``password_env``, ``interface`` (``lanplus``),
``port`` (623), ``cipher_suite``, ``ipmitool``.  ``libvirt``: ``domain``, ``uri`` (``qemu:///system``).
Each type's keys are a schema class below; a key of another type is an unknown key here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..configcheck import (
    REQUIRED,
    CheckedTable,
    Invalid,
    Key,
    Layered,
    Problems,
    absolute_path,
    argv,
    as_table,
    check_table,
    choice,
    integer,
    key_path,
    require,
    seconds,
    string,
    text,
    unix_socket_path,
)
from .base import (
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    Action,
    AdapterError,
    AdapterErrorKind,
    HypervisorAdapter,
    HypervisorConfig,
    StateListener,
    StateReport,
    VmState,
)
from .command import CommandAdapter, CommandConfig
from .ipmi import IPMI_INTERFACES, IpmiAdapter, IpmiConfig
from .libvirt import LibvirtAdapter, LibvirtConfig
from .qmp import QmpAdapter, QmpConfig

__all__ = [
    "HYPERVISOR_TYPES",
    "Action",
    "AdapterError",
    "AdapterErrorKind",
    "CommandAdapter",
    "CommandConfig",
    "HypervisorAdapter",
    "HypervisorConfig",
    "IpmiAdapter",
    "IpmiConfig",
    "LibvirtAdapter",
    "LibvirtConfig",
    "QmpAdapter",
    "QmpConfig",
    "StateListener",
    "StateReport",
    "VmState",
    "check_hypervisor",
    "make_adapter",
    "parse_hypervisor",
]

HYPERVISOR_TYPES = ("qmp", "command", "ipmi", "libvirt")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: object) -> str:
    name = string(value)
    if not _ENV_NAME_RE.fullmatch(name):
        raise Invalid(f"must be an environment variable name, got {name!r}")
    return name


# ----------------------------------------------------------------------------------------------------
# Schemas: the keys of each type.  Names are the config dataclasses' field names.


class _Common:
    type = Key("type", choice(HYPERVISOR_TYPES))
    timeout_s = Key("timeout_s", seconds(MAX_TIMEOUT_S))


class _Qmp:
    socket = Key("socket", unix_socket_path)


class _Command:
    nmi = Key("nmi", argv)
    reset = Key("reset", argv)
    restart = Key("restart", argv)
    state = Key("state", argv)
    start = Key("start", argv)


class _Ipmi:
    host = Key("host", text)
    username = Key("username", text)
    password_file = Key("password_file", absolute_path)
    password_env = Key("password_env", _env_name)
    interface = Key("interface", choice(IPMI_INTERFACES))
    port = Key("port", integer(1, 65535))
    cipher_suite = Key("cipher_suite", integer(0, 17))  # ipmitool -C: the RMCP+ cipher suites 0..17
    ipmitool = Key("ipmitool", text)


class _Libvirt:
    uri = Key("uri", text)
    domain = Key("domain", text)


_COMMAND_KEYS = (_Command.nmi, _Command.reset, _Command.restart, _Command.state, _Command.start)
_SCHEMAS: dict[str, tuple[Key[Any], ...]] = {
    "qmp": (_Qmp.socket,),
    "command": _COMMAND_KEYS,
    "ipmi": tuple(value for value in vars(_Ipmi).values() if isinstance(value, Key)),
    "libvirt": (_Libvirt.uri, _Libvirt.domain),
}
_IPMI_PASSWORD_REFUSED = {
    "password": "not supported: keep the password out of the config; use password_file (a file only the "
    "daemon can read) or password_env (a variable of the daemon's environment)",
}
# Built-in defaults, read from the dataclasses so that each is written once.
_BUILTIN_IPMI = IpmiConfig()
_BUILTIN_LIBVIRT = LibvirtConfig()


def parse_hypervisor(table: object, key: str) -> tuple[HypervisorConfig | None, list[tuple[str, str]]]:
    """Check one ``[ports.hypervisor]`` table found at ``key`` (e.g. ``ports[0].hypervisor``).

    Returns ``(config, [])`` when it is valid, else ``(None, problems)`` with every problem found, each as
    ``(key path, reason)``: unknown keys, wrong types, a missing ``socket`` for ``qmp``, and so on.
    """
    problems = Problems()
    config = check_hypervisor(table, key, problems)
    return config, problems.items


def check_hypervisor(raw: object, path: str, problems: Problems) -> HypervisorConfig | None:
    """Check one ``[ports.hypervisor]`` table at ``path``, adding every problem to ``problems``.

    ``type`` is read first: it decides which keys the table may have.  Without a valid ``type`` only that is
    reported, since every other key would be judged against a guess.
    """
    found = Problems()  # this table's own, so that "valid" does not depend on what the caller found before
    config = _check(raw, path, found)
    for at, reason in found.items:
        problems.add(at, reason)
    return config if not found.items else None


def _check(raw: object, path: str, problems: Problems) -> HypervisorConfig | None:
    table = as_table(raw, path, problems)
    if table is None:
        return None
    if _Common.type.name not in table:
        problems.add(key_path(path, _Common.type.name), REQUIRED)
        return None
    try:
        kind = _Common.type.check(table[_Common.type.name])
    except Invalid as exc:
        problems.invalid(key_path(path, _Common.type.name), exc)
        return None
    refused = _IPMI_PASSWORD_REFUSED if kind == "ipmi" else None
    checked = check_table(
        table, path, (_Common.type, _Common.timeout_s, *_SCHEMAS[kind]), problems, refused=refused
    )
    values = Layered(checked)
    timeout_s = values.value(_Common.timeout_s, DEFAULT_TIMEOUT_S)
    if kind == "qmp":
        require(checked, [_Qmp.socket], problems)
        return QmpConfig(timeout_s=timeout_s, socket=checked.get(_Qmp.socket) or "")
    if kind == "command":
        if not any(checked.has(key) for key in _COMMAND_KEYS):
            names = ", ".join(key.name for key in _COMMAND_KEYS)
            problems.add(path, f"a command hypervisor needs at least one of {names}")
        return CommandConfig(
            timeout_s=timeout_s,
            nmi=checked.get(_Command.nmi),
            reset=checked.get(_Command.reset),
            restart=checked.get(_Command.restart),
            state=checked.get(_Command.state),
            start=checked.get(_Command.start),
        )
    if kind == "ipmi":
        return _check_ipmi(table, checked, values, timeout_s, problems)
    require(checked, [_Libvirt.domain], problems)
    return LibvirtConfig(
        timeout_s=timeout_s,
        uri=values.value(_Libvirt.uri, _BUILTIN_LIBVIRT.uri),
        domain=checked.get(_Libvirt.domain) or "",
    )


def _check_ipmi(
    table: Mapping[str, object], checked: CheckedTable, values: Layered, timeout_s: float, problems: Problems
) -> IpmiConfig:
    require(checked, [_Ipmi.host], problems)
    has_file, has_env = checked.has(_Ipmi.password_file), checked.has(_Ipmi.password_env)
    if has_file and has_env:
        problems.add(
            key_path(checked.path, _Ipmi.password_env.name), "set only one of password_file and password_env"
        )
    elif not has_file and not has_env and "password" not in table:  # a password key has its own message
        problems.add(
            checked.path, "needs password_file or password_env (never a password in the config or on argv)"
        )
    builtin = _BUILTIN_IPMI
    return IpmiConfig(
        timeout_s=timeout_s,
        host=checked.get(_Ipmi.host) or "",
        username=values.value(_Ipmi.username, builtin.username),
        password_file=checked.get(_Ipmi.password_file),
        password_env=checked.get(_Ipmi.password_env),
        interface=values.value(_Ipmi.interface, builtin.interface),
        port=values.value(_Ipmi.port, builtin.port),
        cipher_suite=checked.get(_Ipmi.cipher_suite),
        ipmitool=values.value(_Ipmi.ipmitool, builtin.ipmitool),
    )


def make_adapter(config: HypervisorConfig, port_name: str) -> HypervisorAdapter:
    """The adapter for a validated config.  Nothing is connected yet: QMP connects on ``open()``/first use."""
    if isinstance(config, QmpConfig):
        return QmpAdapter(config.socket, timeout_s=config.timeout_s)
    if isinstance(config, CommandConfig):
        return CommandAdapter(config, port_name)
    if isinstance(config, IpmiConfig):
        return IpmiAdapter(config)
    if isinstance(config, LibvirtConfig):
        return LibvirtAdapter(config)
    raise TypeError(f"no adapter for {type(config).__name__}")
