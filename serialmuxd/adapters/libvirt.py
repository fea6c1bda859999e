"""The ``libvirt`` adapter: a domain managed by libvirt, through libvirt-python (optional extra).

libvirt-python ships no wheels (it builds against ``libvirt-dev``), so it is imported only when a port
actually uses this adapter, and its absence is an ``AdapterError`` naming the fix, not an import failure of
the daemon.  The libvirt API blocks, so every call runs on one worker thread per adapter; one thread keeps
a hung libvirtd from eating a thread per retry (later calls queue behind it and time out), and the caller
still gets its answer within ``timeout_s`` because the wait, not the thread, is bounded.

Mapping: ``nmi`` = ``injectNMI``, ``reset`` = ``reset`` (hard), ``restart`` = ``reboot`` (graceful: ACPI
or guest agent, libvirt's choice; under QEMU libvirt powers the guest off and boots it again), ``start`` =
``create`` (shut off) or ``resume`` (paused), ``state`` = ``state()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .base import (
    Action,
    AdapterError,
    AdapterErrorKind,
    HypervisorAdapter,
    HypervisorConfig,
    StateReport,
    VmState,
)

_T = TypeVar("_T")

# virDomainState -> our state (libvirt's numbering is part of its stable ABI)
_DOMAIN_STATES: dict[int, tuple[VmState, str]] = {
    0: (VmState.UNKNOWN, "no state"),
    1: (VmState.RUNNING, "running"),
    2: (VmState.RUNNING, "blocked on a resource"),
    3: (VmState.PAUSED, "paused"),
    4: (VmState.RUNNING, "being shut down"),
    5: (VmState.STOPPED, "shut off"),
    6: (VmState.CRASHED, "crashed"),
    7: (VmState.PAUSED, "suspended by guest power management"),
}


@dataclass(frozen=True, slots=True)
class LibvirtConfig(HypervisorConfig):
    """``type = "libvirt"``: ``domain`` on the libvirt connection ``uri``."""

    type: ClassVar[str] = "libvirt"
    uri: str = "qemu:///system"
    domain: str = ""


class LibvirtAdapter(HypervisorAdapter):
    """One libvirt domain.  Polling only: ``state`` asks libvirt; no event subscription."""

    kind: ClassVar[str] = "libvirt"

    def __init__(self, config: LibvirtConfig) -> None:
        super().__init__(f"libvirt {config.uri} domain {config.domain}", config.timeout_s)
        self.config = config
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="serialmuxd-libvirt")
        self._module: Any = None
        self._connection: Any = None

    @property
    def actions(self) -> frozenset[Action]:
        return frozenset(Action)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._call("close", lambda: connection.close())
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- plumbing ---------------------------------------------------------------------------------------

    def _libvirt(self) -> Any:
        if self._module is None:
            try:
                module = importlib.import_module("libvirt")
            except ImportError:
                raise self._error(
                    "libvirt-python is not installed (apt-get install libvirt-dev pkg-config, then "
                    "pip install libvirt-python)",
                    AdapterErrorKind.UNAVAILABLE,
                ) from None
            # libvirt prints every error to stderr by default; ours go into AdapterError messages instead.
            module.registerErrorHandler(lambda _context, _error: None, None)
            self._module = module
        return self._module

    def _domain(self) -> Any:
        """Runs on the worker thread: the domain, (re)opening the connection when needed."""
        libvirt = self._libvirt()
        if self._connection is None or not self._connection.isAlive():
            self._connection = libvirt.open(self.config.uri)
        return self._connection.lookupByName(self.config.domain)

    async def _call(self, what: str, function: Callable[[], _T]) -> _T:
        libvirt = self._libvirt()
        future = asyncio.get_running_loop().run_in_executor(self._executor, function)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError:
            raise self._error(
                f"no reply within {self.timeout_s:g} s to {what}", AdapterErrorKind.TIMEOUT
            ) from None
        except libvirt.libvirtError as exc:
            message = exc.get_error_message() or str(exc)
            raise self._error(f"{what} failed: {message}", _error_kind(libvirt, exc)) from None

    # -- actions and state ------------------------------------------------------------------------------

    async def _do_action(self, action: Action) -> None:
        def run() -> None:
            domain = self._domain()
            if action is Action.NMI:
                domain.injectNMI(0)
            elif action is Action.RESET:
                domain.reset(0)
            elif action is Action.RESTART:
                domain.reboot(0)
            elif action is Action.START:
                if domain.state()[0] == 3:
                    domain.resume()
                elif not domain.isActive():
                    domain.create()
            else:
                raise self._unsupported(action)

        await self._call(str(action), run)

    async def _query_state(self) -> StateReport:
        def run() -> tuple[int, int]:
            state, reason = self._domain().state()
            return int(state), int(reason)

        try:
            code, reason = await self._call("state", run)
        except AdapterError as exc:
            return StateReport(VmState.UNKNOWN, exc.detail)
        state, words = _DOMAIN_STATES.get(code, (VmState.UNKNOWN, f"libvirt state {code}"))
        return StateReport(state, f"{words} (libvirt reason code {reason})")


def _error_kind(libvirt: Any, exc: Any) -> AdapterErrorKind:
    code = exc.get_error_code()
    if code in (
        getattr(libvirt, "VIR_ERR_NO_SUPPORT", -1),
        getattr(libvirt, "VIR_ERR_OPERATION_UNSUPPORTED", -1),
    ):
        return AdapterErrorKind.UNSUPPORTED
    if code in (getattr(libvirt, "VIR_ERR_NO_DOMAIN", -1), getattr(libvirt, "VIR_ERR_NO_CONNECT", -1)):
        return AdapterErrorKind.UNAVAILABLE
    return AdapterErrorKind.REFUSED
