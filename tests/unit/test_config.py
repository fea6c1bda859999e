"""The config loader: every rule gives one ``FILE: key.path: reason`` line, and all of them are reported."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from serialmuxd.config import (
    AuditSettings,
    AuthSettings,
    Config,
    DaemonSettings,
    DeviceKind,
    HttpSettings,
    ListenAddress,
    OidcConfig,
    PortConfig,
    SerialSettings,
    SlowReaderPolicy,
    SshSettings,
    TakeoverPolicy,
    TlsSettings,
    load_config,
    parse_config,
)
from serialmuxd.configcheck import Key
from serialmuxd.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
SOURCE = "t.toml"
PORT = '[[ports]]\nname = "vm1"\ndevice = "unix:/run/vm1.sock"\n'


def port(name: str = "vm1", device: str = "unix:/run/vm1.sock", extra: str = "") -> str:
    return f'[[ports]]\nname = "{name}"\ndevice = "{device}"\n{extra}\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    assert info.value.source == SOURCE
    return info.value.lines()


def assert_problem(text: str, key: str, reason_part: str) -> str:
    """The text fails with a line for ``key`` whose reason contains ``reason_part``; returns that line."""
    lines = problems(text)
    prefix = f"{SOURCE}: {key}: "
    matching = [line for line in lines if line.startswith(prefix) and reason_part in line[len(prefix) :]]
    assert matching, f"no {prefix!r}...{reason_part!r} in {lines}"
    return matching[0]


def only_port(text: str) -> PortConfig:
    config = parse_config(text, SOURCE)
    assert len(config.ports) == 1
    return config.ports[0]


# ---------------------------------------------------------------------------------------------------------
# The example file


def test_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.source == str(EXAMPLE)
    assert config.daemon.state_dir == Path("/var/lib/serialmuxd")
    assert config.daemon.allow_remote_unauthenticated is False
    assert config.http.listen == ListenAddress("127.0.0.1", 8480)
    by_name = {p.name: p for p in config.ports}
    assert {p.device.kind for p in config.ports} == set(DeviceKind)
    vm1 = by_name["vm1"]
    assert vm1.device.path == "/run/qemu/vm1-com1.sock"
    assert vm1.telnet_readonly == ListenAddress("127.0.0.1", 7101)
    switch = by_name["switch-core1"]
    assert switch.takeover is TakeoverPolicy.REFUSE
    assert switch.serial.baud == 9600
    assert switch.serial.bytesize == 8  # from the built-in default
    sol = by_name["host7-sol"]
    assert sol.device.argv[0] == "ipmitool"
    assert "-f" in sol.device.argv and "-P" not in sol.device.argv  # password from a file, never argv


def test_example_listeners_are_all_loopback() -> None:
    config = load_config(EXAMPLE)
    listeners = [config.http.listen] + [a for p in config.ports for a in (p.telnet, p.telnet_readonly)]
    assert {a.host for a in listeners if a is not None} == {"127.0.0.1"}


@pytest.mark.parametrize(
    "settings",
    [
        PortConfig,
        DaemonSettings,
        SerialSettings,
        HttpSettings,
        AuthSettings,
        OidcConfig,
        TlsSettings,
        AuditSettings,
        SshSettings,
    ],
)
def test_example_documents_every_key(settings: type) -> None:
    text = EXAMPLE.read_text()
    missing = [f.name for f in dataclasses.fields(settings) if not re.search(rf"\b{f.name}\b", text)]
    assert not missing, f"config.example.toml does not document {missing}"


def test_example_shows_the_real_defaults() -> None:
    """Every ``# key = value`` line of the example shows the built-in default of that key."""
    from serialmuxd.adapters.base import DEFAULT_TIMEOUT_S

    defaults: dict[str, object] = {"timeout_s": DEFAULT_TIMEOUT_S}  # [ports.hypervisor]
    for settings in (PortConfig, DaemonSettings, SerialSettings, HttpSettings, AuthSettings, OidcConfig):
        for item in dataclasses.fields(settings):
            if item.default is not dataclasses.MISSING:
                defaults[item.name] = item.default
    shown = re.findall(r"^# (\w+) = (.+)$", EXAMPLE.read_text(), flags=re.MULTILINE)
    assert len(shown) >= 20
    for key, value in shown:
        default = defaults[key]
        assert tomllib.loads(f"v = {value}")["v"] == (
            list(default) if isinstance(default, tuple) else default
        ), key


