"""Per-port policy choices as enums: the config validator produces them, the pure core acts on them.

They live here, not in ``config``, so that ``core/`` stays importable without the config module (which pulls
in the adapters, sockets and subprocesses).
"""

from __future__ import annotations

import enum


class TakeoverPolicy(enum.StrEnum):
    """What happens to the current writer when another session asks for the write lease."""

    EVICT = "evict"  # old writer is detached (default; what Azure does)
    DEMOTE = "demote"  # old writer stays attached read-only (conserver's spy)
    REFUSE = "refuse"  # newcomer is told who writes and attached read-only (virsh without --force)
    # the writer is asked in-band; silence within ask_timeout_s hands over, an answer of no refuses
    ASK = "ask"


class SlowReaderPolicy(enum.StrEnum):
    """What happens to a session whose client cannot keep up with the guest."""

    RESYNC = "resync"  # skip ahead from the ring and tell the client how many bytes it missed
    CLOSE = "close"  # close the session, naming the offset it reached so it can resume


class NoticePolicy(enum.StrEnum):
    """Whether serialmuxd's own messages are written into a session's byte stream."""

    INBAND = "inband"  # "[serialmuxd] ..." lines between guest bytes (people at a terminal)
    NONE = "none"  # guest bytes only (programs reading a raw port: binary protocols, log collectors)
