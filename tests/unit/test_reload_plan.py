"""The reload's diff (serialmuxd/reload/plan.py): which ports are added, removed, rebuilt, changed in place
or untouched, and which daemon-wide keys need a restart (and keep their running value)."""

from __future__ import annotations

import dataclasses

import pytest

from serialmuxd.config import Config, PortConfig, parse_config
from serialmuxd.reload.plan import LISTENER_FIELDS, LIVE_PORT_FIELDS, classify_port, plan_reload, port_names

BASE = """
[daemon]
state_dir = "/var/lib/serialmuxd"
[http]
listen = "127.0.0.1:8480"
"""


def _port(name: str, extra: str = "", device: str = "") -> str:
    return f"""
[[ports]]
name = "{name}"
device = "{device or f"unix:/run/{name}.sock"}"
telnet = "127.0.0.1:0"
{extra}
"""


def _config(text: str) -> Config:
    return parse_config(text, "test.toml")


def test_nothing_changed_touches_nothing() -> None:
    text = BASE + _port("vm1") + _port("vm2")
    plan = plan_reload(_config(text), _config(text))
    assert plan.unchanged == ("vm1", "vm2")
    assert not plan.port_changes and not plan.needs_restart and not plan.refused
    assert plan.effective == _config(text)


def test_ports_are_added_removed_rebuilt_and_changed_in_place() -> None:
    old = _config(BASE + _port("vm1") + _port("vm2") + _port("vm3") + _port("vm4"))
    new = _config(
        BASE
        + _port("vm1")
        + _port("vm3", 'takeover = "refuse"\nwriter_idle_timeout_s = 60\ngroup = "web"')
        + _port("vm4", device="tcp:127.0.0.1:4555")
        + _port("vm5")
    )
    plan = plan_reload(old, new)
    assert plan.added == ("vm5",) and plan.removed == ("vm2",)
    assert plan.unchanged == ("vm1",)
    assert [(c.name, c.fields) for c in plan.updated] == [
        ("vm3", ("takeover", "writer_idle_timeout_s", "group"))
    ]
    assert [(c.name, c.fields) for c in plan.rebuilt] == [("vm4", ("device",))]
    assert port_names(plan.rebuilt) == ["vm4"]


def test_one_field_that_cannot_apply_live_rebuilds_the_whole_port() -> None:
    old = _config(BASE + _port("vm1"))
    new = _config(BASE + _port("vm1", 'takeover = "demote"\nscrollback_bytes = 2097152'))
    change, action = classify_port(old.ports[0], new.ports[0])
    assert change is not None and action == "rebuilt"
    assert change.fields == ("takeover", "scrollback_bytes")


@pytest.mark.parametrize(
    "extra",
    ['telnet_readonly = "127.0.0.1:7101"', "raw = true", 'takeover = "demote"\nraw = true'],
)
def test_listener_settings_bind_new_listeners_for_the_same_port(extra: str) -> None:
    old, new = _config(BASE + _port("vm1")), _config(BASE + _port("vm1", extra))
    plan = plan_reload(old, new)
    assert port_names(plan.rebound) == ["vm1"] and not plan.rebuilt and not plan.updated


def test_a_listener_and_a_device_change_together_rebuild() -> None:
    old = _config(BASE + _port("vm1"))
    new = _config(BASE + _port("vm1", "raw = true", device="tcp:127.0.0.1:4555"))
    assert [(c.name, c.fields) for c in plan_reload(old, new).rebuilt] == [("vm1", ("device", "raw"))]


@pytest.mark.parametrize(
    "extra",
    [
        "scrollback_bytes = 65536",
        "reconnect_max_s = 9",
        "device_buffer_bytes = 4096",
        "reconnect_initial_s = 1",
    ],
)
def test_device_and_ring_settings_rebuild(extra: str) -> None:
    old, new = _config(BASE + _port("vm1")), _config(BASE + _port("vm1", extra))
    assert port_names(plan_reload(old, new).rebuilt) == ["vm1"]


@pytest.mark.parametrize(
    "extra",
    [
        'takeover = "ask"',
        "ask_timeout_s = 3",
        "enabled = false",
        'notices = "none"',
        'escape = "^]"',
        "replay_bytes = 100",
        "replay_lines = 5",
        'slow_reader = "close"',
        "client_buffer_bytes = 4096",
        "input_rate_bytes_per_s = 1000",
        'key_profile = "vt100+"',
        "max_sessions = 3",
        "max_sessions_per_address = 2",
        "writer_idle_timeout_s = 30",
        'writer_idle_action = "detach"',
        'logout_sequence = "exit\\r"',
        'group = "db"',
        "health = false",
        'health_patterns = [{ kind = "mine", regex = "oh no" }]',
    ],
)
def test_session_and_policy_settings_apply_in_place(extra: str) -> None:
    old, new = _config(BASE + _port("vm1")), _config(BASE + _port("vm1", extra))
    plan = plan_reload(old, new)
    assert port_names(plan.updated) == ["vm1"] and not plan.rebuilt, plan