def test_validator_covers_every_field() -> None:
    """A field added to a dataclass must also be added to the validator (and then to the example)."""
    from serialmuxd import config as module

    def names(settings: type) -> set[str]:
        return {f.name for f in dataclasses.fields(settings)}

    def keys(schema: tuple[Key[Any], ...]) -> set[str]:
        return {key.name for key in schema}

    assert keys(module._DAEMON_KEYS) == names(DaemonSettings)
    assert keys(module._HTTP_KEYS) == names(HttpSettings)
    assert keys(module._SSH_KEYS) == names(SshSettings)
    assert keys(module._SERIAL_KEYS) == names(SerialSettings)
    deprecated_aliases = {"input_rate_bps"}  # read into input_rate_bytes_per_s, with a warning
    port_keys = {*keys(module._PORT_ONLY_KEYS), *keys(module._INHERITABLE_KEYS), "serial", "hypervisor"}
    # logs, log_dir and log_boot_pattern are resolved with [logs] into one field, log (LogSettings).
    port_keys = port_keys - {"logs", "log_dir", "log_boot_pattern"} | {"log"}
    assert port_keys - deprecated_aliases == names(PortConfig)
    assert keys(module._LOGS_KEYS) == names(module.LogSettings)


# ---------------------------------------------------------------------------------------------------------
# Minimal file, loading


def test_minimal_config_uses_builtin_defaults() -> None:
    config = parse_config(PORT, SOURCE)
    assert config == Config(
        source=SOURCE,
        daemon=DaemonSettings(),
        http=HttpSettings(),
        ports=(PortConfig(name="vm1", device=config.ports[0].device),),
    )
    assert config.ports[0].device.kind is DeviceKind.UNIX


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines() == [f"{path}: (file): No such file or directory"]


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert info.value.lines() == [f"{tmp_path}: (file): Is a directory"]


def test_load_config_toml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(PORT + "telnet = 127.0.0.1:7001\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [line] = info.value.lines()
    assert line.startswith(f"{path}: (toml): ")
    assert "line 4" in line


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(PORT.encode() + b"# caf\xe9 in latin-1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines() == [
        f"{path}: (file): not UTF-8 text (byte 0xe9 on line 4); TOML files must be UTF-8"
    ]


def test_load_config_accepts_a_bom_and_keeps_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xef\xbb\xbf" + PORT.encode())
    assert load_config(str(path)).source == str(path)


# ---------------------------------------------------------------------------------------------------------
# Unknown keys, types


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        (PORT + "[deamon]\n", "deamon", "did you mean 'daemon'?"),
        (PORT + "[daemon]\nlog_levle = 'info'\n", "daemon.log_levle", "did you mean 'log_level'?"),
        (PORT + "[http]\nlisen = '127.0.0.1:1'\n", "http.lisen", "did you mean 'listen'?"),
        (
            "[defaults]\nscrolback_bytes = 1\n" + PORT,
            "defaults.scrolback_bytes",
            "did you mean 'scrollback_bytes'?",
        ),
        ("[defaults.serial]\nbuad = 9600\n" + PORT, "defaults.serial.buad", "did you mean 'baud'?"),
        (PORT + "enabel = true\n", "ports[0].enabel", "did you mean 'enabled'?"),
        (
            port(device="tty:/dev/ttyS0") + "[ports.serial]\npartiy = 'none'\n",
            "ports[0].serial.partiy",
            "did you mean 'parity'?",
        ),
    ],
)
def test_unknown_key_with_hint(text: str, key: str, hint: str) -> None:
    assert_problem(text, key, f"unknown key; {hint}")


def test_unknown_key_without_close_match_lists_the_known_keys() -> None:
    assert_problem(
        PORT + "[http]\nzzz = 1\n",
        "http.zzz",
        "unknown key (known keys: allowed_hosts, listen, max_body_bytes",
    )


def test_odd_key_names_are_quoted_in_the_path() -> None:
    assert_problem(PORT + '"a b\\u0007" = 1\n', "ports[0].'a b\\x07'", "unknown key")


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ("scrollback_bytes = true", "ports[0].scrollback_bytes", "expected integer, got boolean true"),
        ("scrollback_bytes = '4096'", "ports[0].scrollback_bytes", "expected integer, got string '4096'"),
        ("replay_lines = 1.5", "ports[0].replay_lines", "expected integer, got float 1.5"),
        ("reconnect_max_s = true", "ports[0].reconnect_max_s", "expected number, got boolean true"),
        ("reconnect_max_s = '5'", "ports[0].reconnect_max_s", "expected number, got string '5'"),
        ("enabled = 1", "ports[0].enabled", "expected boolean, got integer 1"),
        ("enabled = 'yes'", "ports[0].enabled", "expected boolean, got string 'yes'"),
        ("telnet = 7001", "ports[0].telnet", "expected string, got integer 7001"),
        ("escape = 1979-05-27", "ports[0].escape", "expected string, got date datetime.date(1979, 5, 27)"),
        ("takeover = ['evict']", "ports[0].takeover", "expected string, got array ['evict']"),
        ("serial = 'fast'", "ports[0].serial", "expected a table, got string 'fast'"),
    ],
)
def test_wrong_types(extra: str, key: str, reason: str) -> None:
    assert_problem(port(extra=extra), key, reason)


def test_int_is_accepted_for_float_fields() -> None:
    p = only_port(port(extra="reconnect_initial_s = 1\nreconnect_max_s = 10"))
    assert p.reconnect_max_s == 10.0
    assert isinstance(p.reconnect_max_s, float)


