"""What front ends may know about a console: typed snapshots and refusals, never the hub's internals.

The HTTP API serialises ``PortStatus``; the scrollback endpoint gets a ``ScrollbackSlice``.  Requests a
console refuses raise ``Refused`` with a ``RefusalKind``; each front end maps the kind to its own vocabulary
(HTTP status and error code, a telnet line), so the hub knows nothing of HTTP.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PortState(enum.StrEnum):
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"
    DISABLED = "disabled"


class RefusalKind(enum.StrEnum):
    FORBIDDEN = "forbidden"  # the access policy said no
    IN_USE = "in_use"  # someone holds the writer lease
    DISABLED = "disabled"  # the console is disabled
    OFFLINE = "offline"  # the device is not connected
    QUEUE_FULL = "queue_full"  # paced input is backed up; try again shortly
    NOT_SUPPORTED = "not_supported"  # the device or the hypervisor cannot do it
    UNKNOWN_KEY = "unknown_key"  # a named key the port's key profile does not have
    LIMIT = "limit"  # too many sessions


class Refused(Exception):
    """A console refused a request; ``str()`` is a sentence for people, ``writer`` who holds the lease."""

    def __init__(self, kind: RefusalKind, message: str, writer: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.writer = writer


@dataclass(frozen=True, slots=True)
class WriterStatus:
    who: str
    since: float  # wall clock


@dataclass(frozen=True, slots=True)
class HypervisorStatus:
    type: str
    actions: tuple[str, ...]
    state: str
    state_reason: str


@dataclass(frozen=True, slots=True)
class ScrollbackStatus:
    start: int  # oldest offset the scrollback serves (the ring's, or a restart's persisted history)
    end: int  # offset of the next guest byte
    capacity: int


@dataclass(frozen=True, slots=True)
class PortStatus:
    name: str
    group: str | None
    state: PortState
    state_reason: str
    state_since: float
    device: str  # for people: an exec command shows only its program
    writer: WriterStatus | None
    viewers: int
    sessions: int
    scrollback: ScrollbackStatus
    bytes_from_device: int
    bytes_to_device: int
    bytes_missed: int
    takeovers: int
    device_reconnects: int
    key_profile: str
    hypervisor: HypervisorStatus | None


@dataclass(frozen=True, slots=True)
class ScrollbackSlice:
    data: bytes
    offset: int  # offset of data[0]
    start: int  # the ring's oldest offset at the time of the read
    end: int  # the ring's end at the time of the read


@dataclass(frozen=True, slots=True)
class RecordingSlice:
    """Scrollback with the time each chunk of it arrived (the recording export)."""

    scrollback: ScrollbackSlice
    # (offset, wall-clock time) of each chunk of scrollback.data, in order, the first at its offset; bytes
    # older than timed_from had their times dropped and carry the oldest known time.
    segments: tuple[tuple[int, float], ...]
    timed_from: int
    window: tuple[int, int] | None  # (cols, rows) the writer's terminal last sent, if any