def test_every_live_field_is_a_port_field() -> None:
    """A renamed PortConfig field must not leave a stale name here (its changes would rebuild, silently)."""
    assert not (LIVE_PORT_FIELDS | LISTENER_FIELDS) - {f.name for f in dataclasses.fields(PortConfig)}
    assert not LIVE_PORT_FIELDS & LISTENER_FIELDS


def test_a_field_nobody_classified_rebuilds() -> None:
    """New keys (another helper's per-port settings) are covered without touching the plan: they rebuild."""
    port = _config(BASE + _port("vm1")).ports[0]
    classified = LIVE_PORT_FIELDS | LISTENER_FIELDS
    unknown = [f.name for f in dataclasses.fields(PortConfig) if f.name not in classified]
    assert "device" in unknown and "name" in unknown
    changed = dataclasses.replace(port, reconnect_initial_s=0.5)
    assert classify_port(port, changed)[1] == "rebuilt"


def test_daemon_wide_keys_that_need_a_restart_are_named_and_keep_their_running_value() -> None:
    old = _config(BASE + _port("vm1"))
    new = _config(
        BASE.replace("8480", "8481").replace("/var/lib/serialmuxd", "/srv/smx")
        + '[audit]\nfile = "/var/log/smx-audit.jsonl"\n'
        + _port("vm1", 'takeover = "demote"')
    )
    plan = plan_reload(old, new)
    assert [key for key, _ in plan.needs_restart] == ["daemon.state_dir", "http.listen", "audit.file"]
    assert all("needs a restart" in reason for _, reason in plan.needs_restart)
    assert plan.effective.http == old.http and plan.effective.daemon == old.daemon
    assert plan.effective.audit == old.audit
    assert port_names(plan.updated) == ["vm1"]  # the rest still applies
    assert plan.effective.ports == new.ports


def test_live_daemon_keys_are_taken_without_a_restart() -> None:
    old = _config(BASE + _port("vm1"))
    new = _config(
        BASE.replace("[http]", 'allow_remote_unauthenticated = true\nlog_level = "debug"\n[http]')
        + _port("vm1")
    )
    plan = plan_reload(old, new)
    assert not plan.needs_restart
    assert plan.effective.daemon.allow_remote_unauthenticated
    assert plan.effective.daemon.log_level == "debug"
    slower = _config(BASE.replace("[http]", "shutdown_timeout_s = 9\n[http]") + _port("vm1"))
    assert [key for key, _ in plan_reload(old, slower).needs_restart] == ["daemon.shutdown_timeout_s"]


AUTH = '[auth]\nusers_file = "/etc/serialmuxd/users.toml"\n'


def test_adding_or_removing_auth_refuses_the_whole_reload() -> None:
    plain, authed = _config(BASE + _port("vm1")), _config(BASE + AUTH + _port("vm1"))
    for old, new in ((plain, authed), (authed, plain)):
        plan = plan_reload(old, new)
        assert [key for key, _ in plan.refused] == ["auth"]
        assert "needs a restart" in plan.refused[0][1]


def test_auth_users_file_and_roles_apply_other_auth_keys_need_a_restart() -> None:
    old = _config(BASE + AUTH + _port("vm1"))
    new = _config(
        BASE
        + AUTH.replace("users.toml", "people.toml")
        + 'login_grace_s = 5\n[auth.roles]\nwatcher = ["view"]\n'
        + _port("vm1")
    )
    plan = plan_reload(old, new)
    assert [key for key, _ in plan.needs_restart] == ["auth.login_grace_s"]
    auth = plan.effective.auth
    assert auth is not None and str(auth.users_file).endswith("people.toml")
    assert dict(auth.roles) == {"watcher": frozenset({"view"})} and auth.login_grace_s == 30.0
    assert plan.auth_changed


def test_tls_files_rotate_but_removing_tls_needs_a_restart() -> None:
    tls = '[tls]\ncert_file = "/etc/smx/cert.pem"\nkey_file = "/etc/smx/key.pem"\n'
    old = _config(BASE + tls + _port("vm1"))
    moved = _config(BASE + tls.replace("cert.pem", "cert-2027.pem") + _port("vm1"))
    plan = plan_reload(old, moved)
    assert not plan.needs_restart and plan.effective.tls == moved.tls
    gone = plan_reload(old, _config(BASE + _port("vm1")))
    assert [key for key, _ in gone.needs_restart] == ["tls"] and gone.effective.tls == old.tls


def test_alerts_changes_are_applied() -> None:
    old = _config(BASE + _port("vm1"))
    new = _config(BASE + '[alerts]\nwebhook_url = "http://127.0.0.1:9/hook"\n' + _port("vm1"))
    plan = plan_reload(old, new)
    assert plan.alerts_changed and not plan.needs_restart and plan.effective.alerts == new.alerts


def test_tables_added_later_need_a_restart_by_key() -> None:
    """[ssh] is a listener set up at start: its keys are reported like any daemon-wide key not made live."""
    old = _config(BASE + AUTH + '[ssh]\nlisten = "127.0.0.1:2222"\n' + _port("vm1"))
    new = _config(BASE + AUTH + '[ssh]\nlisten = "127.0.0.1:2223"\n' + _port("vm1"))
    plan = plan_reload(old, new)
    assert [key for key, _ in plan.needs_restart] == ["ssh.listen"]
    assert plan.effective.ssh == old.ssh