@pytest.mark.parametrize("table", ["daemon", "http", "defaults"])
def test_tables_must_be_tables(table: str) -> None:
    assert_problem(f"{table} = 5\n" + PORT, table, "expected a table, got integer 5")


def test_long_bad_values_are_escaped_and_cut() -> None:
    line = assert_problem(
        port(extra='takeover = "\\u001b[31m' + "x" * 200 + '"'), "ports[0].takeover", "got "
    )
    shown = line.split("got ", 1)[1].split(";")[0]
    assert shown.startswith("'\\x1b[31mxxx") and shown.endswith("...")
    assert len(shown) == 60
    assert "\x1b" not in line


# ---------------------------------------------------------------------------------------------------------
# Ports array, name


def test_ports_are_required() -> None:
    assert problems("[daemon]\n") == [f"{SOURCE}: ports: at least one [[ports]] table is required"]
    assert problems("ports = []\n") == [f"{SOURCE}: ports: at least one [[ports]] table is required"]


def test_ports_must_be_an_array_of_tables() -> None:
    assert_problem('[ports]\nname = "vm1"\n', "ports", "must be an array of tables: write [[ports]]")
    assert_problem("ports = [1]\n", "ports[0]", "expected a table, got integer 1")


def test_name_is_required() -> None:
    assert_problem('[[ports]]\ndevice = "unix:/run/a.sock"\n', "ports[0].name", "required key is missing")


@pytest.mark.parametrize("name", ["", "vm 1", ".hidden", "-x", "a/b", "vm1\\n", "ж", "a" * 65, "a:b", "%2e"])
def test_name_invalid(name: str) -> None:
    assert_problem(port(name=name), "ports[0].name", "must be 1-64 characters from A-Z a-z 0-9 . _ -")


@pytest.mark.parametrize("name", ["a", "VM_1.prod-2", "0", "a" * 64])
def test_name_valid(name: str) -> None:
    assert only_port(port(name=name)).name == name


def test_name_duplicate_names_the_earlier_index() -> None:
    text = port("vm1", "unix:/run/a.sock") + port("vm2", "unix:/run/b.sock") + port("vm1", "unix:/run/c.sock")
    assert problems(text) == [f"{SOURCE}: ports[2].name: duplicate name 'vm1', already used by ports[0]"]


# ---------------------------------------------------------------------------------------------------------
# Device


def test_device_is_required() -> None:
    assert_problem('[[ports]]\nname = "vm1"\n', "ports[0].device", "required key is missing")


def test_device_kinds_parse() -> None:
    text = (
        port("a", "tty:/dev/ttyS0")
        + port("b", "unix:/run/b.sock")
        + port("c", "tcp:Host.Example:4555")
        + port("d", "tcp:[::1]:4556")
        + port("e", "exec:ipmitool -H bmc -f '/etc/my dir/pass' sol activate")
    )
    a, b, c, d, e = parse_config(text, SOURCE).ports
    assert (a.device.kind, a.device.path, a.device.raw) == (DeviceKind.TTY, "/dev/ttyS0", "tty:/dev/ttyS0")
    assert (b.device.kind, b.device.path) == (DeviceKind.UNIX, "/run/b.sock")
    assert (c.device.kind, c.device.host, c.device.port) == (DeviceKind.TCP, "Host.Example", 4555)
    assert (d.device.host, d.device.port) == ("::1", 4556)
    assert e.device.argv == ("ipmitool", "-H", "bmc", "-f", "/etc/my dir/pass", "sol", "activate")


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        (
            "serial:/dev/ttyS0",
            "unknown device scheme, expected one of tty:PATH, unix:PATH, tcp:HOST:PORT, "
            "exec:COMMAND ARGS..., got 'serial:/dev/ttyS0'",
        ),
        ("tyy:/dev/ttyS0", "got 'tyy:/dev/ttyS0'; did you mean 'tty'?"),
        ("/dev/ttyS0", "got '/dev/ttyS0'; write tty:PATH for a serial device or unix:PATH for a socket"),
        ("tty:dev/ttyS0", "must be an absolute path, got 'dev/ttyS0'"),
        ("unix:", "must be an absolute path, got ''"),
        ("unix:/" + "x" * 120, "a unix socket path can be at most 107 bytes, this one is 121"),
        ("tcp:localhost", "expected tcp:HOST:PORT, got 'tcp:localhost'"),
        ("tcp:localhost:0", "the port must be a number from 1 to 65535, got 'tcp:localhost:0'"),
        ("tcp:localhost:65536", "the port must be a number from 1 to 65535"),
        ("tcp:localhost:+80", "the port must be a number from 1 to 65535"),
        ("tcp:::1:80", "write an IPv6 address in brackets, like [::1]:PORT, got 'tcp:::1:80'"),
        ("tcp:[::g]:80", "'::g' is not an IPv6 address"),
        ("tcp:bad_host:80", "'bad_host' is neither an IP address nor a valid host name"),
        ("exec:", "exec: needs a command, got 'exec:'"),
        ("exec:   ", "exec: needs a command"),
        ("exec:cat\\u0000", "a command cannot contain NUL"),
        (
            "exec:ipmitool 'sol",
            'cannot split the command line (No closing quotation), got "exec:ipmitool \'sol"',
        ),
    ],
)
def test_device_invalid(device: str, reason: str) -> None:
    assert_problem(port(device=device), "ports[0].device", reason)


