"""Requests without a session (the HTTP API): put bytes on the line, send BREAK, run hypervisor actions —
and the access checks every part of the hub shares.

A ``PortHub`` mixin: these methods are the hub's, kept apart because they follow rules of their own.  An
API caller has no session, so it may use the line only while nobody holds the writer lease (the one-writer
rule), the console is enabled and the device is online, and it is refused instead of paused when paced
input is backed up.  Every refusal by the access policy is audited (``access_denied``) and raised as
``Refused``; the HTTP front end maps the kind to its status.
"""

from __future__ import annotations

import asyncio
import os

from ..adapters import Action, StateReport
from ..config import PortConfig
from ..core.access import AccessPolicy, Identity, Verb
from ..core.keys import key_bytes
from ..devices.base import DeviceLink
from ..obs.audit import AuditFn
from .arbiter import WriterArbiter
from .device_input import DeviceInput
from .session import Session
from .status import PortState, RefusalKind, Refused
from .vm import ACTION_VERBS, VmControl

# Linux accepts the SysRq key within 5 s after a BREAK; leave the UART time to settle first.
SYSRQ_KEY_DELAY_S = 0.3


class LineRequests:
    # What the mixin reads; PortHub sets all of them in its __init__.
    name: str
    config: PortConfig
    access: AccessPolicy
    arbiter: WriterArbiter
    input: DeviceInput
    link: DeviceLink | None
    vm: VmControl
    state: PortState
    state_reason: str
    _audit: AuditFn

    # -- requests without a session (HTTP API) ---------------------------------------------------------
    def api_input(self, identity: Identity, data: bytes, what: str) -> None:
        """Bytes from an API call (named keys, SysRq), paced like typed input; audited by size only (input
        may be a secret).  Raises ``Refused``."""
        self._refuse_api_line_use(identity, Verb.BREAK, what)
        self._audit("api_input", port=self.name, **identity.audit_fields(), what=what, bytes=len(data))
        self.input.write(data)

    def api_keys(self, identity: Identity, names: list[str]) -> int:
        """Named keys through the port's key profile; returns the bytes sent.  Raises ``Refused``."""
        try:
            payload = b"".join(key_bytes(self.config.key_profile, name) for name in names)
        except KeyError as exc:
            raise Refused(
                RefusalKind.UNKNOWN_KEY,
                f"unknown key {str(exc.args[0])[:20]!r} for key profile {self.config.key_profile}",
            ) from None
        self.api_input(identity, payload, "send keys")
        return len(payload)

    def api_break(self, identity: Identity) -> None:
        """A serial BREAK from an API call; same rules as ``api_input``."""
        self._refuse_api_line_use(identity, Verb.BREAK, "send BREAK")
        assert self.link is not None
        if not self.link.send_break():
            raise Refused(RefusalKind.NOT_SUPPORTED, f"{self.device_text} cannot send a serial BREAK")
        self._audit("break", port=self.name, **identity.audit_fields())

    async def api_sysrq(self, identity: Identity, key: str) -> None:
        self.api_break(identity)
        await asyncio.sleep(SYSRQ_KEY_DELAY_S)
        # Checked again: a writer may have attached, or the device gone, during the pause.
        self.api_input(identity, key.encode(), "send SysRq")

    async def api_action(self, identity: Identity, action: Action) -> None:
        """A hypervisor action from the API.  Raises ``Refused`` (policy) or ``AdapterError``."""
        self._require(identity, ACTION_VERBS[action])
        await self.vm.run(action, identity)

    async def api_vm_state(self, identity: Identity) -> StateReport:
        self._require(identity, Verb.VIEW)
        if self.vm.adapter is None:
            raise Refused(RefusalKind.NOT_SUPPORTED, f"console {self.name} has no [ports.hypervisor]")
        return await self.vm.state_report()

    @property
    def device_text(self) -> str:
        """The device for people: an exec command shows only its program, never its arguments (secrets)."""
        spec = self.config.device
        if spec.argv:
            return f"exec:{os.path.basename(spec.argv[0])}"
        return spec.raw

    def _require(self, identity: Identity, verb: Verb) -> None:
        decision = self.access.decide(identity, verb, self.name)
        if not decision:
            self._denied(identity, verb, decision.reason)
            raise Refused(RefusalKind.FORBIDDEN, decision.reason)

    def _denied(self, identity: Identity, verb: Verb, reason: str, session: Session | None = None) -> None:
        self._audit(
            "access_denied",
            port=self.name,
            session=None if session is None else session.id,
            verb=str(verb),
            **identity.audit_fields(),
            result="denied",
            reason=reason,
        )

    def _refuse_api_line_use(self, identity: Identity, verb: Verb, what: str) -> None:
        """API calls without a session may use the line only while nobody holds the writer lease (the
        one-writer rule) and the device is online.  Raises ``Refused``."""
        self._require(identity, verb)  # first: without the verb, nothing of the console's state is told
        holder = self.arbiter.lease.holder
        if holder is not None:
            raise Refused(
                RefusalKind.IN_USE,
                f"{self.name} has a writer ({holder.who}); {what} from its session, or take over first",
                holder.who,
            )
        if self.state is PortState.DISABLED:
            raise Refused(RefusalKind.DISABLED, f"console {self.name} is disabled: {self.state_reason}")
        if not self.input.online:
            raise Refused(RefusalKind.OFFLINE, f"console {self.name} is {self.state}: {self.state_reason}")
        if self.input.queue_full:
            # No client to pause here: refuse instead of queueing without bound.
            raise Refused(RefusalKind.QUEUE_FULL, f"{self.name}: input queue full, try again shortly")
