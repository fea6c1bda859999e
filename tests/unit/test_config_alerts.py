"""[alerts] and the per-port health keys: valid values, every problem reported naming its key, the example."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from serialmuxd.config import AlertsSettings, Config, parse_config
from serialmuxd.core.health import HealthPattern
from serialmuxd.errors import ConfigError

SOURCE = "t.toml"
EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


def port(extra: str = "", name: str = "vm1") -> str:
    return f'[[ports]]\nname = "{name}"\ndevice = "exec:{name}"\n{extra}\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    return info.value.lines()


def test_defaults() -> None:
    config = parse_config(port(), SOURCE)
    assert config.alerts == AlertsSettings()
    assert config.alerts.webhook_url == "" and config.alerts.webhook_timeout_s == 5.0
    assert config.ports[0].health is True and config.ports[0].health_patterns == ()


def test_alerts_and_port_keys() -> None:
    text = (
        '[alerts]\nwebhook_url = "https://hooks.example.net/x"\nwebhook_timeout_s = 2\n'
        'patterns = [{ kind = "fs_error", regex = "EXT4-fs error" }]\n'
        "[defaults]\nhealth = false\n"
        + port('health_patterns = [{ kind = "app", regex = "app\\\\[\\\\d+\\\\]: fatal" }]')
        + port("health = true", name="vm2")
    )
    config: Config = parse_config(text, SOURCE)
    assert config.alerts.webhook_url == "https://hooks.example.net/x"
    assert config.alerts.webhook_timeout_s == 2.0
    assert config.alerts.patterns == (HealthPattern("fs_error", "EXT4-fs error"),)
    vm1, vm2 = config.ports
    assert vm1.health is False  # from [defaults]
    assert vm1.health_patterns == (HealthPattern("app", r"app\[\d+\]: fatal"),)
    assert vm2.health is True


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/hook", "http://[::1]:9/x", "http://localhost/x", "https://h.example/x"]
)
def test_webhook_urls_accepted(url: str) -> None:
    assert parse_config(f'[alerts]\nwebhook_url = "{url}"\n' + port(), SOURCE).alerts.webhook_url == url


@pytest.mark.parametrize(
    "url",
    ["http://hooks.example.net/x", "ftp://127.0.0.1/x", "hooks.example.net", "https://", "http://10.0.0.1/"],
)
def test_webhook_urls_refused(url: str) -> None:
    [line] = problems(f'[alerts]\nwebhook_url = "{url}"\n' + port())
    assert line.startswith(f"{SOURCE}: alerts.webhook_url: must be an https:// URL")


def test_every_problem_is_reported_naming_its_key() -> None:
    text = (
        "[alerts]\nwebhook_timeout_s = 0\nsecret = 1\n"
        'patterns = [{ kind = "Bad Kind", regex = "(" }, { regex = "x+" }, 5, { kind = "k", regex = ".*" }]\n'
        + port('health = "yes"\nhealth_patterns = [{ kind = "ok", regex = "[", extra = 1 }]')
    )
    lines = problems(text)
    keys = [line.split(": ")[1] for line in lines]
    assert keys == [
        "alerts.webhook_timeout_s",
        "alerts.secret",
        "alerts.patterns[0].kind",
        "alerts.patterns[0].regex",
        "alerts.patterns[1].kind",
        "alerts.patterns[2]",
        "alerts.patterns[3].regex",
        "ports[0].health",
        "ports[0].health_patterns[0].regex",
        "ports[0].health_patterns[0].extra",
    ], lines
    assert any("not a valid regular expression" in line for line in lines)
    assert any("matches an empty line" in line for line in lines)


def test_too_many_patterns() -> None:
    many = ", ".join(f'{{ kind = "k", regex = "w{i}x" }}' for i in range(101))
    [line] = problems(f"[alerts]\npatterns = [{many}]\n" + port())
    assert "alerts.patterns: at most 100 patterns" in line


def test_example_documents_alerts_and_health_keys() -> None:
    text = EXAMPLE.read_text()
    for name in [f.name for f in dataclasses.fields(AlertsSettings)] + ["health", "health_patterns"]:
        assert re.search(rf"\b{name}\b", text), name


def test_example_snippets_parse() -> None:
    """The commented [alerts] block of the example, uncommented, is a valid configuration."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("#   [alerts]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        if not line.startswith("#   #"):
            block.append(line[4:])
    alerts = tomllib.loads("\n".join(block))["alerts"]
    assert set(alerts) == {f.name for f in dataclasses.fields(AlertsSettings)}
    config = parse_config("\n".join(block) + "\n" + port(), SOURCE)
    assert config.alerts.patterns[0].kind == "fs_error"