def test_device_used_twice() -> None:
    text = port("a", "tty:/dev/ttyS0") + port("b", "tty:/dev/ttyS0")
    assert problems(text) == [
        f"{SOURCE}: ports[1].device: 'tty:/dev/ttyS0' is already the device of ports[0]"
    ]


def test_device_used_twice_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "ttyUSB0"
    real.touch()
    (tmp_path / "by-id").symlink_to(real)
    text = port("a", f"tty:{real}") + port("b", f"unix:{tmp_path}/by-id")
    line = assert_problem(text, "ports[1].device", "is already the device of ports[0] ('tty:")
    assert line.endswith(f"; both are {real})")  # the raw strings are cut to 60 characters, this is not


def test_tcp_device_compared_by_lowercase_host_and_port() -> None:
    text = (
        port("a", "tcp:Host.Example:4555")
        + port("b", "tcp:host.example:4555")
        + port("c", "tcp:host.example:4556")
    )
    assert problems(text) == [
        f"{SOURCE}: ports[1].device: 'tcp:host.example:4555' is already the device of ports[0] "
        "('tcp:Host.Example:4555'; both are host.example:4555)"
    ]


def test_exec_devices_never_conflict() -> None:
    text = port("a", "exec:cat") + port("b", "exec:cat")
    assert len(parse_config(text, SOURCE).ports) == 2


# ---------------------------------------------------------------------------------------------------------
# Listen addresses


def test_listen_addresses_parse() -> None:
    text = "[http]\nlisten = '[::1]:8480'\n" + port(
        extra="telnet = 'localhost:0'\ntelnet_readonly = '127.0.0.2:0'"
    )
    config = parse_config(text, SOURCE)
    assert config.http.listen == ListenAddress("::1", 8480)
    assert str(config.http.listen) == "[::1]:8480"
    assert config.ports[0].telnet == ListenAddress("localhost", 0)
    assert config.ports[0].telnet_readonly == ListenAddress("127.0.0.2", 0)


def test_http_is_optional() -> None:
    assert parse_config("[http]\n" + PORT, SOURCE).http.listen is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("7001", "expected HOST:PORT, got '7001'"),
        (":7001", "the host is missing (write 127.0.0.1:PORT for this machine only), got ':7001'"),
        ("127.0.0.1:", "the port must be a number from 0 to 65535, got '127.0.0.1:'"),
        ("127.0.0.1:65536", "the port must be a number from 0 to 65535, got '127.0.0.1:65536'"),
        ("127.0.0.1:-1", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:٣", "the port must be a number from 0 to 65535"),
        ("::1:7001", "write an IPv6 address in brackets, like [::1]:PORT, got '::1:7001'"),
        ("[::1]7001", "expected HOST:PORT with an IPv6 address as [ADDRESS]:PORT, got '[::1]7001'"),
        ("127.0.0.01:7001", "'127.0.0.01' is not a valid IPv4 address, in '127.0.0.01:7001'"),
        ("local host:7001", "'local host' is neither an IP address nor a valid host name"),
    ],
)
def test_listen_invalid(address: str, reason: str) -> None:
    assert_problem(port(extra=f"telnet = '{address}'"), "ports[0].telnet", reason)
    assert_problem(f"[http]\nlisten = '{address}'\n" + PORT, "http.listen", reason)


@pytest.mark.parametrize(
    ("first", "second", "extra_note"),
    [
        ("127.0.0.1:7001", "127.0.0.1:7001", ""),
        ("0.0.0.0:7001", "127.0.0.1:7001", " (0.0.0.0:7001)"),
        ("127.0.0.1:7001", "localhost:7001", " (127.0.0.1:7001)"),
        ("[::1]:7001", "[0::1]:7001", " ([::1]:7001)"),
    ],
)
def test_listen_address_used_twice(first: str, second: str, extra_note: str) -> None:
    text = "[daemon]\nallow_remote_unauthenticated = true\n" + (
        port("a", "unix:/run/a.sock", f"telnet = '{first}'")
        + port("b", "unix:/run/b.sock", f"telnet = '{second}'")
    )
    assert problems(text) == [
        f"{SOURCE}: ports[1].telnet: '{second}' is already used by ports[0].telnet{extra_note}"
    ]


