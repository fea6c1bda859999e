"""One console port and its sessions.  ``PortHub`` (port.py) composes the parts:

* ``session``       — ``Session`` (who attached, how, its cursor and throttles) and the ``SessionSink``
  protocol front ends implement;
* ``arbiter``       — the writer lease applied to sessions: takeovers (evict, demote, refuse, ask) and
  what each side is told;
* ``device_input``  — input for the device: pacing, back-pressure to the writer;
* ``vm``            — the machine behind the port: state notices, hypervisor actions;
* ``notices``       — the vocabulary of in-band messages;
* ``status``        — typed snapshots and refusals for front ends.
"""

from __future__ import annotations

from ..core.access import AttachMode
from ..obs.audit import AuditFn
from .api import SYSRQ_KEY_DELAY_S
from .notices import Hint, Notice, NoticeKind, notice_line
from .port import PortHub
from .session import EndReason, Role, Session, SessionSink
from .status import (
    HypervisorStatus,
    PortState,
    PortStatus,
    RefusalKind,
    Refused,
    ScrollbackSlice,
    ScrollbackStatus,
    WriterStatus,
)

__all__ = [
    "SYSRQ_KEY_DELAY_S",
    "AttachMode",
    "AuditFn",
    "EndReason",
    "Hint",
    "HypervisorStatus",
    "Notice",
    "NoticeKind",
    "PortHub",
    "PortState",
    "PortStatus",
    "RefusalKind",
    "Refused",
    "Role",
    "ScrollbackSlice",
    "ScrollbackStatus",
    "Session",
    "SessionSink",
    "WriterStatus",
    "notice_line",
]
