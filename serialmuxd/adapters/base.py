"""What every hypervisor adapter offers, the errors it raises and the config fields all adapters share.

An adapter acts on the *machine* behind a port (NMI, reset, restart, start, power state); it never touches
the console bytes.  Four properties hold for every adapter, so callers (in-band escape commands, the HTTP
API, the console page) need no per-type code:

* **Bounded.**  Every call finishes within the adapter's ``timeout_s`` (plus a small margin for killing a
  child process).  A hypervisor that does not answer costs the caller one ``AdapterError`` whose message
  says what was asked, of whom, and how long we waited: ``qmp /run/vm1/qmp.sock: no reply within 5.0 s to
  inject-nmi``.
* **Actions raise, state reports.**  ``nmi``/``reset``/``restart``/``start`` raise ``AdapterError`` when the
  action was not carried out.  ``state``/``state_report`` never raise for an unreachable or failing
  hypervisor: "QEMU is gone" *is* the answer (``stopped``), and the reason says why, which is what the
  console shows ("vm1 is stopped; start it and try again").
* **Change reports.**  ``on_state_change`` listeners hear every change of ``VmState``.  Event-driven
  adapters (QMP) report changes as they happen; polling ones (command, ipmi) report what their ``state``
  calls observe.
* **Errors are ours, not the client's.**  ``AdapterError`` is a ``LocalError``: its message may name paths
  and hosts and goes to the operator's log and audit trail.  Front ends show clients only ``kind`` (a short,
  fixed vocabulary), never the message.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import structlog

from ..errors import LocalError

log = structlog.get_logger("serialmuxd.adapters")

DEFAULT_TIMEOUT_S = 5.0
MAX_TIMEOUT_S = 300.0


class VmState(enum.StrEnum):
    """The machine's power state as far as the hypervisor can tell."""

    RUNNING = "running"
    PAUSED = "paused"  # vCPUs stopped by the hypervisor (QMP stop, -S, prelaunch, migration, I/O error)
    SHUTDOWN = "shutdown"  # the guest powered off but the VM process is still there (QEMU -no-shutdown)
    STOPPED = "stopped"  # no VM process: QEMU not running, domain shut off, chassis power off
    CRASHED = (
        "crashed"  # the hypervisor saw the guest panic (pvpanic, libvirt "crashed", QEMU internal-error)
    )
    UNKNOWN = "unknown"  # the hypervisor did not answer, or answered something we cannot map


class Action(enum.StrEnum):
    """The verbs an adapter may offer; ``HypervisorAdapter.actions`` says which ones it does."""

    NMI = "nmi"
    RESET = "reset"
    RESTART = "restart"
    START = "start"
    STATE = "state"


class AdapterErrorKind(enum.StrEnum):
    """Why an action failed, in words a front end may show a client (the message itself stays local)."""

    TIMEOUT = "timeout"  # the hypervisor did not answer in time
    UNAVAILABLE = "unavailable"  # cannot reach the hypervisor (VM stopped, socket missing, no BMC)
    REFUSED = "refused"  # the hypervisor answered with an error
    UNSUPPORTED = "unsupported"  # this adapter (or its configuration) does not offer the action
    FAILED = "failed"  # anything else: the helper program failed, the reply made no sense


class AdapterError(LocalError):
    """An action on a VM was not carried out.  ``str()`` is ``"<adapter description>: <detail>"``."""

    def __init__(
        self, description: str, detail: str, kind: AdapterErrorKind = AdapterErrorKind.FAILED
    ) -> None:
        self.description = description
        self.detail = detail
        self.kind = kind
        super().__init__(f"{description}: {detail}")


@dataclass(frozen=True, slots=True)
class StateReport:
    """A state and the reason, for people: ``stopped`` / ``no QMP socket at /run/vm1/qmp.sock``."""

    state: VmState
    reason: str


StateListener = Callable[[StateReport], None]


