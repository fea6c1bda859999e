"""Configuration: TOML in, a validated, frozen ``Config`` out.

Validation collects *every* problem before failing so that ``serialmuxd check-config`` can show them all at
once, each as ``FILE: key.path: reason`` (see ``errors.ConfigError``).  Key paths are written the way a reader
finds them in the file: ``daemon.log_level``, ``ports[1].takeover``, ``ports[0].serial.parity``; problems that
stop the file from being read at all use ``(file)`` (unreadable, not UTF-8, too large) or ``(toml)`` (syntax,
and what the TOML parser cannot take: arrays nested hundreds deep, integers of thousands of digits).

The checking machinery (typed ``Key``s, ``check_table``, the layers, every message's wording) is
``serialmuxd.configcheck``, shared with the hypervisor adapters' ``[ports.hypervisor]`` tables.  This module
holds the settings dataclasses, the checks only the daemon's own keys need (device strings, listen
addresses, the escape key) and the checks across keys and ports (duplicate names, devices and listeners;
``replay_bytes <= scrollback_bytes``).

Each table's schema is a namespace class of ``Key``s (``_Port.takeover``).  Settings are built with explicit
keywords from typed values, so a field renamed in a dataclass is a type error here, not a silent default.
A port's value comes from three layers, the first that sets it wins: the port's own key, ``[defaults]``,
the dataclass default below.  ``[ports.serial]`` overlays ``[defaults.serial]`` key by key the same way.
An invalid value in ``[defaults]`` is reported once, at ``defaults.KEY``; ports then use the built-in value.
Two defaults depend on other keys: ``escape`` is ``""`` under ``notices = "none"`` unless it is set, and
``max_sessions_per_address`` never exceeds ``max_sessions`` unless it is set.
See ``config.example.toml`` for every key documented.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import ipaddress
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .adapters import HypervisorConfig, check_hypervisor
from .configcheck import (
    GIB,
    KIB,
    MIB,
    REQUIRED,
    UNIX_PATH_MAX_BYTES,
    CheckedTable,
    Invalid,
    Key,
    Layered,
    Problems,
    Setting,
    absolute_path,
    array_of,
    as_table,
    boolean,
    check_not_above,
    check_table,
    choice,
    did_you_mean,
    enum_choice,
    got,
    integer,
    key_path,
    require,
    require_absolute_path,
    require_unix_socket_path,
    seconds,
    show,
    string,
    text,
    unknown_key,
)
from .core.access import Verb
from .core.grants import BUILTIN_ROLES, GROUP_PREFIX, Grant
from .core.health import KIND_RE, HealthPattern
from .core.policy import NoticePolicy, SlowReaderPolicy, TakeoverPolicy
from .errors import ConfigError
from .proto.escape import parse_escape_key

__all__ = [
    "PORT_NAME_RE",
    "UNIX_PATH_MAX_BYTES",
    "Config",
    "DaemonSettings",
    "DeviceKind",
    "DeviceSpec",
    "HttpSettings",
    "ListenAddress",
    "LogSettings",
    "NoticePolicy",
    "PortConfig",
    "SerialSettings",
    "SlowReaderPolicy",
    "SshSettings",
    "TakeoverPolicy",
    "load_config",
    "parse_config",
]


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
    exclusive: bool = True  # advisory lock (flock): a second serialmuxd or pyserial user is refused


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A parsed ``device`` string.

    tty:PATH -> path; unix:PATH -> path; tcp:HOST:PORT -> host, port;
    exec:COMMAND ARGS... -> argv (shlex split).
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
class LogSettings:
    """A port's persistent console log (obs/consolelog.py): [logs], with the port's log_dir and
    log_boot_pattern over it.  Resolved per port so that a reload's diff of PortConfig sees a change."""

    dir: Path  # NAME.log, its rotations NAME.log.1 .. and boot captures NAME.boot-SEQ.log go here
    rotate_bytes: int = 8 * MIB  # NAME.log is rotated (renamed to NAME.log.1) when it reaches this size
    keep: int = 4  # rotated files kept: NAME.log.1 .. NAME.log.KEEP
    timestamps: bool = False  # each line prefixed with its UTC completion time
    boot_bytes: int = 64 * KIB  # the first bytes after each boot/reset kept in NAME.boot-SEQ.log; 0 = off
    keep_boots: int = 8  # boot captures kept (the newest)
    boot_pattern: str = ""  # a regex on output lines that starts a capture too (a reboot the daemon misses)
    # Persisted output read back at start, per port, to serve before the new run (scrollback, replay,
    # resume): RAM and start-up reading for every logged port, so bounded well below scrollback_bytes by
    # default; never less than the port's replay_bytes, never more than its scrollback_bytes.
    history_bytes: int = 256 * KIB


@dataclass(frozen=True, slots=True)
class PortConfig:
    name: str
    device: DeviceSpec
    telnet: ListenAddress | None = None  # interactive listener (telnet, or plain TCP when raw)
    telnet_readonly: ListenAddress | None = None  # listener whose sessions are always viewers
    raw: bool = False  # plain TCP on both listeners: no telnet negotiation or IAC processing
    takeover: TakeoverPolicy = TakeoverPolicy.EVICT
    ask_timeout_s: float = 10.0  # takeover = "ask": the writer's time to answer; silence hands over
    enabled: bool = True
    notices: NoticePolicy = NoticePolicy.INBAND  # serialmuxd's own lines in the stream, or guest bytes only
    # Escape prefix key (then 'c', then a command); "" disables in-band commands.  The validator makes ""
    # the default under notices = none (a program's stream has no one to type commands).
    escape: str = "^E"
    scrollback_bytes: int = 1 << 20
    replay_bytes: int = 4096  # scrollback replayed on attach, cut at a line start when possible
    replay_lines: int = 0  # if > 0, replay at most this many lines (still capped by replay_bytes)
    slow_reader: SlowReaderPolicy = SlowReaderPolicy.RESYNC
    client_buffer_bytes: int = 256 * 1024  # per-session output buffered before the session counts as behind
    # Bytes (not bits) per second of input to the device, so a paste is typed at line rate; 0 = as fast as the
    # device drains.  The old name input_rate_bps is still read, with a warning: "bps" reads as bits.
    input_rate_bytes_per_s: int = 0
    device_buffer_bytes: int = 64 * 1024  # input queued for the device before the writer's reads pause
    reconnect_initial_s: float = 0.1
    reconnect_max_s: float = 5.0
    key_profile: str = "xterm"  # how named keys (F1-F12) are sent: xterm (Linux) | vt100+ (Windows EMS/SAC)
    max_sessions: int = 100  # sessions on this port over all its listeners and WebSockets
    # Sessions from one source IP address on this port; never above max_sessions (the validator lowers the
    # built-in 50 to a smaller max_sessions, and refuses an explicit value above it).  Half the port, not
    # less: behind a reverse proxy or a jump host every session comes from one address.
    max_sessions_per_address: int = 50
    # A writer who types nothing for this long loses write access ("demote": stays and watches) or the
    # session ("detach"), so an abandoned interactive session does not hold the console.  0 = never.
    writer_idle_timeout_s: float = 0.0
    writer_idle_action: str = "demote"
    # Sent to the guest when a writer leaves, is evicted or idles out (e.g. "\u0004" or "exit\r"), so the
    # next person does not inherit a logged-in shell.  "" = nothing (the default: not every guest wants it).
    logout_sequence: str = ""
    telnet_tls: bool = False  # both listeners speak TLS (telnet or raw inside it), with [tls]'s certificate
    # Consoles of one group (the instances of a scale set) share grants: ports = ["group:web"].
    group: str | None = None
    serial: SerialSettings = field(default_factory=SerialSettings)
    hypervisor: HypervisorConfig | None = None  # [ports.hypervisor]: NMI / reset / restart / VM state
    # Guest-health alerts (core/health.py): match this port's output against health_patterns, [alerts]
    # patterns and the shipped ones (panics, oopses, lockups, hung tasks, OOM kills, Windows bug checks).
    health: bool = True
    health_patterns: tuple[HealthPattern, ...] = ()  # the port's own, searched first
    log: LogSettings | None = None  # persistent console log; None = not logged


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    state_dir: Path | None = (
        None  # where enable/disable state and offsets survive restarts; None = memory only
    )
    log_level: str = "info"  # debug | info | warning | error
    log_format: str = "console"  # console | json
    shutdown_timeout_s: float = 5.0
    allow_remote_unauthenticated: bool = False  # permit non-loopback listeners while no auth exists


