"""The narrow surface front ends use: ``ConsoleControl`` (the daemon) and ``Console`` (one port).

Front ends (telnet listeners, the HTTP app, later SSH) create sessions and turn requests into calls on these
two protocols; they never see the daemon, a hub's lease, ring or session table.  Everything they may learn
comes back typed (``PortStatus``, ``ScrollbackSlice``, ``Refused``), and every call that acts decides
access in the hub's policy, with the caller's ``Identity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .adapters import Action, StateReport
from .auth.setup import FrontDoor
from .config import PortConfig
from .core.access import AttachMode, Identity
from .hub.session import Session, SessionSink
from .hub.status import PortStatus, RecordingSlice, ScrollbackSlice


class Console(Protocol):
    """One console port as a front end sees it (``hub.PortHub`` implements it)."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> PortConfig: ...

    @property
    def stream_end(self) -> int: ...

    def status(self) -> PortStatus: ...

    def scrollback_bounds(self) -> tuple[int, int]: ...

    def scrollback(self, identity: Identity, start: int | None, limit: int) -> ScrollbackSlice: ...

    def recording(self, identity: Identity, start: int | None, end: int | None) -> RecordingSlice: ...

    def attach(
        self,
        sink: SessionSink,
        identity: Identity,
        mode: AttachMode,
        *,
        from_offset: int | None = None,
        force: bool = False,
    ) -> Session | None: ...

    def api_break(self, identity: Identity) -> None: ...

    async def api_sysrq(self, identity: Identity, key: str) -> None: ...

    def api_keys(self, identity: Identity, names: list[str]) -> int: ...

    async def api_action(self, identity: Identity, action: Action) -> None: ...

    async def api_vm_state(self, identity: Identity) -> StateReport: ...


@dataclass(frozen=True, slots=True)
class ConsoleSwitch:
    """The host-wide switch (Azure's ``disableConsole``)."""

    enabled: bool
    reason: str


class ConsoleControl(Protocol):
    """The daemon as front ends see it (``daemon.Daemon`` implements it)."""

    def consoles(self, identity: Identity) -> Sequence[Console]:
        """The consoles ``identity`` may view."""

    def console(self, name: str, identity: Identity) -> Console | None:
        """None for an unknown console and for one ``identity`` may not view alike (no name probing)."""

    @property
    def authentication(self) -> FrontDoor | None:
        """None without ``[auth]``: front ends then ask for no credentials."""

    def console_switch(self) -> ConsoleSwitch: ...

    async def set_port_enabled(self, identity: Identity, name: str, enabled: bool, reason: str) -> None:
        """Raises ``hub.Refused`` when the identity may not."""

    async def set_console_enabled(self, identity: Identity, enabled: bool, reason: str) -> None:
        """Raises ``hub.Refused`` when the identity may not."""
