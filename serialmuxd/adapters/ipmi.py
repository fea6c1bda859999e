"""The ``ipmi`` adapter: bare metal through its BMC, by running Debian's ``ipmitool``.

IPMI's NMI is ``chassis power diag`` (the BMC pulses the host's NMI line: the OS logs it or crash-dumps);
``chassis power reset`` is the hard reset, ``chassis power soft`` the ACPI power button (the graceful
restart offered by a BMC: the OS shuts down; power it on again with ``start``), ``chassis power on``
starts and ``chassis power status`` tells "Chassis Power is on/off".

The password never appears on a command line, where any local user could read it from /proc/PID/cmdline:
``password_file`` is passed as ``-f FILE`` (ipmitool reads the file), ``password_env`` names a variable of
the daemon's environment whose value is handed to ipmitool as ``IPMI_PASSWORD`` together with ``-E``.
Why ipmitool and not a Python IPMI library: it is the tool operators already trust and debug with, it is
one ``apt-get install`` away, and a child process is easy to bound and kill.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import ClassVar

from .base import (
    Action,
    AdapterError,
    AdapterErrorKind,
    HypervisorAdapter,
    HypervisorConfig,
    StateReport,
    VmState,
)
from .command import ProcessResult, run_bounded, summarize_output

IPMI_INTERFACES = ("lanplus", "lan")

# action -> ipmitool "chassis power" verb
_VERBS: dict[Action, str] = {
    Action.NMI: "diag",
    Action.RESET: "reset",
    Action.RESTART: "soft",
    Action.START: "on",
    Action.STATE: "status",
}

_STATUS_RE = re.compile(rb"Chassis Power is (on|off)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class IpmiConfig(HypervisorConfig):
    """``type = "ipmi"``: a BMC reached over the network (RMCP+ ``lanplus`` by default)."""

    type: ClassVar[str] = "ipmi"
    host: str = ""
    username: str = ""
    password_file: str | None = None
    password_env: str | None = None
    interface: str = "lanplus"
    port: int = 623
    cipher_suite: int | None = None  # ipmitool -C; None leaves ipmitool's default
    ipmitool: str = "ipmitool"  # program name or path; looked up on PATH


class IpmiAdapter(HypervisorAdapter):
    """One BMC.  Every call is one ``ipmitool`` run, bounded by ``timeout_s`` and killed after it."""

    kind: ClassVar[str] = "ipmi"

    def __init__(self, config: IpmiConfig) -> None:
        super().__init__(f"ipmi {config.host}:{config.port}", config.timeout_s)
        self.config = config

    @property
    def actions(self) -> frozenset[Action]:
        return frozenset(_VERBS)

    def argv(self, verb: str) -> list[str]:
        """ipmitool's argv for ``chassis power VERB``.  Holds no secret, by construction."""
        config = self.config
        argv = [config.ipmitool, "-I", config.interface, "-H", config.host, "-p", str(config.port)]
        if config.username:
            argv += ["-U", config.username]
        if config.password_file is not None:
            argv += ["-f", config.password_file]
        elif config.password_env is not None:
            argv += ["-E"]
        if config.cipher_suite is not None:
            argv += ["-C", str(config.cipher_suite)]
        return [*argv, "chassis", "power", verb]

    def _environment(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if name != "IPMI_PASSWORD"}
        name = self.config.password_env
        if name is not None:
            value = os.environ.get(name)
            if value is None:
                raise self._error(
                    f"environment variable {name} (password_env) is not set in the daemon's environment",
                    AdapterErrorKind.FAILED,
                )
            env["IPMI_PASSWORD"] = value
        return env

    async def _run(self, action: Action) -> ProcessResult:
        verb = _VERBS[action]
        return await run_bounded(
            self.argv(verb),
            timeout_s=self.timeout_s,
            description=f"{self.description}: chassis power {verb}",
            env=self._environment(),
        )

    async def _do_action(self, action: Action) -> None:
        if action not in _VERBS:
            raise self._unsupported(action)
        result = await self._run(action)
        if result.returncode != 0:
            said = summarize_output(result.stderr) or summarize_output(result.stdout) or "no output"
            raise self._error(
                f"chassis power {_VERBS[action]}: ipmitool exit status {result.returncode}: {said}",
                AdapterErrorKind.REFUSED,
            )

    async def _query_state(self) -> StateReport:
        try:
            result = await self._run(Action.STATE)
        except AdapterError as exc:  # from the runner, or the missing password variable
            return StateReport(VmState.UNKNOWN, exc.detail)
        match = _STATUS_RE.search(result.stdout)
        if result.returncode != 0 or match is None:
            said = summarize_output(result.stderr) or summarize_output(result.stdout) or "no output"
            return StateReport(
                VmState.UNKNOWN, f"chassis power status: exit status {result.returncode}: {said}"
            )
        power = match.group(1).decode().lower()
        state = VmState.RUNNING if power == "on" else VmState.STOPPED
        return StateReport(state, f"chassis power is {power} (BMC {self.config.host})")
