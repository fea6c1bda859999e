"""Configuration: TOML in, a validated, frozen ``Config`` out.

Validation collects *every* problem before failing so that ``serialmuxd check-config`` can show them all at
once, each as ``FILE: key.path: reason`` (see ``errors.ConfigError``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class TakeoverPolicy(enum.StrEnum):
    """What happens to the current writer when another session asks for the write lease."""

    EVICT = "evict"  # old writer is detached (default; what Azure does)
    DEMOTE = "demote"  # old writer stays attached read-only (conserver's spy)
    REFUSE = "refuse"  # newcomer is told who writes and attached read-only (virsh without --force)


class SlowReaderPolicy(enum.StrEnum):
    """What happens to a session whose client cannot keep up with the guest."""

    RESYNC = "resync"  # skip ahead from the ring and tell the client how many bytes it missed
    CLOSE = "close"  # close the session, naming the offset it reached so it can resume


class DeviceKind(enum.StrEnum):
    TTY = "tty"
    UNIX = "unix"
    TCP = "tcp"
    EXEC = "exec"


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """termios settings for ``tty:`` devices (ignored for PTYs' baud, but applied)."""

    baud: int = 115200
    bytesize: int = 8  # 5..8
    parity: str = "none"  # none | even | odd | mark | space
    stopbits: float = 1  # 1 | 1.5 | 2
    flow: str = "none"  # none | rtscts | xonxoff
    exclusive: bool = True  # TIOCEXCL: no second opener


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A parsed ``device`` string.

    tty:PATH -> path; unix:PATH -> path; tcp:HOST:PORT -> host, port; exec:COMMAND ARGS... -> argv (shlex split).
    """

    kind: DeviceKind
    raw: str  # the string as written in the config, for messages
    path: str = ""
    host: str = ""
    port: int = 0
    argv: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int  # 0 = pick a free port (tests)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PortConfig:
    name: str
    device: DeviceSpec
    telnet: ListenAddress | None = None  # interactive listener (telnet, or plain TCP when raw)
    telnet_readonly: ListenAddress | None = None  # listener whose sessions are always viewers
    raw: bool = False  # plain TCP on both listeners: no telnet negotiation or IAC processing
    takeover: TakeoverPolicy = TakeoverPolicy.EVICT
    enabled: bool = True
    escape: str = "^E"  # escape prefix key (then 'c', then a command); "" disables in-band commands
    scrollback_bytes: int = 1 << 20
    replay_bytes: int = 4096  # scrollback replayed on attach, cut at a line start when possible
    replay_lines: int = 0  # if > 0, replay at most this many lines (still capped by replay_bytes)
    slow_reader: SlowReaderPolicy = SlowReaderPolicy.RESYNC
    client_buffer_bytes: int = 256 * 1024  # per-session output buffered before the session counts as behind
    input_rate_bps: int = 0  # bytes/s pacing of input to the device; 0 = as fast as the device drains
    device_buffer_bytes: int = 64 * 1024  # input queued for the device before the writer's reads pause
    reconnect_initial_s: float = 0.1
    reconnect_max_s: float = 5.0
    serial: SerialSettings = field(default_factory=SerialSettings)


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    state_dir: Path | None = None  # where enable/disable state and offsets survive restarts; None = memory only
    log_level: str = "info"  # debug | info | warning | error
    log_format: str = "console"  # console | json
    shutdown_timeout_s: float = 5.0
    allow_remote_unauthenticated: bool = False  # permit non-loopback listeners while no auth exists


@dataclass(frozen=True, slots=True)
class HttpSettings:
    listen: ListenAddress | None = None


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # file name (or "<embedded demo>") for messages
    daemon: DaemonSettings
    http: HttpSettings
    ports: tuple[PortConfig, ...]


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file; raise ``ConfigError`` listing every problem."""
    raise NotImplementedError


def parse_config(text: str, source: str) -> Config:
    """Validate TOML text; ``source`` names it in messages.  Raises ``ConfigError``."""
    raise NotImplementedError