def test_listen_address_used_twice_across_http_and_readonly() -> None:
    text = "[http]\nlisten = '127.0.0.1:8480'\n" + port(
        extra="telnet = '127.0.0.1:7001'\ntelnet_readonly = '127.0.0.1:8480'"
    )
    assert problems(text) == [
        f"{SOURCE}: ports[0].telnet_readonly: '127.0.0.1:8480' is already used by http.listen"
    ]
    same_port = port(extra="telnet = '127.0.0.1:7001'\ntelnet_readonly = '127.0.0.1:7001'")
    assert_problem(same_port, "ports[0].telnet_readonly", "is already used by ports[0].telnet")


def test_listen_port_zero_never_conflicts() -> None:
    text = "[http]\nlisten = '127.0.0.1:0'\n" + port(
        extra="telnet = '127.0.0.1:0'\ntelnet_readonly = '127.0.0.1:0'"
    )
    assert parse_config(text, SOURCE).ports[0].telnet == ListenAddress("127.0.0.1", 0)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "192.168.1.10", "[::]", "[2001:db8::1]", "myhost", "localhost.example"]
)
@pytest.mark.parametrize(
    ("key", "capability"),
    [("telnet", "type into the console"), ("telnet_readonly", "read the console")],
)
def test_non_loopback_listener_refused(host: str, key: str, capability: str) -> None:
    line = assert_problem(
        port(extra=f"{key} = '{host}:7001'"), f"ports[0].{key}", "is not a loopback address"
    )
    assert line == (
        f"{SOURCE}: ports[0].{key}: '{host}:7001' is not a loopback address and has no [auth] and TLS: "
        f"anyone who can reach it could {capability}; bind 127.0.0.1, configure [auth] and TLS for it "
        "(http.tls or the port's telnet_tls, with [tls]), or set daemon.allow_remote_unauthenticated = true"
    )


def test_non_loopback_http_refused() -> None:
    assert_problem(
        "[http]\nlisten = '0.0.0.0:8480'\n" + PORT,
        "http.listen",
        "'0.0.0.0:8480' is not a loopback address and has no [auth] and TLS",
    )


def test_allow_remote_counts_even_when_another_daemon_key_is_bad() -> None:
    text = (
        "[daemon]\nlog_level = 'loud'\nallow_remote_unauthenticated = true\n[http]\nlisten = '0.0.0.0:1'\n"
        + PORT
    )
    assert [line.split(": ")[1] for line in problems(text)] == ["daemon.log_level"]


def test_non_loopback_allowed_when_the_operator_says_so() -> None:
    text = "[daemon]\nallow_remote_unauthenticated = true\n[http]\nlisten = '0.0.0.0:8480'\n" + port(
        extra="telnet = 'myhost:7001'"
    )
    config = parse_config(text, SOURCE)
    assert config.http.listen == ListenAddress("0.0.0.0", 8480)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.9.9.9", "[::1]", "localhost", "LocalHost", "[::ffff:127.0.0.1]"]
)
def test_loopback_listeners_accepted(host: str) -> None:
    assert only_port(port(extra=f"telnet = '{host}:7001'")).telnet is not None


# ---------------------------------------------------------------------------------------------------------
# Policies and escape


def test_policies_parse() -> None:
    p = only_port(port(extra="takeover = 'demote'\nslow_reader = 'close'"))
    assert p.takeover is TakeoverPolicy.DEMOTE
    assert p.slow_reader is SlowReaderPolicy.CLOSE


def test_takeover_invalid() -> None:
    assert_problem(
        port(extra="takeover = 'evcit'"),
        "ports[0].takeover",
        "must be one of 'evict', 'demote', 'refuse', 'ask', got 'evcit'; did you mean 'evict'?",
    )


def test_slow_reader_invalid() -> None:
    assert_problem(
        port(extra="slow_reader = 'drop'"), "ports[0].slow_reader", "must be one of 'resync', 'close'"
    )


@pytest.mark.parametrize("escape", ["", "^A", "^E", "^Z", "^\\\\", "^]", "^^", "^_"])
def test_escape_valid_kept_as_written(escape: str) -> None:
    assert only_port(port(extra=f'escape = "{escape}"')).escape == escape.replace("\\\\", "\\")


@pytest.mark.parametrize(
    ("escape", "why"),
    [
        ("^@", "it is NUL"),
        ("^I", "it is Tab"),
        ("^J", "it is LF"),
        ("^M", "it is CR, sent by the Enter key"),
        ("^[", "it is ESC"),
    ],
)
def test_escape_unusable_keys(escape: str, why: str) -> None:
    assert_problem(
        port(extra=f'escape = "{escape}"'), "ports[0].escape", f"'{escape}' cannot be the escape key: {why}"
    )


@pytest.mark.parametrize(
    ("escape", "hint"), [("^e", "; did you mean '^E'?"), ("E", ""), ("^EE", ""), ("ctrl-e", "")]
)
def test_escape_bad_notation(escape: str, hint: str) -> None:
    assert_problem(
        port(extra=f'escape = "{escape}"'),
        "ports[0].escape",
        f'must be "" (no escape key) or caret notation ^A..^_ such as "^E", got {escape!r}{hint}',
    )


