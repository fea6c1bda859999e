"""Configuration: TOML in, a validated, frozen ``Config`` out.

Validation collects *every* problem before failing so that ``serialmuxd check-config`` can show them all at
once, each as ``FILE: key.path: reason`` (see ``errors.ConfigError``).  Key paths are written the way a reader
finds them in the file: ``daemon.log_level``, ``ports[1].takeover``, ``ports[0].serial.parity``; problems that
stop the file from being read at all use ``(file)`` (unreadable, not UTF-8) or ``(toml)`` (syntax).

The validator is hand-written rather than msgspec/pydantic because those stop at the first error or report
paths that do not match the file.  It is a table per TOML table (key -> check function); each check turns
one TOML value into its parsed value or raises ``_Invalid(reason)``, which is recorded and checking goes on.
A port's value comes from three layers, the first that sets it wins: the port's own key, ``[defaults]``,
the dataclass default below.  ``[ports.serial]`` overlays ``[defaults.serial]`` key by key the same way.
See ``config.example.toml`` for every key documented.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import enum
import ipaddress
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from .adapters import HypervisorConfig, parse_hypervisor
from .core.policy import SlowReaderPolicy, TakeoverPolicy
from .errors import ConfigError
from .proto.escape import parse_escape_key


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
    key_profile: str = "xterm"  # how named keys (F1-F12) are sent: xterm (Linux) | vt100+ (Windows EMS/SAC)
    serial: SerialSettings = field(default_factory=SerialSettings)
    hypervisor: HypervisorConfig | None = None  # [ports.hypervisor]: NMI / reset / restart / VM state


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


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # file name (or "<embedded demo>") for messages
    daemon: DaemonSettings
    http: HttpSettings
    ports: tuple[PortConfig, ...]


# ----------------------------------------------------------------------------------------------------
# Public entry points


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file; raise ``ConfigError`` listing every problem."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, [("(file)", exc.strerror or str(exc))]) from None
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
    problems = _Problems()
    config = _build_config(document, source, problems)
    if problems.items:
        raise ConfigError(source, problems.items)
    return config


# ----------------------------------------------------------------------------------------------------
# Limits.  They bound memory per port and per session (scrollback and buffers are allocated per port/client)
# and reject values that are surely typos (a 2-hour reconnect delay, a 10 GiB ring).

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

SCROLLBACK_BYTES_RANGE = (4 * KIB, GIB)
REPLAY_BYTES_RANGE = (0, GIB)  # and never above the port's scrollback_bytes
REPLAY_LINES_RANGE = (0, 100_000)
HTTP_BODY_BYTES_RANGE = (1024, 16 * 1024 * 1024)
CLIENT_BUFFER_BYTES_RANGE = (4 * KIB, 64 * MIB)
DEVICE_BUFFER_BYTES_RANGE = (KIB, 64 * MIB)
INPUT_RATE_BPS_RANGE = (0, 1_000_000_000)
RECONNECT_MAX_S = 3600.0
SHUTDOWN_TIMEOUT_MAX_S = 300.0
BAUD_RANGE = (50, 4_000_000)
BYTESIZE_RANGE = (5, 8)
UNIX_PATH_MAX_BYTES = 108  # sizeof(sun_path) on Linux; a longer socket path cannot be connected to

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")
PARITIES = ("none", "even", "odd", "mark", "space")
KEY_PROFILES = ("xterm", "vt100+")
FLOW_CONTROLS = ("none", "rtscts", "xonxoff")
STOP_BITS = (1, 1.5, 2)

_SHOW_MAX = 60  # a bad value is echoed in the message, but a 10 KiB string must not flood the terminal

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
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_DEVICE_FORMS = "tty:PATH, unix:PATH, tcp:HOST:PORT, exec:COMMAND ARGS..."


# ----------------------------------------------------------------------------------------------------
# Collecting problems


class _Invalid(Exception):
    """Raised by a value check; the caller records the reason against the key path and carries on."""


_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.StrEnum)
_Check = Callable[[object], Any]  # a value check: TOML value in, parsed value out, or raises _Invalid


class _Problems:
    """Every ``(key path, reason)`` found, in discovery order, each once.

    Once, because a bad value inherited from ``[defaults]`` would otherwise be reported for every port.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], None] = {}

    @property
    def items(self) -> list[tuple[str, str]]:
        return list(self._seen)

    def add(self, key: str, reason: str) -> None:
        self._seen.setdefault((key, reason), None)

    def check(self, key: str, check: Callable[[object], _T], value: object) -> _T | None:
        """Run one value check; on failure record it and return None (no valid value is ever None)."""
        try:
            return check(value)
        except _Invalid as exc:
            self.add(key, str(exc))
            return None