@dataclass(frozen=True, slots=True)
class HttpSettings:
    listen: ListenAddress | None = None
    max_body_bytes: int = 64 * 1024  # larger request bodies get 413
    ws_max_message_bytes: int = 64 * 1024  # larger WebSocket messages close that session with 1009
    ws_heartbeat_s: float = 20.0  # ping idle WebSockets so proxies and load balancers keep them open
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides the listen address and localhost
    max_connections: int = 1000  # concurrent WebSocket consoles on this listener
    tls: bool = False  # serve HTTPS with [tls]'s certificate


@dataclass(frozen=True, slots=True)
class SshSettings:
    """[ssh]: the SSH front end (``ssh CONSOLE@HOST``; frontends/ssh.py).  Needs [auth]: keys and CAs are
    in the users file; the login grace time is [auth] login_grace_s."""

    listen: ListenAddress | None = None  # no listen: no SSH server
    # Host keys to use (OpenSSH private key files, mode 0600); none: one ed25519 key generated on first
    # start into daemon.state_dir (ssh_host_ed25519_key).
    host_keys: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """[auth.oidc]: bearer JWTs from an OpenID provider, and (with a client) the page's sign-in."""

    issuer: str
    audience: str
    client_id: str = ""  # for the console page's sign-in (authorization code + PKCE)
    client_secret_file: Path | None = None
    # Where the provider sends the browser back; set it behind a TLS-terminating proxy (the daemon would
    # otherwise build it from the request's Host and its own scheme).  Must end in /signin/oidc/callback.
    redirect_uri: str = ""
    user_claim: str = "preferred_username"
    groups_claim: str = "groups"
    group_grants: tuple[tuple[str, tuple[Grant, ...]], ...] = ()  # identity-provider group -> grants


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """[auth]: with it present nothing is reachable without credentials (deny by default)."""

    users_file: Path | None = None  # TOML with [[users]] and [[tokens]] (serialmuxd.auth.users)
    anonymous: str | None = None  # role for peers without credentials; loopback-only configurations
    roles: tuple[tuple[str, frozenset[Verb]], ...] = ()  # [auth.roles]: custom roles from verbs
    oidc: OidcConfig | None = None
    login_grace_s: float = 30.0  # telnet: time to complete the login prompt
    session_idle_s: float = 3600.0  # console page: a signed-in session unused this long ends
    session_max_s: float = 12 * 3600.0  # ... and any session ends this long after sign-in


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """[tls]: the certificate of every TLS listener (http.tls, ports' telnet_tls)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # clients presenting a certificate from this CA are mapped to users


@dataclass(frozen=True, slots=True)
class AuditSettings:
    file: Path | None = None  # JSON lines, one per event (every event is also in the daemon's log)


@dataclass(frozen=True, slots=True)
class AlertsSettings:
    """[alerts]: guest-health events (every port with health = true) also go to a webhook."""

    webhook_url: str = ""  # POST JSON {console, kind, line, offset, time}; "" = no webhook
    webhook_timeout_s: float = 5.0  # per attempt; failed deliveries are retried with backoff
    patterns: tuple[HealthPattern, ...] = ()  # extra patterns for every port, searched before the shipped


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # file name (or "<embedded demo>") for messages
    daemon: DaemonSettings
    http: HttpSettings
    ports: tuple[PortConfig, ...]
    auth: AuthSettings | None = None  # None: no authentication, loopback listeners only (the demo)
    tls: TlsSettings | None = None
    audit: AuditSettings = field(default_factory=AuditSettings)
    alerts: AlertsSettings = field(default_factory=AlertsSettings)
    ssh: SshSettings = field(default_factory=SshSettings)
    warnings: tuple[tuple[str, str], ...] = ()  # (key path, reason): accepted, but should change


# ----------------------------------------------------------------------------------------------------
# Public entry points

# Far above any real configuration (1,000 ports are ~0.5 MiB); stops `check-config /dev/zero` from reading
# until memory runs out.
MAX_CONFIG_BYTES = 16 * MIB


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file; raise ``ConfigError`` listing every problem."""
    source = str(path)
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(source, [("(file)", exc.strerror or str(exc))]) from None
    if len(data) > MAX_CONFIG_BYTES:
        reason = f"more than {MAX_CONFIG_BYTES} bytes; that is not a serialmuxd configuration"
        raise ConfigError(source, [("(file)", reason)])
    try:
        # utf-8-sig: editors on Windows prepend a BOM, which tomllib would report as "invalid statement".
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        reason = f"not UTF-8 text (byte {data[exc.start]:#04x} on line {line}); TOML files must be UTF-8"
        raise ConfigError(source, [("(file)", reason)]) from None
    return parse_config(text, source)