# ---------------------------------------------------------------------------------------------------------
# Ranges


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("scrollback_bytes", "4095", "must be between 4096 (4 KiB) and 1073741824 (1 GiB), got 4095"),
        ("scrollback_bytes", "1073741825", "must be between 4096 (4 KiB) and 1073741824 (1 GiB)"),
        ("replay_bytes", "-1", "must be between 0 and 1073741824 (1 GiB), got -1"),
        ("replay_lines", "100001", "must be between 0 and 100000, got 100001"),
        ("client_buffer_bytes", "4095", "must be between 4096 (4 KiB) and 67108864 (64 MiB)"),
        ("client_buffer_bytes", "67108865", "must be between 4096 (4 KiB) and 67108864 (64 MiB)"),
        ("device_buffer_bytes", "1023", "must be between 1024 (1 KiB) and 67108864 (64 MiB)"),
        ("input_rate_bytes_per_s", "-1", "must be between 0 and 1000000000"),
        ("input_rate_bytes_per_s", "1000000001", "must be between 0 and 1000000000"),
        ("reconnect_initial_s", "0", "must be greater than 0 and at most 3600, got 0"),
        ("reconnect_max_s", "3600.5", "must be greater than 0 and at most 3600, got 3600.5"),
        ("reconnect_max_s", "nan", "must be greater than 0 and at most 3600, got nan"),
        ("reconnect_max_s", "inf", "must be greater than 0 and at most 3600, got inf"),
    ],
)
def test_port_ranges(key: str, value: str, reason: str) -> None:
    assert_problem(port(extra=f"{key} = {value}"), f"ports[0].{key}", reason)


def test_range_bounds_are_inclusive() -> None:
    low = only_port(
        port(
            extra="scrollback_bytes = 4096\nreplay_bytes = 0\nreplay_lines = 0\nclient_buffer_bytes = 4096\n"
            "device_buffer_bytes = 1024\ninput_rate_bytes_per_s = 0\n"
            "reconnect_initial_s = 0.001\nreconnect_max_s = 0.001"
        )
    )
    assert (low.scrollback_bytes, low.device_buffer_bytes) == (4096, 1024)
    high = only_port(
        port(
            extra="scrollback_bytes = 1073741824\nreplay_bytes = 1073741824\nreplay_lines = 100000\n"
            "client_buffer_bytes = 67108864\ndevice_buffer_bytes = 67108864\n"
            "input_rate_bytes_per_s = 1000000000\n"
            "reconnect_initial_s = 3600\nreconnect_max_s = 3600"
        )
    )
    assert (high.replay_bytes, high.reconnect_max_s) == (1 << 30, 3600.0)


def test_replay_bytes_above_scrollback() -> None:
    assert problems(port(extra="scrollback_bytes = 4096\nreplay_bytes = 8192")) == [
        f"{SOURCE}: ports[0].replay_bytes: replay_bytes = 8192 must not exceed scrollback_bytes = 4096 "
        "(set in ports[0].scrollback_bytes)"
    ]


def test_replay_bytes_above_the_builtin_scrollback() -> None:
    assert problems(port(extra="replay_bytes = 2097152")) == [
        f"{SOURCE}: ports[0].replay_bytes: replay_bytes = 2097152 must not exceed scrollback_bytes = 1048576 "
        "(built-in default)"
    ]


def test_reconnect_initial_above_max() -> None:
    assert problems(port(extra="reconnect_max_s = 0.05")) == [
        f"{SOURCE}: ports[0].reconnect_max_s: reconnect_initial_s = 0.1 (built-in default) must not exceed "
        "reconnect_max_s = 0.05"
    ]


def test_cross_check_of_two_defaults_is_reported_once_at_defaults() -> None:
    text = (
        "[defaults]\nreconnect_initial_s = 10\nreconnect_max_s = 5\n"
        + port("a", "exec:a")
        + port("b", "exec:b")
    )
    assert problems(text) == [
        f"{SOURCE}: defaults.reconnect_initial_s: reconnect_initial_s = 10.0 must not exceed "
        "reconnect_max_s = 5.0 (set in defaults.reconnect_max_s)"
    ]


def test_cross_check_uses_the_values_the_port_ends_up_with() -> None:
    text = "[defaults]\nreplay_bytes = 2097152\n" + port(extra="scrollback_bytes = 4194304")
    assert only_port(text).replay_bytes == 2097152
    assert_problem(
        "[defaults]\nreplay_bytes = 8192\n" + port(extra="scrollback_bytes = 4096"),
        "ports[0].scrollback_bytes",
        "replay_bytes = 8192 (set in defaults.replay_bytes) must not exceed scrollback_bytes = 4096",
    )


# ---------------------------------------------------------------------------------------------------------
# Serial settings