class HypervisorAdapter(abc.ABC):
    """One VM's power and NMI controls.  Subclasses implement the ``_do_*`` hooks they support.

    Theory of operation: the public methods are the contract (bounded, clear errors, state reports); the
    hooks do the talking.  ``_set_state`` is the single place that records a state and tells listeners, and
    only when the state changes, so a VM that stays stopped for an hour costs listeners one report.
    """

    #: ``type`` as written in the config (``qmp``, ``command``, ...).
    kind: ClassVar[str] = ""
    #: ``on_reset`` listeners hear every reset of the machine (QMP's RESET event), whoever caused it.
    reports_resets: ClassVar[bool] = False

    def __init__(self, description: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._description = description
        self.timeout_s = timeout_s
        self._listeners: list[StateListener] = []
        self._reset_listeners: list[Callable[[], None]] = []
        self._current = StateReport(VmState.UNKNOWN, "not asked yet")

    # -- facts ------------------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        """Who we talk to, for messages and logs: ``qmp /run/vm1/qmp.sock``, ``ipmi bmc1.example:623``."""
        return self._description

    @property
    @abc.abstractmethod
    def actions(self) -> frozenset[Action]:
        """The actions this adapter can perform as configured (front ends hide the others)."""

    @property
    def current(self) -> StateReport:
        """The last state seen, without asking the hypervisor (event-driven adapters keep it fresh)."""
        return self._current

    # -- actions ----------------------------------------------------------------------------------------

    async def nmi(self) -> None:
        """Inject a non-maskable interrupt: the guest kernel logs it, or panics/crash-dumps if set up to."""
        await self._do_action(Action.NMI)

    async def reset(self) -> None:
        """Hard reset, like the reset button: the guest gets no chance to shut down."""
        await self._do_action(Action.RESET)

    async def restart(self) -> None:
        """Graceful restart: ask the guest to shut down or reboot (ACPI power button, BMC soft off)."""
        await self._do_action(Action.RESTART)

    async def start(self) -> None:
        """Power on / resume a paused VM, where the hypervisor offers it."""
        await self._do_action(Action.START)

    async def state(self) -> VmState:
        """Ask the hypervisor for the power state now (bounded; never raises, see ``state_report``)."""
        return (await self.state_report()).state

    async def state_report(self) -> StateReport:
        """Ask the hypervisor for the power state now, with the reason.  Also updates ``current``."""
        report = await self._query_state()
        self._set_state(report)
        return report

    async def open(self) -> None:  # noqa: B027 - optional hook: most adapters hold nothing open
        """Start background work now (QMP's connection and event stream); actions also start it lazily."""

    async def close(self) -> None:  # noqa: B027 - optional hook: most adapters hold nothing open
        """Release connections and background tasks; the adapter is unusable afterwards."""

    # -- state change listeners -------------------------------------------------------------------------

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(report)`` on every change of state; returns a function that unregisters it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def on_reset(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever the hypervisor reports the machine was reset, whoever did it (the
        guest's own reboot too): QMP's ``RESET`` event.  Adapters without such events never call it."""
        self._reset_listeners.append(listener)

    def _machine_reset(self) -> None:
        for listener in list(self._reset_listeners):
            try:
                listener()
            except Exception:
                log.exception("reset listener failed", adapter=self._description)

    def _set_state(self, report: StateReport) -> None:
        previous = self._current
        self._current = report
        if report.state == previous.state:
            return
        log.info("vm state changed", adapter=self._description, state=str(report.state), reason=report.reason)
        for listener in list(self._listeners):
            try:
                listener(report)
            except Exception:
                # A broken listener must not stop the others or the adapter's own bookkeeping.
                log.exception("state listener failed", adapter=self._description, state=str(report.state))

    # -- hooks ------------------------------------------------------------------------------------------

    async def _do_action(self, action: Action) -> None:
        raise self._unsupported(action)

    @abc.abstractmethod
    async def _query_state(self) -> StateReport:
        """Return the state now; report trouble as ``UNKNOWN``/``STOPPED`` with a reason, never raise."""

    def _unsupported(self, action: Action) -> AdapterError:
        return AdapterError(
            self._description, f"{action} is not available with this adapter", AdapterErrorKind.UNSUPPORTED
        )

    def _error(self, detail: str, kind: AdapterErrorKind = AdapterErrorKind.FAILED) -> AdapterError:
        return AdapterError(self._description, detail, kind)


# ----------------------------------------------------------------------------------------------------
# Configuration shared by all adapter types.  The daemon's config.py calls ``check_hypervisor`` (in the
# package ``__init__``) for each port's ``[ports.hypervisor]`` table; it checks with the same machinery as
# the rest of the configuration (``serialmuxd.configcheck``), so its messages read the same.


@dataclass(frozen=True, slots=True)
class HypervisorConfig:
    """A validated ``[ports.hypervisor]`` table.  One subclass per ``type``, each adding its own keys."""

    type: ClassVar[str] = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