def parse_config(text: str, source: str) -> Config:
    """Validate TOML text; ``source`` names it in messages.  Raises ``ConfigError``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already carries "(at line L, column C)".
        raise ConfigError(source, [("(toml)", str(exc))]) from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively: a few hundred levels exhaust the stack.
        raise ConfigError(source, [("(toml)", _TOO_DEEP)]) from None
    except ValueError as exc:
        # Not a TOMLDecodeError: int() refusing a decimal literal past sys.get_int_max_str_digits().
        raise ConfigError(source, [("(toml)", _too_many_digits(text, exc))]) from None
    problems = Problems()
    config = _build_config(document, source, problems)
    if problems.items:
        raise ConfigError(source, problems.items)
    return dataclasses.replace(config, warnings=tuple(problems.warnings)) if problems.warnings else config


_TOO_DEEP = (
    "arrays or inline tables are nested too deeply to read (the TOML parser gives up after a few hundred "
    "levels; serialmuxd's keys need at most four)"
)


def _too_many_digits(text: str, error: ValueError) -> str:
    limit = sys.get_int_max_str_digits()
    # The first run of more than `limit` digits is the literal in question (or, rarely, digits inside a
    # string before it): good enough to point at a line.
    found = re.search(rf"(?<![\w.])[0-9](?:_?[0-9]){{{limit},}}", text) if limit else None
    if found is None:
        return str(error)
    line = text.count("\n", 0, found.start()) + 1
    column = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
    return (
        f"an integer of more than {limit} digits; Python refuses to read it (at line {line}, column {column})"
    )


# ----------------------------------------------------------------------------------------------------
# Limits.  They bound memory per port and per session (scrollback and buffers are allocated per port/client)
# and reject values that are surely typos (a 2-hour reconnect delay, a 10 GiB ring).

SCROLLBACK_BYTES_RANGE = (4 * KIB, GIB)
REPLAY_BYTES_RANGE = (0, GIB)  # and never above the port's scrollback_bytes
REPLAY_LINES_RANGE = (0, 100_000)
HTTP_BODY_BYTES_RANGE = (1024, 16 * 1024 * 1024)
HTTP_MAX_CONNECTIONS_RANGE = (1, 1_000_000)
CLIENT_BUFFER_BYTES_RANGE = (4 * KIB, 64 * MIB)
DEVICE_BUFFER_BYTES_RANGE = (KIB, 64 * MIB)
INPUT_RATE_RANGE = (0, 1_000_000_000)
MAX_SESSIONS_RANGE = (1, 100_000)  # for max_sessions and max_sessions_per_address
RECONNECT_MAX_S = 3600.0
SHUTDOWN_TIMEOUT_MAX_S = 300.0
ASK_TIMEOUT_MAX_S = 300.0  # longer than anyone waits at a console for a yes or no
LOGIN_GRACE_MAX_S = 600.0  # a telnet login prompt left open longer is an idle connection, not a person
SESSION_MAX_S = 30 * 24 * 3600.0  # a signed-in page session: a month at the very most
WRITER_IDLE_MAX_S = 7 * 24 * 3600.0
LOGOUT_SEQUENCE_MAX_BYTES = 256
WS_HEARTBEAT_MAX_S = 3600.0
BAUD_RANGE = (50, 4_000_000)
BYTESIZE_RANGE = (5, 8)

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")
PARITIES = ("none", "even", "odd", "mark", "space")
KEY_PROFILES = ("xterm", "vt100+")
FLOW_CONTROLS = ("none", "rtscts", "xonxoff")
STOP_BITS = (1, 1.5, 2)

# Port names appear in URLs, file names and metric labels: ASCII, no separators, no leading dot or dash.
PORT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Caret notation ^A .. ^_ (bytes 0x01 .. 0x1f); ^@ is listed too so it gets its specific reason below.
_ESCAPE_RE = re.compile(r"\^[@A-Z\[\\\]^_]")
_ESCAPE_UNUSABLE = {
    "^@": "it is NUL, which telnet clients send after every CR",
    "^I": "it is Tab, used for completion in every shell",
    "^J": "it is LF, sent by the Enter key of some terminals and in pasted line breaks",
    "^M": "it is CR, sent by the Enter key, so every line typed would start a command",
    "^[": "it is ESC, which starts every arrow and function key sequence",
}
_PORT_RE = re.compile(r"[0-9]{1,5}")  # not int(): that accepts "+80", " 80" and non-ASCII digits
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_DEVICE_FORMS = "tty:PATH, unix:PATH, tcp:HOST:PORT, exec:COMMAND ARGS..."


# ----------------------------------------------------------------------------------------------------
# Checks of the daemon's own kinds of value: each takes a TOML value, returns the parsed value or raises
# Invalid (the generic ones: boolean, integer, seconds, choice, ... are in configcheck).


def _stop_bits(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected number, {got(value)}")
    if value not in STOP_BITS:
        raise Invalid(f"must be 1, 1.5 or 2, got {show(value)}")
    return float(value)


def _state_dir(value: object) -> Path:
    return Path(absolute_path(value))


def _name(value: object) -> str:
    text = string(value)
    if not PORT_NAME_RE.fullmatch(text):
        raise Invalid(
            "must be 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit "
            f"(names appear in URLs, file names and metric labels), got {show(text)}"
        )
    return text


def _escape(value: object) -> str:
    text = string(value)
    if text == "":
        return text  # in-band commands disabled
    if not _ESCAPE_RE.fullmatch(text):
        upper_hint = f"; did you mean {text.upper()!r}?" if _ESCAPE_RE.fullmatch(text.upper()) else ""
        raise Invalid(
            f'must be "" (no escape key) or caret notation ^A..^_ such as "^E", got {show(text)}{upper_hint}'
        )
    if text in _ESCAPE_UNUSABLE:
        raise Invalid(f"{text!r} cannot be the escape key: {_ESCAPE_UNUSABLE[text]}")
    try:
        parse_escape_key(text)  # the front ends' parser has the last word: no key passes here and fails there
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return text  # kept as written: front ends show it in help texts


# Host and port: shared by listen addresses and tcp: devices.


def _check_host(host: str, written: str) -> None:
    if not host:
        raise Invalid(
            f"the host is missing (write 127.0.0.1:PORT for this machine only), got {show(written)}"
        )
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return
    if all(char.isdigit() or char == "." for char in host):
        # "127.0.0.01" is no valid address, and resolvers disagree on what it means as a name.
        raise Invalid(f"{show(host)} is not a valid IPv4 address, in {show(written)}")
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise Invalid(f"{show(host)} is neither an IP address nor a valid host name, in {show(written)}")


def _host_name(value: object) -> str:
    """One ``allowed_hosts`` entry: a host name or IP address, brackets around IPv6 optional."""
    text = string(value)
    _check_host(text.strip("[]"), text)
    return text.lower().strip("[]")  # Host headers are compared case-insensitively


def _split_host_port(text: str, lowest_port: int, form: str, written: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host without brackets, port); ``written`` is shown in messages."""
    if text.startswith("["):
        host, bracket, port_text = text[1:].partition("]:")
        if not bracket:
            raise Invalid(f"expected {form} with an IPv6 address as [ADDRESS]:PORT, got {show(written)}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"{show(host)} is not an IPv6 address, in {show(written)}") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise Invalid(f"expected {form}, got {show(written)}")
        if ":" in host:
            raise Invalid(f"write an IPv6 address in brackets, like [::1]:PORT, got {show(written)}")
        _check_host(host, written)
    if not _PORT_RE.fullmatch(port_text) or not lowest_port <= int(port_text) <= 65535:
        raise Invalid(f"the port must be a number from {lowest_port} to 65535, got {show(written)}")
    return host, int(port_text)


def _listen(value: object) -> ListenAddress:
    # Port 0 = the kernel picks a free port; tests use it.
    text = string(value)
    host, port = _split_host_port(text, 0, "HOST:PORT", text)
    return ListenAddress(host, port)


def _device(value: object) -> DeviceSpec:
    raw = string(value)
    scheme, colon, rest = raw.partition(":")
    kinds = {kind.value: kind for kind in DeviceKind}
    if not colon or scheme not in kinds:
        if raw.startswith("/"):
            hint = "; write tty:PATH for a serial device or unix:PATH for a socket"
        else:
            hint = did_you_mean(scheme, kinds) if colon else ""
        raise Invalid(f"unknown device scheme, expected one of {_DEVICE_FORMS}, got {show(raw)}{hint}")
    kind = kinds[scheme]
    if kind is DeviceKind.TTY:
        return DeviceSpec(kind, raw, path=require_absolute_path(rest))
    if kind is DeviceKind.UNIX:
        return DeviceSpec(kind, raw, path=require_unix_socket_path(rest))
    if kind is DeviceKind.TCP:
        host, port = _split_host_port(rest, 1, "tcp:HOST:PORT", raw)
        return DeviceSpec(kind, raw, host=host, port=port)
    if "\0" in rest:
        raise Invalid(f"a command cannot contain NUL, got {show(raw)}")  # exec() would refuse it
    try:
        argv = shlex.split(rest)
    except ValueError as exc:  # unbalanced quotes, a trailing backslash
        raise Invalid(f"cannot split the command line ({exc}), got {show(raw)}") from None
    if not argv:
        raise Invalid(f"exec: needs a command, got {show(raw)}")
    return DeviceSpec(kind, raw, argv=tuple(argv))


def _non_negative_seconds(high: float) -> Callable[[object], float]:
    """A duration in [0, high]: 0 means off."""

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected number, {got(value)}")
        if not (0 <= value <= high):  # written so that nan fails too
            raise Invalid(f"must be between 0 (off) and {high:g}, got {show(value)}")
        return float(value)

    return check


def _logout_sequence(value: object) -> str:
    sequence = string(value)
    if len(sequence.encode()) > LOGOUT_SEQUENCE_MAX_BYTES:
        raise Invalid(f"must be at most {LOGOUT_SEQUENCE_MAX_BYTES} bytes, got {len(sequence.encode())}")
    return sequence


def _path(value: object) -> Path:
    return Path(absolute_path(value))


WEBHOOK_TIMEOUT_MAX_S = 300.0
HEALTH_PATTERNS_MAX = 100  # per table: each is searched in every line that may match


def _webhook_url(value: object) -> str:
    url = text(value)
    scheme, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    host = authority.rsplit("@", 1)[-1]
    host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    if scheme == "https" and host:
        return url
    if scheme == "http" and host and is_loopback_host(host):
        return url  # a receiver on this host (a local relay, tests); anything else must be https
    raise Invalid(f"must be an https:// URL (http:// only to a loopback host), got {show(url)}")


LOG_ROTATE_BYTES_RANGE = (4 * KIB, 64 * GIB)
LOG_KEEP_RANGE = (0, 1000)
LOG_BOOT_BYTES_RANGE = (0, GIB)
LOG_KEEP_BOOTS_RANGE = (1, 1000)
LOG_HISTORY_BYTES_RANGE = (KIB, GIB)


def _health_kind(value: object) -> str:
    kind = string(value)
    if not KIND_RE.fullmatch(kind):
        raise Invalid(
            f"must be 1 to 32 lower-case letters, digits or '_', starting with a letter, got {show(kind)}"
        )
    return kind


def _health_regex(value: object) -> str:
    regex = string(value)
    if not regex:
        raise Invalid("must not be empty (it would match every line)")
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise Invalid(f"not a valid regular expression: {exc}") from None
    if compiled.search(""):
        raise Invalid(f"matches an empty line, so it would match every line: {show(regex)}")
    return regex


def _health_pattern(value: object) -> HealthPattern:
    if not isinstance(value, dict):
        raise Invalid(f'expected a table {{ kind = "...", regex = "..." }}, {got(value)}')
    found: list[tuple[str, str]] = []
    kind = regex = None
    by_name = {key.name: key for key in _HEALTH_PATTERN_KEYS}
    for name, item in value.items():
        key = by_name.get(name)
        if key is None:
            found.append((f".{name}", unknown_key(name, by_name)))
            continue
        try:
            if key is _HealthPattern.kind:
                kind = _HealthPattern.kind.check(item)
            else:
                regex = _HealthPattern.regex.check(item)
        except Invalid as exc:
            found.extend((f".{name}{at}", reason) for at, reason in exc.found)
    for name in by_name:
        if name not in value:
            found.append((f".{name}", REQUIRED))
    if found:
        raise Invalid.of_items(found)
    assert kind is not None and regex is not None
    return HealthPattern(kind, regex)


def _health_patterns(value: object) -> tuple[HealthPattern, ...]:
    patterns = array_of(_health_pattern, "tables { kind, regex }")(value)
    if len(patterns) > HEALTH_PATTERNS_MAX:
        raise Invalid(f"at most {HEALTH_PATTERNS_MAX} patterns, got {len(patterns)}")
    return patterns


_PORT_PATTERN_RE = re.compile(r"[A-Za-z0-9._\-*?\[\]!]{1,64}")
_VERB_NAMES = tuple(verb.value for verb in Verb)


def _port_selector(value: object) -> str:
    """A console name, a shell-style pattern (vm*, web-ss-?), group:NAME, or * (every console, the host)."""
    item = string(value)
    if item.startswith(GROUP_PREFIX):
        group = item[len(GROUP_PREFIX) :]
        if not PORT_NAME_RE.fullmatch(group):
            raise Invalid(f"group:NAME needs a group name like a console name, got {show(item)}")
        return item
    if not _PORT_PATTERN_RE.fullmatch(item):
        raise Invalid(
            "must be a console name, a pattern such as 'vm*' (letters, digits, . _ - and * ? [ ] !), "
            f"'group:NAME' or '*', got {show(item)}"
        )
    return item


_port_selectors = array_of(_port_selector, "console names, patterns or group:NAME")


def check_grant(value: object) -> Grant:
    """One ``{ role = "operator", ports = ["vm*"] }``; whether the role exists is checked by the caller."""
    if not isinstance(value, dict):
        raise Invalid(f'expected a table such as {{ role = "viewer", ports = ["vm1"] }}, {got(value)}')
    found: list[tuple[str, str]] = []
    for name in value:
        if name not in ("role", "ports"):
            found.append((f".{name}", unknown_key(name, ("role", "ports"))))
    role, ports = value.get("role"), value.get("ports")
    for name, item in (("role", role), ("ports", ports)):
        if item is None:
            found.append((f".{name}", REQUIRED))
    checked_role, checked_ports = "", tuple[str, ...]()
    try:
        checked_role = text(role) if role is not None else ""
    except Invalid as exc:
        found.extend((f".role{at}", reason) for at, reason in exc.found)
    try:
        checked_ports = _port_selectors(ports) if ports is not None else ()
        if ports is not None and not checked_ports:
            found.append((".ports", "must not be empty: name the consoles this grant covers, or '*'"))
    except Invalid as exc:
        found.extend((f".ports{at}", reason) for at, reason in exc.found)
    if found:
        raise Invalid.of_items(found)
    return Grant(checked_role, checked_ports)


check_grants = array_of(check_grant, "grants (tables with role and ports)")


def _verbs(value: object) -> frozenset[Verb]:
    names = array_of(choice(_VERB_NAMES), "verbs")(value)
    if not names:
        raise Invalid(f"must not be empty: a role needs at least one of {', '.join(_VERB_NAMES)}")
    return frozenset(Verb(name) for name in names)


def _issuer(value: object) -> str:
    url = text(value)
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    if scheme == "https" and host:
        return url.rstrip("/") if url.endswith("/") and url.count("/") == 3 else url
    if scheme == "http" and host and is_loopback_host(host):
        return url  # a provider on this host (tests, a local IdP); anything else must be https
    raise Invalid(f"must be an https:// URL (http:// only for a loopback issuer), got {show(url)}")


OIDC_CALLBACK_PATH = "/signin/oidc/callback"


def _redirect_uri(value: object) -> str:
    url = _issuer(value)  # the same scheme rules: https, or http to a loopback host
    if not url.split("?", 1)[0].endswith(OIDC_CALLBACK_PATH):
        raise Invalid(
            f"must be this daemon's {OIDC_CALLBACK_PATH} as the browser reaches it, got {show(url)}"
        )
    return url


def unknown_role(role: str, known: Iterable[str]) -> str:
    return f"unknown role {show(role)}{did_you_mean(role, known) or ''} (roles: {', '.join(sorted(known))})"


# ----------------------------------------------------------------------------------------------------
# Schemas: the keys of each table and how each value is checked.  The TOML key names are the dataclass field
# names; the builders below pass each one explicitly, so mypy checks names and types against the dataclass.


class _Daemon:
    state_dir = Key("state_dir", _state_dir)
    log_level = Key("log_level", choice(LOG_LEVELS))
    log_format = Key("log_format", choice(LOG_FORMATS))
    shutdown_timeout_s = Key("shutdown_timeout_s", seconds(SHUTDOWN_TIMEOUT_MAX_S))
    allow_remote_unauthenticated = Key("allow_remote_unauthenticated", boolean)


class _Http:
    listen = Key("listen", _listen)
    max_body_bytes = Key("max_body_bytes", integer(*HTTP_BODY_BYTES_RANGE, size=True))
    ws_max_message_bytes = Key("ws_max_message_bytes", integer(*HTTP_BODY_BYTES_RANGE, size=True))
    ws_heartbeat_s = Key("ws_heartbeat_s", seconds(WS_HEARTBEAT_MAX_S))
    allowed_hosts = Key("allowed_hosts", array_of(_host_name, "host names"))
    max_connections = Key("max_connections", integer(*HTTP_MAX_CONNECTIONS_RANGE))
    tls = Key("tls", boolean)


class _Ssh:
    listen = Key("listen", _listen)
    host_keys = Key("host_keys", array_of(_path, "host key files"))


class _Auth:
    users_file = Key("users_file", _path)
    anonymous = Key("anonymous", text)
    login_grace_s = Key("login_grace_s", seconds(LOGIN_GRACE_MAX_S))
    session_idle_s = Key("session_idle_s", seconds(SESSION_MAX_S))
    session_max_s = Key("session_max_s", seconds(SESSION_MAX_S))


class _Oidc:
    issuer = Key("issuer", _issuer)
    audience = Key("audience", text)
    client_id = Key("client_id", text)
    client_secret_file = Key("client_secret_file", _path)
    redirect_uri = Key("redirect_uri", _redirect_uri)
    user_claim = Key("user_claim", text)
    groups_claim = Key("groups_claim", text)


class _Tls:
    cert_file = Key("cert_file", _path)
    key_file = Key("key_file", _path)
    client_ca_file = Key("client_ca_file", _path)


class _Audit:
    file = Key("file", _path)


class _Alerts:
    webhook_url = Key("webhook_url", _webhook_url)
    webhook_timeout_s = Key("webhook_timeout_s", seconds(WEBHOOK_TIMEOUT_MAX_S))
    patterns = Key("patterns", _health_patterns)


class _Logs:
    dir = Key("dir", _path)
    rotate_bytes = Key("rotate_bytes", integer(*LOG_ROTATE_BYTES_RANGE, size=True))
    keep = Key("keep", integer(*LOG_KEEP_RANGE))
    timestamps = Key("timestamps", boolean)
    boot_bytes = Key("boot_bytes", integer(*LOG_BOOT_BYTES_RANGE, size=True))
    keep_boots = Key("keep_boots", integer(*LOG_KEEP_BOOTS_RANGE))
    boot_pattern = Key("boot_pattern", _health_regex)
    history_bytes = Key("history_bytes", integer(*LOG_HISTORY_BYTES_RANGE, size=True))


class _HealthPattern:
    kind = Key("kind", _health_kind)
    regex = Key("regex", _health_regex)


class _Serial:
    baud = Key("baud", integer(*BAUD_RANGE))
    bytesize = Key("bytesize", integer(*BYTESIZE_RANGE))
    parity = Key("parity", choice(PARITIES))
    stopbits = Key("stopbits", _stop_bits)
    flow = Key("flow", choice(FLOW_CONTROLS))
    exclusive = Key("exclusive", boolean)


class _Port:
    # Identify one port, so inheriting them from [defaults] could only produce a conflict.
    name = Key("name", _name)
    device = Key("device", _device)
    telnet = Key("telnet", _listen)
    telnet_readonly = Key("telnet_readonly", _listen)
    group = Key("group", _name)
    # Inheritable: [defaults] may set them for every port.
    raw = Key("raw", boolean)
    takeover = Key("takeover", enum_choice(TakeoverPolicy))
    ask_timeout_s = Key("ask_timeout_s", seconds(ASK_TIMEOUT_MAX_S))
    enabled = Key("enabled", boolean)
    notices = Key("notices", enum_choice(NoticePolicy))
    escape = Key("escape", _escape)
    scrollback_bytes = Key("scrollback_bytes", integer(*SCROLLBACK_BYTES_RANGE, size=True))
    replay_bytes = Key("replay_bytes", integer(*REPLAY_BYTES_RANGE, size=True))
    replay_lines = Key("replay_lines", integer(*REPLAY_LINES_RANGE))
    slow_reader = Key("slow_reader", enum_choice(SlowReaderPolicy))
    client_buffer_bytes = Key("client_buffer_bytes", integer(*CLIENT_BUFFER_BYTES_RANGE, size=True))
    input_rate_bytes_per_s = Key("input_rate_bytes_per_s", integer(*INPUT_RATE_RANGE))
    input_rate_bps = Key("input_rate_bps", integer(*INPUT_RATE_RANGE))  # deprecated alias
    device_buffer_bytes = Key("device_buffer_bytes", integer(*DEVICE_BUFFER_BYTES_RANGE, size=True))
    reconnect_initial_s = Key("reconnect_initial_s", seconds(RECONNECT_MAX_S))
    reconnect_max_s = Key("reconnect_max_s", seconds(RECONNECT_MAX_S))
    key_profile = Key("key_profile", choice(KEY_PROFILES))
    max_sessions = Key("max_sessions", integer(*MAX_SESSIONS_RANGE))
    max_sessions_per_address = Key("max_sessions_per_address", integer(*MAX_SESSIONS_RANGE))
    telnet_tls = Key("telnet_tls", boolean)
    health = Key("health", boolean)
    health_patterns = Key("health_patterns", _health_patterns)
    writer_idle_timeout_s = Key("writer_idle_timeout_s", _non_negative_seconds(WRITER_IDLE_MAX_S))
    writer_idle_action = Key("writer_idle_action", choice(("demote", "detach")))
    logout_sequence = Key("logout_sequence", _logout_sequence)
    logs = Key("logs", boolean)  # false: this port is not logged even with [logs] dir
    log_dir = Key("log_dir", _path)  # this port's log directory instead of [logs] dir
    log_boot_pattern = Key("log_boot_pattern", _health_regex)  # instead of [logs] boot_pattern


def _keys_of(schema: type) -> tuple[Key[Any], ...]:
    return tuple(value for value in vars(schema).values() if isinstance(value, Key))


_DAEMON_KEYS = _keys_of(_Daemon)
_HTTP_KEYS = _keys_of(_Http)
_SSH_KEYS = _keys_of(_Ssh)
_SERIAL_KEYS = _keys_of(_Serial)
_PORT_ONLY_KEYS = (_Port.name, _Port.device, _Port.telnet, _Port.telnet_readonly, _Port.group)
_AUTH_KEYS = _keys_of(_Auth)
_OIDC_KEYS = _keys_of(_Oidc)
_TLS_KEYS = _keys_of(_Tls)
_AUDIT_KEYS = _keys_of(_Audit)
_ALERTS_KEYS = _keys_of(_Alerts)
_LOGS_KEYS = _keys_of(_Logs)
_HEALTH_PATTERN_KEYS = _keys_of(_HealthPattern)
_INHERITABLE_KEYS = tuple(key for key in _keys_of(_Port) if key not in _PORT_ONLY_KEYS)

_SERIAL_TABLE = "serial"  # the one sub-table of [[ports]] and [defaults]
_HYPERVISOR_TABLE = "hypervisor"  # [ports.hypervisor], checked by serialmuxd.adapters.check_hypervisor
_NOT_IN_DEFAULTS = {
    key: "belongs to one port; set it in each [[ports]] table, not in [defaults]"
    for key in (*(key.name for key in _PORT_ONLY_KEYS), _HYPERVISOR_TABLE)
}

# Where the built-in defaults are read from: the dataclasses' own defaults, so each is written once.  The
# port's name and device are placeholders; nothing reads them.
_BUILTIN_DAEMON = DaemonSettings()
_BUILTIN_HTTP = HttpSettings()
_BUILTIN_SERIAL = SerialSettings()
_BUILTIN_PORT = PortConfig(name="", device=DeviceSpec(DeviceKind.EXEC, ""))
_BUILTIN_AUTH = AuthSettings()
_BUILTIN_OIDC = OidcConfig(issuer="", audience="")


# ----------------------------------------------------------------------------------------------------
# Tables


@dataclass(slots=True)
class _Claims:
    """What only one port may have, and who had it first: names, devices, listen addresses."""

    allow_remote: bool
    authenticated: bool = False  # [auth] is configured
    remote: list[str] = field(default_factory=list)  # key paths of non-loopback listeners
    tls_users: list[str] = field(default_factory=list)  # key paths that need [tls]
    names: dict[str, str] = field(default_factory=dict)  # name -> path of the port that has it
    devices: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # identity -> (path, how)
    listeners: list[tuple[ListenAddress, str]] = field(default_factory=list)  # (address, key path)
    # The same, by port number: only listeners on one port can clash (10,000 ports: no n² comparisons).
    listeners_by_port: dict[int, list[tuple[ListenAddress, str]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Defaults:
    """[defaults] and [defaults.serial] as lower layers: checked and reported once, invalid values dropped."""

    port: CheckedTable
    serial: CheckedTable


def _build_config(document: Mapping[str, object], source: str, problems: Problems) -> Config:
    known = ("daemon", "auth", "tls", "audit", "alerts", "logs", "http", "ssh", "defaults", "ports")
    for key in document:
        if key not in known:
            problems.add(key_path("", key), unknown_key(key, known))
    daemon = _parse_daemon(document.get("daemon", {}), problems)
    auth = _parse_auth(document["auth"], problems) if "auth" in document else None
    tls = _parse_tls(document["tls"], problems) if "tls" in document else None
    audit = _parse_audit(document.get("audit", {}), problems)
    alerts = _parse_alerts(document.get("alerts", {}), problems)
    claims = _Claims(allow_remote=daemon.allow_remote_unauthenticated, authenticated=auth is not None)
    http = _parse_http(document.get("http", {}), claims, problems)
    ssh = _parse_ssh(document.get("ssh", {}), daemon, auth, claims, problems)
    defaults = _parse_defaults(document.get("defaults", {}), problems)
    logs = _parse_logs(document.get("logs", {}), problems)
    ports = _parse_ports(document.get("ports"), defaults, claims, problems, logs)
    if tls is None and "tls" not in document:
        for at in claims.tls_users:
            problems.add(at, "needs a [tls] table with cert_file and key_file")
    if auth is not None and auth.anonymous is not None and claims.remote:
        problems.add(
            "auth.anonymous",
            f"anonymous access is allowed only when every listener is on loopback; {claims.remote[0]} is not",
        )
    if auth is not None:
        _check_group_names(auth, ports, problems)
    return Config(
        source=source,
        daemon=daemon,
        http=http,
        ports=ports,
        auth=auth,
        tls=tls,
        audit=audit,
        alerts=alerts,
        ssh=ssh,
    )


def _parse_auth(raw: object, problems: Problems) -> AuthSettings | None:
    table = as_table(raw, "auth", problems)
    if table is None:
        return None
    own = check_table(table, "auth", _AUTH_KEYS, problems, sub_tables=["roles", "oidc"])
    roles = _parse_roles(table.get("roles", {}), problems)
    known_roles = {*BUILTIN_ROLES, *(name for name, _ in roles)}
    anonymous = own.get(_Auth.anonymous)
    if anonymous is not None and anonymous not in known_roles:
        problems.add("auth.anonymous", unknown_role(anonymous, known_roles))
    oidc = _parse_oidc(table["oidc"], known_roles, problems) if "oidc" in table else None
    if not own.has(_Auth.users_file) and "oidc" not in table and not own.has(_Auth.anonymous):
        problems.add(
            "auth",
            "names no way to sign in: set users_file (local users and tokens) or [auth.oidc], or both",
        )
    values, builtin = Layered(own), _BUILTIN_AUTH
    settings = AuthSettings(
        users_file=own.get(_Auth.users_file),
        anonymous=anonymous,
        roles=roles,
        oidc=oidc,
        login_grace_s=values.value(_Auth.login_grace_s, builtin.login_grace_s),
        session_idle_s=values.value(_Auth.session_idle_s, builtin.session_idle_s),
        session_max_s=values.value(_Auth.session_max_s, builtin.session_max_s),
    )
    check_not_above(
        "session_idle_s",
        values.setting(_Auth.session_idle_s, builtin.session_idle_s),
        "session_max_s",
        values.setting(_Auth.session_max_s, builtin.session_max_s),
        "auth",
        problems,
    )
    return settings


def _parse_roles(raw: object, problems: Problems) -> tuple[tuple[str, frozenset[Verb]], ...]:
    table = as_table(raw, "auth.roles", problems)
    if table is None:
        return ()
    roles = []
    for name, value in table.items():
        at = key_path("auth.roles", name)
        if name in BUILTIN_ROLES:
            problems.add(at, f"{show(name)} is a built-in role; give a custom role another name")
            continue
        if not PORT_NAME_RE.fullmatch(name):
            problems.add(at, f"a role name is letters, digits, . _ - (like a console name), got {show(name)}")
            continue
        try:
            roles.append((name, _verbs(value)))
        except Invalid as exc:
            problems.invalid(at, exc)
    return tuple(roles)


def _parse_oidc(raw: object, known_roles: set[str], problems: Problems) -> OidcConfig | None:
    table = as_table(raw, "auth.oidc", problems)
    if table is None:
        return None
    own = check_table(table, "auth.oidc", _OIDC_KEYS, problems, sub_tables=["group_grants"])
    complete = require(own, (_Oidc.issuer, _Oidc.audience), problems)
    group_grants = []
    grants_table = as_table(table.get("group_grants", {}), "auth.oidc.group_grants", problems) or {}
    for group, value in grants_table.items():
        at = key_path("auth.oidc.group_grants", group)
        try:
            grants = check_grants(value)
        except Invalid as exc:
            problems.invalid(at, exc)
            continue
        check_grant_roles(grants, at, known_roles, problems)
        group_grants.append((group, grants))
    issuer, audience = own.get(_Oidc.issuer), own.get(_Oidc.audience)
    if not complete or issuer is None or audience is None:
        return None
    values, builtin = Layered(own), _BUILTIN_OIDC
    return OidcConfig(
        issuer=issuer,
        audience=audience,
        client_id=values.value(_Oidc.client_id, builtin.client_id),
        client_secret_file=own.get(_Oidc.client_secret_file),
        redirect_uri=values.value(_Oidc.redirect_uri, builtin.redirect_uri),
        user_claim=values.value(_Oidc.user_claim, builtin.user_claim),
        groups_claim=values.value(_Oidc.groups_claim, builtin.groups_claim),
        group_grants=tuple(group_grants),
    )


def check_grant_roles(grants: Iterable[Grant], at: str, known_roles: set[str], problems: Problems) -> None:
    """Each grant's role must exist: built in, or defined in [auth.roles]."""
    for index, grant in enumerate(grants):
        if grant.role not in known_roles:
            problems.add(f"{at}[{index}].role", unknown_role(grant.role, known_roles))


def _check_group_names(auth: AuthSettings, ports: tuple[PortConfig, ...], problems: Problems) -> None:
    """A group:NAME no console is in is a typo (or a group nobody uses yet: say so either way)."""
    groups = {port.group for port in ports if port.group is not None}
    if auth.oidc is None:
        return
    for group, grants in auth.oidc.group_grants:
        for index, grant in enumerate(grants):
            for item_index, item in enumerate(grant.ports):
                name = item[len(GROUP_PREFIX) :] if item.startswith(GROUP_PREFIX) else None
                if name is not None and name not in groups:
                    problems.add(
                        f"{key_path('auth.oidc.group_grants', group)}[{index}].ports[{item_index}]",
                        f"no console has group = {show(name)}{did_you_mean(name, groups)}",
                    )


def _parse_tls(raw: object, problems: Problems) -> TlsSettings | None:
    table = as_table(raw, "tls", problems)
    if table is None:
        return None
    own = check_table(table, "tls", _TLS_KEYS, problems)
    require(own, (_Tls.cert_file, _Tls.key_file), problems)
    cert, key = own.get(_Tls.cert_file), own.get(_Tls.key_file)
    if cert is None or key is None:
        return None
    # The files themselves are read and checked at start-up (serialmuxd.tls): mode, match, expiry.
    return TlsSettings(cert_file=cert, key_file=key, client_ca_file=own.get(_Tls.client_ca_file))


def _parse_audit(raw: object, problems: Problems) -> AuditSettings:
    table = as_table(raw, "audit", problems)
    if table is None:
        return AuditSettings()
    own = check_table(table, "audit", _AUDIT_KEYS, problems)
    return AuditSettings(file=own.get(_Audit.file))


def _parse_alerts(raw: object, problems: Problems) -> AlertsSettings:
    table = as_table(raw, "alerts", problems)
    if table is None:
        return AlertsSettings()
    own = check_table(table, "alerts", _ALERTS_KEYS, problems)
    values, builtin = Layered(own), AlertsSettings()
    return AlertsSettings(
        webhook_url=values.value(_Alerts.webhook_url, builtin.webhook_url),
        webhook_timeout_s=values.value(_Alerts.webhook_timeout_s, builtin.webhook_timeout_s),
        patterns=values.value(_Alerts.patterns, builtin.patterns),
    )


@dataclass(frozen=True, slots=True)
class _LogsTable:
    """[logs] as checked: ``settings`` with a placeholder dir, and whether [logs] named one."""

    settings: LogSettings
    has_dir: bool


def _parse_logs(raw: object, problems: Problems) -> _LogsTable:
    builtin = LogSettings(dir=Path("/"))
    table = as_table(raw, "logs", problems)
    if table is None:
        return _LogsTable(builtin, False)
    own = check_table(table, "logs", _LOGS_KEYS, problems)
    values = Layered(own)
    directory = own.get(_Logs.dir)
    settings = LogSettings(
        dir=directory or builtin.dir,
        rotate_bytes=values.value(_Logs.rotate_bytes, builtin.rotate_bytes),
        keep=values.value(_Logs.keep, builtin.keep),
        timestamps=values.value(_Logs.timestamps, builtin.timestamps),
        boot_bytes=values.value(_Logs.boot_bytes, builtin.boot_bytes),
        keep_boots=values.value(_Logs.keep_boots, builtin.keep_boots),
        boot_pattern=values.value(_Logs.boot_pattern, builtin.boot_pattern),
        history_bytes=values.value(_Logs.history_bytes, builtin.history_bytes),
    )
    return _LogsTable(settings, directory is not None)


def _port_log(values: Layered, logs: _LogsTable, path: str, problems: Problems) -> LogSettings | None:
    """A port's log settings: [logs] under its own (or [defaults]') logs, log_dir, log_boot_pattern."""
    enabled = values.setting(_Port.logs, True)
    own_dir = values.setting(_Port.log_dir, logs.settings.dir)
    if enabled is None or own_dir is None or not enabled.value:
        return None
    if not values.is_set(_Port.log_dir) and not logs.has_dir:
        if values.is_set(_Port.logs):
            problems.add(enabled.origin or path, "logs = true needs a directory: set [logs] dir or log_dir")
        return None
    pattern = values.value(_Port.log_boot_pattern, logs.settings.boot_pattern)
    return dataclasses.replace(logs.settings, dir=own_dir.value, boot_pattern=pattern)


def _parse_daemon(raw: object, problems: Problems) -> DaemonSettings:
    table = as_table(raw, "daemon", problems)
    if table is None:
        return _BUILTIN_DAEMON
    own = check_table(table, "daemon", _DAEMON_KEYS, problems)
    # Built from the valid keys even if another one is bad: allow_remote_unauthenticated decides whether the
    # listeners are reported too, and that must not depend on a typo in log_level.
    values, builtin = Layered(own), _BUILTIN_DAEMON
    return DaemonSettings(
        state_dir=own.get(_Daemon.state_dir),
        log_level=values.value(_Daemon.log_level, builtin.log_level),
        log_format=values.value(_Daemon.log_format, builtin.log_format),
        shutdown_timeout_s=values.value(_Daemon.shutdown_timeout_s, builtin.shutdown_timeout_s),
        allow_remote_unauthenticated=values.value(
            _Daemon.allow_remote_unauthenticated, builtin.allow_remote_unauthenticated
        ),
    )


def _parse_http(raw: object, claims: _Claims, problems: Problems) -> HttpSettings:
    table = as_table(raw, "http", problems)
    if table is None:
        return _BUILTIN_HTTP
    own = check_table(table, "http", _HTTP_KEYS, problems)
    listen = own.get(_Http.listen)  # no [http] listen: no HTTP server
    tls = own.get(_Http.tls) is True
    if tls:
        claims.tls_users.append("http.tls")
    if listen is not None:
        _claim_listener(listen, "http.listen", "type into the console", claims, problems, tls=tls)
    values, builtin = Layered(own), _BUILTIN_HTTP
    return HttpSettings(
        listen=listen,
        max_body_bytes=values.value(_Http.max_body_bytes, builtin.max_body_bytes),
        ws_max_message_bytes=values.value(_Http.ws_max_message_bytes, builtin.ws_max_message_bytes),
        ws_heartbeat_s=values.value(_Http.ws_heartbeat_s, builtin.ws_heartbeat_s),
        allowed_hosts=values.value(_Http.allowed_hosts, builtin.allowed_hosts),
        max_connections=values.value(_Http.max_connections, builtin.max_connections),
        tls=tls,
    )


def _parse_ssh(
    raw: object, daemon: DaemonSettings, auth: AuthSettings | None, claims: _Claims, problems: Problems
) -> SshSettings:
    table = as_table(raw, "ssh", problems)
    if table is None:
        return SshSettings()
    own = check_table(table, "ssh", _SSH_KEYS, problems)
    listen = own.get(_Ssh.listen)
    host_keys = own.get(_Ssh.host_keys) or ()
    if listen is None:
        return SshSettings(host_keys=host_keys)
    if auth is None or auth.users_file is None:
        problems.add(
            "ssh.listen",
            "the SSH front end needs [auth] with a users_file: SSH clients are known by the ssh_keys and "
            "ssh_ca_keys listed there (the user name chooses the console, not the user)",
        )
    if not host_keys and daemon.state_dir is None and not own.has(_Ssh.host_keys):
        problems.add(
            "ssh.host_keys",
            "no host key: list OpenSSH private key files here, or set daemon.state_dir, where one is "
            "generated on first start",
        )
    # SSH encrypts by itself: off loopback it needs [auth] (checked above) but no TLS.
    _claim_listener(listen, "ssh.listen", "type into the console", claims, problems, tls=True)
    return SshSettings(listen=listen, host_keys=host_keys)


def _parse_defaults(raw: object, problems: Problems) -> _Defaults:
    """[defaults] and [defaults.serial], checked once; ports fall back to their valid values."""
    empty = _Defaults(CheckedTable("defaults"), CheckedTable("defaults.serial"))
    table = as_table(raw, "defaults", problems)
    if table is None:
        return empty
    port = check_table(
        table,
        "defaults",
        _INHERITABLE_KEYS,
        problems,
        sub_tables=[_SERIAL_TABLE],
        refused=_NOT_IN_DEFAULTS,
    )
    serial = empty.serial
    if _SERIAL_TABLE in table:
        serial_table = as_table(table[_SERIAL_TABLE], "defaults.serial", problems)
        if serial_table is not None:
            serial = check_table(serial_table, "defaults.serial", _SERIAL_KEYS, problems)
    # An invalid default is reported here, once; ports then use the built-in value instead.
    return _Defaults(port.without_invalid(), serial.without_invalid())


def _parse_ports(
    raw: object, defaults: _Defaults, claims: _Claims, problems: Problems, logs: _LogsTable | None = None
) -> tuple[PortConfig, ...]:
    if raw is None or raw == []:
        problems.add("ports", "at least one [[ports]] table is required")
        return ()
    if not isinstance(raw, list):
        problems.add("ports", f"must be an array of tables: write [[ports]] (two brackets), {got(raw)}")
        return ()
    ports: list[tuple[int, PortConfig]] = []
    for index, item in enumerate(raw):
        port = _parse_port(index, item, defaults, claims, problems, logs)
        if port is not None:
            ports.append((index, port))
    _check_log_names(ports, problems)
    return tuple(port for _, port in ports)


_BOOT_CAPTURE_NAME = re.compile(r"(.+)\.boot-[0-9]+")  # NAME.boot-SEQ(.log): obs/consolelog_policy.py


def _check_log_names(ports: list[tuple[int, PortConfig]], problems: Problems) -> None:
    """A console named like another's boot capture (``a.boot-1`` beside ``a``) would write its log into that
    capture's file in a shared log directory, and ``a``'s boot retention would delete it."""
    logged = {(port.name, port.log.dir) for _, port in ports if port.log is not None}
    for index, port in ports:
        match = _BOOT_CAPTURE_NAME.fullmatch(port.name)
        if port.log is not None and match and (match.group(1), port.log.dir) in logged:
            problems.add(
                f"ports[{index}].name",
                f"{show(port.name)} is the file name of a boot capture of console {show(match.group(1))} "
                f"in {port.log.dir}: rename it, or give one of them its own log_dir",
            )


def _parse_port(
    index: int,
    raw: object,
    defaults: _Defaults,
    claims: _Claims,
    problems: Problems,
    logs: _LogsTable | None = None,
) -> PortConfig | None:
    path = f"ports[{index}]"
    table = as_table(raw, path, problems)
    if table is None:
        return None
    own = check_table(
        table,
        path,
        (*_PORT_ONLY_KEYS, *_INHERITABLE_KEYS),
        problems,
        sub_tables=[_SERIAL_TABLE, _HYPERVISOR_TABLE],
    )
    require(own, (_Port.name, _Port.device), problems)
    values, builtin = Layered(own, defaults.port), _BUILTIN_PORT
    _check_port_limits(values, path, problems)

    name, device = own.get(_Port.name), own.get(_Port.device)
    if name is not None:
        _claim_name(name, path, claims, problems)
    if device is not None:
        _claim_device(device, path, claims, problems)
    telnet, telnet_readonly = own.get(_Port.telnet), own.get(_Port.telnet_readonly)
    telnet_tls = values.value(_Port.telnet_tls, builtin.telnet_tls)
    if telnet_tls and (telnet is not None or telnet_readonly is not None):
        tls_setting = values.setting(_Port.telnet_tls, False)
        claims.tls_users.append(tls_setting.origin or path if tls_setting else path)
    for key, address, capability in (
        (_Port.telnet, telnet, "type into the console"),
        (_Port.telnet_readonly, telnet_readonly, "read the console"),
    ):
        if address is not None:
            at = key_path(path, key.name)
            _claim_listener(address, at, capability, claims, problems, tls=telnet_tls)
    serial = _parse_port_serial(table, path, device, defaults.serial, problems)
    hypervisor = None
    if _HYPERVISOR_TABLE in table:
        hypervisor = check_hypervisor(table[_HYPERVISOR_TABLE], key_path(path, _HYPERVISOR_TABLE), problems)
        if hypervisor is None:
            return None
    if name is None or device is None or serial is None:
        return None

    notices = values.value(_Port.notices, builtin.notices)
    per_address = _sessions_per_address(values)
    port = PortConfig(
        name=name,
        device=device,
        telnet=telnet,
        telnet_readonly=telnet_readonly,
        raw=values.value(_Port.raw, builtin.raw),
        takeover=values.value(_Port.takeover, builtin.takeover),
        ask_timeout_s=values.value(_Port.ask_timeout_s, builtin.ask_timeout_s),
        enabled=values.value(_Port.enabled, builtin.enabled),
        notices=notices,
        escape=_effective_escape(values, notices),
        scrollback_bytes=values.value(_Port.scrollback_bytes, builtin.scrollback_bytes),
        replay_bytes=values.value(_Port.replay_bytes, builtin.replay_bytes),
        replay_lines=values.value(_Port.replay_lines, builtin.replay_lines),
        slow_reader=values.value(_Port.slow_reader, builtin.slow_reader),
        client_buffer_bytes=values.value(_Port.client_buffer_bytes, builtin.client_buffer_bytes),
        input_rate_bytes_per_s=_input_rate(values, path, problems),
        device_buffer_bytes=values.value(_Port.device_buffer_bytes, builtin.device_buffer_bytes),
        reconnect_initial_s=values.value(_Port.reconnect_initial_s, builtin.reconnect_initial_s),
        reconnect_max_s=values.value(_Port.reconnect_max_s, builtin.reconnect_max_s),
        key_profile=values.value(_Port.key_profile, builtin.key_profile),
        max_sessions=values.value(_Port.max_sessions, builtin.max_sessions),
        max_sessions_per_address=(
            builtin.max_sessions_per_address if per_address is None else per_address.value
        ),
        telnet_tls=telnet_tls,
        writer_idle_timeout_s=values.value(_Port.writer_idle_timeout_s, builtin.writer_idle_timeout_s),
        writer_idle_action=values.value(_Port.writer_idle_action, builtin.writer_idle_action),
        logout_sequence=values.value(_Port.logout_sequence, builtin.logout_sequence),
        group=own.get(_Port.group),
        serial=serial,
        hypervisor=hypervisor,
        health=values.value(_Port.health, builtin.health),
        health_patterns=values.value(_Port.health_patterns, builtin.health_patterns),
        log=_port_log(values, logs or _LogsTable(LogSettings(dir=Path("/")), False), path, problems),
    )
    # An invalid value of the port's own was reported by check_table; `values` stood in the built-in for it.
    return port if values.ok else None


def _input_rate(values: Layered, path: str, problems: Problems) -> int:
    """``input_rate_bytes_per_s``, or its deprecated spelling ``input_rate_bps`` (same unit: bytes)."""
    old = values.setting(_Port.input_rate_bps, 0)
    if not values.is_set(_Port.input_rate_bps) or old is None:
        return values.value(_Port.input_rate_bytes_per_s, _BUILTIN_PORT.input_rate_bytes_per_s)
    at = old.origin or key_path(path, "input_rate_bps")
    if values.is_set(_Port.input_rate_bytes_per_s):
        problems.add(at, "set only input_rate_bytes_per_s; input_rate_bps is its old name")
        return _BUILTIN_PORT.input_rate_bytes_per_s
    problems.warn(
        at,
        "deprecated: it is read as bytes per second (not bits, as 'bps' suggests); rename it to "
        "input_rate_bytes_per_s",
    )
    return old.value


def _effective_escape(values: Layered, notices: NoticePolicy) -> str:
    """The escape key, whose default depends on ``notices``.

    Under ``notices = "none"`` the stream belongs to a program (a binary protocol, a log collector) and no one
    reads serialmuxd's answers, so the escape key is off unless the port or [defaults] sets one.
    """
    if notices is NoticePolicy.NONE and not values.is_set(_Port.escape):
        return ""
    return values.value(_Port.escape, _BUILTIN_PORT.escape)


def _sessions_per_address(values: Layered) -> Setting[int] | None:
    """max_sessions_per_address, whose built-in 50 yields to a smaller max_sessions instead of refusing it.

    Only a value someone wrote can contradict max_sessions; ``max_sessions = 5`` alone means 5 and 5.
    None when the value is invalid (already reported).
    """
    per_address = values.setting(_Port.max_sessions_per_address, _BUILTIN_PORT.max_sessions_per_address)
    total = values.setting(_Port.max_sessions, _BUILTIN_PORT.max_sessions)
    if per_address is not None and per_address.origin is None and total is not None:
        return Setting(min(per_address.value, total.value), None)
    return per_address


def _check_port_limits(values: Layered, path: str, problems: Problems) -> None:
    """Keys that bound one another, on the values this port ends up with wherever each was set."""
    builtin = _BUILTIN_PORT
    check_not_above(
        "replay_bytes",
        values.setting(_Port.replay_bytes, builtin.replay_bytes),
        "scrollback_bytes",
        values.setting(_Port.scrollback_bytes, builtin.scrollback_bytes),
        path,
        problems,
    )
    check_not_above(
        "reconnect_initial_s",
        values.setting(_Port.reconnect_initial_s, builtin.reconnect_initial_s),
        "reconnect_max_s",
        values.setting(_Port.reconnect_max_s, builtin.reconnect_max_s),
        path,
        problems,
    )
    check_not_above(
        "max_sessions_per_address",
        _sessions_per_address(values),
        "max_sessions",
        values.setting(_Port.max_sessions, builtin.max_sessions),
        path,
        problems,
    )


def _parse_port_serial(
    table: Mapping[str, object],
    path: str,
    device: DeviceSpec | None,
    default_serial: CheckedTable,
    problems: Problems,
) -> SerialSettings | None:
    """[defaults.serial] overlaid key by key with this port's [ports.serial]."""
    serial_path = key_path(path, _SERIAL_TABLE)
    own = CheckedTable(serial_path)
    if _SERIAL_TABLE in table:
        serial_table = as_table(table[_SERIAL_TABLE], serial_path, problems)
        if serial_table is None:
            return None
        own = check_table(serial_table, serial_path, _SERIAL_KEYS, problems)
        # [defaults.serial] is fine for every port, but a port's own termios settings on a socket are a
        # mistake (probably the wrong device), so they are refused rather than ignored.
        if device is not None and device.kind is not DeviceKind.TTY:
            problems.add(
                serial_path,
                f"[ports.serial] is only for tty: devices; this port's device is {show(device.raw)}",
            )
    values, builtin = Layered(own, default_serial), _BUILTIN_SERIAL
    serial = SerialSettings(
        baud=values.value(_Serial.baud, builtin.baud),
        bytesize=values.value(_Serial.bytesize, builtin.bytesize),
        parity=values.value(_Serial.parity, builtin.parity),
        stopbits=values.value(_Serial.stopbits, builtin.stopbits),
        flow=values.value(_Serial.flow, builtin.flow),
        exclusive=values.value(_Serial.exclusive, builtin.exclusive),
    )
    return serial if values.ok else None


# ----------------------------------------------------------------------------------------------------
# Checks across ports


def _claim_name(name: str, path: str, claims: _Claims, problems: Problems) -> None:
    first = claims.names.setdefault(name, path)
    if first != path:
        problems.add(f"{path}.name", f"duplicate name {show(name)}, already used by {first}")


def _device_identity(device: DeviceSpec) -> tuple[str, str] | None:
    """What makes two device strings the same device; None for exec (each runs its own program)."""
    if device.kind in (DeviceKind.TTY, DeviceKind.UNIX):
        # realpath: /dev/serial/by-id/... and /dev/ttyUSB0 are one device; two openers would steal bytes.
        return ("path", os.path.realpath(device.path))
    if device.kind is DeviceKind.TCP:
        host = device.host.lower()
        with contextlib.suppress(ValueError):
            host = ipaddress.ip_address(host).compressed  # "::0001" and "::1" are one address
        return ("tcp", str(ListenAddress(host, device.port)))
    return None


def _claim_device(device: DeviceSpec, path: str, claims: _Claims, problems: Problems) -> None:
    identity = _device_identity(device)
    if identity is None:
        return
    first = claims.devices.setdefault(identity, (path, device.raw))
    if first[0] != path:
        same = "" if first[1] == device.raw else f" ({show(first[1])}; both are {identity[1]})"
        problems.add(f"{path}.device", f"{show(device.raw)} is already the device of {first[0]}{same}")


def _bind_keys(address: ListenAddress) -> set[tuple[str, str]]:
    """The local addresses a listener occupies, as (family, address); '*' is the family's wildcard."""
    host = address.host.lower()
    if host == "localhost":
        return {("ipv4", "127.0.0.1"), ("ipv6", "::1")}
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return {("name", host)}  # not resolved here: a name clashes only with itself
    return {(f"ipv{ip.version}", "*" if ip.is_unspecified else ip.compressed)}


def _listeners_clash(a: ListenAddress, b: ListenAddress) -> bool:
    # Port 0 never clashes: the kernel picks a different free port for each.  On Linux a wildcard listener
    # and a specific address of the same family on one port clash too (EADDRINUSE at startup).
    if a.port != b.port or a.port == 0:
        return False
    return any(
        family_a == family_b and (host_a == host_b or "*" in (host_a, host_b))
        for family_a, host_a in _bind_keys(a)
        for family_b, host_b in _bind_keys(b)
    )


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other name may resolve to a public address, now or later
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _claim_listener(
    address: ListenAddress,
    at: str,
    capability: str,
    claims: _Claims,
    problems: Problems,
    *,
    tls: bool = False,
) -> None:
    same_port = claims.listeners_by_port.setdefault(address.port, [])
    for other, other_path in same_port if address.port else ():  # port 0 never clashes
        if _listeners_clash(address, other):
            same = "" if str(other) == str(address) else f" ({other})"
            problems.add(at, f"{show(str(address))} is already used by {other_path}{same}")
            break
    claims.listeners.append((address, at))
    same_port.append((address, at))
    if is_loopback_host(address.host):
        return
    claims.remote.append(at)
    # Off this host only with credentials and encryption both; the explicit override stays (and is logged
    # loudly at start-up) for networks the operator has secured otherwise.
    if claims.allow_remote or (claims.authenticated and tls):
        return
    missing = " and ".join(
        what for what, absent in (("[auth]", not claims.authenticated), ("TLS", not tls)) if absent
    )
    problems.add(
        at,
        f"{show(str(address))} is not a loopback address and has no {missing}: anyone who can reach it "
        f"could {capability}{' unseen on the wire' if claims.authenticated else ''}; bind 127.0.0.1, "
        "configure [auth] and TLS for it (http.tls or the port's telnet_tls, with [tls]), or set "
        "daemon.allow_remote_unauthenticated = true",
    )