def test_serial_settings_parse() -> None:
    p = only_port(
        port(device="tty:/dev/ttyS0")
        + "[ports.serial]\nbaud = 9600\nbytesize = 7\nparity = 'even'\nstopbits = 1.5\nflow = 'rtscts'\n"
        "exclusive = false\n"
    )
    assert p.serial == SerialSettings(9600, 7, "even", 1.5, "rtscts", False)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("baud", "49", "must be between 50 and 4000000, got 49"),
        ("baud", "4000001", "must be between 50 and 4000000, got 4000001"),
        ("bytesize", "9", "must be between 5 and 8, got 9"),
        ("bytesize", "4", "must be between 5 and 8, got 4"),
        ("parity", "'N'", "must be one of 'none', 'even', 'odd', 'mark', 'space', got 'N'"),
        ("stopbits", "3", "must be 1, 1.5 or 2, got 3"),
        ("stopbits", "'1'", "expected number, got string '1'"),
        ("flow", "'hardware'", "must be one of 'none', 'rtscts', 'xonxoff', got 'hardware'"),
        ("exclusive", "'yes'", "expected boolean, got string 'yes'"),
    ],
)
def test_serial_invalid(key: str, value: str, reason: str) -> None:
    text = port(device="tty:/dev/ttyS0") + f"[ports.serial]\n{key} = {value}\n"
    assert_problem(text, f"ports[0].serial.{key}", reason)
    assert_problem(f"[defaults.serial]\n{key} = {value}\n" + PORT, f"defaults.serial.{key}", reason)


@pytest.mark.parametrize("device", ["unix:/run/a.sock", "tcp:127.0.0.1:4555", "exec:cat"])
def test_port_serial_only_for_tty(device: str) -> None:
    text = port(device=device) + "[ports.serial]\nbaud = 9600\n"
    assert problems(text) == [
        f"{SOURCE}: ports[0].serial: [ports.serial] is only for tty: devices; "
        f"this port's device is {device!r}"
    ]


def test_defaults_serial_is_fine_for_every_device() -> None:
    text = "[defaults.serial]\nbaud = 9600\n" + port("a", "unix:/run/a.sock") + port("b", "tty:/dev/ttyS0")
    a, b = parse_config(text, SOURCE).ports
    assert a.serial.baud == b.serial.baud == 9600


# ---------------------------------------------------------------------------------------------------------
# Daemon settings


def test_daemon_settings_parse() -> None:
    text = (
        "[daemon]\nstate_dir = '/var/lib/s'\nlog_level = 'debug'\nlog_format = 'json'\n"
        "shutdown_timeout_s = 300\nallow_remote_unauthenticated = true\n" + PORT
    )
    assert parse_config(text, SOURCE).daemon == DaemonSettings(
        Path("/var/lib/s"), "debug", "json", 300.0, True
    )


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("state_dir", "'var/lib/s'", "must be an absolute path, got 'var/lib/s'"),
        ("state_dir", '"/var/\\u0000"', "a path cannot contain NUL, got '/var/\\x00'"),
        (
            "log_level",
            "'INFO'",
            "must be one of 'debug', 'info', 'warning', 'error', got 'INFO'; did you mean 'info'?",
        ),
        ("log_level", "'warn'", "got 'warn'; did you mean 'warning'?"),
        ("log_format", "'text'", "must be one of 'console', 'json', got 'text'"),
        ("shutdown_timeout_s", "0", "must be greater than 0 and at most 300, got 0"),
        ("shutdown_timeout_s", "301", "must be greater than 0 and at most 300, got 301"),
        ("allow_remote_unauthenticated", "'yes'", "expected boolean, got string 'yes'"),
    ],
)
def test_daemon_invalid(key: str, value: str, reason: str) -> None:
    assert_problem(f"[daemon]\n{key} = {value}\n" + PORT, f"daemon.{key}", reason)


# ---------------------------------------------------------------------------------------------------------
# Defaults


def test_defaults_apply_to_ports_that_do_not_set_the_key() -> None:
    text = (
        "[defaults]\ntakeover = 'refuse'\nscrollback_bytes = 65536\nescape = ''\n"
        "[defaults.serial]\nbaud = 9600\nparity = 'even'\n"
        + port("a", "tty:/dev/ttyS0", "takeover = 'demote'\n[ports.serial]\nbaud = 57600")
        + port("b", "unix:/run/b.sock")
    )
    a, b = parse_config(text, SOURCE).ports
    assert (a.takeover, b.takeover) == (TakeoverPolicy.DEMOTE, TakeoverPolicy.REFUSE)
    assert a.scrollback_bytes == b.scrollback_bytes == 65536
    assert a.escape == b.escape == ""
    assert a.serial == SerialSettings(baud=57600, parity="even")  # merged key by key
    assert b.serial == SerialSettings(baud=9600, parity="even")
    assert b.replay_bytes == 4096  # neither set: built-in default