def _show(value: object) -> str:
    """The bad value for a message: ``repr`` escapes control characters; long values are cut."""
    if isinstance(value, bool):
        return "true" if value else "false"  # as TOML spells it, not Python's True
    text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 3] + "..."


def _toml_type(value: object) -> str:
    # bool before int and datetime before date: they are subclasses.
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (dict, "table"),
        (list, "array"),
        (datetime.datetime, "datetime"),
        (datetime.date, "date"),
        (datetime.time, "time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _got(value: object) -> str:
    return f"got {_toml_type(value)} {_show(value)}"


def _key_path(parent: str, key: str) -> str:
    segment = key if _BARE_KEY_RE.fullmatch(key) else _show(key)  # quoted TOML keys may hold anything
    return f"{parent}.{segment}" if parent else segment


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """'; did you mean 'x'?' for a near miss (case-insensitive), else ''."""
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(word.lower(), by_lower, n=1)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def _unknown_key(key: str, known: Iterable[str]) -> str:
    names = sorted(known)
    return "unknown key" + (_did_you_mean(key, names) or f" (known keys: {', '.join(names)})")


# ----------------------------------------------------------------------------------------------------
# Value checks: each takes a TOML value and returns the parsed value or raises _Invalid.


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected boolean, {_got(value)}")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected string, {_got(value)}")
    return value


def _host_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid(f"expected an array of host names, {_got(value)}")
    names = []
    for item in value:
        if not isinstance(item, str):
            raise _Invalid(f"expected host names (strings), {_got(item)}")
        _check_host(item.strip("[]"), item)
        names.append(item.lower().strip("[]"))
    return tuple(names)


def _size_text(number: int) -> str:
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if number >= unit and number % unit == 0:
            return f"{number} ({number // unit} {name})"
    return str(number)


def _integer(low: int, high: int, *, size: bool = False) -> Callable[[object], int]:
    """An integer in [low, high]; ``size`` shows byte bounds as KiB/MiB/GiB too."""
    show_bound = _size_text if size else str

    def check(value: object) -> int:
        # TOML booleans are not numbers: `replay_lines = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected integer, {_got(value)}")
        if not low <= value <= high:
            raise _Invalid(f"must be between {show_bound(low)} and {show_bound(high)}, got {_show(value)}")
        return value

    return check


def _seconds(high: float) -> Callable[[object], float]:
    """A duration in (0, high]; an integer is accepted (``5`` means 5.0)."""

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"expected number, {_got(value)}")
        # Written so that nan fails too (every comparison with nan is false); inf fails the upper bound.
        if not (0 < value <= high):
            raise _Invalid(f"must be greater than 0 and at most {high:g}, got {_show(value)}")
        return float(value)

    return check


def _choice(allowed: Sequence[str]) -> Callable[[object], str]:
    def check(value: object) -> str:
        text = _string(value)
        if text not in allowed:
            listing = ", ".join(repr(word) for word in allowed)
            raise _Invalid(f"must be one of {listing}, got {_show(text)}{_did_you_mean(text, allowed)}")
        return text

    return check


