"""Hypervisor adapters: NMI, reset, restart, start and power state of the machine behind a port.

The seam to the rest of the daemon is three names:

* ``parse_hypervisor(table, key)`` validates a port's ``[ports.hypervisor]`` TOML table and returns the
  config plus every problem as ``(key path, reason)`` (the format of ``serialmuxd check-config``);
* ``make_adapter(config, port_name)`` builds the adapter for it;
* ``HypervisorAdapter`` is what the daemon, the escape commands and the HTTP API call.

Keys (every type): ``type`` (``qmp`` | ``command`` | ``ipmi`` | ``libvirt``), ``timeout_s`` (default 5).
``qmp``: ``socket`` (absolute path of QEMU's QMP unix socket).  ``command``: ``nmi``, ``reset``,
``restart``, ``state``, ``start``, each an argv array (no shell; ``{port}`` becomes the port name).
``ipmi``: ``host``, ``username``, ``password_file`` or ``password_env``, ``interface`` (``lanplus``),
``port`` (623), ``cipher_suite``, ``ipmitool``.  ``libvirt``: ``domain``, ``uri`` (``qemu:///system``).
"""

from __future__ import annotations

import re

from .base import (
    DEFAULT_TIMEOUT_S,
    Action,
    AdapterError,
    AdapterErrorKind,
    HypervisorAdapter,
    HypervisorConfig,
    StateListener,
    StateReport,
    TableReader,
    VmState,
    describe_value,
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
    "make_adapter",
    "parse_hypervisor",
]

HYPERVISOR_TYPES = ("qmp", "command", "ipmi", "libvirt")
_COMMAND_ACTIONS = ("nmi", "reset", "restart", "state", "start")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_hypervisor(table: object, key: str) -> tuple[HypervisorConfig | None, list[tuple[str, str]]]:
    """Validate one ``[ports.hypervisor]`` table found at ``key`` (e.g. ``ports[0].hypervisor``).

    Returns ``(config, [])`` when it is valid, else ``(None, problems)`` with every problem found, each as
    ``(key path, reason)``: unknown keys, wrong types, a missing ``socket`` for ``qmp``, and so on.
    """
    if not isinstance(table, dict):
        return None, [(key, f"expected a table, {describe_value(table)}")]
    reader = TableReader(table, key)
    kind = reader.take_string("type", required=True)
    if kind is None:
        return None, reader.problems
    if kind not in HYPERVISOR_TYPES:
        listing = ", ".join(repr(name) for name in HYPERVISOR_TYPES)
        return None, [(reader.path("type"), f"must be one of {listing}, got {kind!r}")]
    timeout_s = reader.take_seconds("timeout_s", DEFAULT_TIMEOUT_S)
    config: HypervisorConfig
    if kind == "qmp":
        socket = reader.take_absolute_path("socket", required=True, unix_socket=True)
        config = QmpConfig(timeout_s=timeout_s, socket=socket or "")
    elif kind == "command":
        argvs = {name: reader.take_argv(name) for name in _COMMAND_ACTIONS}
        if all(name not in table for name in _COMMAND_ACTIONS):
            reader.problem(None, f"a command hypervisor needs at least one of {', '.join(_COMMAND_ACTIONS)}")
        config = CommandConfig(timeout_s=timeout_s, **argvs)
    elif kind == "ipmi":
        config = _parse_ipmi(reader, timeout_s)
    else:
        config = LibvirtConfig(
            timeout_s=timeout_s,
            uri=reader.take_string("uri", default="qemu:///system") or "",
            domain=reader.take_string("domain", required=True) or "",
        )
    reader.finish()
    return (config if reader.ok else None), reader.problems


def _parse_ipmi(reader: TableReader, timeout_s: float) -> IpmiConfig:
    reader.reject(
        "password",
        "not supported: keep the password out of the config; use password_file (a file only the daemon "
        "can read) or password_env (a variable of the daemon's environment)",
    )
    host = reader.take_string("host", required=True) or ""
    username = reader.take_string("username", default="") or ""
    password_file = reader.take_absolute_path("password_file")
    password_env = reader.take_string("password_env")
    if password_env is not None and not _ENV_NAME_RE.fullmatch(password_env):
        reader.problem("password_env", f"must be an environment variable name, got {password_env!r}")
    if password_file is not None and password_env is not None:
        reader.problem("password_env", "set only one of password_file and password_env")
    elif password_file is None and password_env is None and reader.ok:
        reader.problem(
            None, "needs password_file or password_env (never a password in the config or on argv)"
        )
    return IpmiConfig(
        timeout_s=timeout_s,
        host=host,
        username=username,
        password_file=password_file,
        password_env=password_env,
        interface=reader.take_choice("interface", IPMI_INTERFACES, "lanplus"),
        port=reader.take_integer("port", 1, 65535, 623),
        cipher_suite=reader.take_integer("cipher_suite", 0, 17, 3) if reader.has("cipher_suite") else None,
        ipmitool=reader.take_string("ipmitool", default="ipmitool") or "ipmitool",
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
