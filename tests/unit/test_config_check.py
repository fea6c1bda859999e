"""One validation mechanism for the whole file: the same problem reads the same in the daemon's tables and in
``[ports.hypervisor]``; one unix path limit; what the TOML parser cannot take is a ``(toml)`` line, never a
traceback; settings are built without ``**`` splats."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import serialmuxd.adapters.base
from serialmuxd import config, configcheck
from serialmuxd.config import load_config, parse_config
from serialmuxd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "t.toml"
PORT = '[[ports]]\nname = "vm1"\ndevice = "exec:vm1"\n'
HYPERVISOR = PORT + "[ports.hypervisor]\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    return info.value.lines()


def reason(text: str, key: str) -> str:
    """The one reason reported for ``key``."""
    prefix = f"{SOURCE}: {key}: "
    found = [line.removeprefix(prefix) for line in problems(text) if line.startswith(prefix)]
    assert len(found) == 1, problems(text)
    return found[0]


# ---------------------------------------------------------------------------------------------------------
# Same problem, same words


@pytest.mark.parametrize(
    ("daemon_text", "daemon_key", "hypervisor_text", "hypervisor_key", "words"),
    [
        (PORT + "key_profile = 5", "ports[0].key_profile", "type = 'libvirt'\ndomain = 5", "domain",
         "expected string, got integer 5"),
        (PORT + "reconnect_max_s = '5'", "ports[0].reconnect_max_s",
         "type = 'qmp'\nsocket = '/q'\ntimeout_s = '5'", "timeout_s", "expected number, got string '5'"),
        (PORT + "reconnect_max_s = 0", "ports[0].reconnect_max_s",
         "type = 'qmp'\nsocket = '/q'\ntimeout_s = 0", "timeout_s", "must be greater than 0 and at most "),
        ("[daemon]\nstate_dir = 'var/x'\n" + PORT, "daemon.state_dir", "type = 'qmp'\nsocket = 'var/x'",
         "socket", "must be an absolute path, got 'var/x'"),
        ('[daemon]\nstate_dir = "/\\u0000"\n' + PORT, "daemon.state_dir",
         "type = 'ipmi'\nhost = 'b'\npassword_file = \"/\\u0000\"", "password_file",
         "a path cannot contain NUL, got '/\\x00'"),
        ('[[ports]]\nname = "vm1"\n', "ports[0].device", "type = 'libvirt'", "domain",
         "required key is missing"),
        (PORT + "takover = 'x'", "ports[0].takover", "type = 'command'\nnmi = ['x']\nrestrat = ['x']",
         "restrat", "unknown key; did you mean "),
        (PORT + "takeover = 'Evict'", "ports[0].takeover", "type = 'ipmi'\nhost = 'b'\npassword_env = 'P'"
         "\ninterface = 'LAN'", "interface", "must be one of "),
        (PORT + "replay_lines = -1", "ports[0].replay_lines", "type = 'ipmi'\nhost = 'b'\npassword_env = 'P'"
         "\nport = 0", "port", "must be between "),
    ],
)  # fmt: skip
def test_the_same_mistake_reads_the_same_everywhere(
    daemon_text: str, daemon_key: str, hypervisor_text: str, hypervisor_key: str, words: str
) -> None:
    assert reason(daemon_text, daemon_key).startswith(words)
    assert reason(HYPERVISOR + hypervisor_text, f"ports[0].hypervisor.{hypervisor_key}").startswith(words)


def test_wording_of_common_problems() -> None:
    assert reason(HYPERVISOR + "type = 'qmp'", "ports[0].hypervisor.socket") == "required key is missing"
    assert reason(HYPERVISOR + "type = 'QMP'", "ports[0].hypervisor.type") == (
        "must be one of 'qmp', 'command', 'ipmi', 'libvirt', got 'QMP'; did you mean 'qmp'?"
    )
    assert reason(PORT + "takeover = 'Evict'", "ports[0].takeover") == (
        "must be one of 'evict', 'demote', 'refuse', 'ask', got 'Evict'; did you mean 'evict'?"
    )
    assert reason(HYPERVISOR + "type = 'libvirt'\ndomain = ''", "ports[0].hypervisor.domain") == (
        "must not be empty"
    )


@pytest.mark.parametrize(
    ("table", "typo", "meant"),
    [
        ("type = 'qmp'\nsocket = '/q'", "sokcet", "socket"),
        ("type = 'qmp'\nsocket = '/q'", "timeout", "timeout_s"),
        ("type = 'libvirt'\ndomain = 'vm1'", "url", "uri"),
        ("type = 'ipmi'\nhost = 'b'\npassword_env = 'P'", "usrname", "username"),
        ("type = 'ipmi'\nhost = 'b'\npassword_env = 'P'", "passwd_file", "password_file"),
        ("type = 'command'\nnmi = ['true']", "rest", "reset"),
    ],
)
def test_unknown_hypervisor_keys_get_did_you_mean(table: str, typo: str, meant: str) -> None:
    assert problems(HYPERVISOR + f"{table}\n{typo} = 1") == [
        f"{SOURCE}: ports[0].hypervisor.{typo}: unknown key; did you mean {meant!r}?"
    ]


def test_a_key_of_another_hypervisor_type_is_unknown_with_the_known_keys_listed() -> None:
    assert problems(HYPERVISOR + "type = 'qmp'\nsocket = '/q'\ndomain = 'vm1'") == [
        f"{SOURCE}: ports[0].hypervisor.domain: unknown key (known keys: socket, timeout_s, type)"
    ]


def test_every_problem_of_every_table_at_once() -> None:
    text = (
        "[daemon]\nlog_levle = 'info'\n"
        "[http]\nallowed_hosts = ['ok.example', 5, 'bad host']\n"
        + PORT
        + "max_sessions = 0\n"
        + "[ports.hypervisor]\ntype = 'command'\nnmi = ['virsh', 1]\nrest = ['x']\ntimeout_s = 0\n"
    )
    assert problems(text) == [
        f"{SOURCE}: daemon.log_levle: unknown key; did you mean 'log_level'?",
        f"{SOURCE}: http.allowed_hosts[1]: expected string, got integer 5",
        f"{SOURCE}: http.allowed_hosts[2]: 'bad host' is neither an IP address nor a valid host name, "
        "in 'bad host'",
        f"{SOURCE}: ports[0].max_sessions: must be between 1 and 100000, got 0",
        f"{SOURCE}: ports[0].hypervisor.nmi[1]: expected string, got integer 1",
        f"{SOURCE}: ports[0].hypervisor.rest: unknown key; did you mean 'reset'?",
        f"{SOURCE}: ports[0].hypervisor.timeout_s: must be greater than 0 and at most 300, got 0",
    ]


def test_the_old_second_validator_is_gone() -> None:
    assert not hasattr(serialmuxd.adapters.base, "TableReader")
    assert not hasattr(serialmuxd.adapters.base, "describe_value")
    assert not hasattr(serialmuxd.adapters.base, "UNIX_PATH_MAX_BYTES")


# ---------------------------------------------------------------------------------------------------------
# One unix path limit


def test_one_unix_path_limit() -> None:
    assert config.UNIX_PATH_MAX_BYTES is configcheck.UNIX_PATH_MAX_BYTES
    # Measured (see configcheck): connect() takes 107 bytes, and fails "AF_UNIX path too long" at 108.
    assert configcheck.UNIX_PATH_MAX_BYTES == 107


def _path(size: int) -> str:
    return "/run/" + "x" * (size - len("/run/"))


def test_unix_device_and_qmp_socket_accept_107_bytes() -> None:
    device, socket = _path(107), _path(107).replace("/run/x", "/run/q", 1)
    text = (
        f'[[ports]]\nname = "vm1"\ndevice = "unix:{device}"\n'
        f'[ports.hypervisor]\ntype = "qmp"\nsocket = "{socket}"\n'
    )
    [port] = parse_config(text, SOURCE).ports
    assert port.device.path == device
    assert port.hypervisor is not None and getattr(port.hypervisor, "socket", None) == socket


def test_unix_device_and_qmp_socket_refuse_108_bytes_in_the_same_words() -> None:
    path = _path(108)
    lines = problems(
        f'[[ports]]\nname = "vm1"\ndevice = "unix:{path}"\n'
        f'[ports.hypervisor]\ntype = "qmp"\nsocket = "{path}"\n'
    )
    expected = f"a unix socket path can be at most 107 bytes, this one is 108: {configcheck.show(path)}"
    assert lines == [
        f"{SOURCE}: ports[0].device: {expected}",
        f"{SOURCE}: ports[0].hypervisor.socket: {expected}",
    ]


def test_unix_limit_counts_bytes_not_characters() -> None:
    path = "/run/" + "é" * 52  # 5 + 104 bytes, 57 characters
    assert "this one is 109" in reason(f'[[ports]]\nname = "a"\ndevice = "unix:{path}"\n', "ports[0].device")


# ---------------------------------------------------------------------------------------------------------
# What the TOML parser cannot take


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 600 + "]" * 600,
        "x = " + "{a = " * 600 + "1" + "}" * 600,
        PORT + "escape = " + "[" * 5000 + "]" * 5000,
    ],
    ids=["arrays", "inline-tables", "under-a-key"],
)
def test_deep_nesting_is_one_toml_line(text: str) -> None:
    assert problems(text) == [
        f"{SOURCE}: (toml): arrays or inline tables are nested too deeply to read (the TOML parser gives up "
        "after a few hundred levels; serialmuxd's keys need at most four)"
    ]


def test_nesting_the_parser_can_take_is_reported_as_a_wrong_type() -> None:
    assert reason(PORT + "escape = " + "[" * 50 + "]" * 50, "ports[0].escape").startswith(
        "expected string, got array [[[[["
    )


def test_integer_past_pythons_digit_limit() -> None:
    assert problems(PORT + "replay_lines = 1_" + "9" * 5000 + "\n") == [
        f"{SOURCE}: (toml): an integer of more than 4300 digits; Python refuses to read it "
        "(at line 4, column 16)"
    ]


def test_huge_hex_integer_is_shown_without_crashing() -> None:
    line = reason(PORT + "replay_lines = 0x" + "f" * 20000, "ports[0].replay_lines")
    assert line == "must be between 0 and 100000, got 0x" + "f" * 55 + "..."  # cut at 60 characters


def test_other_parser_limits_are_ordinary_toml_errors() -> None:
    [line] = problems("x = 2000-02-30\n")
    assert line.startswith(f"{SOURCE}: (toml): Invalid date or datetime")
    assert (
        reason(PORT + "replay_lines = 1e999999", "ports[0].replay_lines") == "expected integer, got float inf"
    )


def test_file_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "MAX_CONFIG_BYTES", 1024)
    path = tmp_path / "big.toml"
    path.write_text(PORT + "#" * 2000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.lines() == [
        f"{path}: (file): more than 1024 bytes; that is not a serialmuxd configuration"
    ]


# ---------------------------------------------------------------------------------------------------------
# Typed layers


@pytest.mark.parametrize("module", ["serialmuxd/config.py", "serialmuxd/adapters/__init__.py"])
def test_settings_are_built_without_splats(module: str) -> None:
    """``Cls(**values)`` hides a renamed field from mypy; every setting is passed by its own keyword."""
    tree = ast.parse((ROOT / module).read_text())
    splats = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and any(
        keyword.arg is None for keyword in node.keywords
    )]  # fmt: skip
    assert splats == []


def test_readme_configuration_snippet_is_valid() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    snippet = re.search(r"```toml\n(.*?)```", section, flags=re.DOTALL)
    assert snippet is not None
    [port] = parse_config(snippet.group(1), "README.md").ports
    assert port.name == "vm1"