@pytest.mark.parametrize("key", ["name", "device", "telnet", "telnet_readonly"])
def test_defaults_refuse_per_port_identity(key: str) -> None:
    assert_problem(
        f"[defaults]\n{key} = 'x'\n" + PORT,
        f"defaults.{key}",
        "belongs to one port; set it in each [[ports]] table, not in [defaults]",
    )


def test_bad_default_is_reported_once() -> None:
    text = "[defaults]\ntakeover = 'kick'\n" + port("a", "exec:a") + port("b", "exec:b") + port("c", "exec:c")
    assert problems(text) == [
        f"{SOURCE}: defaults.takeover: must be one of 'evict', 'demote', 'refuse', 'ask', got 'kick'"
    ]


# ---------------------------------------------------------------------------------------------------------
# Everything at once


def test_every_problem_is_reported() -> None:
    text = """\
[daemon]
log_level = "loud"

[http]
listen = "0.0.0.0:8480"

[defaults]
scrolback_bytes = 5

[[ports]]
name = "vm 1"
device = "serial:/dev/ttyS0"
enabel = true

[[ports]]
name = "vm2"
device = "unix:/run/vm2.sock"
telnet = "127.0.0.1:7002"
takeover = "kick"

[ports.serial]
baud = 9600

[[ports]]
name = "vm2"
device = "unix:/run/vm2.sock"
telnet = "127.0.0.1:7002"
"""
    assert problems(text) == [
        f"{SOURCE}: daemon.log_level: must be one of 'debug', 'info', 'warning', 'error', got 'loud'",
        f"{SOURCE}: http.listen: '0.0.0.0:8480' is not a loopback address and has no [auth] and TLS: "
        "anyone who can reach it could type into the console; bind 127.0.0.1, configure [auth] and TLS for "
        "it (http.tls or the port's telnet_tls, with [tls]), or set "
        "daemon.allow_remote_unauthenticated = true",
        f"{SOURCE}: defaults.scrolback_bytes: unknown key; did you mean 'scrollback_bytes'?",
        f"{SOURCE}: ports[0].name: must be 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or "
        "digit (names appear in URLs, file names and metric labels), got 'vm 1'",
        f"{SOURCE}: ports[0].device: unknown device scheme, expected one of tty:PATH, unix:PATH, "
        "tcp:HOST:PORT, exec:COMMAND ARGS..., got 'serial:/dev/ttyS0'",
        f"{SOURCE}: ports[0].enabel: unknown key; did you mean 'enabled'?",
        f"{SOURCE}: ports[1].takeover: must be one of 'evict', 'demote', 'refuse', 'ask', got 'kick'",
        f"{SOURCE}: ports[1].serial: [ports.serial] is only for tty: devices; this port's device is "
        "'unix:/run/vm2.sock'",
        f"{SOURCE}: ports[2].name: duplicate name 'vm2', already used by ports[1]",
        f"{SOURCE}: ports[2].device: 'unix:/run/vm2.sock' is already the device of ports[1]",
        f"{SOURCE}: ports[2].telnet: '127.0.0.1:7002' is already used by ports[1].telnet",
    ]
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    assert str(info.value) == "\n".join(info.value.lines())


def test_hypervisor_table_is_validated_with_key_paths() -> None:
    assert_problem(
        PORT + '[ports.hypervisor]\ntype = "qmp"\nsokcet = "/run/q.sock"\n',
        "ports[0].hypervisor.sokcet",
        "unknown",
    )
    assert_problem(
        PORT + '[ports.hypervisor]\ntype = "vmware"\n', "ports[0].hypervisor.type", "must be one of"
    )
    assert_problem(
        PORT + '[defaults.hypervisor]\ntype = "qmp"\n', "defaults.hypervisor", "belongs to one port"
    )


def test_hypervisor_table_parses() -> None:
    config = parse_config(PORT + '[ports.hypervisor]\ntype = "qmp"\nsocket = "/run/q.sock"\n', "t.toml")
    hypervisor = config.ports[0].hypervisor
    assert hypervisor is not None and hypervisor.type == "qmp"


def test_escape_key_is_checked_by_the_front_ends_parser_too() -> None:
    assert_problem(PORT + 'escape = "^H"\n', "ports[0].escape", "")


def test_input_rate_bps_is_read_with_a_warning_and_not_both() -> None:
    config = parse_config(PORT + "input_rate_bps = 480\n", SOURCE)
    assert config.ports[0].input_rate_bytes_per_s == 480
    assert config.warnings == (
        (
            "ports[0].input_rate_bps",
            "deprecated: it is read as bytes per second (not bits, as 'bps' suggests); rename it to "
            "input_rate_bytes_per_s",
        ),
    )
    assert parse_config(PORT + "input_rate_bytes_per_s = 480\n", SOURCE).warnings == ()
    assert problems(PORT + "input_rate_bps = 1\ninput_rate_bytes_per_s = 2\n") == [
        f"{SOURCE}: ports[0].input_rate_bps: set only input_rate_bytes_per_s; input_rate_bps is its old name"
    ]