def _enum_choice(kind: type[_E]) -> Callable[[object], _E]:
    choose = _choice([member.value for member in kind])
    return lambda value: kind(choose(value))


def _stop_bits(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected number, {_got(value)}")
    if value not in STOP_BITS:
        raise _Invalid(f"must be 1, 1.5 or 2, got {_show(value)}")
    return float(value)


def _absolute_path(text: str) -> str:
    if "\0" in text:
        raise _Invalid(f"a path cannot contain NUL, got {_show(text)}")
    if not os.path.isabs(text):
        raise _Invalid(f"must be an absolute path, got {_show(text)}")
    return text


def _state_dir(value: object) -> Path:
    return Path(_absolute_path(_string(value)))


def _name(value: object) -> str:
    text = _string(value)
    if not PORT_NAME_RE.fullmatch(text):
        raise _Invalid(
            "must be 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit "
            f"(names appear in URLs, file names and metric labels), got {_show(text)}"
        )
    return text


def _escape(value: object) -> str:
    text = _string(value)
    if text == "":
        return text  # in-band commands disabled
    if not _ESCAPE_RE.fullmatch(text):
        upper_hint = f"; did you mean {text.upper()!r}?" if _ESCAPE_RE.fullmatch(text.upper()) else ""
        raise _Invalid(
            f'must be "" (no escape key) or caret notation ^A..^_ such as "^E", got {_show(text)}{upper_hint}'
        )
    if text in _ESCAPE_UNUSABLE:
        raise _Invalid(f"{text!r} cannot be the escape key: {_ESCAPE_UNUSABLE[text]}")
    try:
        parse_escape_key(text)  # the front ends' parser has the last word: no key passes here and fails there
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    return text  # kept as written: front ends show it in help texts


# Host and port: shared by listen addresses and tcp: devices.


def _check_host(host: str, written: str) -> None:
    if not host:
        raise _Invalid(
            f"the host is missing (write 127.0.0.1:PORT for this machine only), got {_show(written)}"
        )
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return
    if all(char.isdigit() or char == "." for char in host):
        # "127.0.0.01" is no valid address, and resolvers disagree on what it means as a name.
        raise _Invalid(f"{_show(host)} is not a valid IPv4 address, in {_show(written)}")
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise _Invalid(f"{_show(host)} is neither an IP address nor a valid host name, in {_show(written)}")


def _split_host_port(text: str, lowest_port: int, form: str, written: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host without brackets, port); ``written`` is shown in messages."""
    if text.startswith("["):
        host, bracket, port_text = text[1:].partition("]:")
        if not bracket:
            raise _Invalid(f"expected {form} with an IPv6 address as [ADDRESS]:PORT, got {_show(written)}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"{_show(host)} is not an IPv6 address, in {_show(written)}") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise _Invalid(f"expected {form}, got {_show(written)}")
        if ":" in host:
            raise _Invalid(f"write an IPv6 address in brackets, like [::1]:PORT, got {_show(written)}")
        _check_host(host, written)
    if not _PORT_RE.fullmatch(port_text) or not lowest_port <= int(port_text) <= 65535:
        raise _Invalid(f"the port must be a number from {lowest_port} to 65535, got {_show(written)}")
    return host, int(port_text)


def _listen(value: object) -> ListenAddress:
    # Port 0 = the kernel picks a free port; tests use it.
    text = _string(value)
    host, port = _split_host_port(text, 0, "HOST:PORT", text)
    return ListenAddress(host, port)


def _device(value: object) -> DeviceSpec:
    raw = _string(value)
    scheme, colon, rest = raw.partition(":")
    kinds = {kind.value: kind for kind in DeviceKind}
    if not colon or scheme not in kinds:
        if raw.startswith("/"):
            hint = "; write tty:PATH for a serial device or unix:PATH for a socket"
        else:
            hint = _did_you_mean(scheme, kinds) if colon else ""
        raise _Invalid(f"unknown device scheme, expected one of {_DEVICE_FORMS}, got {_show(raw)}{hint}")
    kind = kinds[scheme]
    if kind is DeviceKind.TTY:
        return DeviceSpec(kind, raw, path=_absolute_path(rest))
    if kind is DeviceKind.UNIX:
        path = _absolute_path(rest)
        if len(os.fsencode(path)) > UNIX_PATH_MAX_BYTES:
            raise _Invalid(
                f"a unix socket path can be at most {UNIX_PATH_MAX_BYTES} bytes, "
                f"this one is {len(os.fsencode(path))}: {_show(raw)}"
            )
        return DeviceSpec(kind, raw, path=path)
    if kind is DeviceKind.TCP:
        host, port = _split_host_port(rest, 1, "tcp:HOST:PORT", raw)
        return DeviceSpec(kind, raw, host=host, port=port)
    if "\0" in rest:
        raise _Invalid(f"a command cannot contain NUL, got {_show(raw)}")  # exec() would refuse it
    try:
        argv = shlex.split(rest)
    except ValueError as exc:  # unbalanced quotes, a trailing backslash
        raise _Invalid(f"cannot split the command line ({exc}), got {_show(raw)}") from None
    if not argv:
        raise _Invalid(f"exec: needs a command, got {_show(raw)}")
    return DeviceSpec(kind, raw, argv=tuple(argv))


# ----------------------------------------------------------------------------------------------------
# Which keys each table takes, and how each value is checked.  The key names are the dataclass field names.

_DAEMON_CHECKS: dict[str, _Check] = {
    "state_dir": _state_dir,
    "log_level": _choice(LOG_LEVELS),
    "log_format": _choice(LOG_FORMATS),
    "shutdown_timeout_s": _seconds(SHUTDOWN_TIMEOUT_MAX_S),
    "allow_remote_unauthenticated": _boolean,
}

_HTTP_CHECKS: dict[str, _Check] = {
    "listen": _listen,
    "max_body_bytes": _integer(*HTTP_BODY_BYTES_RANGE, size=True),
    "ws_max_message_bytes": _integer(*HTTP_BODY_BYTES_RANGE, size=True),
    "ws_heartbeat_s": _seconds(3600),
    "allowed_hosts": _host_names,
}

_SERIAL_CHECKS: dict[str, _Check] = {
    "baud": _integer(*BAUD_RANGE),
    "bytesize": _integer(*BYTESIZE_RANGE),
    "parity": _choice(PARITIES),
    "stopbits": _stop_bits,
    "flow": _choice(FLOW_CONTROLS),
    "exclusive": _boolean,
}

# Per-port keys that [defaults] may set for every port.
_INHERITABLE_CHECKS: dict[str, _Check] = {
    "raw": _boolean,
    "takeover": _enum_choice(TakeoverPolicy),
    "enabled": _boolean,
    "escape": _escape,
    "scrollback_bytes": _integer(*SCROLLBACK_BYTES_RANGE, size=True),
    "replay_bytes": _integer(*REPLAY_BYTES_RANGE, size=True),
    "replay_lines": _integer(*REPLAY_LINES_RANGE),
    "slow_reader": _enum_choice(SlowReaderPolicy),
    "client_buffer_bytes": _integer(*CLIENT_BUFFER_BYTES_RANGE, size=True),
    "input_rate_bps": _integer(*INPUT_RATE_BPS_RANGE),
    "device_buffer_bytes": _integer(*DEVICE_BUFFER_BYTES_RANGE, size=True),
    "reconnect_initial_s": _seconds(RECONNECT_MAX_S),
    "reconnect_max_s": _seconds(RECONNECT_MAX_S),
    "key_profile": _choice(KEY_PROFILES),
}

# Per-port keys that identify one port, so inheriting them could only produce a conflict.
_PORT_ONLY_CHECKS: dict[str, _Check] = {
    "name": _name,
    "device": _device,
    "telnet": _listen,
    "telnet_readonly": _listen,
}
_HYPERVISOR_TABLE = "hypervisor"  # [ports.hypervisor], validated by serialmuxd.adapters.parse_hypervisor
_NOT_IN_DEFAULTS = {
    key: "belongs to one port; set it in each [[ports]] table, not in [defaults]"
    for key in (*_PORT_ONLY_CHECKS, _HYPERVISOR_TABLE)
}
_REQUIRED_PORT_KEYS = ("name", "device")
_SERIAL_TABLE = "serial"  # the one sub-table of [[ports]] and [defaults]

# Built-in values of the inheritable keys, for cross-checks such as replay_bytes <= scrollback_bytes.
_BUILTIN_PORT_VALUES: dict[str, object] = {
    item.name: item.default for item in fields(PortConfig) if item.name in _INHERITABLE_CHECKS
}

# key -> (parsed value, or None if it failed its check; key path it was set at, or None for built-in).
_Layer = dict[str, tuple[Any, str | None]]


def _table(value: object, path: str, problems: _Problems) -> dict[str, object] | None:
    if isinstance(value, dict):
        return value
    problems.add(path, f"expected a table, {_got(value)}")
    return None


def _check_table(
    table: Mapping[str, object],
    path: str,
    checks: Mapping[str, _Check],
    problems: _Problems,
    *,
    sub_tables: Iterable[str] = (),
    refused: Mapping[str, str] | None = None,
) -> _Layer:
    """Check every key of one table in file order.

    Returns the valid values with where they were set; an invalid value is kept as None so that a lower layer
    ([defaults], built-in) does not silently stand in for it.  ``sub_tables`` are known keys checked by the
    caller; ``refused`` are known keys that are not allowed here, with the reason.
    """
    sub_tables = tuple(sub_tables)
    refused = refused or {}
    layer: _Layer = {}
    for key, value in table.items():
        key_path = _key_path(path, key)
        if key in checks:
            layer[key] = (problems.check(key_path, checks[key], value), key_path)
        elif key in refused:
            problems.add(key_path, refused[key])
        elif key not in sub_tables:
            problems.add(key_path, _unknown_key(key, [*checks, *sub_tables, *refused]))
    return layer


def _values(layer: _Layer) -> dict[str, Any]:
    return {key: value for key, (value, _) in layer.items()}


def _valid_only(layer: _Layer) -> _Layer:
    return {key: entry for key, entry in layer.items() if entry[0] is not None}


def _is_valid(layer: _Layer) -> bool:
    return all(value is not None for value, _ in layer.values())


# ----------------------------------------------------------------------------------------------------
# Tables


@dataclass(slots=True)
class _Claims:
    """What only one port may have, and who had it first: names, devices, listen addresses."""

    allow_remote: bool
    names: dict[str, str] = field(default_factory=dict)  # name -> path of the port that has it
    devices: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # identity -> (path, how)
    listeners: list[tuple[ListenAddress, str]] = field(default_factory=list)  # (address, key path)


def _build_config(document: dict[str, Any], source: str, problems: _Problems) -> Config:
    known = ("daemon", "http", "defaults", "ports")
    for key in document:
        if key not in known:
            problems.add(_key_path("", key), _unknown_key(key, known))
    daemon = _parse_daemon(document.get("daemon", {}), problems)
    claims = _Claims(allow_remote=daemon.allow_remote_unauthenticated)
    http = _parse_http(document.get("http", {}), claims, problems)
    defaults, default_serial = _parse_defaults(document.get("defaults", {}), problems)
    ports = _parse_ports(document.get("ports"), defaults, default_serial, claims, problems)
    return Config(source=source, daemon=daemon, http=http, ports=ports)


def _parse_daemon(raw: object, problems: _Problems) -> DaemonSettings:
    table = _table(raw, "daemon", problems)
    if table is None:
        return DaemonSettings()
    layer = _check_table(table, "daemon", _DAEMON_CHECKS, problems)
    # Keep the valid keys even if another one is bad: allow_remote_unauthenticated decides whether the
    # listeners are reported too, and that must not depend on a typo in log_level.
    return DaemonSettings(**_values(_valid_only(layer)))


def _parse_http(raw: object, claims: _Claims, problems: _Problems) -> HttpSettings:
    table = _table(raw, "http", problems)
    if table is None:
        return HttpSettings()
    layer = _check_table(table, "http", _HTTP_CHECKS, problems)
    values = _values(_valid_only(layer))
    listen = values.get("listen")
    if listen is not None:
        _claim_listener(listen, "http.listen", "type into the console", claims, problems)
    return HttpSettings(**values)  # no [http] listen: no HTTP server


def _parse_defaults(raw: object, problems: _Problems) -> tuple[_Layer, _Layer]:
    """[defaults] and [defaults.serial], checked once; ports fall back to their valid values."""
    table = _table(raw, "defaults", problems)
    if table is None:
        return {}, {}
    layer = _check_table(
        table, "defaults", _INHERITABLE_CHECKS, problems, sub_tables=[_SERIAL_TABLE], refused=_NOT_IN_DEFAULTS
    )
    serial: _Layer = {}
    if _SERIAL_TABLE in table:
        serial_table = _table(table[_SERIAL_TABLE], "defaults.serial", problems)
        if serial_table is not None:
            serial = _check_table(serial_table, "defaults.serial", _SERIAL_CHECKS, problems)
    # An invalid default is reported here, once; ports then use the built-in value instead.
    return _valid_only(layer), _valid_only(serial)


def _parse_ports(
    raw: object, defaults: _Layer, default_serial: _Layer, claims: _Claims, problems: _Problems
) -> tuple[PortConfig, ...]:
    if raw is None or raw == []:
        problems.add("ports", "at least one [[ports]] table is required")
        return ()
    if not isinstance(raw, list):
        problems.add("ports", f"must be an array of tables: write [[ports]] (two brackets), {_got(raw)}")
        return ()
    ports = []
    for index, item in enumerate(raw):
        port = _parse_port(index, item, defaults, default_serial, claims, problems)
        if port is not None:
            ports.append(port)
    return tuple(ports)


def _parse_port(
    index: int, raw: object, defaults: _Layer, default_serial: _Layer, claims: _Claims, problems: _Problems
) -> PortConfig | None:
    path = f"ports[{index}]"
    table = _table(raw, path, problems)
    if table is None:
        return None
    own = _check_table(
        table,
        path,
        {**_PORT_ONLY_CHECKS, **_INHERITABLE_CHECKS},
        problems,
        sub_tables=[_SERIAL_TABLE, _HYPERVISOR_TABLE],
    )
    for key in _REQUIRED_PORT_KEYS:
        if key not in table:
            problems.add(f"{path}.{key}", "required key is missing")
    builtin: _Layer = {key: (value, None) for key, value in _BUILTIN_PORT_VALUES.items()}
    effective = {**builtin, **defaults, **own}
    _check_not_above(effective, "replay_bytes", "scrollback_bytes", path, problems)
    _check_not_above(effective, "reconnect_initial_s", "reconnect_max_s", path, problems)

    name: str | None = own.get("name", (None, None))[0]
    device: DeviceSpec | None = own.get("device", (None, None))[0]
    if name is not None:
        _claim_name(name, path, claims, problems)
    if device is not None:
        _claim_device(device, path, claims, problems)
    for key, capability in (("telnet", "type into the console"), ("telnet_readonly", "read the console")):
        address = own.get(key, (None, None))[0]
        if address is not None:
            _claim_listener(address, f"{path}.{key}", capability, claims, problems)
    serial = _parse_port_serial(table, path, device, default_serial, problems)
    hypervisor = None
    if _HYPERVISOR_TABLE in table:
        hypervisor, found = parse_hypervisor(table[_HYPERVISOR_TABLE], f"{path}.{_HYPERVISOR_TABLE}")
        for key_path, reason in found:
            problems.add(key_path, reason)
        if hypervisor is None:
            return None

    if name is None or device is None or serial is None or not _is_valid(effective):
        return None
    return PortConfig(**_values(effective), serial=serial, hypervisor=hypervisor)


def _parse_port_serial(
    table: Mapping[str, object],
    path: str,
    device: DeviceSpec | None,
    default_serial: _Layer,
    problems: _Problems,
) -> SerialSettings | None:
    """[defaults.serial] overlaid key by key with this port's [ports.serial]."""
    own: _Layer = {}
    if _SERIAL_TABLE in table:
        serial_path = f"{path}.serial"
        serial_table = _table(table[_SERIAL_TABLE], serial_path, problems)
        if serial_table is None:
            return None
        own = _check_table(serial_table, serial_path, _SERIAL_CHECKS, problems)
        # [defaults.serial] is fine for every port, but a port's own termios settings on a socket are a
        # mistake (probably the wrong device), so they are refused rather than ignored.
        if device is not None and device.kind is not DeviceKind.TTY:
            problems.add(
                serial_path,
                f"[ports.serial] is only for tty: devices; this port's device is {_show(device.raw)}",
            )
    effective = {**default_serial, **own}
    return SerialSettings(**_values(effective)) if _is_valid(effective) else None


# ----------------------------------------------------------------------------------------------------
# Checks across keys and across ports


def _origin_note(origin: str | None, key_path: str) -> str:
    if origin is None:
        return " (built-in default)"
    return "" if origin == key_path else f" (set in {origin})"


def _check_not_above(
    effective: _Layer, low_key: str, high_key: str, port_path: str, problems: _Problems
) -> None:
    """``low_key <= high_key`` on the values this port ends up with, wherever each was set."""
    (low, low_origin), (high, high_origin) = effective[low_key], effective[high_key]
    if low is None or high is None or low <= high:
        return
    # Report at the key the user most likely has to change: one set on this port, else one in [defaults].
    origins = [origin for origin in (low_origin, high_origin) if origin is not None]
    own = [origin for origin in origins if origin.startswith(port_path + ".")]
    key_path = (own or origins)[0]
    problems.add(
        key_path,
        f"{low_key} = {low!r}{_origin_note(low_origin, key_path)} must not exceed "
        f"{high_key} = {high!r}{_origin_note(high_origin, key_path)}",
    )


def _claim_name(name: str, path: str, claims: _Claims, problems: _Problems) -> None:
    first = claims.names.setdefault(name, path)
    if first != path:
        problems.add(f"{path}.name", f"duplicate name {_show(name)}, already used by {first}")


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


def _claim_device(device: DeviceSpec, path: str, claims: _Claims, problems: _Problems) -> None:
    identity = _device_identity(device)
    if identity is None:
        return
    first = claims.devices.setdefault(identity, (path, device.raw))
    if first[0] != path:
        same = "" if first[1] == device.raw else f" ({_show(first[1])}; both are {identity[1]})"
        problems.add(f"{path}.device", f"{_show(device.raw)} is already the device of {first[0]}{same}")


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


def _is_loopback(host: str) -> bool:
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
    address: ListenAddress, key_path: str, capability: str, claims: _Claims, problems: _Problems
) -> None:
    for other, other_path in claims.listeners:
        if _listeners_clash(address, other):
            same = "" if str(other) == str(address) else f" ({other})"
            problems.add(key_path, f"{_show(str(address))} is already used by {other_path}{same}")
            break
    claims.listeners.append((address, key_path))
    if not claims.allow_remote and not _is_loopback(address.host):
        problems.add(
            key_path,
            f"{_show(str(address))} is not a loopback address; bind 127.0.0.1, or set "
            "daemon.allow_remote_unauthenticated = true: there is no authentication yet, "
            f"anyone who can reach it can {capability}",
        )
