"""The machine behind a console: its state as sessions see it, and hypervisor actions run for them.

The adapter (QMP, libvirt, IPMI, command) does the talking; this module turns its state reports into the
notices attached sessions get ("vm1 is stopped; start it and try again"), audits every action and announces
a successful one to everyone on the console.  Whether an identity may run an action is decided by the hub's
access policy before ``run`` is called.
"""

from __future__ import annotations

from collections.abc import Callable

from ..adapters import Action, AdapterError, AdapterErrorKind, HypervisorAdapter, StateReport, VmState
from ..core.access import Identity, Verb
from ..obs.audit import AuditFn
from .notices import Notice, NoticeKind
from .status import HypervisorStatus

# The verb the access policy is asked for each action: powering on or off is as disruptive as a reset.
ACTION_VERBS = {
    Action.NMI: Verb.NMI,
    Action.RESET: Verb.RESET,
    Action.RESTART: Verb.RESET,
    Action.START: Verb.RESET,
    Action.STATE: Verb.VIEW,
}
_DONE_TEXT = {
    Action.NMI: "NMI sent",
    Action.RESET: "hard reset",
    Action.RESTART: "restart requested",
    Action.START: "start requested",
}


class VmControl:
    __slots__ = ("_audit", "_broadcast", "action_counts", "adapter", "on_action", "port")

    def __init__(
        self,
        port: str,
        adapter: HypervisorAdapter | None,
        *,
        audit: AuditFn,
        broadcast: Callable[[Notice], None],
    ) -> None:
        self.port = port
        self.adapter = adapter
        self._audit = audit
        self._broadcast = broadcast
        # (action, "ok" | "failed") -> how many ran; read by the metrics collector at scrape time.
        self.action_counts: dict[tuple[str, str], int] = {}
        # Told each action that succeeded (the console log starts a boot capture on reset and restart).
        self.on_action: Callable[[Action], None] | None = None
        if adapter is not None:
            adapter.on_state_change(self.state_changed)

    def offers(self, action: Action) -> bool:
        return self.adapter is not None and action in self.adapter.actions

    def status(self) -> HypervisorStatus | None:
        adapter = self.adapter
        if adapter is None:
            return None
        return HypervisorStatus(
            type=adapter.kind,
            actions=tuple(sorted(str(a) for a in adapter.actions)),
            state=str(adapter.current.state),
            state_reason=adapter.current.reason,
        )

    def state_changed(self, report: StateReport) -> None:
        """Adapter callback: tell everyone attached (the console itself comes back on its own when the
        device reconnects, so sessions simply stay)."""
        self._audit("vm_state", port=self.port, state=str(report.state), reason=report.reason)
        notice = self.state_notice() or Notice(
            NoticeKind.VM_STATE, f"{self.port} is {report.state}", {"state": str(report.state)}
        )
        self._broadcast(notice)

    def state_notice(self) -> Notice | None:
        if self.adapter is None:
            return None
        report = self.adapter.current
        fields = {"state": str(report.state), "reason": report.reason}
        name = self.port
        if report.state in (VmState.STOPPED, VmState.SHUTDOWN):
            return Notice(NoticeKind.VM_STATE, f"{name} is {report.state}; start it and try again", fields)
        if report.state is VmState.CRASHED:
            return Notice(
                NoticeKind.VM_STATE, f"{name} has crashed ({report.reason}); reset or restart it", fields
            )
        if report.state is VmState.PAUSED:
            return Notice(NoticeKind.VM_STATE, f"{name} is paused by the hypervisor", fields)
        if report.state is VmState.RUNNING:
            return Notice(NoticeKind.VM_STATE, f"{name} is running", fields)
        return None

    async def state_report(self) -> StateReport:
        if self.adapter is None:
            raise AdapterError(self.port, "no [ports.hypervisor]", AdapterErrorKind.UNSUPPORTED)
        return await self.adapter.state_report()

    async def run(self, action: Action, identity: Identity) -> None:
        """Run ``action`` (already allowed by the access policy); audited, announced on success.  Raises
        ``AdapterError`` (also when no adapter offers the action)."""
        adapter = self.adapter
        if adapter is None or action not in adapter.actions:
            raise AdapterError(
                self.port, f"{action} is not available for this console", AdapterErrorKind.UNSUPPORTED
            )
        try:
            await getattr(adapter, str(action))()
        except AdapterError as exc:
            self._count(action, "failed")
            self._audit(
                "vm_action",
                port=self.port,
                action=str(action),
                **identity.audit_fields(),
                result="failed",
                error=str(exc),
            )
            raise
        self._count(action, "ok")
        if self.on_action is not None and action is not Action.NMI:
            self.on_action(action)
        self._audit("vm_action", port=self.port, action=str(action), **identity.audit_fields(), result="ok")
        self._broadcast(
            Notice(
                NoticeKind.VM_ACTION,
                f"{self.port}: {_DONE_TEXT[action]} by {identity}",
                {"action": str(action), "by": str(identity)},
            )
        )

    def _count(self, action: Action, result: str) -> None:
        key = (str(action), result)
        self.action_counts[key] = self.action_counts.get(key, 0) + 1
